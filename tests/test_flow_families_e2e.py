"""SD3 and FLUX through `ddpo train` and the real reward server: train, resume, LoRA load."""

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train_e2e import ddpo, write_config
from trainer.random_flow_pipeline import build_random_flux, build_random_sd3
from trainer.run_log import read_metrics

pytestmark = pytest.mark.slow

FLOW = """sample_eta = 0.7
sample_group_size = 4
train_kl_coef = 0.01
train_timestep_fraction = 0.5
"""
BUILDERS = {"sd3": build_random_sd3, "flux": build_random_flux}
PIPELINES = {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ddpo.server_process import RewardServerProcess

    log = tmp_path_factory.mktemp("server") / "server.log"
    with RewardServerProcess(["jpeg_compressibility"], log_file=log) as s:
        yield s


def _transformer_output(pipe) -> torch.Tensor:
    """One forward pass of the pipeline's transformer on fixed inputs."""
    from trainer.families.flux import FluxFamily
    from trainer.families.sd3 import StableDiffusion3Family

    cls = FluxFamily if type(pipe).__name__ == "FluxPipeline" else StableDiffusion3Family
    fam = cls(pipe, torch.device("cpu"), torch.float32)
    x = torch.randn(1, *fam.latent_shape(32), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500.0])
    with torch.no_grad():
        return fam.predict(fam.denoiser, x, t, fam.encode_prompts(["a"], 32), None, 3.5)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_family_trains_resumes_and_lora_loads(tmp_path, server, family):
    import diffusers

    model = BUILDERS[family](tmp_path / "model")
    cfg = write_config(tmp_path, model, server.url, extra=FLOW)
    ddpo("train", "--config", str(cfg), "--set", "num_epochs=1")
    ddpo("train", "--config", str(cfg), "--set", "num_epochs=2", "--resume")
    out = tmp_path / "out"
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(r["num_samples"] == 8 for r in records)
    assert all(r["kl_to_reference"] >= 0 for r in records)
    assert records[0]["kl_to_reference"] < records[1]["kl_to_reference"]  # weights moved

    pipe = getattr(diffusers, PIPELINES[family]).from_pretrained(str(model))
    base = _transformer_output(pipe)
    pipe.load_lora_weights(str(out / "lora"))
    assert pipe.transformer.peft_config
    saved = load_file(str(out / "lora" / "pytorch_lora_weights.safetensors"))
    assert saved and all(k.startswith("transformer.") for k in saved)
    assert (_transformer_output(pipe) - base).abs().max() > 0  # the trained adapter acts


def test_sd3_window_and_full_fine_tuning_write_a_loadable_transformer(tmp_path, server):
    from diffusers import SD3Transformer2DModel

    model = build_random_sd3(tmp_path / "model")
    window = "sample_sde_window_size = 2\nsample_sde_window_range = [0, 3]\n"
    cfg = write_config(tmp_path, model, server.url, extra=FLOW + window + "use_lora = false\n")
    ddpo(
        "train", "--config", str(cfg), "--set", "num_epochs=1", "--set", "train_learning_rate=1e-4"
    )
    out = tmp_path / "out"
    assert read_metrics(out)[0]["num_samples"] == 8
    trained = SD3Transformer2DModel.from_pretrained(str(out / "transformer"))
    base = SD3Transformer2DModel.from_pretrained(str(model / "transformer"))
    moved = [
        (a - b).abs().max() for a, b in zip(trained.parameters(), base.parameters(), strict=True)
    ]
    assert max(moved) > 0
