"""GPU suite: memory, speed and ratio exactness of the trainer on real-size random-weight models.

One command for a lent H100/H200-class GPU with no internet. The GPU host has
torch, transformers, accelerate, peft and httpx but no diffusers, fastapi or
pydantic; fetch those as wheels here with `../shared/tools/gpu-wheels` (from the
project root; it writes .whl/), carry .whl/ along, and run there, from the
project root:

    python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl && PYTHONPATH=$PWD/.site:$PWD python3 benchmarks/gpu_suite.py

Every model has the real architecture (configs below, checked against the
published parameter counts) and random weights, so nothing is downloaded. The
parts, each in its own process under its own time cap (`--part-timeout`), so
one slow or crashing part cannot starve the others:

- sd15_lora_bf16 / sd15_lora_fp16: SD 1.5 at 512 px, configs/sd15-aesthetic-lora.toml
  (sample batch 6 x 4, 50 steps, CFG 5, train batch 3): epoch time per phase,
  images/s, peak memory, model FLOP utilisation of training and sampling;
- sd15_full_ft: full fine-tuning, gradient checkpointing, 8-bit Adam when
  bitsandbytes imports (else AdamW): peak memory at train batch 3;
- sd15_ratio_bf16 / sd15_ratio_fp16: the PPO ratio with unchanged weights (lr 0),
  sample batch 6 vs train batch 3, per step, with train_recompute_old_log_probs
  "never" and "auto";
- sdxl_lora_bf16: SDXL at 1024 px, LoRA, sample batch 2: peak memory, epoch time;
- aesthetic: the aesthetic scorer (CLIP ViT-L/14 + LAION MLP head) images/s at batch 64;
- sd35_flow_lora_bf16 / flux1_flow_lora_bf16: SD3.5-Medium and FLUX.1-dev at 512 px
  (benchmarks/gpu_flow.py), configs/sd35-medium-grpo-lora.toml and
  configs/flux1-dev-grpo-lora.toml (LoRA, bf16, gradient checkpointing; SD3.5 with CFG
  4.5 and the KL term) with one sampling batch per epoch: time per phase, peak memory.

Timing: one warm-up epoch at the timed shapes (batch sizes) but 2 denoising
steps and one sampling batch, then one timed epoch; the suite takes about
8 minutes on an H100 and stops starting parts once `--budget` is spent.
Results go to benchmarks/results/gpu_suite.json (`--out`), written after every
part, and a table is printed. `--smoke` runs every part on tiny configs on the
CPU in seconds (tests/test_gpu_suite_smoke.py), so GPU time is not spent on a typo.
"""  # noqa: E501  (the command above is one line on purpose)

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Before torch is imported: offline, quiet, and a CUDA check that does not initialise the
# driver, so that the parent stays safe to fork (it never touches the GPU itself).
for _key, _value in {
    "PYTORCH_NVML_BASED_CUDA_CHECK": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
}.items():
    os.environ.setdefault(_key, _value)

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
for _path in (str(REPO), str(BENCH_DIR)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _common import machine_info  # noqa: E402  (stdlib only)
from gpu_flow import FLOW_KINDS, build_flow_pipeline  # noqa: E402  (imports torch lazily)
from gpu_forward import part_sd15_nft  # noqa: E402  (imports gpu_suite when run)

DEFAULT_OUT = BENCH_DIR / "results" / "gpu_suite.json"
LORA_PRESET = REPO / "configs" / "sd15-aesthetic-lora.toml"
FULL_PRESET = REPO / "configs" / "sd15-aesthetic-full.toml"
GIB = 2**30
PACKAGES = ["torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "pydantic"]

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


# -- helpers -------------------------------------------------------------------------------


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else None


def _allocated_gib() -> float | None:
    import torch

    return torch.cuda.memory_allocated() / GIB if torch.cuda.is_available() else None


NO_CUDA = "no CUDA device: torch.cuda.max_memory_allocated needs a GPU"


class Report:
    """A part's figures; a figure that cannot be had here gets its reason instead."""

    def __init__(self) -> None:
        self.figures: dict[str, Any] = {}
        self.unavailable: dict[str, str] = {}
        self.settings: dict[str, Any] = {}
        self.notes: list[str] = []

    def put(self, name: str, value: Any, reason: str = "") -> None:
        if value is None:
            self.unavailable[name] = reason or "not measured"
        else:
            self.figures[name] = value

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "figures": self.figures,
            "unavailable": self.unavailable,
            "notes": self.notes,
        }


def peak_bf16_flops(device_name: str, override: float | None) -> tuple[float | None, str]:
    """The peak MFU divides by, and where it came from."""
    if override:
        return override, f"--peak-flops {override:.4g}"
    for key, value in PEAK_BF16_FLOPS:
        if key in device_name:
            return value, f"{key} dense bf16 data-sheet figure {value:.4g} FLOP/s"
    return None, f"no peak bf16 figure known for {device_name!r} (pass --peak-flops)"


def device_info(args: argparse.Namespace) -> dict[str, Any]:
    """What the figures were measured on (asked in the child: the parent never inits CUDA)."""
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        # The trainer leaves it at torch's default ("highest": no TF32 for fp32 matmuls).
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            name=props.name,
            total_memory_gib=props.total_memory / GIB,
            capability=f"{props.major}.{props.minor}",
            device_count=torch.cuda.device_count(),
        )
    else:
        info["name"] = "cpu"
    peak, source = peak_bf16_flops(info["name"], args.peak_flops)
    info.update(peak_bf16_flops=peak, peak_bf16_flops_source=source)
    return info


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_params(report: Report, built: dict[str, int], published: dict[str, int]) -> None:
    """Record parameter counts; with the real configs they must equal the checkpoints'."""
    report.figures["params"] = built
    if published:
        wrong = {k: (built.get(k), v) for k, v in published.items() if built.get(k) != v}
        if wrong:
            raise RuntimeError(f"architecture differs from the published checkpoint: {wrong}")
        report.notes.append("parameter counts equal the published checkpoints'")


