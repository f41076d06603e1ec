"""The reward server's layout: routers reach state through dependencies; the store is the app's.

(No import cycles anywhere: tests/test_server_imports.py.)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from reward_server.app import create_app
from reward_server.scorers.base import ScorerUnavailable
from reward_server.scorers.human import HumanScorer
from reward_server.scorers.registry import ScorerRegistry, build_scorers
from reward_server.settings import ServerSettings
from reward_server.storage import RatingStore
from tests.test_server_imports import runtime_imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "reward_server"


def test_routers_reach_state_only_through_dependencies() -> None:
    """Routers never import the app (that is what would close the cycle)."""
    for path in (PACKAGE / "routers").glob("*.py"):
        assert "reward_server.app" not in runtime_imports(path, {"reward_server.app"}), path


def test_the_app_opens_and_closes_the_rating_store(tmp_path: Path) -> None:
    settings = ServerSettings(scorers=["human", "human_pairwise"], data_dir=tmp_path)
    app = create_app(settings)
    runtime = app.state.runtime
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while runtime.status == "starting" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/readyz").status_code == 200
        store = runtime.rating_store
        assert store is not None and not store.closed
        assert runtime.scorers["human"].store is store
        assert runtime.scorers["human_pairwise"].store is store
    assert store.closed


def test_given_job_scorers_need_their_store(tmp_path: Path) -> None:
    store = RatingStore(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        with pytest.raises(ValueError, match="rating_store"):
            create_app(ServerSettings(), {"human": HumanScorer(store)})
        app = create_app(ServerSettings(), {"human": HumanScorer(store)}, rating_store=store)
        with TestClient(app):
            assert not store.closed
        assert store.closed  # the app owns the store it was given
    finally:
        store.close()


def test_a_rating_scorer_is_built_with_the_store_it_is_given(tmp_path: Path) -> None:
    registry = ScorerRegistry()
    registry.register_rating_scorer("queue", lambda settings, store: HumanScorer(store))
    with pytest.raises(ScorerUnavailable, match="rating database"):
        registry.build("queue", ServerSettings())
    store = RatingStore(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        built = build_scorers(ServerSettings(), ["queue"], registry, lambda: store)
        assert isinstance(built["queue"], HumanScorer) and built["queue"].store is store
        assert registry.default_names() == []  # opens a database: only when named
    finally:
        store.close()
