"""SD 2.x (v-prediction) and SDXL through `ddpo train`: train, resume, LoRA load."""

import pytest
import torch

from tests.test_train_e2e import ddpo, write_config
from trainer.families import load_family
from trainer.ppo import recompute_log_prob
from trainer.run_log import read_metrics
from trainer.sampling import sample_trajectories

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ddpo.server_process import RewardServerProcess

    log = tmp_path_factory.mktemp("server") / "server.log"
    with RewardServerProcess(["jpeg_compressibility"], log_file=log) as s:
        yield s


@pytest.mark.parametrize(
    ("fixture", "family_name", "pipeline_cls"),
    [
        ("tiny_sd_v", "sd", "StableDiffusionPipeline"),
        ("tiny_sdxl", "sdxl", "StableDiffusionXLPipeline"),
    ],
)
def test_family_trains_resumes_and_lora_loads(
    request, tmp_path, server, fixture, family_name, pipeline_cls
):
    import diffusers

    model = request.getfixturevalue(fixture)
    fam = load_family(str(model), None, torch.device("cpu"), torch.float32)
    assert fam.name == family_name  # detected from the pipeline, no flag
    if fixture == "tiny_sd_v":
        assert fam.pipeline.scheduler.config.prediction_type == "v_prediction"

    cfg = write_config(tmp_path, model, server.url, extra="train_timestep_fraction = 0.5")
    ddpo("train", "--config", str(cfg), "--set", "num_epochs=1")
    ddpo("train", "--config", str(cfg), "--set", "num_epochs=2", "--resume")
    records = read_metrics(tmp_path / "out")
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(r["num_samples"] == 8 for r in records)

    pipe = getattr(diffusers, pipeline_cls).from_pretrained(str(model))
    pipe.load_lora_weights(str(tmp_path / "out" / "lora"))
    assert pipe.unet.peft_config


def test_sdxl_recomputed_log_probs_give_ratio_one(tiny_sdxl):
    fam = load_family(str(tiny_sdxl), None, torch.device("cpu"), torch.float32)
    trajs = sample_trajectories(
        fam,
        fam.unet,
        ["a", "b"],
        torch.arange(2),
        [1, 2],
        num_steps=4,
        guidance_scale=4.0,
        eta=1.0,
        resolution=32,
    )
    assert set(trajs.embeds) == {"prompt_embeds", "pooled_embeds", "time_ids"}
    uncond = fam.encode_unconditional(32)
    assert torch.count_nonzero(uncond["prompt_embeds"]) == 0  # force_zeros_for_empty_prompt
    col = torch.tensor([3, 1])
    with torch.no_grad():
        lp = recompute_log_prob(fam, fam.unet, trajs, col, uncond, 4.0, 1.0)
    ratio = torch.exp(lp - trajs.log_probs[torch.arange(2), col])
    assert (ratio - 1).abs().max() < 1e-4