# -- random-weight pipelines through the trainer's own loader -----------------------------


def _text_encoder(config: dict[str, Any], n_tokens: int, max_length: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        **{
            **config,
            # The embedding keeps the real vocabulary size; the byte-level tokenizer uses
            # its first ids, and its two special tokens are the last of them.
            "vocab_size": max(config.get("vocab_size", 0), n_tokens),
            "max_position_embeddings": max_length,
            "bos_token_id": n_tokens - 2,
            "eos_token_id": n_tokens - 1,
            "pad_token_id": n_tokens - 1,
        }
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def build_pipeline(kind: str, sizes: Sizes, device) -> tuple[Any, dict[str, int]]:
    """A random-weight SD 1.5 ("sd15") or SDXL ("sdxl") pipeline, built on `device` in fp32.

    The UNet, VAE and text encoders have the configured sizes (real ones: their
    memory and decode time count); the tokenizer is trainer.random_pipeline's
    byte-level one (no vocabulary download) padded to the text encoder's length.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    from trainer.random_pipeline import _scheduler, _tokenizer

    if kind in FLOW_KINDS:
        return build_flow_pipeline(
            kind, sizes.flow_tiny, device, CLIP_L_TEXT, BIGG_TEXT, _text_encoder
        )
    sdxl = kind == "sdxl"
    unet_cfg, vae_cfg = (sizes.sdxl_unet, sizes.sdxl_vae) if sdxl else (sizes.sd_unet, sizes.sd_vae)
    text_cfg = sizes.sdxl_text if sdxl else sizes.sd_text
    max_length = int(text_cfg["max_position_embeddings"])
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tok, n_tokens = _tokenizer(Path(tmp) / "tok", max_length)
        tok2, _ = _tokenizer(Path(tmp) / "tok2", max_length)
    # Built on the device: random init of 1-3.5 billion parameters is seconds there.
    with torch.device(device):
        parts: dict[str, Any] = {
            "unet": UNet2DConditionModel(**unet_cfg),
            "vae": AutoencoderKL(**vae_cfg),
            "text_encoder": _text_encoder(text_cfg, n_tokens, max_length, projection=False),
        }
        if sdxl:
            parts["text_encoder_2"] = _text_encoder(
                sizes.sdxl_text_2, n_tokens, max_length, projection=True
            )
    counts = {name: param_count(module) for name, module in parts.items()}
    # load_family swaps this scheduler for its DDIM one from the same config.
    parts.update(tokenizer=tok, scheduler=_scheduler("epsilon"))
    if sdxl:
        return StableDiffusionXLPipeline(**parts, tokenizer_2=tok2), counts
    pipe = StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    return pipe, counts


@contextlib.contextmanager
def prebuilt(pipeline) -> Iterator[None]:
    """Make trainer.families.load_family take `pipeline` instead of reading a directory.

    Everything load_family does after loading (the DDPO scheduler, frozen encoders
    cast to the weight dtype, the fp16 VAE upcast) then runs unchanged; writing
    4-14 GB of random weights to disk and reading them back would cost a minute.
    """
    from unittest import mock

    from trainer.families import loading

    class _Loaded:
        @staticmethod
        def from_pretrained(*_args, **_kwargs):
            return pipeline

    with mock.patch.object(loading, "DiffusionPipeline", _Loaded):
        yield


class NoRewards:
    """Stands in for the RewardClient: the suite times the GPU, not a reward server."""

    def submit(self, images, prompts, ids=None) -> None:
        return None

    def close(self) -> None:
        return None


def train_config(preset: Path, **update: Any):
    """A preset's TrainConfig with `update` applied, validated like a config file."""
    from trainer.config import TrainConfig, load_config

    base = load_config(preset).model_dump()
    return TrainConfig.model_validate({**base, **update})


def setup(cfg, kind: str, sizes: Sizes, report: Report):
    """trainer.train.setup_run on a random-weight pipeline: the run `ddpo train` would have."""
    import torch
    from accelerate import Accelerator

    from trainer.ppo import num_passes
    from trainer.train import setup_run

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.train_gradient_accumulation_steps * num_passes(cfg),
    )
    t0 = time.perf_counter()
    pipeline, counts = build_pipeline(kind, sizes, accelerator.device)
    with prebuilt(pipeline):
        run = setup_run(cfg, accelerator, NoRewards())  # type: ignore[arg-type]
    _sync()
    check_params(report, counts, PUBLISHED_PARAMS.get(kind, {}) if sizes.check_params else {})
    trainable = sum(p.numel() for p in run.unet.parameters() if p.requires_grad)
    report.figures["trainable_params"] = trainable
    report.figures["setup_s"] = time.perf_counter() - t0
    report.put("resident_after_setup_gib", _allocated_gib(), NO_CUDA)
    report.settings.update(
        family=run.family.name,
        resolution=run.resolution,
        mixed_precision=cfg.mixed_precision,
        use_lora=cfg.use_lora,
        sample_batch_size=cfg.sample_batch_size,
        sample_num_batches_per_epoch=cfg.sample_num_batches_per_epoch,
        sample_num_steps=cfg.sample_num_steps,
        sample_guidance_scale=cfg.sample_guidance_scale,
        train_batch_size=cfg.train_batch_size,
        train_timestep_fraction=cfg.train_timestep_fraction,
        train_recompute_old_log_probs=cfg.train_recompute_old_log_probs,
        text_encoders_and_vae="real sizes" if sizes.check_params else "tiny",
        tokenizer="byte-level (trainer.random_pipeline), padded to the text encoder's length",
    )
    return run


