"""Scorers by name: a factory per name that builds the scorer or says why it cannot.

Factories import their heavy dependencies themselves, so asking for the JPEG
scorers never imports torch, and a scorer whose module or weights are missing
is reported as unavailable instead of breaking the server.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from reward_server.scorers.base import Scorer, ScorerUnavailable
from reward_server.settings import ServerSettings

if TYPE_CHECKING:
    from reward_server.storage import RatingStore

log = logging.getLogger(__name__)

ScorerFactory = Callable[[ServerSettings], Scorer]
#: Factory of a scorer that works on the rating queue: it is handed the store.
RatingScorerFactory = Callable[[ServerSettings, "RatingStore"], Scorer]
#: Opens (or returns the already open) rating store; raises ScorerUnavailable.
OpenRatingStore = Callable[[], "RatingStore"]


class UnknownScorer(KeyError):
    """No factory is registered under that name."""

    def __str__(self) -> str:
        return str(self.args[0])


def module_factory(module: str, attr: str = "build") -> Callable[..., Scorer]:
    """A factory that imports `module` on first use and calls its `build(settings, ...)`.

    Extra arguments (a rating scorer's store) are passed on. An ImportError (the
    module, or a package it needs, is missing) makes the scorer unavailable
    rather than failing the server.
    """

    def factory(settings: ServerSettings, *resources: Any) -> Scorer:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise ScorerUnavailable(f"cannot import {module}: {exc}") from exc
        build = getattr(mod, attr, None)
        if build is None:
            raise ScorerUnavailable(f"{module} has no {attr}(settings) function")
        return build(settings, *resources)

    return factory


def _jpeg_incompressibility(settings: ServerSettings) -> Scorer:
    from reward_server.scorers.jpeg import JpegIncompressibility

    return JpegIncompressibility()


def _jpeg_compressibility(settings: ServerSettings) -> Scorer:
    from reward_server.scorers.jpeg import JpegCompressibility

    return JpegCompressibility()


class ScorerRegistry:
    """An ordered name -> factory table; `default_registry()` holds the built-ins."""

    def __init__(self) -> None:
        self._factories: dict[str, Callable[..., Scorer]] = {}
        self._opt_in: set[str] = set()
        self._rating: set[str] = set()

    def register(
        self, name: str, factory: ScorerFactory, *, replace: bool = False, default: bool = True
    ) -> None:
        """default=False: built only when named, never by "load everything at hand"."""
        self._add(name, factory, replace=replace, default=default, rating=False)

    def register_rating_scorer(
        self, name: str, factory: RatingScorerFactory, *, replace: bool = False
    ) -> None:
        """A scorer on the rating queue: its factory gets the store; built only when named,
        since it opens a database.
        """
        self._add(name, factory, replace=replace, default=False, rating=True)

    def _add(
        self,
        name: str,
        factory: Callable[..., Scorer],
        *,
        replace: bool,
        default: bool,
        rating: bool,
    ) -> None:
        if name in self._factories and not replace:
            raise ValueError(f"scorer {name!r} is already registered")
        self._factories[name] = factory
        self._opt_in.discard(name)
        self._rating.discard(name)
        if not default:
            self._opt_in.add(name)
        if rating:
            self._rating.add(name)

    def names(self) -> list[str]:
        return list(self._factories)

    def needs_rating_store(self, name: str) -> bool:
        """Whether `name` is a rating scorer (built on the rating database)."""
        return name in self._rating

    def default_names(self) -> list[str]:
        """What a server loads when no scorers are named."""
        return [n for n in self._factories if n not in self._opt_in]

    def build(
        self,
        name: str,
        settings: ServerSettings,
        open_rating_store: OpenRatingStore | None = None,
    ) -> Scorer:
        """Build one scorer; raises UnknownScorer or ScorerUnavailable (with the reason).

        A rating scorer gets the store from open_rating_store, so the database is
        opened only when one is built, and its owner is whoever passed the opener.
        """
        factory = self._factories.get(name)
        if factory is None:
            raise UnknownScorer(
                f"unknown scorer {name!r}; registered: {', '.join(self._factories) or 'none'}"
            )
        if name not in self._rating:
            scorer = factory(settings)
        elif open_rating_store is None:
            raise ScorerUnavailable(f"{name} needs the rating database, and none was given")
        else:
            scorer = factory(settings, open_rating_store())
        if not scorer.name:
            scorer.name = name
        return scorer


def default_registry() -> ScorerRegistry:
    registry = ScorerRegistry()
    registry.register("aesthetic", module_factory("reward_server.scorers.aesthetic"))
    registry.register("jpeg_compressibility", _jpeg_compressibility)
    registry.register("jpeg_incompressibility", _jpeg_incompressibility)
    registry.register("prompt_fidelity", module_factory("reward_server.scorers.prompt_fidelity"))
    # The rating queue opens a database: only when asked for by name.
    registry.register_rating_scorer("human", module_factory("reward_server.scorers.human"))
    registry.register_rating_scorer(
        "human_pairwise", module_factory("reward_server.scorers.human", "build_pairwise")
    )
    # Text-image rewards: built when named, or by default when their weights are cached.
    registry.register("pickscore", module_factory("reward_server.scorers.pickscore"))
    registry.register("clip_score", module_factory("reward_server.scorers.clip_score"))
    # A VLM behind an OpenAI-compatible API: built when DDPO_VLM_JUDGE_URL names one.
    registry.register("vlm_judge", module_factory("reward_server.scorers.vlm_judge"))
    # Needs a head from `ddpo fit-reward` (and its CLIP model): only when asked for by name.
    registry.register(
        "reward_head", module_factory("reward_server.scorers.reward_head"), default=False
    )
    return registry


class ScorersUnavailable(RuntimeError):
    """Scorers named explicitly could not be built; the message lists each reason."""


def build_scorers(
    settings: ServerSettings,
    names: Iterable[str] | None = None,
    registry: ScorerRegistry | None = None,
    open_rating_store: OpenRatingStore | None = None,
) -> dict[str, Scorer]:
    """Build scorers by name.

    names=None: every default scorer whose weights and packages are at hand;
    the others are skipped with a log line saying why (a factory that crashes
    is logged with its traceback and skipped too). Explicit names: all must
    build, else ScorersUnavailable (or UnknownScorer) explains which and why.
    Rating scorers get their store from open_rating_store (see ScorerRegistry.build).
    """
    registry = registry or default_registry()
    explicit = names is not None
    wanted = list(dict.fromkeys(names)) if names is not None else registry.default_names()
    if explicit:
        unknown = [n for n in wanted if n not in registry.names()]
        if unknown:
            raise UnknownScorer(
                f"unknown scorer(s) {', '.join(map(repr, unknown))}; "
                f"registered: {', '.join(registry.names())}"
            )
    scorers: dict[str, Scorer] = {}
    failures: dict[str, str] = {}
    for name in wanted:
        try:
            scorers[name] = registry.build(name, settings, open_rating_store)
        except ScorerUnavailable as exc:
            failures[name] = str(exc)
        except Exception as exc:  # a broken optional scorer must not take the others down
            log.exception("building scorer %s failed", name)
            failures[name] = f"failed to build: {type(exc).__name__}: {exc}"
    if explicit and failures:
        reasons = "; ".join(f"{name}: {why}" for name, why in failures.items())
        raise ScorersUnavailable(f"cannot load scorer(s) {reasons}")
    for name, why in failures.items():
        log.info("scorer %s skipped: %s", name, why)
    log.info("scorers loaded: %s", ", ".join(scorers) or "none")
    return scorers
