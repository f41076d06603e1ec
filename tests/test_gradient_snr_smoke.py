"""benchmarks/gradient_snr.py runs both estimators on a tiny random model (no figures kept)."""

import argparse
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gradient_snr_measures_both_estimators(tiny_sd_v, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("gradient_snr", None)
    import gradient_snr

    args = argparse.Namespace(
        model=tiny_sd_v,
        groups=2,
        group_size=2,
        steps=4,
        window=3,
        guidance=3.0,
        targets=["attn2.to_k", "attn2.to_v"],
        std="batch",
        only=[],
        seed=0,
        step_baseline=True,
    )
    result = gradient_snr.measure(args)
    assert set(result["estimators"]) == {"final_reward", "step_baseline"}
    for figures in result["estimators"].values():
        assert figures["snr"] > 0 and -1 <= figures["cos_halves"] <= 1
    assert result["snr"] == result["estimators"]["final_reward"]["snr"]