def advantages_for(n: int, seed: int):
    """Some advantages: their values change no kernel's cost."""
    import torch

    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def forward_flops(run, trajs, rows: int) -> int:
    """UNet FLOPs of one guided forward over `rows` samples, counted by FlopCounterMode.

    The pass is the trainer's own (trainer.ppo.recompute_log_prob) under the run's
    autocast; on CPU the flash-attention-for-CPU kernel has no FLOP formula in
    torch and is left out, on CUDA every SDPA kernel is counted.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.ppo import recompute_log_prob

    batch = trajs.select(torch.arange(rows))
    steps = torch.zeros(rows, dtype=torch.long, device=run.family.device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), run.accelerator.autocast(), counter:
        recompute_log_prob(
            run.family,
            run.unet,
            batch,
            steps,
            run.uncond,
            run.cfg.sample_guidance_scale,
            run.cfg.sample_eta,
        )
    return int(counter.get_total_flops())


def warm_up(run, sizes: Sizes) -> Any:
    """One short epoch at the timed batch shapes: kernels chosen, allocator warm."""
    from trainer.train import sample_epoch, update

    cfg = run.cfg
    run.cfg = cfg.model_copy(
        update={"sample_num_steps": sizes.warmup_steps, "sample_num_batches_per_epoch": 1}
    )
    try:
        trajs, _, _ = sample_epoch(run, 0)
        update(run, 0, trajs, advantages_for(len(trajs), 0))
    finally:
        run.cfg = cfg
    _sync()
    return trajs


def timed_epoch(run, epoch: int) -> dict[str, Any]:
    """sample_epoch and update as train() runs them, each phase timed and its peak taken."""
    from trainer.train import sample_epoch, update

    _reset_peak()
    t0 = time.perf_counter()
    trajs, _, _ = sample_epoch(run, epoch)
    _sync()
    t1 = time.perf_counter()
    peak_sampling = _peak_gib()
    _reset_peak()
    stats = update(run, epoch, trajs, advantages_for(len(trajs), epoch))
    _sync()
    t2 = time.perf_counter()
    return {
        "samples": len(trajs),
        "sampling_s": t1 - t0,
        "training_s": t2 - t1,
        "peak_sampling_gib": peak_sampling,
        "peak_training_gib": _peak_gib(),
        "stats": stats,
    }


def epoch_report(run, sizes: Sizes, report: Report, peak_flops: float | None, why: str) -> None:
    """Warm-up, one timed epoch, FLOP utilisation: the figures of the *_lora_* parts."""
    from trainer.ppo import DRIFT_TOLERANCE, trained_steps_per_sample

    cfg = run.cfg
    warm = warm_up(run, sizes)
    flops = forward_flops(run, warm, cfg.train_batch_size)
    del warm
    e = timed_epoch(run, 1)
    n, stats = e["samples"], e["stats"]
    epoch_s = e["sampling_s"] + e["training_s"]
    report.figures.update(
        sampling_s=e["sampling_s"],
        training_s=e["training_s"],
        epoch_s=epoch_s,
        images_per_s=n / epoch_s,
        sampling_images_per_s=n / e["sampling_s"],
    )
    peaks = [p for p in (e["peak_sampling_gib"], e["peak_training_gib"]) if p is not None]
    report.put("peak_memory_gib", max(peaks) if peaks else None, NO_CUDA)
    report.put("peak_sampling_gib", e["peak_sampling_gib"], NO_CUDA)
    report.put("peak_training_gib", e["peak_training_gib"], NO_CUDA)
    # With lr > 0 the weights move after the first optimizer step, so these are not the
    # unchanged-weights figures of the sd15_ratio_* parts.
    report.figures["log_ratio_abs_max"] = stats.get("log_ratio_abs_max")
    drift = stats.get("old_log_prob_drift")
    report.put("old_log_prob_drift", drift, "not probed (train_recompute_old_log_probs never)")
    recomputed = drift is not None and drift > DRIFT_TOLERANCE
    report.figures["recomputed_old_log_probs"] = recomputed

    # Model FLOPs: forward FLOPs of a training pass x 3 (forward + backward), per trained
    # step of every sample; sampling: one guided forward per step per sample.
    kept = trained_steps_per_sample(cfg) * cfg.train_num_inner_epochs
    per_sample_step = flops / cfg.train_batch_size
    train_flops = 3 * per_sample_step * n * kept
    sample_flops = per_sample_step * n * cfg.sample_num_steps
    report.figures.update(
        unet_forward_flops_per_sample_step=per_sample_step,
        training_model_flops=train_flops,
        training_tflops_per_s=train_flops / e["training_s"] / 1e12,
        sampling_tflops_per_s=sample_flops / e["sampling_s"] / 1e12,
    )
    if peak_flops:
        report.figures["training_mfu"] = train_flops / e["training_s"] / peak_flops
        report.figures["sampling_mfu"] = sample_flops / e["sampling_s"] / peak_flops
        # "auto" recomputing the old log-probs adds a forward per trained step.
        extra = per_sample_step * n * trained_steps_per_sample(cfg) if recomputed else 0.0
        report.figures["training_mfu_counting_recompute"] = (
            (train_flops + extra) / e["training_s"] / peak_flops
        )
    else:
        for name in ("training_mfu", "sampling_mfu", "training_mfu_counting_recompute"):
            report.unavailable[name] = why
    report.notes.append(
        "timing: one warm-up epoch at the timed batch shapes "
        f"({sizes.warmup_steps} steps, 1 sampling batch), then one timed epoch; "
        "no reward server (scoring is the reward server's part)"
    )


# -- parts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    name: str
    what: str
    run: Callable[[argparse.Namespace, Sizes, Report], None] | None = None
    skip_reason: str = ""


def _sd_update(sizes: Sizes) -> dict[str, Any]:
    update: dict[str, Any] = {}
    if sizes.sd_steps is not None:
        update["sample_num_steps"] = sizes.sd_steps
    if sizes.sd_num_batches is not None:
        update["sample_num_batches_per_epoch"] = sizes.sd_num_batches
    return update


def _peak_flops(args: argparse.Namespace) -> tuple[float | None, str]:
    info = device_info(args)
    return info["peak_bf16_flops"], info["peak_bf16_flops_source"]


def part_sd15_lora(precision: str) -> Callable[[argparse.Namespace, Sizes, Report], None]:
    def run_part(args: argparse.Namespace, sizes: Sizes, report: Report) -> None:
        cfg = train_config(
            LORA_PRESET,
            pretrained_model="random:sd15",
            mixed_precision=precision,
            log_images_every=0,
            **_sd_update(sizes),
        )
        run = setup(cfg, "sd15", sizes, report)
        peak, source = _peak_flops(args)
        report.settings["peak_flops_assumed"] = source
        epoch_report(run, sizes, report, peak, source)

    return run_part


def part_sd15_full_ft(args: argparse.Namespace, sizes: Sizes, report: Report) -> None:
    """Full fine-tuning's peak memory: weights, gradients, optimizer state and activations."""
    from trainer.ppo import trained_steps_per_sample
    from trainer.train import sample_epoch, update

    try:
        import bitsandbytes  # noqa: F401

        eight_bit, optimizer = True, "bitsandbytes AdamW8bit"
    except Exception as exc:  # ImportError, or a CUDA-less build failing at import
        eight_bit, optimizer = False, f"torch AdamW (bitsandbytes not importable: {exc})"
    cfg = train_config(
        FULL_PRESET,
        pretrained_model="random:sd15",
        mixed_precision=args.full_precision,
        gradient_checkpointing=True,
        train_use_8bit_adam=eight_bit,
        log_images_every=0,
        sample_num_batches_per_epoch=1,  # 6 samples: 2 train batches, 2 optimizer steps
        sample_num_steps=sizes.full_ft_steps,
    )
    report.settings["optimizer"] = optimizer
    report.settings["gradient_checkpointing"] = True
    report.notes.append(
        f"{sizes.full_ft_steps} denoising steps per sample: memory per pass does not depend on "
        "the number of steps; the second optimizer step runs with its state allocated"
    )
    run = setup(cfg, "sd15", sizes, report)
    _reset_peak()
    t0 = time.perf_counter()
    trajs, _, _ = sample_epoch(run, 0)
    _sync()
    report.put("peak_sampling_gib", _peak_gib(), NO_CUDA)
    t1 = time.perf_counter()
    _reset_peak()
    update(run, 0, trajs, advantages_for(len(trajs), 0))
    _sync()
    t2 = time.perf_counter()
    peak = _peak_gib()
    report.put("peak_training_gib", peak, NO_CUDA)
    report.put("resident_after_update_gib", _allocated_gib(), NO_CUDA)
    report.put("fits_24gb", None if peak is None else peak <= 24.0, NO_CUDA)
    sample_steps = len(trajs) * trained_steps_per_sample(cfg)
    report.figures.update(
        sampling_s=t1 - t0,
        training_s=t2 - t1,
        training_s_per_sample_step=(t2 - t1) / sample_steps,
    )


