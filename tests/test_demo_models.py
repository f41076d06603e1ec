"""`ddpo demo --model` takes a built-in model's name or a directory, UNet or flow model alike."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ddpo.demo import (
    BUILTIN_MODELS,
    demo_config,
    eval_images,
    is_flow_model,
    resolve_model,
    trained_weights,
)
from trainer.random_flow_pipeline import build_random_flux


def test_names_resolve_to_the_built_in_models_and_paths_pass_through(tmp_path) -> None:
    assert resolve_model(None) == BUILTIN_MODELS["sd"]
    assert resolve_model("flow") == BUILTIN_MODELS["flow"]
    assert resolve_model(str(tmp_path)) == tmp_path
    assert not is_flow_model(BUILTIN_MODELS["sd"])
    assert not is_flow_model(tmp_path)  # no pipeline there: the demo's own check says so


def test_a_flow_model_trains_without_guidance_and_a_unet_model_with_it(tmp_path) -> None:
    flux = build_random_flux(tmp_path / "flux", guidance_embeds=False)
    assert is_flow_model(flux)
    flow_cfg = demo_config("prompt_fidelity", 2, tmp_path / "a", "http://127.0.0.1:1", flux)
    sd_cfg = demo_config(
        "prompt_fidelity", 2, tmp_path / "b", "http://127.0.0.1:1", BUILTIN_MODELS["sd"]
    )
    assert flow_cfg.sample_guidance_scale == 1.0
    assert sd_cfg.sample_guidance_scale > 1.0
    with pytest.raises(ValueError, match="UNet models only"):
        demo_config("human", 2, tmp_path / "c", "http://127.0.0.1:1", flux)


def test_full_fine_tuning_of_a_flow_model_is_evaluated_with_its_transformer(tmp_path) -> None:
    from diffusers import DiffusionPipeline

    flux = build_random_flux(tmp_path / "flux", guidance_embeds=False)
    cfg = demo_config("prompt_fidelity", 2, tmp_path / "run", "http://127.0.0.1:1", flux)
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="no lora/"):
        trained_weights(run)
    pipe = DiffusionPipeline.from_pretrained(str(flux))
    with torch.no_grad():
        pipe.transformer.proj_out.bias.add_(0.5)
    pipe.transformer.save_pretrained(run / "transformer")
    assert trained_weights(run) == run / "transformer"
    prompts, seeds = ["a red circle on a white background"], [3]
    base = eval_images(Path(flux), None, prompts, seeds, None, cfg)
    trained = eval_images(Path(flux), run, prompts, seeds, None, cfg)
    assert np.abs(base.astype(int) - trained.astype(int)).mean() > 1


def test_the_human_demo_can_keep_the_prompt_beside_the_rater(tmp_path) -> None:
    """--prompt-weight adds prompt_fidelity as a second reward, each normalised apart."""
    sd = BUILTIN_MODELS["sd"]
    url = "http://127.0.0.1:1"
    alone = demo_config("human", 2, tmp_path / "a", url, sd, prompt_weight=0.0)
    assert [e.scorer for e in alone.rewards] == ["human"]
    both = demo_config("human", 2, tmp_path / "b", url, sd, prompt_weight=0.5)
    pairs = [(e.scorer, e.weight) for e in both.rewards]
    assert pairs == [("human", 1.0), ("prompt_fidelity", 0.5)]
    assert both.reward_aggregation == "advantages"
    assert both.rewards[0].mode == "job" and both.rewards[1].mode != "job"
    default = demo_config("human", 2, tmp_path / "c", url, sd)
    assert [e.scorer for e in default.rewards] == ["human", "prompt_fidelity"]
