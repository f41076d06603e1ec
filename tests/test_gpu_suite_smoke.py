"""benchmarks/gpu_suite.py runs end to end on tiny models on the CPU.

A lent GPU comes rarely and for minutes; a typo in a part found there costs
the whole loan. So every part runs here (`--smoke`), and each of its figures
must be in the JSON, or named with the reason the CPU cannot give it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_suite.py"

EPOCH = [
    "params",
    "setup_s",
    "sampling_s",
    "training_s",
    "epoch_s",
    "images_per_s",
    "peak_memory_gib",
    "peak_sampling_gib",
    "peak_training_gib",
    "unet_forward_flops_per_sample_step",
    "training_tflops_per_s",
    "training_mfu",
    "sampling_mfu",
    "log_ratio_abs_max",
    "old_log_prob_drift",
]
RATIO = [
    "max_abs_log_ratio_per_step",
    "max_abs_log_ratio_sampled_vs_train_shape",
    "log_ratio_abs_max_never",
    "log_ratio_abs_max_auto",
    "old_log_prob_drift_auto",
    "within_target_never",
    "within_target_auto",
    "update_s_never",
    "update_s_auto",
]
SCORER = [
    "params",
    "images_per_s",
    "peak_memory_gib",
    "preprocess_images_per_s",
    "model_images_per_s",
    "model_images_per_s_bf16",
]
EXPECTED = {
    "sd15_lora_bf16": EPOCH,
    "sd15_lora_fp16": EPOCH,
    "sd15_ratio_bf16": RATIO,
    "sd15_ratio_fp16": RATIO,
    "sd15_full_ft": ["params", "peak_training_gib", "fits_24gb", "training_s"],
    "sd15_nft_bf16": ["epoch_s", "peak_memory_gib", "nft_loss", "kept_bytes_per_sample_nft"],
    "sd15_awm_bf16": ["epoch_s", "peak_memory_gib", "awm_loss", "kept_bytes_per_sample_awm"],
    "aesthetic": ["images_per_s", "model_images_per_s", "model_images_per_s_bf16"],
    "pickscore": SCORER,
    "clip_score": SCORER,
    "trl_sd15_lora_bf16": None,  # skipped: trl's own stack is not installed here
    "sdxl_lora_bf16": EPOCH,
    "sd35_flow_lora_bf16": EPOCH,
    "flux1_flow_lora_bf16": EPOCH,
}


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path / "gpu_suite.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def test_every_part_gives_its_figures_or_why_not(tmp_path):
    # --peak-flops: the CPU has no data-sheet peak, so the MFU code runs against this one.
    missing = tmp_path / "no-trl-here"
    proc, doc = _run(tmp_path, "--peak-flops", "1e12", "--trl-site", str(missing))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list(doc["parts"]) == [*EXPECTED]
    for part, names in EXPECTED.items():
        result = doc["parts"][part]
        if names is None:
            assert result["status"] == "skipped", (part, result.get("error"))
            assert str(missing) in result["reason"]
            continue
        assert result["status"] == "ok", (part, result.get("error"), result.get("traceback"))
        for name in names:
            assert name in result["figures"] or result["unavailable"].get(name), (part, name)
        assert _finite(result["figures"]), part
        for name, reason in result["unavailable"].items():
            assert reason, (part, name)

    lora = doc["parts"]["sd15_lora_bf16"]
    assert 0 < lora["figures"]["training_mfu"] < 1
    assert lora["settings"]["sample_batch_size"] == 6
    assert lora["settings"]["train_batch_size"] == 3
    assert "GPU" in lora["unavailable"]["peak_memory_gib"]  # the CPU's reason, stated
    for precision in ("bf16", "fp16"):  # on the CPU no kernel rounds by batch shape
        assert doc["parts"][f"sd15_ratio_{precision}"]["figures"]["within_target_auto"]
    assert "AdamW" in doc["parts"]["sd15_full_ft"]["settings"]["optimizer"]
    assert doc["device"]["name"] == "cpu"
    assert doc["device"]["peak_bf16_flops"] == 1e12
    assert doc["versions"]["torch"] and doc["date_utc"]
    assert "GPU suite on cpu" in proc.stdout  # the printed table


def test_spawned_parts_run_and_a_slow_part_is_cut_off(tmp_path):
    proc, doc = _run(
        tmp_path,
        "--start",
        "spawn",
        "--parts",
        "aesthetic,sd15_ratio_fp16",
        "--part-timeout",
        "aesthetic=0.5",
    )
    assert proc.returncode == 1  # a part ran past its cap
    assert doc["parts"]["aesthetic"]["status"] == "timeout"
    ratio = doc["parts"]["sd15_ratio_fp16"]
    assert ratio["status"] == "ok", (ratio.get("error"), ratio.get("traceback"))
    assert ratio["figures"]["within_target_auto"]
