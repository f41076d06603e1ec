"""OpenMP defaults for `ddpo` commands, set before torch (and so libgomp) is loaded.

Training commands add nothing: they start with libgomp's defaults (all cores,
spinning waits: the fastest on free cores) and `trainer/thread_guard.py` drops
them to one thread when another program competes, where spinning collapses.
`ddpo serve` waits passively (OMP_WAIT_POLICY=PASSIVE): a server sits beside
other work by design and its spin cannot be changed once libgomp has loaded;
its scorers are large operators, where passive waiting cost 7% of images/s
(docs/benchmarks.md, 2026-12-01). An OpenMP variable the user exported wins.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence

#: What `ddpo <command>` adds when the user chose nothing (commands not named: nothing).
COMMAND_DEFAULTS: dict[str, dict[str, str]] = {"serve": {"OMP_WAIT_POLICY": "PASSIVE"}}
#: Variables that mean the user chose: then nothing is added.
USER_CHOICES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand in a `ddpo` argv (the first argument that is not an option)."""
    return next((a for a in argv[1:] if not a.startswith("-")), None)


def apply_thread_defaults(environ: MutableMapping[str, str], command: str | None) -> dict[str, str]:
    """Add the defaults for `command` to `environ` unless the user chose; returns the added."""
    if any(name in environ for name in USER_CHOICES):
        return {}
    added = COMMAND_DEFAULTS.get(command or "", {})
    environ.update(added)
    return dict(added)
