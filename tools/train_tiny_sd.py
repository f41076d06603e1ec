"""Train the embedded tiny text-to-image model (StableDiffusion format) on procedural shapes.

Three stages on CPU: a small VAE, a decoder-only polish on frozen-encoder latents, then a
v-prediction UNet jointly with a small CLIP text encoder on cached latents. A complete
pipeline is saved after every stage and periodically during UNet training, so a usable
model exists early. Run: python tools/train_tiny_sd.py --out models/tiny-sd
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from shared import shapes  # noqa: E402

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_TOKENS = 16
TEXT_DIM = 128
# The schedule the prototype found to work with v-prediction on 16x16 latents.
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "prediction_type": "v_prediction",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- tokenizer ---------------------------------------------------------------------------


def learn_bpe(words: list[str]) -> list[tuple[str, str]]:
    """Greedy BPE over the word list until each word is one token, so CLIP's BPE is word-level."""
    pieces = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(p for seq in pieces.values() for p in zip(seq, seq[1:], strict=False))
        if not pairs:
            return merges
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        for w, seq in pieces.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            pieces[w] = out


def write_vocab_files(workdir: Path) -> None:
    """vocab.json/merges.txt for the prompt words: a CLIP BPE that only makes whole words."""
    words = shapes.vocabulary()
    merges = learn_bpe(words)
    tokens = [BOS, EOS]
    chars = sorted({c for w in words for c in w})
    tokens += chars + [c + "</w>" for c in chars]
    tokens += [a + b for a, b in merges if a + b not in tokens]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (workdir / "merges.txt").write_text("\n".join(lines) + "\n")


