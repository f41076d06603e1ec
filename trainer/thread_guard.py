"""All cores while they pay, one thread once another program competes for them.

On a CPU, torch's OpenMP threads spin at every barrier (libgomp's default). On
free cores that is the fastest setting; when another CPU-bound program holds a
core, the spinning threads starve the one they wait for and an epoch took 8x
as long (issue 27). One intra-op thread has no barrier to wait at. Measured on 2
cores, `models/tiny-sd` (docs/benchmarks.md, 2026-12-05): free cores, 2 spinning
threads 6.04 s per epoch, 1 thread 6.62 s, 2 passive threads 12.86 s; one busy
program beside, 1 thread 7.53 s, 2 passive threads 8.73 s, 2 spinning > 100 s.

So the trainer starts on all cores unless something else is busy now, and drops
to one thread when an epoch's compute time jumps past `collapse_ratio` times the
fastest seen. On one thread it looks again every `recheck_every` epochs (a 0.3 s
probe of /proc/stat) and goes back to all cores once nothing else is busy, so one
contended stretch does not cost the rest of a long run half its speed.
`torch.set_num_threads` works at any time; only the spin length is fixed when
libgomp loads. A user who exported OMP_NUM_THREADS (or a wait policy) chose, and
is left alone.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping

import torch

log = logging.getLogger(__name__)

#: An OpenMP choice of the user's: then the guard never changes the thread count.
USER_CHOICES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
#: Cores' worth of other programs' CPU time from which the machine counts as busy.
BUSY_CORES = 0.5


def busy_cores_elsewhere(window_s: float = 0.3) -> float | None:
    """Cores' worth of CPU time other processes used over `window_s` (Linux /proc), else None."""

    def sample() -> tuple[float, float]:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [float(x) for x in fh.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        return sum(fields) - idle, time.monotonic()

    try:
        mine0 = time.process_time()
        busy0, t0 = sample()
        time.sleep(window_s)
        busy1, t1 = sample()
        mine = time.process_time() - mine0
    except (OSError, ValueError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return max((busy1 - busy0) / ticks - mine, 0.0) / max(t1 - t0, 1e-6)


class ThreadGuard:
    """Keeps torch's intra-op threads at all cores until competition makes them collapse."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        collapse_ratio: float = 2.0,
        busy_elsewhere: Callable[[], float | None] = busy_cores_elsewhere,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        recheck_every: int = 5,
    ) -> None:
        env = os.environ if environ is None else environ
        self.user_chose = any(name in env for name in USER_CHOICES)
        self.collapse_ratio = collapse_ratio
        self.busy_elsewhere = busy_elsewhere
        self.set_threads = set_threads
        self.recheck_every = max(1, recheck_every)  # doubles each time a restore collapses
        self.restores = 0
        self.cores = torch.get_num_threads()
        self.fastest_s: float | None = None  # on all cores only
        self.single = False
        self.single_epochs = 0
        if self.user_chose or self.cores <= 1:
            return
        busy = busy_elsewhere()
        if busy is not None and busy >= BUSY_CORES:
            self._go_single(f"other processes are using {busy:.1f} cores")

    def _go_single(self, why: str) -> None:
        self.set_threads(1)
        self.single = True
        self.single_epochs = 0
        log.warning(
            "CPU: %s; training on one thread until the other program stops (spinning "
            "OpenMP threads collapse beside a busy program). Export OMP_NUM_THREADS to "
            "choose yourself.",
            why,
        )

    def _recheck(self) -> None:
        """Back to all cores when the probe finds the machine free again."""
        self.single_epochs += 1
        if self.single_epochs % self.recheck_every:
            return
        busy = self.busy_elsewhere()
        if busy is not None and busy < BUSY_CORES:
            self.set_threads(self.cores)
            self.single = False
            self.restores += 1
            log.warning(
                "CPU: other processes use %.1f cores now; back to %d threads", busy, self.cores
            )

    def after_epoch(self, compute_s: float) -> None:
        """Record an epoch's compute time (sampling + training): one thread if it collapsed,
        all cores again once a recheck finds nothing else busy."""
        if self.user_chose or compute_s <= 0:
            return
        if self.single:
            self._recheck()
            return
        if self.fastest_s is not None and compute_s > self.collapse_ratio * self.fastest_s:
            if self.restores:  # the competitor came back: look less often
                self.recheck_every *= 2
            self._go_single(
                f"an epoch took {compute_s:.1f} s against {self.fastest_s:.1f} s before"
            )
            return
        self.fastest_s = compute_s if self.fastest_s is None else min(self.fastest_s, compute_s)
