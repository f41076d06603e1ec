"""A saved LoRA loads back at the scale it was trained with, also when alpha != rank."""

import pytest
import torch
from diffusers import DiffusionPipeline

from trainer.config import TrainConfig
from trainer.lora import add_lora, save_lora


def _denoise(denoiser: torch.nn.Module, kind: str) -> torch.Tensor:
    """One deterministic forward pass of a UNet or an SD3 transformer."""
    g = torch.Generator().manual_seed(0)
    cfg = denoiser.config
    if kind == "sd":
        x = torch.randn(1, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
        text = torch.randn(1, 4, cfg.cross_attention_dim, generator=g)
        return denoiser(x, torch.tensor([500]), encoder_hidden_states=text).sample
    x = torch.randn(1, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    text = torch.randn(1, 4, cfg.joint_attention_dim, generator=g)
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=g)
    return denoiser(
        x, encoder_hidden_states=text, pooled_projections=pooled, timestep=torch.tensor([500.0])
    ).sample


@pytest.mark.parametrize("kind", ["sd", "sd3"])
def test_lora_round_trip_keeps_alpha(kind, tiny_sd, tmp_path):
    if kind == "sd":
        path = tiny_sd
        targets = ["to_k", "to_q", "to_v", "to_out.0"]
    else:
        from trainer.random_flow_pipeline import build_random_sd3

        path = build_random_sd3(tmp_path / "sd3")
        targets = ["to_k", "to_q", "to_v"]
    pipe = DiffusionPipeline.from_pretrained(str(path))
    denoiser = pipe.unet if kind == "sd" else pipe.transformer
    cfg = TrainConfig(
        pretrained_model=str(path),
        prompts=["a"],
        rewards=[{"url": "http://127.0.0.1:1", "scorer": "jpeg_compressibility"}],
        lora_rank=4,
        lora_alpha=8.0,  # scale 2: a loader that assumed alpha = rank would halve the update
        lora_target_modules=targets,
    )
    add_lora(denoiser, cfg)
    with torch.no_grad():  # a trained-looking adapter: B is zero at initialisation
        for name, param in denoiser.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    trained = _denoise(denoiser, kind)
    base = DiffusionPipeline.from_pretrained(str(path))
    before = _denoise(base.unet if kind == "sd" else base.transformer, kind)
    save_lora(type(pipe), denoiser, tmp_path / "lora")

    fresh = DiffusionPipeline.from_pretrained(str(path))
    fresh.load_lora_weights(str(tmp_path / "lora"))
    loaded = _denoise(fresh.unet if kind == "sd" else fresh.transformer, kind)
    assert (trained - before).abs().max() > 1e-3  # the adapter does change the output
    torch.testing.assert_close(loaded, trained, atol=1e-5, rtol=1e-4)
