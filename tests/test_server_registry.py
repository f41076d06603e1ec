"""Scorer registry: build what is at hand, say why the rest is not, fail loudly when named."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from reward_server.scorers.base import ScorerUnavailable
from reward_server.scorers.registry import (
    ScorerRegistry,
    ScorersUnavailable,
    UnknownScorer,
    build_scorers,
    default_registry,
    module_factory,
)
from reward_server.settings import ServerSettings
from tests.helpers.recording_scorer import RecordingScorer


@pytest.fixture
def bare(tmp_path: Path) -> ServerSettings:
    """No weights anywhere: models_dir empty, head path absent."""
    return ServerSettings(
        models_dir=tmp_path, aesthetic_head=str(tmp_path / "missing.pth"), device="cpu"
    )


def test_default_registry_names() -> None:
    assert set(default_registry().names()) >= {
        "aesthetic",
        "jpeg_compressibility",
        "jpeg_incompressibility",
        "prompt_fidelity",
    }


def test_build_all_skips_unavailable_with_reason(
    bare: ServerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="reward_server.scorers.registry"):
        scorers = build_scorers(bare)
    assert {"jpeg_compressibility", "jpeg_incompressibility"} <= scorers.keys()
    assert "aesthetic" not in scorers
    assert "scorer aesthetic skipped" in caplog.text and "missing.pth" in caplog.text


def test_explicit_unavailable_fails_with_reason(bare: ServerSettings) -> None:
    with pytest.raises(ScorersUnavailable, match=r"aesthetic: .*missing\.pth"):
        build_scorers(bare, ["jpeg_compressibility", "aesthetic"])


def test_explicit_unknown_lists_registered(bare: ServerSettings) -> None:
    with pytest.raises(UnknownScorer, match="'nope'.*registered: aesthetic"):
        build_scorers(bare, ["nope"])


def test_explicit_subset(bare: ServerSettings) -> None:
    assert list(build_scorers(bare, ["jpeg_incompressibility"])) == ["jpeg_incompressibility"]


def test_module_factory_import_error_is_unavailable(bare: ServerSettings) -> None:
    factory = module_factory("reward_server.scorers.no_such_module")
    with pytest.raises(ScorerUnavailable, match="cannot import"):
        factory(bare)


def test_prompt_fidelity_is_lazy_and_optional(bare: ServerSettings) -> None:
    """Registered by module path: either it builds, or it is unavailable with a reason."""
    registry = default_registry()
    try:
        scorer = registry.build("prompt_fidelity", bare)
    except ScorerUnavailable as exc:
        assert str(exc)
    else:
        assert scorer.name


def test_custom_registry() -> None:
    registry = ScorerRegistry()
    registry.register("rec", lambda s: RecordingScorer())
    with pytest.raises(ValueError, match="already"):
        registry.register("rec", lambda s: RecordingScorer())
    scorers = build_scorers(ServerSettings(), registry=registry)
    assert isinstance(scorers["rec"], RecordingScorer)


def test_crashing_factory_is_skipped_or_reported(caplog: pytest.LogCaptureFixture) -> None:
    def crash(settings: ServerSettings) -> RecordingScorer:
        raise FileNotFoundError("weights.bin")

    registry = ScorerRegistry()
    registry.register("ok", lambda s: RecordingScorer())
    registry.register("crash", crash)
    assert list(build_scorers(ServerSettings(), registry=registry)) == ["ok"]
    assert "building scorer crash failed" in caplog.text
    with pytest.raises(ScorersUnavailable, match="crash: failed to build: FileNotFoundError"):
        build_scorers(ServerSettings(), ["ok", "crash"], registry=registry)
