"""`ddpo train` with train_algorithm = nft / awm against the real reward server: metrics,
clean-sample sampling, and a resume that continues exactly (the old policy is saved)."""

import pytest
from safetensors.torch import load_file

from tests.test_train_e2e import ddpo, write_config
from trainer.run_log import read_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from ddpo.server_process import RewardServerProcess

    log = tmp_path_factory.mktemp("server") / "server.log"
    with RewardServerProcess(["jpeg_compressibility"], log_file=log) as s:
        yield s


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_forward_process_run_resumes_exactly(tmp_path, server, tiny_sd, algorithm):
    extra = f'train_algorithm = "{algorithm}"\nsample_group_size = 4\ntrain_kl_coef = 0.01\n'
    weights = {}
    for name, steps in (("straight", [2]), ("resumed", [1, 2])):
        run = tmp_path / name
        run.mkdir()
        cfg = write_config(run, tiny_sd, server.url, extra=extra)
        for i, epochs in enumerate(steps):
            ddpo("train", "--config", str(cfg), "--set", f"num_epochs={epochs}",
                 *(["--resume"] if i else []))  # fmt: skip
        records = read_metrics(run / "out")
        assert [r["epoch"] for r in records] == [0, 1]
        assert all(r["kl_to_reference"] >= 0 and 0 <= r["old_policy_decay"] < 1 for r in records)
        assert (run / "out/checkpoints/epoch_0002/algorithm.safetensors").is_file()
        weights[name] = load_file(str(run / "out/lora/pytorch_lora_weights.safetensors"))
    assert weights["straight"].keys() == weights["resumed"].keys()
    for key, value in weights["straight"].items():
        assert (value == weights["resumed"][key]).all(), key


def test_nft_full_fine_tuning_of_a_v_prediction_unet(tmp_path, server, tiny_sd_v):
    """SD 2.x's v-prediction, the whole UNet trained: saved weights load and have moved."""
    from diffusers import UNet2DConditionModel

    extra = 'train_algorithm = "nft"\nsample_group_size = 4\nuse_lora = false\n'
    cfg = write_config(tmp_path, tiny_sd_v, server.url, extra=extra)
    ddpo(
        "train", "--config", str(cfg), "--set", "num_epochs=1", "--set", "train_learning_rate=1e-3"
    )
    record = read_metrics(tmp_path / "out")[0]
    assert record["num_samples"] == 8 and 0 <= record["r_mean"] <= 1
    trained = UNet2DConditionModel.from_pretrained(str(tmp_path / "out" / "unet"))
    base = UNet2DConditionModel.from_pretrained(str(tiny_sd_v / "unet"))
    moved = [
        (a - b).abs().max() for a, b in zip(trained.parameters(), base.parameters(), strict=True)
    ]
    assert max(moved) > 0


@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_flux_trains_with_a_forward_process_algorithm(tmp_path, server, algorithm):
    """The flow generation: FLUX-shaped transformer, flow-ODE sampling, LoRA that loads."""
    import diffusers

    from trainer.random_flow_pipeline import build_random_flux

    model = build_random_flux(tmp_path / "model")
    extra = f'train_algorithm = "{algorithm}"\nsample_group_size = 4\ntrain_kl_coef = 0.01\n'
    cfg = write_config(tmp_path, model, server.url, extra=extra)
    ddpo("train", "--config", str(cfg), "--set", "num_epochs=1")
    record = read_metrics(tmp_path / "out")[0]
    assert record["num_samples"] == 8 and record["kl_to_reference"] >= 0
    pipe = diffusers.FluxPipeline.from_pretrained(str(model))
    pipe.load_lora_weights(str(tmp_path / "out" / "lora"))
    assert pipe.transformer.peft_config


def test_two_processes_train_awm_and_resume(tmp_path, server, tiny_sd):
    """Several processes: both ranks sample, one writer, and the old policy resumes."""
    from tests.test_multiprocess import torchrun

    extra = 'train_algorithm = "awm"\nsample_group_size = 4\n'
    cfg = write_config(tmp_path, tiny_sd, server.url, extra=extra)
    torchrun("train", "--config", str(cfg), "--set", "num_epochs=1")
    torchrun("train", "--config", str(cfg), "--set", "num_epochs=2", "--resume")
    records = read_metrics(tmp_path / "out")
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(r["num_samples"] == 16 for r in records)  # 2 ranks x 4 x 2
    assert (tmp_path / "out/checkpoints/epoch_0002/algorithm.safetensors").is_file()
