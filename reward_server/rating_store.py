"""Opening the rating database for the scorers that need it (the `human` ones).

The store is opened only when such a scorer is built, and belongs to whoever
opened it: the app's runtime closes it when the app stops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reward_server.scorers.base import ScorerUnavailable
from reward_server.settings import ServerSettings

if TYPE_CHECKING:
    from reward_server.storage import RatingStore


def open_rating_store(settings: ServerSettings) -> RatingStore:
    """The configured rating database, migrated; ScorerUnavailable says why it cannot be."""
    try:
        from reward_server.storage import RatingStore
    except ImportError as exc:  # sqlalchemy/alembic are in the `server` extra
        raise ScorerUnavailable(f"the rating queue needs sqlalchemy and alembic: {exc}") from exc
    try:
        return RatingStore(settings.resolved_database_url())
    except Exception as exc:
        raise ScorerUnavailable(f"cannot open the rating database: {exc}") from exc


class RatingStoreOpener:
    """Opens the rating database the first time a scorer asks, so both human scorers share
    one engine; `store` is what it opened (None if nothing asked or opening failed).
    """

    def __init__(self, settings: ServerSettings) -> None:
        self._settings = settings
        self.store: RatingStore | None = None

    def __call__(self) -> RatingStore:
        if self.store is None:
            self.store = open_rating_store(self._settings)
        return self.store

    def close(self) -> None:
        """Close what was opened (scorer building failed, so nobody will own it)."""
        if self.store is not None:
            self.store.close()
            self.store = None