def part_sd15_ratio(precision: str) -> Callable[[argparse.Namespace, Sizes, Report], None]:
    def run_part(args: argparse.Namespace, sizes: Sizes, report: Report) -> None:
        """The ratio PPO starts from, with unchanged weights: ideally exactly 1."""
        import torch

        from trainer.ppo import plan_inner_epoch, rescore_old_log_probs
        from trainer.train import sample_epoch, update

        cfg = train_config(
            LORA_PRESET,
            pretrained_model="random:sd15",
            mixed_precision=precision,
            log_images_every=0,
            **{**_sd_update(sizes), "sample_num_batches_per_epoch": 1},
        )
        run = setup(cfg, "sd15", sizes, report)
        for group in run.optimizer.param_groups:
            group["lr"] = 0.0  # unchanged weights: every ratio should be exactly 1
        report.settings["learning_rate"] = 0.0
        report.settings["train_clip_range"] = cfg.train_clip_range
        trajs, _, _ = sample_epoch(run, 0)
        plan = plan_inner_epoch(
            len(trajs),
            cfg.sample_num_steps,
            cfg,
            torch.Generator().manual_seed(0),
            run.family.device,
        )
        run.unet.train()
        rescored, _ = rescore_old_log_probs(
            run.accelerator, run.family, run.unet, trajs, plan, cfg, run.uncond
        )
        run.unet.eval()
        per_step = (rescored - trajs.log_probs.to(rescored.device)).abs().amax(dim=0)
        report.figures["max_abs_log_ratio_per_step"] = per_step.tolist()
        report.figures["max_abs_log_ratio_sampled_vs_train_shape"] = float(per_step.max())
        target = RATIO_TARGET_FRACTION * cfg.train_clip_range
        report.settings["target_abs_log_ratio"] = target
        report.figures["steps_over_target"] = int((per_step > target).sum())
        adv = advantages_for(len(trajs), 0)
        for mode in ("never", "auto"):
            run.cfg = cfg.model_copy(update={"train_recompute_old_log_probs": mode})
            t0 = time.perf_counter()
            stats = update(run, 0, trajs, adv)
            _sync()
            report.figures[f"update_s_{mode}"] = time.perf_counter() - t0
            worst = stats["log_ratio_abs_max"]
            report.figures[f"log_ratio_abs_max_{mode}"] = worst
            report.figures[f"within_target_{mode}"] = worst <= target
            drift = stats.get("old_log_prob_drift")
            reason = "never probes" if mode == "never" else "not returned"
            report.put(f"old_log_prob_drift_{mode}", drift, reason)
        run.cfg = cfg

    return run_part


