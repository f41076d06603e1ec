"""Every process's random number generator state, so a resumed run draws what it would have."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object

#: One process's state, in types `torch.load(weights_only=True)` accepts (no pickled numpy).
RngState = dict[str, Any]


def capture_rng_state() -> RngState:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "state": list(mt), "gauss_next": gauss_next},
    }


def restore_rng_state(state: RngState) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))


def gather_rng_states() -> list[RngState]:
    """Every rank's state, in rank order (on every rank; the main process saves them)."""
    return list(gather_object([capture_rng_state()]))
