"""Train models/tiny-flux: a FLUX.1-shaped rectified-flow pipeline small enough for a CPU.

It reuses models/tiny-sd's VAE, CLIP tokenizer and text encoder (frozen: its pooled
output is the FLUX pooled embedding). It trains a new FluxTransformer2DModel, with a
tiny T5 (character tokens) trained jointly or, with `--freeze-t5`, left at its random
initialisation as FLUX keeps its T5 frozen, on the flow-matching loss
||v - (eps - x0)||^2 over cached latents of shared/shapes.py drawings; `--hold-out`
leaves out the triples of shared.shapes.HELD_OUT, as for models/tiny-sd.
guidance_embeds is off, as in FLUX.1-schnell: one pass per step and no CFG.

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python tools/train_tiny_flow.py --out models/tiny-flux \
        --minutes 40 --freeze-t5 --hold-out --save-every 300
"""  # noqa: E501

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from shared import shapes
from trainer.families.flow_matching import t5_length
from trainer.random_flow_pipeline import _t5_encoder, t5_tokenizer

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_transformer():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 VAE channels x 2x2 patch: 16x16 latents -> 64 tokens
        num_layers=2,
        num_single_layers=4,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=64,
        pooled_projection_dim=128,  # tiny-sd's CLIP width
        guidance_embeds=False,
        axes_dims_rope=(8, 12, 12),
    )


@torch.no_grad()
def cached_latents(vae, per_prompt: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    imgs, labels = shapes.draw_dataset(per_prompt, seed)
    data = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    means = [vae.encode(data[i : i + 256]).latent_dist.mean for i in range(0, len(data), 256)]
    return torch.cat(means) * vae.config.scaling_factor, torch.tensor(labels)


def main() -> None:
    from diffusers import AutoencoderKL, FluxPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=REPO / "models" / "tiny-flux")
    ap.add_argument("--base", type=Path, default=REPO / "models" / "tiny-sd")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--per-prompt", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--freeze-t5", action="store_true", help="keep T5 at its random init")
    ap.add_argument("--hold-out", action="store_true", help="leave shapes.HELD_OUT out")
    ap.add_argument("--init", type=Path, default=None, help="continue from this pipeline")
    ap.add_argument(
        "--save-every", type=float, default=0.0, help="seconds between snapshots (0: none)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    vae = AutoencoderKL.from_pretrained(args.base / "vae").eval().requires_grad_(False)
    clip_tok = CLIPTokenizer.from_pretrained(args.base / "tokenizer")
    clip = CLIPTextModel.from_pretrained(args.base / "text_encoder").eval().requires_grad_(False)
    t5_tok = t5_tokenizer()
    t5_tok.model_max_length = 48  # the longest prompt is 40 characters with </s>
    t5 = _t5_encoder(len(t5_tok), 64)
    text_len = t5_length(t5_tok)
    if args.init is None:
        transformer = build_transformer()
    else:  # a warm restart: new warm-up and cosine from the saved weights
        from diffusers import FluxTransformer2DModel

        transformer = FluxTransformer2DModel.from_pretrained(args.init / "transformer")
        t5.load_state_dict(type(t5).from_pretrained(args.init / "text_encoder_2").state_dict())
    log(f"transformer {sum(p.numel() for p in transformer.parameters()) / 1e6:.2f}M params")

    latents, labels = cached_latents(vae, args.per_prompt, args.seed + 1)
    if args.hold_out:
        held = torch.tensor([shapes.all_triples().index(t) for t in shapes.HELD_OUT])
        keep = ~torch.isin(labels, held)
        latents, labels = latents[keep], labels[keep]
    log(f"{len(latents)} cached latents, std {latents.std():.3f}")
    prompts = shapes.all_prompts()
    clip_ids = clip_tok(
        prompts,
        padding="max_length",
        max_length=clip_tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    t5_ids = t5_tok(
        prompts,
        padding="max_length",
        max_length=text_len,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        pooled_all = clip(clip_ids).pooler_output
    parts = {"vae": vae, "text_encoder": clip, "tokenizer": clip_tok, "tokenizer_2": t5_tok}
    img_ids = FluxPipeline._prepare_latent_image_ids(1, 8, 8, "cpu", torch.float32)
    txt_ids = torch.zeros(text_len, 3)

    params = list(transformer.parameters())
    if args.freeze_t5:
        t5.requires_grad_(False)
    else:
        params += list(t5.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    seconds = args.minutes * 60
    start, step, ema, last_save = time.time(), 0, None, time.time()
    transformer.train()
    t5.train(not args.freeze_t5)
    while time.time() - start < seconds:
        frac = (time.time() - start) / seconds
        warm = min(1.0, (step + 1) / 200)
        for g in opt.param_groups:
            g["lr"] = args.lr * warm * (0.5 * (1 + math.cos(math.pi * frac)) * 0.9 + 0.1)
        idx = torch.randint(len(latents), (args.batch,), generator=gen)
        x0 = latents[idx]
        if torch.rand((), generator=gen) < 0.5:  # the shapes are left-right symmetric
            x0 = x0.flip(-1)
        p = labels[idx]
        # logit-normal times (SD3's), so the middle of the chain gets most of the steps
        s = torch.sigmoid(torch.randn(args.batch, generator=gen))
        eps = torch.randn(x0.shape, generator=gen)
        xs = (1 - s[:, None, None, None]) * x0 + s[:, None, None, None] * eps
        packed = FluxPipeline._pack_latents(xs, args.batch, 4, 16, 16)
        out = transformer(
            hidden_states=packed,
            timestep=s,
            pooled_projections=pooled_all[p],
            encoder_hidden_states=t5(t5_ids[p]).last_hidden_state,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        target = FluxPipeline._pack_latents(eps - x0, args.batch, 4, 16, 16)
        loss = F.mse_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0:
            log(f"step {step} loss {ema:.4f} {step / (time.time() - start):.2f} it/s")
        if args.save_every and time.time() - last_save > args.save_every:
            save(args.out / "snapshots" / f"step-{step}", transformer, t5, parts)
            transformer.train()
            last_save = time.time()
    save(args.out, transformer, t5, parts)
    log(f"saved {args.out} after {step} steps, loss {ema:.4f}")


def save(out: Path, transformer, t5, parts: dict) -> None:
    """The whole pipeline, so any snapshot loads and samples as the final model does."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    transformer.eval()
    t5.eval()
    parts["vae"].register_to_config(shift_factor=0.0)  # FluxPipeline adds it when decoding
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        text_encoder_2=t5,
        transformer=transformer,
        **parts,
    )
    pipe.save_pretrained(out, safe_serialization=True)


if __name__ == "__main__":
    main()
