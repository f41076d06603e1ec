"""`ddpo raters` and `ddpo ratings export`, through the trainer's CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from typer.testing import CliRunner

from ddpo.cli import app
from reward_server.storage import NewItem, RatingStore

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'r.db'}"


def test_add_prints_a_working_invite_link(db: str) -> None:
    out = runner.invoke(
        app, ["raters", "add", "alice", "--url", "https://r.example/", "--database-url", db]
    )
    assert out.exit_code == 0, out.output
    link = urlparse(out.stdout.strip())
    assert (link.scheme, link.netloc, link.path) == ("https", "r.example", "/rate/login")
    token = parse_qs(link.query)["token"][0]
    store = RatingStore(db)
    assert store.find_rater(token) is not None
    store.close()
    again = runner.invoke(app, ["raters", "add", "alice", "--database-url", db])
    assert again.exit_code == 1 and "already exists" in again.output
    listed = runner.invoke(app, ["raters", "list", "--database-url", db])
    assert listed.stdout.split() == ["alice"]
    assert runner.invoke(app, ["raters", "revoke", "alice", "--database-url", db]).exit_code == 0
    assert runner.invoke(app, ["raters", "revoke", "alice", "--database-url", db]).exit_code == 1


def _one_rating(db: str) -> None:
    store = RatingStore(db)
    rater, _ = store.add_rater("bob")
    store.create_job("human", "score", 1, [NewItem("s0", "a <b> cat", b"png!", {"e": 1})], 60)
    store.submit(rater, store.claim(rater, 30).lease_token, score=8)
    store.close()


def test_export_jsonl_with_images(db: str, tmp_path: Path) -> None:
    _one_rating(db)
    out_file, images = tmp_path / "r.jsonl", tmp_path / "img"
    args = ["ratings", "export", "-o", str(out_file), "--images-dir", str(images)]
    result = runner.invoke(app, [*args, "--database-url", db])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert (row["rater"], row["score"], row["prompt"], row["external_id"]) == (
        "bob",
        8,
        "a <b> cat",
        "s0",
    )
    assert row["metadata"] == {"e": 1} and Path(row["image_path"]).read_bytes() == b"png!"
    stdout = runner.invoke(app, ["ratings", "export", "--database-url", db])
    assert json.loads(stdout.stdout.splitlines()[0])["score"] == 8


def test_export_parquet(db: str, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    _one_rating(db)
    path = tmp_path / "r.parquet"
    result = runner.invoke(
        app, ["ratings", "export", "-f", "parquet", "-o", str(path), "--database-url", db]
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(path).to_pylist()
    assert table[0]["score"] == 8 and json.loads(table[0]["metadata"]) == {"e": 1}


def test_parquet_without_pyarrow_says_so(db: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import now raises ImportError
    args = ["ratings", "export", "-f", "parquet", "-o", str(tmp_path / "x"), "--database-url", db]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "needs pyarrow" in result.output


def test_cli_modules_stay_light() -> None:
    probe = (
        "import sys, ddpo.cli, reward_server.cli_ratings\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'fastapi', 'starlette', 'sqlalchemy', 'alembic', 'uvicorn'}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
