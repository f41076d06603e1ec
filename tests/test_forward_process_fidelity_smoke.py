"""benchmarks/forward_process_fidelity.py end to end on a random tiny pipeline (one method).

Its full run takes hours on 2 cores; a mistake in how it reads checkpoints, times them or
stops a run at its time cap would only show at the end, so one method runs here on a tiny
budget, and once more under a cap too short for a single epoch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(model: Path, out: Path, *args: str) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "forward_process_fidelity.py")]
    cmd += ["--model-dir", str(model), "--methods", "nft", "--eval-seeds", "1", "--out", str(out)]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=540, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["complete"] is True and list(doc["runs"]) == ["nft"]
    return doc


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_checkpoint_is_judged_and_the_time_cap_stops_a_run(tiny_sd, tmp_path):
    doc = run(tiny_sd, tmp_path / "a", "--samples", "32", "--eval-every", "1")
    (got,) = doc["runs"]["nft"]
    assert got["samples_total"] == 32  # 2 epochs of the demo's 16 samples
    assert [c["samples"] for c in got["curve"]] == [16, 32]
    times = [c["train_s"] for c in got["curve"]]
    assert 0 < times[0] < times[1] == pytest.approx(got["train_s_total"])
    for c in [got["before"], *got["curve"]]:
        assert all(0 <= c[k] <= 1 for k in ("classifier_held_out", "classifier_seen"))
    assert got["sampler"]["eta"] == 0.0 and got["keys"]["train_algorithm"] == "nft"
    reached = [c for c in got["curve"] if c["classifier_held_out"] >= doc["target"]]
    assert got["samples_to_target"] == (reached[0]["samples"] if reached else None)

    capped = run(tiny_sd, tmp_path / "b", "--samples", "1920", "--minutes", "0.01")
    (stopped,) = capped["runs"]["nft"]
    assert stopped["samples_total"] == 0 and stopped["curve"] == []
    assert stopped["samples_to_target"] is None


def test_trl_trains_on_the_demos_own_layout(tmp_path, monkeypatch):
    """trl's side reads the demo's prompts and layout, so it follows the demo if that changes."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import forward_process_fidelity as bench

    from ddpo.demo import demo_config

    seen: list[tuple] = []

    def fake_run_trl(*args):
        seen.append(args)
        raise SystemExit("stop before training")

    monkeypatch.setattr(bench, "run_trl", fake_run_trl)
    model = REPO / "models" / "tiny-sd"
    with pytest.raises(SystemExit):
        bench.trl_fidelity_run(model, "http://127.0.0.1:1", 3, 320, 10, 5, tmp_path)
    cfg = demo_config("prompt_fidelity", 1, tmp_path / "d", "http://127.0.0.1:1", model)
    (_, seed, epochs, batch, extra, _, prompts) = seen[0]
    per_epoch = cfg.sample_batch_size * cfg.sample_num_batches_per_epoch
    assert (seed, epochs, batch) == (3, 320 // per_epoch, cfg.sample_batch_size)
    assert prompts == cfg.prompts
    flags = dict(zip(extra[::2], extra[1::2], strict=True))
    assert flags["--sample-num-steps"] == str(cfg.sample_num_steps)
    assert flags["--train-batch-size"] == str(cfg.train_batch_size)
    assert flags["--mixed-precision"] == cfg.mixed_precision
    assert flags["--scorer"] == "prompt_fidelity"
