"""LoRA adapters on the denoiser (UNet or transformer) through peft, in diffusers' LoRA format."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from trainer.config import TrainConfig


def add_lora(unet: torch.nn.Module, cfg: TrainConfig) -> None:
    """Attach a trainable LoRA adapter; base weights stay frozen, adapter weights fp32."""
    config = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        init_lora_weights="gaussian",
        target_modules=list(cfg.lora_target_modules),
    )
    unet.add_adapter(config)
    for param in unet.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    if not any(p.requires_grad for p in unet.parameters()):
        raise ValueError(
            f"lora_target_modules {cfg.lora_target_modules} matched no UNet module; "
            "typical: to_q, to_k, to_v, to_out.0"
        )


def save_lora(pipeline_cls, unet: torch.nn.Module, directory: Path) -> Path:
    """Write pytorch_lora_weights.safetensors, loadable by `pipeline.load_lora_weights`.

    UNet pipelines take the diffusers-converted keys; SD3 and FLUX pipelines
    take a transformer's peft keys as they are (as diffusers' own scripts save them).
    """
    from diffusers.utils import convert_state_dict_to_diffusers

    state = get_peft_model_state_dict(unet)
    # Without the adapter's config a loader assumes alpha = rank and scales the update wrongly.
    metadata = unet.peft_config["default"].to_dict()
    metadata["target_modules"] = sorted(metadata["target_modules"])
    params = inspect.signature(pipeline_cls.save_lora_weights).parameters
    if "unet_lora_layers" in params:
        layers = {"unet_lora_layers": convert_state_dict_to_diffusers(state)}
        layers["unet_lora_adapter_metadata"] = metadata
    else:
        layers = {"transformer_lora_layers": state}
        layers["transformer_lora_adapter_metadata"] = metadata
    directory.mkdir(parents=True, exist_ok=True)
    pipeline_cls.save_lora_weights(save_directory=str(directory), safe_serialization=True, **layers)
    return directory
