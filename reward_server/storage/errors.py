"""The one error the queue raises: a refusal a rater or a caller can act on."""

from __future__ import annotations


class QueueError(Exception):
    """A queue operation was refused; `status` is the HTTP status it maps to."""

    status = 409

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        if status is not None:
            self.status = status
