"""Rater invitations: a new rater in the rating database and the link that signs them in.

The one public way to mint rating rights outside the server: there is no HTTP
route for it on purpose (a leaked API key must not become rating rights).
"""

from __future__ import annotations

from urllib.parse import urlencode

from reward_server.storage import QueueError, RatingStore


def invite_link(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/rate/login?{urlencode({'token': token})}"


def invite_rater(database_url: str, name: str, base_url: str, *, first_free: bool = False) -> str:
    """Create rater `name` and return their invite link (the token is not stored in clear).

    With `first_free`, a name already taken becomes name-2, name-3, ...: a re-run
    of the demo keeps its database and invites "you-2".
    """
    store = RatingStore(database_url)
    try:
        candidates = [name, *(f"{name}-{n}" for n in range(2, 1000))] if first_free else [name]
        for candidate in candidates:
            try:
                _, token = store.add_rater(candidate)
                return invite_link(base_url, token)
            except QueueError:
                if not first_free:
                    raise
        raise QueueError(f"no free rater name like {name!r} in {database_url}")
    finally:
        store.close()
