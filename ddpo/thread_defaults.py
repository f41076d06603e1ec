"""OpenMP defaults for `ddpo` commands: spin briefly, then sleep.

libgomp (the OpenMP runtime of torch's CPU wheels) lets a thread that waits at a
barrier spin 300000 iterations before it sleeps. On free cores that is the
fastest setting; when another CPU-bound program holds a core, the spinning
threads take the time the thread they wait for needs, and an epoch that took
25 s alone took 146-201 s (issue 27). A bounded spin keeps nearly all of the
speed of spinning and sleeps soon enough not to starve anyone
(docs/benchmarks.md, thread defaults). Set before torch is imported: libgomp
reads its variables once, when it is loaded.
"""

from __future__ import annotations

from collections.abc import MutableMapping

#: What `ddpo` adds when the user chose no wait behaviour.
SPIN_DEFAULTS = {"GOMP_SPINCOUNT": "10000"}
#: Variables that mean the user chose one: then nothing is added.
USER_CHOICES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def apply_thread_defaults(environ: MutableMapping[str, str]) -> dict[str, str]:
    """Add SPIN_DEFAULTS to `environ` unless the user chose a wait behaviour; returns the added."""
    if any(name in environ for name in USER_CHOICES):
        return {}
    environ.update(SPIN_DEFAULTS)
    return dict(SPIN_DEFAULTS)
