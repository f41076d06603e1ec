"""ThreadGuard: all cores until another program makes OpenMP's spinning collapse, then one
until the machine is free again.

Timing-free: the clock and the busy-core probe are injected, except one check
that the /proc probe sees a real busy process.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainer.thread_guard import ThreadGuard, busy_cores_elsewhere


def guard(busy: float | None = 0.0, environ: dict[str, str] | None = None):
    calls: list[int] = []
    g = ThreadGuard(
        environ={} if environ is None else environ,
        busy_elsewhere=lambda: busy,
        set_threads=calls.append,
    )
    return g, calls


@pytest.fixture(autouse=True)
def _two_threads(monkeypatch):
    monkeypatch.setattr("torch.get_num_threads", lambda: 2)


def test_free_cores_keep_all_threads_until_an_epoch_collapses():
    g, calls = guard(busy=0.1)
    for seconds in (10.0, 6.0, 6.4, 11.5):  # warm-up, then steady; 11.5 < 2 x 6
        g.after_epoch(seconds)
    assert calls == [] and not g.single
    g.after_epoch(12.5)  # > 2 x the fastest (6.0): another program holds a core
    assert calls == [1] and g.single
    g.after_epoch(3.0)  # stays on one thread until a recheck finds the machine free
    assert calls == [1]


def probed_guard(readings: list[float | None], recheck_every: int = 3):
    """A guard whose probe returns `readings` in turn (the first at start-up)."""
    calls: list[int] = []
    it = iter(readings)
    g = ThreadGuard(
        environ={},
        busy_elsewhere=lambda: next(it),
        set_threads=calls.append,
        recheck_every=recheck_every,
    )
    return g, calls


def test_one_thread_goes_back_to_all_cores_once_the_machine_is_free():
    g, calls = probed_guard([1.5, 1.2, 0.1])  # busy at start, busy at 1st recheck, then free
    assert calls == [1] and g.single
    for _ in range(3):  # the first recheck comes after 3 epochs: still busy
        g.after_epoch(9.0)
    assert calls == [1] and g.single
    for _ in range(2):
        g.after_epoch(9.0)
    assert calls == [1] and g.single  # no probe between rechecks
    g.after_epoch(9.0)  # 2nd recheck: free
    assert calls == [1, 2] and not g.single
    g.after_epoch(6.0)  # all-core epochs set the baseline again
    g.after_epoch(6.5)
    assert calls == [1, 2]


def test_a_competitor_that_comes_back_is_rechecked_less_often():
    g, calls = probed_guard([0.0, 0.0, 0.0], recheck_every=2)
    g.after_epoch(5.0)
    g.after_epoch(11.0)  # collapse: one thread
    g.after_epoch(9.0)
    g.after_epoch(9.0)  # recheck after 2: free, all cores
    assert calls == [1, 2] and not g.single
    g.after_epoch(12.0)  # collapses again against the 5.0 baseline
    assert calls == [1, 2, 1] and g.single and g.recheck_every == 4
    for _ in range(3):
        g.after_epoch(9.0)
    assert calls == [1, 2, 1]  # 3 epochs < the doubled interval
    g.after_epoch(9.0)
    assert calls == [1, 2, 1, 2]


def test_an_unknown_reading_keeps_one_thread():
    g, calls = probed_guard([1.5, None], recheck_every=1)
    g.after_epoch(9.0)
    assert calls == [1] and g.single


def test_busy_machine_at_start_means_one_thread_from_the_start():
    g, calls = guard(busy=1.2)
    assert calls == [1] and g.single


def test_unknown_load_keeps_all_threads():
    g, calls = guard(busy=None)
    assert calls == [] and not g.single


@pytest.mark.parametrize(
    "chosen", [{"OMP_NUM_THREADS": "2"}, {"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "0"}]
)
def test_a_users_openmp_choice_is_never_overridden(chosen):
    g, calls = guard(busy=2.0, environ=chosen)
    for seconds in (5.0, 50.0):
        g.after_epoch(seconds)
    assert calls == [] and not g.single


def test_one_thread_already_needs_no_probe(monkeypatch):
    monkeypatch.setattr("torch.get_num_threads", lambda: 1)
    probed: list[bool] = []
    ThreadGuard(environ={}, busy_elsewhere=lambda: probed.append(True) or 5.0)
    assert probed == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_probe_sees_a_busy_process():
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = busy_cores_elsewhere(window_s=0.5)
        busy = max(busy or 0.0, busy_cores_elsewhere(window_s=0.5) or 0.0)  # past start-up
    finally:
        hog.kill()
        hog.wait()
    assert busy is not None and busy >= 0.5
