"""The rating queue's storage, on SQLite and PostgreSQL: migrations, leases, scores, export."""

from __future__ import annotations

import math

import pytest
import sqlalchemy as sa

from reward_server.bradley_terry import bradley_terry
from reward_server.storage import NewItem, QueueError, RatingStore
from reward_server.storage.db import alembic_config
from reward_server.storage.models import Base


class Clock:
    """A hand-driven clock, so lease and job expiry need no sleeping."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_url: str, clock: Clock):
    s = RatingStore(db_url, clock=clock)
    yield s
    s.close()


def items(n: int, prompts: list[str] | None = None) -> list[NewItem]:
    prompts = prompts or ["p"] * n
    return [NewItem(f"x{i}", prompts[i], b"\x89PNG-fake", {"i": i}) for i in range(n)]


def test_migrations_match_the_models_and_rerun_cleanly(db_url: str, store: RatingStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
        assert MigrationContext.configure(conn).get_current_revision() == "0001"
        assert alembic_config(conn).get_main_option("script_location")
    RatingStore(db_url).close()  # a second start-up migrates nothing and fails nothing


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    store = RatingStore(f"sqlite:///{tmp_path / 'r.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_raters_tokens_are_hashed_and_revocable(store: RatingStore) -> None:
    rater_id, token = store.add_rater("alice")
    assert store.find_rater(token) == (rater_id, "alice")
    assert store.find_rater(token + "x") is None
    with store.engine.connect() as conn:
        hashes = conn.execute(sa.text("SELECT token_hash FROM raters")).scalars().all()
    assert token not in " ".join(hashes) and hashes[0].startswith("sha256:")
    with pytest.raises(QueueError, match="already exists"):
        store.add_rater("alice")
    assert store.revoke_rater("alice") and store.find_rater(token) is None
    assert not store.revoke_rater("alice")


def test_score_job_needs_k_distinct_raters(store: RatingStore) -> None:
    a, _ = store.add_rater("a")
    b, _ = store.add_rater("b")
    job, _ = store.create_job("human", "score", 2, items(2), deadline_s=60)

    t1 = store.claim(a, 30)
    assert t1 is not None and store.claim(a, 30) == t1  # a reload returns the same task
    store.submit(a, t1.lease_token, score=4)
    t2 = store.claim(a, 30)
    assert t2 is not None and t2.items[0].item_id != t1.items[0].item_id
    store.submit(a, t2.lease_token, score=8)
    assert store.claim(a, 30) is None  # a has rated both; k=2 needs somebody else

    view = store.job_view(job)
    assert view.status == "pending" and view.num_ratings == [1, 1] and view.scores == [None, None]
    for _ in range(2):
        task = store.claim(b, 30)
        store.submit(b, task.lease_token, score=10)
    view = store.job_view(job)
    assert view.status == "done" and view.num_ratings == [2, 2]
    assert sorted(view.scores) == [7.0, 9.0]
    assert store.waiting() == 0


def test_submit_is_idempotent_and_checked(store: RatingStore) -> None:
    a, _ = store.add_rater("a")
    b, _ = store.add_rater("b")
    store.create_job("human", "score", 1, items(1), deadline_s=60)
    task = store.claim(a, 30)
    with pytest.raises(QueueError) as err:
        store.submit(b, task.lease_token, score=5)
    assert err.value.status == 403
    with pytest.raises(QueueError) as err:
        store.submit(a, task.lease_token, score=11)
    assert err.value.status == 422
    first = store.submit(a, task.lease_token, score=5)
    assert store.submit(a, task.lease_token, score=5) == first  # a retried POST
    with pytest.raises(QueueError) as err:
        store.submit(a, "no-such-lease", score=5)
    assert err.value.status == 404


def test_expired_lease_goes_to_the_next_rater(store: RatingStore, clock: Clock) -> None:
    a, _ = store.add_rater("a")
    b, _ = store.add_rater("b")
    job, _ = store.create_job("human", "score", 1, items(1), deadline_s=600)
    late = store.claim(a, lease_s=30)
    assert store.claim(b, 30) is None  # leased: b must not get it too (k=1)
    clock.now += 31
    task = store.claim(b, 30)
    assert task is not None and task.items == late.items
    store.submit(b, task.lease_token, score=9)
    with pytest.raises(QueueError) as err:  # a answers too late: the item is full
        store.submit(a, late.lease_token, score=1)
    assert err.value.status == 409
    assert store.job_view(job).scores == [9.0]


def test_late_answer_is_kept_when_nobody_else_took_the_item(
    store: RatingStore, clock: Clock
) -> None:
    a, _ = store.add_rater("a")
    job, _ = store.create_job("human", "score", 1, items(1), deadline_s=600)
    task = store.claim(a, lease_s=30)
    clock.now += 100
    store.submit(a, task.lease_token, score=6)
    assert store.job_view(job).scores == [6.0]


def test_job_expiry_keeps_partial_scores(store: RatingStore, clock: Clock) -> None:
    a, _ = store.add_rater("a")
    job, deadline = store.create_job("human", "score", 1, items(3), deadline_s=60)
    assert deadline == clock.now + 60
    store.submit(a, store.claim(a, 30).lease_token, score=3)
    held = store.claim(a, 30)
    clock.now += 61
    view = store.job_view(job)
    assert view.status == "expired" and view.scores == [3.0, None, None]
    with pytest.raises(QueueError) as err:
        store.submit(a, held.lease_token, score=3)
    assert err.value.status == 410
    assert store.claim(a, 30) is None and store.waiting() == 0


def test_cancel_stops_the_queue(store: RatingStore) -> None:
    a, _ = store.add_rater("a")
    job, _ = store.create_job("human", "score", 1, items(2), deadline_s=60)
    store.claim(a, 30)
    assert store.cancel_job(job) and not store.cancel_job("nope")
    assert store.job_view(job).status == "expired"
    assert store.claim(a, 30) is None


def test_earliest_deadline_first(store: RatingStore) -> None:
    a, _ = store.add_rater("a")
    store.create_job("human", "score", 1, items(1), deadline_s=600)
    urgent, _ = store.create_job("human", "score", 1, items(1), deadline_s=60)
    assert store.claim(a, 30).job_id == urgent


def test_pair_mode_bradley_terry(store: RatingStore) -> None:
    raters = [store.add_rater(f"r{i}")[0] for i in range(3)]
    prompts = ["cat", "cat", "cat", "dog"]  # the dog has no partner: never ratable
    job, _ = store.create_job("human_pairwise", "pair", 2, items(4, prompts), deadline_s=60)
    best = None
    for _ in range(10):
        progressed = False
        for r in raters:
            task = store.claim(r, 30, mode="pair")
            if task is None:
                continue
            progressed = True
            assert len(task.items) == 2 and {it.prompt for it in task.items} == {"cat"}
            ids = [it.item_id for it in task.items]
            best = best or min(ids)  # the lowest id always wins
            store.submit(r, task.lease_token, choice="a" if ids[0] == best else "b")
        if not progressed:
            break
    view = store.job_view(job)
    assert view.status == "done"
    assert all(n >= 2 for n in view.num_ratings[:3]) and view.num_ratings[3] == 0
    assert view.scores[3] is None
    assert view.scores[0] == max(view.scores[:3]) and view.scores[0] > 0


def test_bradley_terry_is_finite_and_ordered() -> None:
    scores = bradley_terry(3, [(0, 1), (0, 2), (1, 2), (0, 1)])
    assert all(math.isfinite(s) for s in scores)
    assert scores[0] > scores[1] > scores[2]
    assert bradley_terry(2, []) == [0.0, 0.0]


def test_stats_and_export(store: RatingStore) -> None:
    a, _ = store.add_rater("a")
    b, _ = store.add_rater("b")
    store.create_job("human", "score", 2, items(1), deadline_s=60)
    store.submit(a, store.claim(a, 30).lease_token, score=4)
    store.submit(b, store.claim(b, 30).lease_token, score=6)
    stats = store.stats()
    assert stats["queue"]["ratings"] == 2
    assert stats["agreement"]["score_mean_abs_diff"] == 2.0
    by_name = {r["name"]: r for r in stats["raters"]}
    assert by_name["a"]["mean_abs_diff_to_others"] == 2.0
    rows = list(store.export_rows())
    assert [(r["rater"], r["score"], r["external_id"]) for r in rows] == [
        ("a", 4, "x0"),
        ("b", 6, "x0"),
    ]
    assert rows[0]["metadata"] == {"i": 0} and rows[0]["mode"] == "score"
