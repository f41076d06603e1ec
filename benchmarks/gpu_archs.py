"""Real SD 1.5 / SDXL / CLIP architectures for the GPU suite, their tiny --smoke stand-ins,
and the device peaks MFU divides by.

Each dict holds only what differs from the library's own defaults; the values are those of
the published config.json files named, and PUBLISHED_PARAMS (the checkpoints' parameter
counts) is checked against what gets built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# -- architectures ------------------------------------------------------------------------
# Each dict holds only what differs from the library's own defaults (diffusers 0.42
# UNet2DConditionModel / AutoencoderKL, transformers 5 CLIPTextConfig / CLIPVisionConfig);
# the values are those of the published config.json files named, and PUBLISHED_PARAMS
# (the parameter counts of those checkpoints) is checked against what gets built.

#: stable-diffusion-v1-5/stable-diffusion-v1-5 unet/config.json. diffusers' defaults are
#: already SD 1.x's: in_channels 4, block_out_channels (320, 640, 1280, 1280), three
#: CrossAttnDownBlock2D + DownBlock2D (and the mirror up), layers_per_block 2,
#: attention_head_dim 8 (which diffusers uses as the number of heads), norm_num_groups 32;
#: the checkpoint sets cross_attention_dim 768 (CLIP ViT-L/14 text) and sample_size 64.
SD15_UNET: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "sample_size": 64,
}
#: stabilityai/stable-diffusion-xl-base-1.0 unet/config.json: three levels, no attention
#: at the first, 1/2/10 transformer layers, heads (5, 10, 20) of 64 channels (again
#: "attention_head_dim" in diffusers' naming), linear projections, and the "text_time"
#: added conditioning: 1280 pooled text dims + 6 time ids x 256 = 2816.
SDXL_UNET: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "attention_head_dim": (5, 10, 20),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
}
#: vae/config.json of both checkpoints (8x downsampling, 4 latent channels); SDXL's
#: differs in its scaling factor and force_upcast (it overflows in fp16).
SD15_VAE: dict[str, Any] = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SDXL_VAE: dict[str, Any] = {
    **SD15_VAE,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
#: openai/clip-vit-large-patch14 text_config: SD 1.5's text encoder and SDXL's first.
CLIP_L_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
#: SDXL text_encoder_2/config.json (OpenCLIP ViT-bigG/14 text tower, with projection).
BIGG_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
#: openai/clip-vit-large-patch14 vision_config + projection_dim: what the aesthetic
#: scorer loads (reward_server/settings.py's default aesthetic_clip_model).
CLIP_L14_VISION: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
#: Parameter counts of the published checkpoints; the built models must match exactly.
PUBLISHED_PARAMS = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {
        "unet": 2_567_463_684,
        "vae": 83_653_863,
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
    },
    "clip_vision": 303_966_208,
}

# Tiny stand-ins for --smoke: the same block types, a few channels (as
# trainer/random_pipeline.py builds them), 32 px images through a 2-level VAE.
TINY_SD_UNET: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
    "sample_size": 16,
}
TINY_SDXL_UNET: dict[str, Any] = {
    **TINY_SD_UNET,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 48,
    "attention_head_dim": (2, 4),
    "transformer_layers_per_block": (1, 1),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,
}
TINY_VAE: dict[str, Any] = {
    "block_out_channels": (8, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 32,
}
TINY_TEXT: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 16,
    "projection_dim": 32,
}
TINY_CLIP_VISION: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 8,
    "image_size": 32,
    "projection_dim": 768,  # the aesthetic head's input, as with ViT-L/14
}


@dataclass(frozen=True)
class Sizes:
    """Models and workload of one run: the real ones, or --smoke's tiny ones."""

    sd_unet: dict[str, Any]
    sd_vae: dict[str, Any]
    sd_text: dict[str, Any]
    sdxl_unet: dict[str, Any]
    sdxl_vae: dict[str, Any]
    sdxl_text: dict[str, Any]
    sdxl_text_2: dict[str, Any]
    clip_vision: dict[str, Any]
    check_params: bool
    #: SD 1.5 epoch (None: as configs/sd15-aesthetic-lora.toml has it: 50 steps, 6 x 4, batch 3)
    sd_steps: int | None = None
    sd_num_batches: int | None = None
    warmup_steps: int = 2
    full_ft_steps: int = 4  # trained steps per sample in sd15_full_ft: memory does not grow with it
    sdxl_steps: int = 50
    sdxl_sample_batch: int = 2
    sdxl_num_batches: int = 1
    sdxl_train_batch: int = 2
    aesthetic_batch: int = 64
    aesthetic_image_px: int = 512  # what SD 1.5 sends the reward server
    aesthetic_repeats: int = 10
    flow_tiny: bool = False  # SD3.5 / FLUX from trainer/random_flow_pipeline.py
    flow_steps: int | None = None  # None: the preset's
    flow_resolution: int | None = None  # None: the preset's (512)


FULL = Sizes(
    sd_unet=SD15_UNET,
    sd_vae=SD15_VAE,
    sd_text=CLIP_L_TEXT,
    sdxl_unet=SDXL_UNET,
    sdxl_vae=SDXL_VAE,
    sdxl_text=CLIP_L_TEXT,
    sdxl_text_2=BIGG_TEXT,
    clip_vision=CLIP_L14_VISION,
    check_params=True,
)
SMOKE = Sizes(
    sd_unet=TINY_SD_UNET,
    sd_vae=TINY_VAE,
    sd_text=TINY_TEXT,
    sdxl_unet=TINY_SDXL_UNET,
    sdxl_vae=TINY_VAE,
    sdxl_text=TINY_TEXT | {"hidden_size": 16, "projection_dim": 16},
    sdxl_text_2=TINY_TEXT,
    clip_vision=TINY_CLIP_VISION,
    check_params=False,
    sd_steps=2,
    sd_num_batches=2,
    full_ft_steps=2,
    sdxl_steps=2,
    aesthetic_batch=8,
    aesthetic_image_px=48,
    aesthetic_repeats=2,
    flow_tiny=True,
    flow_steps=2,
    flow_resolution=32,
)

#: Peak dense bf16 tensor FLOP/s by device name (vendor data sheets, without sparsity);
#: the first matching substring wins, so the specific names come first.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),  # SXM, "NVIDIA H100 80GB HBM3"
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
)
#: The target of issue 17: |log ratio| before any update within a tenth of the clip range.
RATIO_TARGET_FRACTION = 0.1