def part_sdxl_lora(args: argparse.Namespace, sizes: Sizes, report: Report) -> None:
    cfg = train_config(
        LORA_PRESET,
        pretrained_model="random:sdxl",
        mixed_precision="bf16",
        log_images_every=0,
        sample_num_steps=sizes.sdxl_steps,
        sample_batch_size=sizes.sdxl_sample_batch,
        sample_num_batches_per_epoch=sizes.sdxl_num_batches,
        train_batch_size=sizes.sdxl_train_batch,
    )
    run = setup(cfg, "sdxl", sizes, report)
    peak, source = _peak_flops(args)
    report.settings["peak_flops_assumed"] = source
    epoch_report(run, sizes, report, peak, source)


def part_aesthetic(args: argparse.Namespace, sizes: Sizes, report: Report) -> None:
    """Images/s of the aesthetic scorer as the reward server runs it, and its pieces."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from reward_server.scorers.aesthetic import AestheticHead, AestheticScorer, ClipPreprocess

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**sizes.clip_vision))
        head = AestheticHead()
    if sizes.check_params:
        check_params(
            report,
            {"clip_vision": param_count(vision)},
            {"clip_vision": PUBLISHED_PARAMS["clip_vision"]},
        )
    batch, px = sizes.aesthetic_batch, sizes.aesthetic_image_px
    # As reward_server/scorers/aesthetic.py's build() makes it (fp32, preprocessing in PIL).
    scorer = AestheticScorer(
        vision, head, ClipPreprocess(vision.config.image_size), device=device, max_batch_size=batch
    )
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (px, px, 3), dtype=np.uint8)) for _ in range(batch)
    ]
    names = ["x"] * batch
    report.settings.update(batch=batch, image_px=px, dtype="float32 (as the scorer loads it)")

    def rate(fn: Callable[[], Any]) -> float:
        for _ in range(2):
            fn()
        _sync()
        t0 = time.perf_counter()
        for _ in range(sizes.aesthetic_repeats):
            fn()
        _sync()
        return batch * sizes.aesthetic_repeats / (time.perf_counter() - t0)

    pixels = scorer.preprocess(images).to(scorer.device)

    def model_only() -> None:  # ClipEmbedder.embed_batch and the head, minus preprocessing
        with torch.inference_mode():
            embeds = scorer.vision(pixel_values=pixels).image_embeds.float()
            scorer.head(embeds / torch.linalg.vector_norm(embeds, dim=-1, keepdim=True))

    _reset_peak()
    report.figures["images_per_s"] = rate(lambda: scorer.score(images, names))
    report.put("peak_memory_gib", _peak_gib(), NO_CUDA)
    report.figures["preprocess_images_per_s"] = rate(lambda: scorer.preprocess(images))
    report.figures["model_images_per_s"] = rate(model_only)
    scorer.vision.to(torch.bfloat16)  # the head stays fp32: it is a few kFLOPs per image
    pixels = pixels.to(torch.bfloat16)
    report.figures["model_images_per_s_bf16"] = rate(model_only)
    report.notes.append(
        "images_per_s: AestheticScorer.score end to end (PIL preprocessing on one CPU thread "
        "+ CLIP + head); model_*: the GPU part alone on preprocessed pixels; _bf16: the same "
        "model cast to bf16, which the scorer does not do today"
    )


def part_flow_lora(kind: str, preset: str) -> Callable[[argparse.Namespace, Sizes, Report], None]:
    """A flow preset's epoch with one sampling batch (one group), as on one card."""

    def run_part(args: argparse.Namespace, sizes: Sizes, report: Report) -> None:
        from trainer.config import load_config

        path = REPO / "configs" / preset
        base = load_config(path)
        update: dict[str, Any] = {
            "pretrained_model": f"random:{kind}",
            "log_images_every": 0,
            "sample_num_batches_per_epoch": 1,
            "sample_group_size": base.sample_batch_size,
            "train_gradient_accumulation_steps": base.sample_batch_size // base.train_batch_size,
        }
        if sizes.flow_steps is not None:
            update["sample_num_steps"] = sizes.flow_steps
        if sizes.flow_resolution is not None:
            update["resolution"] = sizes.flow_resolution
        run = setup(train_config(path, **update), kind, sizes, report)
        run_cfg = run.cfg
        report.settings.update(
            preset=preset,
            sample_eta=run_cfg.sample_eta,
            train_kl_coef=run_cfg.train_kl_coef,
            gradient_checkpointing=run_cfg.gradient_checkpointing,
            lora_rank=run_cfg.lora_rank,
            architecture="benchmarks/gpu_flow.py (parameter counts recorded, not checked)",
        )
        peak, source = _peak_flops(args)
        report.settings["peak_flops_assumed"] = source
        epoch_report(run, sizes, report, peak, source)

    return run_part


