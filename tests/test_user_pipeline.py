"""The demo's user-side judge samples with the plain diffusers pipeline and the run's weights."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from ddpo.demo_fidelity import judge_as_user
from ddpo.user_pipeline import UserSampling, load_user_pipeline, user_images
from trainer.config import TrainConfig
from trainer.lora import add_lora, save_lora

MODEL = Path(__file__).resolve().parents[1] / "models" / "tiny-sd"
FAST = UserSampling(num_inference_steps=4, guidance_scale=5.0)


def _trained_lora(out: Path) -> Path:
    """A run directory holding a LoRA the trainer saved, with non-zero B (trained-looking)."""
    pipe = DiffusionPipeline.from_pretrained(str(MODEL))
    cfg = TrainConfig(
        pretrained_model=str(MODEL),
        prompts=["a"],
        rewards=[{"url": "http://127.0.0.1:1", "scorer": "jpeg_compressibility"}],
        lora_rank=4,
        lora_target_modules=["to_k", "to_q", "to_v", "to_out.0"],
    )
    add_lora(pipe.unet, cfg)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    save_lora(type(pipe), pipe.unet, out / "lora")
    return out


def test_each_image_follows_its_own_seed_whatever_the_batch() -> None:
    prompts = ["a red circle on a white background", "a blue square on a gray background"] * 2
    seeds = [1, 2, 3, 4]
    together = user_images(MODEL, None, prompts, seeds, FAST, batch_size=4)
    apart = user_images(MODEL, None, prompts[2:], seeds[2:], FAST, batch_size=1)
    assert together.shape == (4, 64, 64, 3) and together.dtype == np.uint8
    assert FAST.describe().endswith("DDIM eta 0, 4 steps, guidance 5")
    # Batching changes float rounding only: a few pixels may move by one count, no more.
    drift = np.abs(together[2:].astype(int) - apart.astype(int))
    assert drift.max() <= 2 and drift.mean() < 0.01
    assert np.abs(together[0].astype(int) - together[2].astype(int)).mean() > 1  # seeds differ


def test_a_trained_lora_changes_what_the_user_samples(tmp_path) -> None:
    run = _trained_lora(tmp_path / "run")
    prompts, seeds = ["a green triangle on a black background"] * 2, [7, 8]
    base = user_images(MODEL, None, prompts, seeds, FAST)
    trained = user_images(MODEL, run, prompts, seeds, FAST)
    assert np.abs(base.astype(int) - trained.astype(int)).mean() > 1


def test_full_fine_tuning_loads_the_unet_and_a_run_without_weights_is_an_error(tmp_path) -> None:
    run = tmp_path / "run"
    pipe = DiffusionPipeline.from_pretrained(str(MODEL))
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(0.5)
    pipe.unet.save_pretrained(run / "unet")
    loaded = load_user_pipeline(MODEL, run)
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    assert torch.allclose(loaded.unet.conv_out.bias, pipe.unet.conv_out.bias)
    with pytest.raises(FileNotFoundError, match="no lora/ or unet/"):
        load_user_pipeline(MODEL, tmp_path / "empty")


def test_a_flow_model_samples_with_its_own_pipeline_and_loads_its_transformer(tmp_path) -> None:
    """FLUX-shaped models keep their Euler flow scheduler; full fine-tuning saves transformer/."""
    from trainer.random_flow_pipeline import build_random_flux

    model = build_random_flux(tmp_path / "flux", guidance_embeds=False)
    pipe = load_user_pipeline(model, None)
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    prompts, seeds = ["a red circle on a white background"] * 2, [1, 2]
    base = user_images(model, None, prompts, seeds, FAST, resolution=32)
    assert base.shape == (2, 32, 32, 3) and base.dtype == np.uint8
    assert np.abs(base[0].astype(int) - base[1].astype(int)).mean() > 1  # seeds differ
    run = tmp_path / "run"
    with torch.no_grad():
        pipe.transformer.proj_out.bias.add_(0.5)
    pipe.transformer.save_pretrained(run / "transformer")
    trained = user_images(model, run, prompts, seeds, FAST, resolution=32)
    assert np.abs(base.astype(int) - trained.astype(int)).mean() > 1
    assert FAST.describe(flow=True) == "diffusers FluxPipeline, Euler flow ODE, 4 steps"


def test_the_demo_judges_a_run_at_its_own_guidance_and_at_diffusers_default(tmp_path) -> None:
    """A gain is tied to the guidance a run sampled at; a user may pick 7.5 (tiny-model.md)."""
    run = _trained_lora(tmp_path / "run")
    prompts, seeds = (
        ["a blue circle on a white background", "a red square on a gray background"],
        [3, 4],
    )
    judged = judge_as_user(MODEL, run, prompts, seeds, run_guidance=3.0, flow=False)
    assert [j.guidance_scale for j in judged] == [3.0, 7.5]
    assert judged[0].sampling.endswith("guidance 3")
    assert judged[1].sampling.endswith("guidance 7.5")
    for j in judged:  # one held-out and one seen prompt, each group judged on its own image
        assert j.before.images_held_out == j.before.images_seen == 1
    assert len(judge_as_user(MODEL, run, prompts, seeds, 7.5, flow=False)) == 1
