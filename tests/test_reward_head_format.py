"""Reward heads on disk: save and load, versions switched only once complete, bad files refused."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from reward_server import head_store as rh
from reward_server.head_store import (
    RewardHeadError,
    load_head,
    load_latest,
    read_latest,
    save_head,
)
from tests.helpers.reward_heads import head_description, random_head

# -- the file format -----------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    head = random_head(0)
    info = save_head(head, head_description(head), tmp_path)
    assert rh._VERSION_RE.match(info.version)
    weights = (tmp_path / "versions" / info.version / "head.safetensors").read_bytes()
    digest = hashlib.sha256(weights).hexdigest()
    assert info.version.endswith(digest[:8]) and info.weights_sha256 == digest
    assert read_latest(tmp_path) == info.version
    loaded = load_latest(tmp_path)
    assert loaded is not None
    again, again_info = loaded
    assert again_info == info
    x = torch.randn(5, 64)
    assert torch.equal(again(x), head(x))
    # No staging directories are left behind.
    assert [p.name for p in (tmp_path / "versions").iterdir()] == [info.version]


def test_no_head_yet(tmp_path: Path) -> None:
    assert read_latest(tmp_path) is None and load_latest(tmp_path) is None


def test_latest_switches_only_once_the_version_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = save_head(random_head(0), head_description(random_head(0)), tmp_path)
    seen: list[str] = []
    real_replace = os.replace

    def spying_replace(src: Any, dst: Any) -> None:
        if Path(dst).name == "LATEST":
            # At the switch the new version must already load completely.
            version = Path(src).read_text().strip()
            load_head(tmp_path / "versions" / version)
            seen.append(version)
        else:  # the complete version directory moves into place: LATEST is untouched so far
            assert read_latest(tmp_path) == old.version
            seen.append("version-dir")
        real_replace(src, dst)

    monkeypatch.setattr(rh.os, "replace", spying_replace)
    new = save_head(random_head(1), head_description(random_head(1)), tmp_path)
    assert seen == ["version-dir", new.version] and new.version != old.version

    # A crash half-way through writing a version leaves LATEST (and the old head) alone.
    real_write = rh._write_synced

    def crash_on_info(path: Path, data: bytes) -> None:
        if path.name == "head.json":
            raise OSError("disk full")
        real_write(path, data)

    monkeypatch.setattr(rh, "_write_synced", crash_on_info)
    with pytest.raises(OSError, match="disk full"):
        save_head(random_head(2), head_description(random_head(2)), tmp_path)
    assert read_latest(tmp_path) == new.version
    assert sorted(p.name for p in (tmp_path / "versions").iterdir()) == sorted(
        [old.version, new.version]
    )


def _corrupt(version_dir: Path, how: str) -> None:
    info_path, weights_path = version_dir / "head.json", version_dir / "head.safetensors"
    data = json.loads(info_path.read_text())
    if how == "weights-tampered":
        raw = bytearray(weights_path.read_bytes())
        raw[-1] ^= 0xFF
        weights_path.write_bytes(bytes(raw))
    elif how == "json-garbage":
        info_path.write_text("{not json")
    elif how == "wrong-format":
        info_path.write_text(json.dumps({**data, "format": "something-else"}))
    elif how == "future-format":
        info_path.write_text(json.dumps({**data, "format_version": 2}))
    elif how == "unknown-field":
        info_path.write_text(json.dumps({**data, "surprise": 1}))
    elif how == "shape-mismatch":
        info_path.write_text(json.dumps({**data, "hidden": [17]}))
    elif how == "pickle":
        torch.save({"mlp.0.weight": torch.zeros(1)}, weights_path)
        digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()
        info_path.write_text(json.dumps({**data, "weights_sha256": digest}))
    elif how == "missing-weights":
        weights_path.unlink()


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("weights-tampered", "damaged or was replaced"),
        ("json-garbage", "not JSON"),
        ("wrong-format", "not a ddpo-reward-head"),
        ("future-format", "format_version 2"),
        ("unknown-field", "malformed"),
        ("shape-mismatch", "does not fit"),
        ("pickle", "not a safetensors file"),
        ("missing-weights", "cannot read"),
    ],
)
def test_malformed_heads_are_refused_clearly(tmp_path: Path, how: str, message: str) -> None:
    info = save_head(random_head(0), head_description(random_head(0)), tmp_path)
    _corrupt(tmp_path / "versions" / info.version, how)
    with pytest.raises(RewardHeadError, match=message):
        load_latest(tmp_path)


def test_latest_must_name_a_version(tmp_path: Path) -> None:
    (tmp_path / "LATEST").write_text("../../etc/passwd\n")
    with pytest.raises(RewardHeadError, match="not a version"):
        read_latest(tmp_path)
    with pytest.raises(RewardHeadError):
        rh.point_latest(tmp_path, "20260101T000000-00000000")  # no such version: refused
