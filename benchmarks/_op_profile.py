"""Operator profile of a trainer's epoch phases, shared by our side and trl's.

Imports only the standard library at module level: it runs in our venv and in
benchmarks/.venv-trl. `OpProfiler.wrap` puts a method of either trainer (ours:
`trainer.train.sample_epoch` / `update`; trl: `_generate_samples` /
`_train_batched_samples`) under `torch.profiler` while `active` is set, and sums
each aten operator's calls and self CPU time per phase. Counts do not depend on
the load of a shared machine; times do, so compare them within one run.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

#: Operator categories, first match wins (substrings of aten names, lower case).
CATEGORIES = [
    ("attention", ("attention", "sdpa", "flash")),
    ("convolution", ("conv", "mkldnn_convolution")),
    ("matmul", ("addmm", "::mm", "bmm", "matmul", "linear", "baddbmm")),
    ("norm", ("norm",)),
    ("optimizer", ("_foreach", "adam", "lerp", "_fused")),
    ("copy/cast/cat", ("copy_", "::to", "_to_copy", "cat", "clone", "contiguous", "stack")),
    ("indexing", ("index", "gather", "scatter", "select", "slice", "chunk", "split")),
    ("random", ("normal", "randn", "random", "uniform")),
]


def category(name: str) -> str:
    low = name.lower()
    for cat, keys in CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "elementwise/other"


class OpProfiler:
    """Per-phase aten operator counts and self CPU time, over the calls made while active."""

    def __init__(self) -> None:
        self.active = False
        self.ops: dict[str, dict[str, list[float]]] = defaultdict(
            lambda: defaultdict(lambda: [0, 0.0])
        )
        self.wall: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, obj, method: str, phase: str) -> None:
        inner = getattr(obj, method)

        def profiled(*args, **kwargs):
            if not self.active:
                return inner(*args, **kwargs)
            from torch.profiler import ProfilerActivity, profile

            t0 = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                out = inner(*args, **kwargs)
            self.wall[phase] += time.perf_counter() - t0
            self.calls[phase] += 1
            table = self.ops[phase]
            for evt in prof.key_averages():
                if evt.key.startswith("aten::"):
                    row = table[evt.key]
                    row[0] += evt.count
                    row[1] += evt.self_cpu_time_total / 1e6
            return out

        setattr(obj, method, profiled)

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for phase, table in self.ops.items():
            cats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
            for name, (count, secs) in table.items():
                c = cats[category(name)]
                c[0] += count
                c[1] += secs
            top = sorted(table.items(), key=lambda kv: -kv[1][1])[:15]
            out[phase] = {
                "calls": self.calls[phase],
                "wall_s": self.wall[phase],
                "op_count": int(sum(c for c, _ in table.values())),
                "self_cpu_s": sum(s for _, s in table.values()),
                "categories": {
                    k: {"count": int(v[0]), "self_cpu_s": v[1]} for k, v in cats.items()
                },
                "top_ops": {k: {"count": int(v[0]), "self_cpu_s": v[1]} for k, v in top},
            }
        return out

    def dump(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.summary(), indent=1))
