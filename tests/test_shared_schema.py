"""The protocol's JSON Schema, and the copy embedded in docs/protocol.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.schema import embedded_block, extract_embedded, main, protocol_schema, render_schema

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "protocol.md"


def test_schema_holds_every_protocol_model() -> None:
    defs = protocol_schema()["$defs"]
    assert {"ScoreRequest", "ScoreResponse", "ScorerList", "Problem", "ScoreItem"} <= defs.keys()
    assert defs["ScoreRequest"]["properties"]["items"]["maxItems"] == 256


def test_cli_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert json.loads(capsys.readouterr().out) == protocol_schema()


def test_python_m_shared_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shared.schema"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == render_schema()


def test_doc_embeds_the_current_schema() -> None:
    embedded = extract_embedded(DOC.read_text(encoding="utf-8"))
    assert embedded is not None, "docs/protocol.md lost its schema markers"
    assert json.loads(embedded) == protocol_schema(), (
        "docs/protocol.md is stale: run `python -m shared.schema --update docs/protocol.md`"
    )


def test_update_rewrites_only_the_block(tmp_path: Path) -> None:
    doc = tmp_path / "p.md"
    stale = embedded_block().replace('"ScoreRequest"', '"Old"', 1)
    doc.write_text(f"# head\n\n{stale}\n\ntail\n", encoding="utf-8")
    assert main(["--update", str(doc)]) == 0
    assert doc.read_text(encoding="utf-8") == f"# head\n\n{embedded_block()}\n\ntail\n"
