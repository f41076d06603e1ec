"""One `[[rewards]]` entry of the training config: where a reward comes from and how the
client treats it (retries, outages, human-rating jobs, pairwise preferences)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class RewardEndpoint(BaseModel):
    """One reward server scorer; several combine by weight."""

    model_config = ConfigDict(extra="forbid")

    url: str | list[str] = Field(
        ...,
        description="Base URL of a reward server, e.g. http://127.0.0.1:8000, or a list of "
        "base URLs of identical replicas (same scorers): requests are spread across them "
        "(least outstanding, then round-robin), a connection error or 5xx on one is retried "
        "on another, and a replica that failed is avoided for a cool-down period. Startup "
        "needs at least one replica ready.",
    )
    scorer: str = Field(..., description="Scorer name on that server.")
    weight: float = Field(1.0, description="Weight of this scorer in the summed reward.")
    api_key: str | None = Field(None, description="Sent as `Authorization: Bearer KEY`.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(
        4,
        ge=0,
        description="Retries on connection errors, 5xx, 408 and 429 (other 4xx fail at once); "
        "when they end on an outage, outage_budget_s takes over.",
    )
    outage_budget_s: float = Field(
        600.0,
        ge=0,
        description="How long this endpoint may be down (connections refused or reset, "
        "timeouts, 502/503/504, and no replica's /readyz ready) before the run fails: requests "
        "wait and are sent again once a replica is ready; a line is logged every 15 s. Time "
        "down does not count against reward_epoch_deadline_s. 0: fail after max_retries.",
    )
    mode: Literal["auto", "sync", "job"] = Field(
        "auto",
        description="sync: POST /v1/score; job: POST /v1/jobs and long-poll (human ratings); "
        "auto: ask the server (GET /v1/scorers) which kind the scorer is.",
    )
    missing: Literal["fail", "drop", "fallback"] = Field(
        "fail",
        description="Job scorers only: what to do with items that lack ratings at the epoch "
        "deadline: fail the run, drop them (NaN reward), or score them with fallback_scorer.",
    )
    fallback_scorer: str | None = Field(
        None, description="A sync scorer on the same server, for missing = 'fallback'."
    )
    pair_score: Literal["strength", "win_rate"] = Field(
        "strength",
        description="human_pairwise only. strength: the server's Bradley-Terry log-strength, "
        "a reward like any other; win_rate: each image's share of the comparisons it won, "
        "taken directly as its advantage Z (2 w - 1), Z = train_adv_clip_max: in a rated pair "
        "the preferred image is positive (NFT's r = 1) and the other negative (r = 0).",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | list[str]) -> str | list[str]:
        urls = [value] if isinstance(value, str) else value
        if not urls:
            raise ValueError("url needs at least one URL")
        if any(not u.strip() for u in urls):
            raise ValueError("url must not be empty")
        if len({u.rstrip("/") for u in urls}) != len(urls):
            raise ValueError("url lists the same URL twice")
        return value

    @property
    def urls(self) -> list[str]:
        """`url` as a list: one entry per replica."""
        return [self.url] if isinstance(self.url, str) else list(self.url)

    @model_validator(mode="after")
    def _check_fallback(self) -> RewardEndpoint:
        if self.missing == "fallback" and not self.fallback_scorer:
            raise ValueError("missing = 'fallback' needs fallback_scorer (a scorer name)")
        if self.missing == "fallback" and self.pair_score == "win_rate":
            raise ValueError("pair_score = 'win_rate' takes no fallback scores: missing = 'drop'")
        return self