PARTS: list[Part] = [
    Part("sd15_lora_bf16", "SD 1.5 512 px LoRA bf16 epoch", part_sd15_lora("bf16")),
    Part("sd15_lora_fp16", "SD 1.5 512 px LoRA fp16 epoch", part_sd15_lora("fp16")),
    Part("sd15_ratio_bf16", "PPO ratio, unchanged weights, bf16", part_sd15_ratio("bf16")),
    Part("sd15_ratio_fp16", "PPO ratio, unchanged weights, fp16", part_sd15_ratio("fp16")),
    Part("sd15_full_ft", "SD 1.5 full fine-tuning memory", part_sd15_full_ft),
    Part("sd15_nft_bf16", "SD 1.5 512 px LoRA bf16 NFT epoch", part_sd15_nft("bf16")),
    Part("aesthetic", "aesthetic scorer images/s", part_aesthetic),
    Part("sdxl_lora_bf16", "SDXL 1024 px LoRA bf16 epoch", part_sdxl_lora),
    Part(
        "sd35_flow_lora_bf16",
        "SD3.5-Medium 512 px LoRA bf16 epoch",
        part_flow_lora("sd35", "sd35-medium-grpo-lora.toml"),
    ),
    Part(
        "flux1_flow_lora_bf16",
        "FLUX.1-dev 512 px LoRA bf16 epoch",
        part_flow_lora("flux", "flux1-dev-grpo-lora.toml"),
    ),
]
PART_BY_NAME = {p.name: p for p in PARTS}


# -- running parts in child processes ------------------------------------------------------


