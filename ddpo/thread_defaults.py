"""OpenMP defaults for `ddpo` commands: waiting threads sleep (PASSIVE) unless the user chose.

libgomp (the OpenMP runtime of torch's CPU wheels) lets a thread that waits at a
barrier spin 300000 iterations before it sleeps. On free cores that is the
fastest setting; when another CPU-bound program holds a core, the spinning
threads take the time the thread they wait for needs, and an epoch that took
25 s alone took 146-201 s (issue 27). Measured beside one busy process
(docs/benchmarks.md, 2026-12-04): PASSIVE 28 s per epoch, while libgomp's spin
and a bounded spin (GOMP_SPINCOUNT=10000) both had not finished 2 epochs in
200 s. PASSIVE has the best worst case; on free cores it costs 1.2x
(models/tiny-sd) to 2.2x (tiny random pipeline); export OMP_WAIT_POLICY=ACTIVE
or a GOMP_SPINCOUNT on a dedicated machine. Set before torch is imported:
libgomp reads its variables once, when it is loaded.
"""

from __future__ import annotations

from collections.abc import MutableMapping

#: What `ddpo` adds when the user chose no wait behaviour.
SPIN_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
#: Variables that mean the user chose one: then nothing is added.
USER_CHOICES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def apply_thread_defaults(environ: MutableMapping[str, str]) -> dict[str, str]:
    """Add SPIN_DEFAULTS to `environ` unless the user chose a wait behaviour; returns the added."""
    if any(name in environ for name in USER_CHOICES):
        return {}
    environ.update(SPIN_DEFAULTS)
    return dict(SPIN_DEFAULTS)
