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
