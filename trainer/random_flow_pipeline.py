"""Tiny random-weight SD3 and FLUX.1 pipelines with the real architectures, for tests.

Like `trainer/random_pipeline.py`: configs written here, tokenizers generated
(CLIP byte-level BPE; T5 as a character unigram model), nothing downloaded.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from trainer.random_pipeline import _text_encoder, _tokenizer
from trainer.random_pipeline import _vae as _sd_vae

CLIP_LENGTH = 16


def t5_tokenizer():
    from transformers import T5TokenizerFast

    pieces = [(chr(c), -1.0) for c in range(32, 127)] + [("\u2581", -1.0)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def _t5_encoder(vocab_size: int, width: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=vocab_size,
        d_model=width,
        d_kv=8,
        d_ff=width,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(cfg)


def _vae(scaling_factor: float, shift_factor: float):
    """The SD test VAE with the flow models' scaling and shift, without quant convs."""
    return _sd_vae(
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _save(pipe, path: Path) -> Path:
    pipe.save_pretrained(path, safe_serialization=True)
    for src in path.glob("_tok_src*"):
        shutil.rmtree(src)
    return path


def build_random_sd3(path: Path, sample_size: int = 16, seed: int = 0) -> Path:
    """SD3/3.5-shaped: CLIP-L, CLIP-G (with projections) and T5; MMDiT; static shift 3."""
    return _save(random_sd3_pipeline(Path(path), sample_size, seed), Path(path))


def build_random_flux(path: Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """FLUX.1-dev-shaped: CLIP pooled + T5, packed latents, dynamic shifting, guidance embedding."""
    return _save(random_flux_pipeline(Path(path), seed, guidance_embeds), Path(path))


def random_sd3_pipeline(tmp: Path, sample_size: int = 16, seed: int = 0):
    """The pipeline `build_random_sd3` saves (`tmp` holds tokenizer sources)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    torch.manual_seed(seed)
    tok, vocab_size = _tokenizer(tmp / "_tok_src", CLIP_LENGTH)
    tok2, _ = _tokenizer(tmp / "_tok_src2", CLIP_LENGTH)
    t5_tok = t5_tokenizer()
    hidden1, hidden2, t5_width = 16, 32, 64
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=t5_width,
        caption_projection_dim=16,  # = heads x head dim
        pooled_projection_dim=hidden1 + hidden2,
        out_channels=4,
        pos_embed_max_size=sample_size,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(scaling_factor=1.5305, shift_factor=0.0609),  # SD3's VAE constants
        text_encoder=_text_encoder(vocab_size, hidden1, True, CLIP_LENGTH),
        tokenizer=tok,
        text_encoder_2=_text_encoder(vocab_size, hidden2, True, CLIP_LENGTH),
        tokenizer_2=tok2,
        text_encoder_3=_t5_encoder(len(t5_tok), t5_width),
        tokenizer_3=t5_tok,
    )


def random_flux_pipeline(tmp: Path, seed: int = 0, guidance_embeds: bool = True):
    """The pipeline `build_random_flux` saves (`tmp` holds tokenizer sources)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    tok, vocab_size = _tokenizer(tmp / "_tok_src", CLIP_LENGTH)
    t5_tok = t5_tokenizer()
    clip_hidden, t5_width = 32, 64
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels x a 2x2 patch per token
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=t5_width,
        pooled_projection_dim=clip_hidden,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(2, 2, 4),  # sums to the head dim
    )
    scheduler = FlowMatchEulerDiscreteScheduler(  # as FLUX.1-dev ships it
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=_vae(scaling_factor=0.3611, shift_factor=0.1159),  # FLUX.1's VAE constants
        text_encoder=_text_encoder(vocab_size, clip_hidden, False, CLIP_LENGTH),
        tokenizer=tok,
        text_encoder_2=_t5_encoder(len(t5_tok), t5_width),
        tokenizer_2=t5_tok,
        transformer=transformer,
    )
