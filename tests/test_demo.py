"""`ddpo demo`: files written, reward up, and the server child never outlives the demo."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def demo_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ddpo.cli", "demo", *args]


def server_pid(text: str) -> int:
    match = re.search(r"reward server ready at \S+ \(pid (\d+)\)", text)
    assert match, text
    return int(match.group(1))


def gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_short_demo_fixes_held_out_combinations_and_keeps_the_seen_ones(tmp_path):
    """The default demo (prompt fidelity, DiffusionNFT), shortened to a third of its epochs.

    The base model never saw blue circles, yellow squares or red triangles; on held-out
    seeds it draws 30 of their 54 images right (classifier). The recipe that preceded this
    sent every prompt to one texture within epochs (fidelity 0.65 -> 0.00); the shipped one
    must fix held-out images, keep the seen ones, and hold as a user samples the LoRA.
    Measured 2026-12-05 at 40 epochs: held-out 0.556 -> 0.648 (user pipeline 0.667 ->
    0.759), seen 0.926 -> 1.000 (docs/tiny-model.md); by the rule judge (2026-12-06)
    held-out 0.593 -> 0.685, seen 0.944 -> 0.944.
    """
    out = tmp_path / "demo"
    proc = subprocess.run(
        demo_cmd("--epochs", "40", "--output", str(out)),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("before_after.png", "reward_curve.png", "metrics.jsonl"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    summary = json.loads((out / "demo_summary.json").read_text())
    before, after = summary["fidelity_before"], summary["fidelity_after"]
    assert before["classifier_seen"] >= 0.9, before  # the base model draws seen prompts right
    assert before["classifier_held_out"] <= 0.7, before  # and gets the unusual ones wrong
    # At least 3 of the 54 held-out images fixed, at most 3 seen ones lost.
    assert after["classifier_held_out"] >= before["classifier_held_out"] + 3 / 54, summary
    assert after["classifier_seen"] >= before["classifier_seen"] - 3 / 54, summary
    # As a user samples it: at the run's guidance (the model card's) and at diffusers' 7.5.
    user = {judged["guidance_scale"]: judged for judged in summary["fidelity_user"]}
    assert sorted(user) == [3.0, 7.5], summary["fidelity_user"]
    for judged in user.values():
        assert judged["after"]["classifier_held_out"] > judged["before"]["classifier_held_out"]
    # The rule-based judge, which learns nothing, sees the gain too, and on the demo's
    # sampler both judges' figures stay within 0.1 of each other, before and after.
    assert after["rule_held_out"] > before["rule_held_out"], summary
    assert after["rule_seen"] >= before["rule_seen"] - 3 / 54, summary
    for report in (before, after):
        for group in ("seen", "held_out"):
            gap = abs(report[f"classifier_{group}"] - report[f"rule_{group}"])
            assert gap <= 0.1, (group, report)
    assert gone(server_pid(proc.stderr + proc.stdout))


def test_short_flow_demo_fixes_held_out_combinations(tmp_path):
    """`ddpo demo --model flow`: the FLUX-shaped built-in model, DiffusionNFT, 40 epochs.

    Measured 2026-12-06 on one thread: held-out 0.648 -> 0.870 (rule judge 0.537 ->
    0.796), seen 0.981 -> 0.963 (rule 0.981 -> 0.981), as a user samples it with
    FluxPipeline 0.630 -> 0.815 (docs/flow_matching.md).
    """
    out = tmp_path / "flow"
    proc = subprocess.run(
        demo_cmd("--model", "flow", "--epochs", "40", "--output", str(out)),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FluxPipeline" in proc.stderr + proc.stdout  # the CLI reports on stderr
    summary = json.loads((out / "demo_summary.json").read_text())
    before, after = summary["fidelity_before"], summary["fidelity_after"]
    assert before["classifier_seen"] >= 0.9 and before["classifier_held_out"] <= 0.7, before
    for judge in ("classifier", "rule"):
        assert after[f"{judge}_held_out"] >= before[f"{judge}_held_out"] + 6 / 54, summary
        assert after[f"{judge}_seen"] >= before[f"{judge}_seen"] - 3 / 54, summary
    (user,) = summary["fidelity_user"]  # a flow model samples without guidance: once
    assert user["guidance_scale"] is None and "FluxPipeline" in user["sampling"], user
    assert user["after"]["classifier_held_out"] > user["before"]["classifier_held_out"], user
    assert gone(server_pid(proc.stderr + proc.stdout))


def test_interrupted_demo_stops_the_server(tmp_path):
    proc = subprocess.Popen(
        demo_cmd("--epochs", "50", "--output", str(tmp_path / "demo")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        # A shell that starts jobs in the background (CI runners, `cmd &`) hands them
        # SIGINT ignored, and Python then never raises KeyboardInterrupt; restore it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        seen += line
        if "fine-tuning" in line:
            break
    pid = server_pid(seen)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    proc.communicate(timeout=60)  # drain the pipe: a full pipe would block the child
    assert proc.returncode != 0
    assert gone(pid), "reward server still running after Ctrl-C"


def test_failed_demo_stops_the_server(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    proc = subprocess.run(
        demo_cmd("--epochs", "1", "--output", str(tmp_path / "demo"), "--model", str(broken)),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode != 0
    assert gone(server_pid(proc.stderr + proc.stdout))


def test_unknown_reward_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        demo_cmd("--reward", "beauty", "--output", str(tmp_path / "d")),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown demo reward 'beauty'" in proc.stderr
    assert not Path(tmp_path / "d").exists()
