"""benchmarks/forward_process_jpeg.py end to end on a random tiny pipeline (one method).

The full run takes about an hour on 2 cores; a mistake in how it reads checkpoints or
times them would only show at its end, so one method runs here on a tiny budget.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_one_method_is_judged_at_every_checkpoint(tiny_sd, tmp_path):
    out = tmp_path / "fp"
    cmd = [sys.executable, str(REPO / "benchmarks" / "forward_process_jpeg.py")]
    cmd += ["--model-dir", str(tiny_sd), "--methods", "nft", "--samples", "24"]
    cmd += ["--eval-every", "1", "--sample-num-steps", "4", "--eval-seeds", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["complete"] is True and list(doc["runs"]) == ["nft"]
    (run,) = doc["runs"]["nft"]
    # 24 samples of 12 per epoch, a checkpoint each epoch, timed from metrics.jsonl
    assert [c["samples"] for c in run["curve"]] == [12, 24]
    times = [c["train_s"] for c in run["curve"]]
    assert 0 < times[0] < times[1] == pytest.approx(run["train_s_total"])
    for c in run["curve"]:
        assert c["gain_kb"] == pytest.approx(run["before_kb"] - c["after_kb"])
    assert run["final_gain_kb"] == run["curve"][-1]["gain_kb"]
    assert run["sampler"]["eta"] == 0.0  # NFT is judged with its deterministic sampler
    assert run["keys"]["train_algorithm"] == "nft"
    reached = [c for c in run["curve"] if c["gain_kb"] >= doc["target_kb"]]
    assert run["samples_to_target"] == (reached[0]["samples"] if reached else None)
