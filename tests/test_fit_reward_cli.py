"""`ddpo fit-reward` through the trainer's CLI, on SQLite and (where reachable) PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from ddpo.cli import app
from reward_server.head_store import load_latest, read_latest
from reward_server.storage import RatingStore
from tests.helpers.shape_ratings import rate_shapes
from tests.helpers.tiny_clip import write_tiny_clip

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_fit_reward_saves_a_head_and_reports(db_url: str, tmp_path: Path, clip_dir: Path) -> None:
    store = RatingStore(db_url)
    rate_shapes(store, 40)
    store.close()
    out = tmp_path / "heads"
    args = ["fit-reward", "--database-url", db_url, "-o", str(out), "--clip-model", str(clip_dir)]
    result = runner.invoke(app, [*args, "--epochs", "60", "--seed", "3"])
    assert result.exit_code == 0, result.output
    version = read_latest(out)
    assert version is not None
    loaded = load_latest(out)
    assert loaded is not None
    _, info = loaded
    assert info.mode == "score" and info.num_ratings == 40 and info.metrics.holdout_size == 8
    assert info.clip_model == str(clip_dir.resolve()) and info.fit_options["seed"] == 3
    assert f"reward head {version}: score mode, 40 rating(s)" in result.stdout
    assert "held-out (8 images): Pearson r" in result.stdout
    assert str(out / "versions" / version) in result.stdout
    assert "without a restart" in result.stdout


def test_default_output_is_the_servers_head_dir(
    tmp_path: Path, clip_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DDPO_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DDPO_DATABASE_URL", raising=False)
    monkeypatch.delenv("DDPO_REWARD_HEAD_DIR", raising=False)
    store = RatingStore(f"sqlite:///{tmp_path / 'ratings.db'}")
    rate_shapes(store, 2, mode="pair")  # too few: 2 comparisons
    store.close()
    result = runner.invoke(app, ["fit-reward", "--clip-model", str(clip_dir)])
    assert result.exit_code == 2
    assert "pair mode needs at least 10 A/B comparisons, the database has 2" in result.output
    store = RatingStore(f"sqlite:///{tmp_path / 'ratings.db'}")
    rate_shapes(store, 12, mode="pair", seed=1)
    store.close()
    result = runner.invoke(app, ["fit-reward", "--clip-model", str(clip_dir), "--epochs", "5"])
    assert result.exit_code == 0, result.output
    assert read_latest(tmp_path / "reward_head") is not None
    assert "held-out (3 comparisons): accuracy" in result.stdout


def _one_line_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert fragment in lines[0], result.output


def test_errors_are_one_line_with_exit_code_2(tmp_path: Path, clip_dir: Path) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    RatingStore(empty).close()
    base = ["fit-reward", "-o", str(tmp_path / "heads")]
    result = runner.invoke(app, [*base, "--database-url", empty, "--clip-model", str(clip_dir)])
    _one_line_error(result, "the database has none yet")

    missing = f"sqlite:///{tmp_path / 'nope.db'}"
    result = runner.invoke(app, [*base, "--database-url", missing, "--clip-model", str(clip_dir)])
    _one_line_error(result, "no rating database at")
    assert not (tmp_path / "nope.db").exists()

    result = runner.invoke(app, [*base, "--database-url", empty, "--mode", "both"])
    _one_line_error(result, "mode: Input should be 'auto', 'score' or 'pair'")

    store = RatingStore(empty)
    rate_shapes(store, 12)
    store.close()
    result = runner.invoke(
        app, [*base, "--database-url", empty, "--clip-model", "nobody/no-such-clip"]
    )
    _one_line_error(result, "CLIP model 'nobody/no-such-clip' is not at hand")
    assert "DDPO_ALLOW_DOWNLOAD=1" in result.output
    assert not (tmp_path / "heads").exists()


def test_command_stays_light() -> None:
    """The trainer image has no fastapi: neither the CLI nor the fitting code may need it."""
    probe = (
        "import sys, ddpo.cli, reward_server.fit_reward, reward_server.head_store\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'fastapi', 'starlette', 'uvicorn', 'sqlalchemy', 'alembic', 'transformers'}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
