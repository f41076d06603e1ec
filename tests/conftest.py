import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run no faster on more threads, and a trainer beside a server subprocess on
# 2 cores oversubscribes them badly (measured: 4 s vs 50 s per epoch) if each uses all.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A random-weight SD-1.x-shaped pipeline directory, built once per session."""
    from trainer.random_pipeline import build_random_sd

    return build_random_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_sd_v(tmp_path_factory) -> Path:
    """The same with v-prediction, as SD 2.x ships."""
    from trainer.random_pipeline import build_random_sd

    return build_random_sd(tmp_path_factory.mktemp("tiny-sd-v"), prediction_type="v_prediction")


# -- rating database, on SQLite and (where reachable) PostgreSQL ---------------------

POSTGRES_URL = os.environ.get(
    "DDPO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
_postgres_state: dict[str, str | None] = {}


def _postgres_unavailable() -> str | None:
    """None when the test PostgreSQL answers, else why not (checked once per session)."""
    if "why" not in _postgres_state:
        try:
            import sqlalchemy as sa

            engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
            with engine.connect():
                pass
            engine.dispose()
            _postgres_state["why"] = None
        except Exception as exc:  # driver missing, server down, auth refused
            _postgres_state["why"] = f"PostgreSQL at {POSTGRES_URL} unavailable: {exc}"[:300]
    return _postgres_state["why"]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty rating database URL: a SQLite file, or a new schema on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ratings.db'}"
        return
    why = _postgres_unavailable()
    if why:
        pytest.skip(why)
    import uuid

    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    """A random-weight SDXL-shaped pipeline (two text encoders, pooled embeds, time ids)."""
    from trainer.random_pipeline import build_random_sdxl

    return build_random_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))
