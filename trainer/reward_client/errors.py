"""The errors callers catch: rewards that could not be had, and servers unusable at start."""

from __future__ import annotations


class RewardError(RuntimeError):
    """Rewards could not be obtained; the message names the endpoint and the reason."""


class RewardServerUnavailable(RewardError):
    """A reward server is unreachable, not ready, or lacks a configured scorer."""