def child_main(args: argparse.Namespace, name: str, out: Path) -> int:
    """Run one part and write its result; a failure is a result too (with the traceback)."""
    sizes = SMOKE if args.smoke else FULL
    report = Report()
    part = PART_BY_NAME[name]
    assert part.run is not None
    status, code = {"status": "ok"}, 0
    try:
        if not args.progress:
            quiet_progress_bars()
        part.run(args, sizes, report)
    except BaseException as exc:  # noqa: BLE001  (an OOM or a typo: report, do not hide)
        status = {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}"[:2000],
            "traceback": traceback.format_exc()[-6000:],
        }
        with contextlib.suppress(Exception):
            report.put("peak_memory_gib_at_failure", _peak_gib(), NO_CUDA)
        code = 1
    result = {**status, **report.as_dict()}
    with contextlib.suppress(Exception):
        result["device"] = device_info(args)
    out.write_text(json.dumps(result, default=_json_default))
    return code


def quiet_progress_bars() -> None:
    """The trainer's tqdm bars off: they would fill the few kB of output a device run returns."""
    import trainer.ppo
    import trainer.train

    for module in (trainer.ppo, trainer.train):
        bar = module.tqdm
        module.tqdm = lambda *a, _bar=bar, **k: _bar(*a, **{**k, "disable": True})  # type: ignore[attr-defined]


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def preimport() -> None:
    """Import the heavy modules once in the parent, so forked parts start at once.

    Importing them initialises no CUDA (PYTORCH_NVML_BASED_CUDA_CHECK is set), which
    is what keeps fork safe; checked before every fork.
    """
    import accelerate  # noqa: F401
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: F401

    import reward_server.scorers.aesthetic  # noqa: F401
    import trainer.ppo  # noqa: F401
    import trainer.train  # noqa: F401


class Child:
    """A part's process: forked from this one (`fork`) or a fresh interpreter (`spawn`)."""

    def __init__(self, args: argparse.Namespace, name: str, out: Path) -> None:
        self.proc: subprocess.Popen | None = None
        self.code: int | None = None
        if args.start == "spawn":
            cmd = [sys.executable, str(Path(__file__).resolve()), *args.argv]
            cmd += ["--child", name, "--child-out", str(out)]
            self.proc = subprocess.Popen(cmd, start_new_session=True)
            self.pid = self.proc.pid
            return
        import torch

        if torch.cuda.is_initialized():
            raise RuntimeError("CUDA was initialised in the parent: forking is unsafe, use spawn")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: own process group, default signals, never returns
            code = 1
            try:
                os.setpgid(0, 0)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = child_main(args, name, out)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also here, so a kill right away reaches the group
        self.pid = pid

    def poll(self) -> int | None:
        """The exit code once the process has ended (reaped once, remembered)."""
        if self.code is None:
            if self.proc is not None:
                self.code = self.proc.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if the part is still running after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.code

    def kill(self) -> None:
        """SIGKILL to the part's process group (a hung CUDA call ignores anything softer)."""
        if self.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.wait(30)


def run_part(args: argparse.Namespace, part: Part, cap: float, tmp: Path) -> dict[str, Any]:
    """One part in its own process under its cap; whatever happens, a result comes back."""
    out = tmp / f"{part.name}.json"
    t0 = time.perf_counter()
    child = Child(args, part.name, out)
    try:
        code = child.wait(cap)
    finally:
        child.kill()  # on a timeout, and on Ctrl-C/SIGTERM of the suite
    wall = time.perf_counter() - t0
    if code is None:
        result: dict[str, Any] = {"status": "timeout", "reason": f"killed after {cap:.0f} s"}
    elif out.is_file():
        result = json.loads(out.read_text())
    else:
        why = f"signal {-code}" if code < 0 else f"exit code {code}"
        result = {"status": "failed", "error": f"no result ({why}; out of host memory?)"}
    result.update(wall_s=wall, timeout_s=cap)
    return result


def part_timeouts(values: list[str]) -> tuple[float, dict[str, float]]:
    """`--part-timeout 180 --part-timeout sdxl_lora_bf16=240`: a default and overrides."""
    default, per_part = 180.0, {}
    for value in values:
        if "=" in value:
            name, seconds = value.split("=", 1)
            if name not in PART_BY_NAME:
                raise SystemExit(f"--part-timeout: no part {name!r}")
            per_part[name] = float(seconds)
        else:
            default = float(value)
    return default, per_part


