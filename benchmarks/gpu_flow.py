"""SD3.5-Medium and FLUX.1-dev with random weights, for benchmarks/gpu_suite.py's flow parts.

The configs are those of the published transformer/, vae/ and text encoder
config.json files, written from their documented values. Their parameter counts
are recorded, not checked against the checkpoints (SD3.5-Medium's transformer
builds to 2.24 B, FLUX.1-dev's to 11.90 B, the T5-XXL encoder to 4.76 B). Big
models are built in bf16 straight on the device: fp32 FLUX and T5 would take 68 GB
before the first cast. --smoke uses trainer/random_flow_pipeline.py's tiny
pipelines instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

FLOW_KINDS = ("sd35", "flux")

#: stabilityai/stable-diffusion-3.5-medium transformer/config.json (MMDiT-X: dual attention
#: in the first 13 layers, RMS qk-norm).
SD35_MEDIUM_TRANSFORMER: dict[str, Any] = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}
#: black-forest-labs/FLUX.1-dev transformer/config.json: 19 double, 38 single blocks.
FLUX1_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
#: The 16-channel VAE both ship (vae/config.json), without quant convs; scaling and shift
#: differ per model.
FLOW_VAE: dict[str, Any] = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 16,
    "sample_size": 1024,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
VAE_FACTORS = {"sd35": (1.5305, 0.0609), "flux": (0.3611, 0.1159)}
#: google/t5-v1_1-xxl, the encoder both use as their long text encoder.
T5_XXL: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_ff": 10240,
    "d_kv": 64,
    "num_heads": 64,
    "num_layers": 24,
    "feed_forward_proj": "gated-gelu",
}
SD3_SCHEDULER = {"shift": 3.0}
FLUX_SCHEDULER = {
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


def _counts(pipe, names: tuple[str, ...]) -> dict[str, int]:
    return {n: sum(p.numel() for p in getattr(pipe, n).parameters()) for n in names}


def build_flow_pipeline(
    kind: str, tiny: bool, device, clip_l: dict[str, Any], clip_g: dict[str, Any], text_encoder
) -> tuple[Any, dict[str, int]]:
    """A random-weight SD3.5-Medium ("sd35") or FLUX.1-dev ("flux") pipeline on `device`.

    `clip_l`, `clip_g` and `text_encoder` are gpu_suite's CLIP configs and builder,
    so the CLIP towers are the same ones its SD parts use.
    """
    import torch

    from trainer.random_flow_pipeline import random_flux_pipeline, random_sd3_pipeline

    encoders = ("text_encoder", "text_encoder_2") + (("text_encoder_3",) if kind == "sd35" else ())
    names = ("transformer", "vae", *encoders)
    with tempfile.TemporaryDirectory() as tmp:
        if tiny:
            pipe = (random_sd3_pipeline if kind == "sd35" else random_flux_pipeline)(Path(tmp))
            return pipe.to(device), _counts(pipe, names)
        parts = _real_parts(kind, Path(tmp), device, clip_l, clip_g, text_encoder, torch)
    pipe_cls = parts.pop("pipeline_cls")
    pipe = pipe_cls(**parts)
    return pipe, _counts(pipe, names)


def _real_parts(kind, tmp: Path, device, clip_l, clip_g, text_encoder, torch) -> dict[str, Any]:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import T5Config, T5EncoderModel

    from trainer.random_flow_pipeline import t5_tokenizer
    from trainer.random_pipeline import _tokenizer

    max_length = int(clip_l["max_position_embeddings"])
    tok, n_tokens = _tokenizer(tmp / "tok", max_length)
    tok2, _ = _tokenizer(tmp / "tok2", max_length)
    scaling, shift = VAE_FACTORS[kind]
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            vae = AutoencoderKL(**FLOW_VAE, scaling_factor=scaling, shift_factor=shift)
            t5 = T5EncoderModel(T5Config(**T5_XXL))
            if kind == "sd35":
                return {
                    "pipeline_cls": StableDiffusion3Pipeline,
                    "transformer": SD3Transformer2DModel(**SD35_MEDIUM_TRANSFORMER),
                    "vae": vae,
                    "text_encoder": text_encoder(clip_l, n_tokens, max_length, projection=True),
                    "text_encoder_2": text_encoder(clip_g, n_tokens, max_length, projection=True),
                    "text_encoder_3": t5,
                    "tokenizer": tok,
                    "tokenizer_2": tok2,
                    "tokenizer_3": t5_tokenizer(),
                    "scheduler": FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
                }
            return {
                "pipeline_cls": FluxPipeline,
                "transformer": FluxTransformer2DModel(**FLUX1_DEV_TRANSFORMER),
                "vae": vae,
                "text_encoder": text_encoder(clip_l, n_tokens, max_length, projection=False),
                "text_encoder_2": t5,
                "tokenizer": tok,
                "tokenizer_2": t5_tokenizer(),
                "scheduler": FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
            }
    finally:
        torch.set_default_dtype(previous)