def build_tokenizer(workdir: Path) -> CLIPTokenizer:
    """Load a CLIPTokenizer on freshly written vocab files and check it is word-level."""
    write_vocab_files(workdir)
    words = shapes.vocabulary()
    tok = CLIPTokenizer(
        str(workdir / "vocab.json"),
        str(workdir / "merges.txt"),
        model_max_length=MAX_TOKENS,
        pad_token=EOS,
    )
    for w in words:
        ids = tok(w, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise RuntimeError(f"word {w!r} did not become one token: {ids}")
    return tok


# --- models ------------------------------------------------------------------------------


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def build_unet(
    channels: tuple[int, ...] = (32, 64, 128),
    layers_per_block: int = 1,
    attention_levels: tuple[int, ...] = (1, 2),
    heads: int = 4,
) -> UNet2DConditionModel:
    """The defaults make the built-in model; other values make a different one to confirm on.

    attention_levels: which resolution levels (0 = 16x16) get cross-attention; the mid
    block always has it.
    """
    levels = range(len(channels))
    down = tuple("CrossAttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in levels)
    up = tuple(d.replace("Down", "Up") for d in reversed(down))
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=channels,
        layers_per_block=layers_per_block,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=heads,
        norm_num_groups=8,
    )


def build_text_encoder(tok: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tok.get_vocab()),
        hidden_size=TEXT_DIM,
        intermediate_size=2 * TEXT_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_DIM,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return CLIPTextModel(config)


# --- data --------------------------------------------------------------------------------


def make_images(n_per_triple: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """Images in [-1, 1] (N,3,64,64) and the index of each one's prompt in all_triples()."""
    imgs, labels = shapes.draw_dataset(n_per_triple, seed)
    arr = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return arr, labels


# --- stages ------------------------------------------------------------------------------


def train_vae(vae: AutoencoderKL, seconds: float, batch: int, seed: int) -> None:
    """Reconstruction (MSE + L1) with a tiny KL: colour fidelity of decodes bounds everything."""
    data, _ = make_images(120, seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=1.5e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    start, step = time.time(), 0
    vae.train()
    while time.time() - start < seconds:
        frac = (time.time() - start) / seconds
        for g in opt.param_groups:
            g["lr"] = 1.5e-3 * (0.5 * (1 + math.cos(math.pi * frac)) * 0.95 + 0.05)
        x = data[torch.randint(len(data), (batch,), generator=gen)]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        kl = post.kl().mean() / (4 * 16 * 16)
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-5 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            log(f"vae step {step} loss {loss.item():.5f} kl {kl.item():.2f}")
    vae.eval()


@torch.no_grad()
def encode_all(vae: AutoencoderKL, data: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Posterior means: deterministic latents for caching."""
    return torch.cat(
        [vae.encode(data[i : i + batch]).latent_dist.mean for i in range(0, len(data), batch)]
    )


def polish_decoder(vae: AutoencoderKL, seconds: float, batch: int, seed: int) -> None:
    """Decoder-only fine-tune on frozen posterior means, the latents the UNet learns to make."""
    data, _ = make_images(60, seed + 1)
    latents = encode_all(vae, data)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=3e-4)
    gen = torch.Generator().manual_seed(seed)
    start, step = time.time(), 0
    vae.train()
    while time.time() - start < seconds:
        idx = torch.randint(len(data), (batch,), generator=gen)
        z = latents[idx] + 0.02 * latents.std() * torch.randn(latents[idx].shape, generator=gen)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, data[idx]) + 0.5 * F.l1_loss(rec, data[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            log(f"decoder step {step} loss {loss.item():.5f}")
    vae.eval()


def halve_weights(out: Path) -> None:
    """Store UNet and VAE in fp16 to stay under 20 MB; diffusers loads them back as fp32.

    The text encoder stays fp32: transformers would load fp16 weights as fp16 by default,
    and a fp16 text encoder feeding a fp32 UNet breaks CPU sampling.
    """
    from safetensors.torch import load_file, save_file

    for sub in ("unet", "vae"):
        path = out / sub / "diffusion_pytorch_model.safetensors"
        tensors = {k: v.half() for k, v in load_file(str(path)).items()}
        save_file(tensors, str(path), metadata={"format": "pt"})


def save_pipeline(
    out: Path,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    tok: CLIPTokenizer,
) -> None:
    scheduler = DDIMScheduler(
        **SCHEDULE,
        timestep_spacing="trailing",
        steps_offset=1,
        set_alpha_to_one=True,
        clip_sample=False,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    write_vocab_files(out / "tokenizer")  # older transformers' slow CLIPTokenizer needs them
    halve_weights(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log(f"saved pipeline to {out} ({size / 1e6:.1f} MB)")


def train_unet(
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    tok: CLIPTokenizer,
    args: argparse.Namespace,
) -> None:
    """v-prediction with 10% empty prompts (for guidance); text encoder trained jointly
    unless `--freeze-text-encoder` (then it stays at its random initialisation)."""
    data, labels = make_images(args.per_prompt, args.seed + 2)
    if args.hold_out:  # the same seed draws the same seen images with or without it
        held = {shapes.all_triples().index(t) for t in shapes.HELD_OUT}
        keep = [i for i, label in enumerate(labels) if label not in held]
        data, labels = data[keep], [labels[i] for i in keep]
        log(f"held out {len(held)} triples: {len(labels)} training images")
    latents = encode_all(vae, data) * vae.config.scaling_factor
    del data
    prompts = shapes.all_prompts() + [""]
    ids = tok(prompts, padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    labels_t = torch.tensor(labels)
    empty = len(prompts) - 1
    sched = DDPMScheduler(**SCHEDULE)
    params = list(unet.parameters())
    if args.freeze_text_encoder:
        text_encoder.requires_grad_(False)
    else:
        params += list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    start, step, last_save, ema = time.time(), 0, time.time(), None
    unet.train()
    text_encoder.train(not args.freeze_text_encoder)
    while time.time() - start < args.unet_seconds and step < args.unet_steps:
        frac = min(1.0, (time.time() - start) / args.unet_seconds)
        warm = min(1.0, (step + 1) / 200)
        for g in opt.param_groups:
            g["lr"] = args.lr * warm * (0.5 * (1 + math.cos(math.pi * frac)) * 0.9 + 0.1)
        idx = torch.randint(len(latents), (args.batch,), generator=gen)
        x0 = latents[idx]
        if torch.rand((), generator=gen) < 0.5:  # shapes are left-right symmetric
            x0 = x0.flip(-1)
        p = labels_t[idx].clone()
        p[torch.rand(args.batch, generator=gen) < 0.1] = empty
        cond = text_encoder(ids[p]).last_hidden_state
        t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        xt = sched.add_noise(x0, noise, t)
        target = sched.get_velocity(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 50 == 0:
            rate = step / (time.time() - start)
            lr = opt.param_groups[0]["lr"]
            log(f"unet step {step} loss {ema:.4f} lr {lr:.2e} {rate:.2f} it/s")
        if time.time() - last_save > args.save_every:
            unet.eval()
            text_encoder.eval()
            save_pipeline(args.out, vae, unet, text_encoder, tok)
            if args.keep_snapshots:  # to pick a checkpoint by fidelity afterwards
                snap = args.out.with_name(f"{args.out.name}-step{step}")
                save_pipeline(snap, vae, unet, text_encoder, tok)
            unet.train()
            text_encoder.train(not args.freeze_text_encoder)
            last_save = time.time()
    unet.eval()
    text_encoder.eval()


def int_list(text: str) -> tuple[int, ...]:
    """'32,64,96' -> (32, 64, 96), for the architecture options."""
    return tuple(int(x) for x in text.split(",") if x.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("models/tiny-sd"))
    ap.add_argument("--vae-minutes", type=float, default=10.0)
    ap.add_argument("--decoder-minutes", type=float, default=2.0)
    ap.add_argument("--unet-minutes", type=float, default=35.0)
    ap.add_argument("--unet-steps", type=int, default=10**9, help="stop early after this many")
    ap.add_argument("--vae-from", type=Path, default=None, help="reuse a trained VAE directory")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--per-prompt", type=int, default=200, help="cached latents per prompt")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--keep-snapshots",
        action="store_true",
        help="also keep each periodic save as OUT-stepN (the cosine schedule follows "
        "--unet-minutes, so an early stop is not the same model as a snapshot)",
    )
    ap.add_argument("--save-every", type=float, default=300.0, help="seconds between saves")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unet-channels", type=int_list, default=(32, 64, 128), help="e.g. 32,64,96")
    ap.add_argument("--layers-per-block", type=int, default=1)
    ap.add_argument(
        "--attention-levels",
        type=int_list,
        default=(1, 2),
        help="levels with cross-attention, 0 = 16x16 (e.g. 2 for 4x4 only)",
    )
    ap.add_argument("--attention-heads", type=int, default=4)
    ap.add_argument(
        "--freeze-text-encoder",
        action="store_true",
        help="keep the text encoder at its random initialisation, as SD keeps CLIP frozen "
        "(trained jointly, it drew 'circle' and 'square' together: cosine 0.995)",
    )
    ap.add_argument(
        "--hold-out",
        action="store_true",
        help="leave the triples of shared.shapes.HELD_OUT out of the UNet's data "
        "(the VAE from --vae-from may have seen them, as SD's VAE sees everything)",
    )
    args = ap.parse_args()
    args.unet_seconds = args.unet_minutes * 60
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()

    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(Path(tmp))
    if args.vae_from is not None:
        vae = AutoencoderKL.from_pretrained(args.vae_from)
    else:
        vae = build_vae()
        log(f"vae params {sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M")
        train_vae(vae, args.vae_minutes * 60, args.vae_batch, args.seed)
        polish_decoder(vae, args.decoder_minutes * 60, args.vae_batch, args.seed)
        sample, _ = make_images(20, args.seed + 3)
        std = encode_all(vae, sample).std().item()
        vae.register_to_config(scaling_factor=1.0 / std)
        log(f"latent std {std:.4f}; scaling_factor {1.0 / std:.4f}")
    unet = build_unet(
        args.unet_channels, args.layers_per_block, args.attention_levels, args.attention_heads
    )
    log(f"unet down blocks {unet.config.down_block_types}, channels {args.unet_channels}")
    text_encoder = build_text_encoder(tok)
    log(
        f"unet params {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M, "
        f"text encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f}M"
    )
    save_pipeline(args.out, vae, unet, text_encoder, tok)
    train_unet(vae, unet, text_encoder, tok, args)
    save_pipeline(args.out, vae, unet, text_encoder, tok)
    log(f"done in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