# -- output --------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def headline(name: str, result: dict[str, Any]) -> str:
    """The figures of a part that answer the issue's targets, in one line."""
    if result.get("status") != "ok":
        return result.get("reason") or result.get("error", "")[:120]
    f = result.get("figures", {})
    if "_lora_" in name:
        return (
            f"epoch {_fmt(f.get('epoch_s'))} s (sampling {_fmt(f.get('sampling_s'))}, "
            f"training {_fmt(f.get('training_s'))}), {_fmt(f.get('images_per_s'))} img/s, "
            f"peak {_fmt(f.get('peak_memory_gib'))} GiB, "
            f"training MFU {_fmt(f.get('training_mfu'), '.1%')}"
        )
    if name == "sd15_full_ft":
        return (
            f"peak {_fmt(f.get('peak_training_gib'))} GiB "
            f"(fits 24 GB: {_fmt(f.get('fits_24gb'))}), "
            f"{result.get('settings', {}).get('optimizer', '')[:40]}"
        )
    if "_ratio_" in name:
        return (
            f"max|log ratio| sampled vs train shape "
            f"{_fmt(f.get('max_abs_log_ratio_sampled_vs_train_shape'), '.1e')}; "
            f"update never {_fmt(f.get('log_ratio_abs_max_never'), '.1e')}, "
            f"auto {_fmt(f.get('log_ratio_abs_max_auto'), '.1e')} "
            f"(target <= {_fmt(result.get('settings', {}).get('target_abs_log_ratio'), '.0e')})"
        )
    if name == "aesthetic":
        return (
            f"{_fmt(f.get('images_per_s'), '.0f')} img/s end to end, model "
            f"{_fmt(f.get('model_images_per_s'), '.0f')} (bf16 "
            f"{_fmt(f.get('model_images_per_s_bf16'), '.0f')}), preprocess "
            f"{_fmt(f.get('preprocess_images_per_s'), '.0f')}"
        )
    return ""


def print_table(doc: dict[str, Any]) -> None:
    device = doc.get("device") or {}
    print(
        f"\nGPU suite on {device.get('name', '?')} (torch {device.get('torch', '?')}, "
        f"CUDA {device.get('cuda')}); peak assumed: {device.get('peak_bf16_flops_source', '?')}"
    )
    print(f"{'part':<16} {'status':<8} {'wall s':>7}  figures")
    for name, result in doc["parts"].items():
        wall = result.get("wall_s")
        print(
            f"{name:<16} {result.get('status', '?'):<8} {_fmt(wall, '7.1f'):>7}  "
            f"{headline(name, result)}"
        )


def write(doc: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--smoke", action="store_true", help="tiny models on any device, seconds")
    parser.add_argument(
        "--parts", default="", help="comma-separated subset, run in the order given"
    )
    parser.add_argument(
        "--part-timeout",
        action="append",
        default=[],
        metavar="[PART=]SECONDS",
        help="time cap of each part (default 180 s), or of one part",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=560.0,
        help="stop starting parts once this many seconds are spent (a device command may run 600)",
    )
    parser.add_argument("--peak-flops", type=float, default=None, help="override the device peak")
    parser.add_argument(
        "--full-precision",
        default="no",
        choices=("no", "fp16", "bf16"),
        help="mixed precision of sd15_full_ft (configs/sd15-aesthetic-full.toml: no)",
    )
    parser.add_argument(
        "--start",
        choices=("spawn", "fork"),
        default=None,
        help="how parts start: a fresh interpreter each (default on GPU hosts) or forked "
        "from this process after importing once (default with --smoke: seconds, not minutes)",
    )
    parser.add_argument("--progress", action="store_true", help="show the trainer's tqdm bars")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = [a for a in argv]
    if args.child:
        return child_main(args, args.child, args.child_out)
    if args.start is None:
        args.start = "fork" if args.smoke else "spawn"

    names = [n.strip() for n in args.parts.split(",") if n.strip()] or [p.name for p in PARTS]
    unknown = [n for n in names if n not in PART_BY_NAME]
    if unknown:
        parser.error(f"unknown parts {unknown}; known: {', '.join(PART_BY_NAME)}")
    default_cap, caps = part_timeouts(args.part_timeout)
    sizes = SMOKE if args.smoke else FULL
    doc: dict[str, Any] = {
        "suite": "gpu_suite",
        "schema": 1,
        "command": " ".join(["python", "benchmarks/gpu_suite.py", *argv]),
        "smoke": args.smoke,
        "machine": machine_info(),
        "versions": package_versions(),
        "device": None,
        "start": args.start,
        "budget_s": args.budget,
        "sizes": asdict(sizes),
        "parts": {},
    }
    doc["date_utc"] = doc["machine"]["date_utc"]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.start == "fork":
        preimport()
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_suite-") as tmp:
        for name in names:
            part = PART_BY_NAME[name]
            left = args.budget - (time.monotonic() - t_start)
            if part.run is None:
                result: dict[str, Any] = {"status": "skipped", "reason": part.skip_reason}
            elif left < 20:
                result = {"status": "skipped", "reason": f"suite budget spent ({args.budget} s)"}
            else:
                cap = min(caps.get(name, default_cap), left)
                print(f"[gpu_suite] {name}: {part.what} (cap {cap:.0f} s)", flush=True)
                result = run_part(args, part, cap, Path(tmp))
                if doc["device"] is None and result.get("device"):
                    doc["device"] = result["device"]
            result["what"] = part.what
            doc["parts"][name] = result
            print(f"[gpu_suite] {name}: {result['status']} {headline(name, result)}", flush=True)
            write(doc, args.out)
    doc["wall_s"] = time.monotonic() - t_start
    write(doc, args.out)
    print_table(doc)
    print(f"wrote {args.out}")
    failed = [n for n, r in doc["parts"].items() if r["status"] in ("failed", "timeout")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
