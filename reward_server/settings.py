"""Reward server settings: environment variables prefixed `DDPO_`, overridable in code.

API keys are hashed as soon as they are validated, so the plaintext never sits
in the settings object (or in a repr, a log line or a crash dump).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.protocol import MAX_ITEMS_PER_REQUEST, MAX_PIXELS_PER_IMAGE

#: The LAION improved aesthetic predictor head (CLIP ViT-L/14, trained on SAC+LOGOS+AVA).
LAION_AESTHETIC_HEAD = "camenduru/improved-aesthetic-predictor/sac+logos+ava1-l14-linearMSE.pth"
#: The same head as published for trl's DDPO example.
TRL_AESTHETIC_HEAD = "trl-lib/ddpo-aesthetic-predictor/aesthetic-model.pth"

_HASH_PREFIX = "sha256:"


def hash_api_key(key: str) -> str:
    """The stored form of a key: `sha256:<hex>` (pass that form to avoid plaintext in env)."""
    return _HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def _is_hashed(key: str) -> bool:
    digest = key[len(_HASH_PREFIX) :]
    return (
        key.startswith(_HASH_PREFIX)
        and len(digest) == 64
        and all(c in "0123456789abcdef" for c in digest)
    )


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ServerSettings(BaseSettings):
    """Everything the reward server reads at start-up. Env: `DDPO_<FIELD>`."""

    model_config = SettingsConfigDict(
        env_prefix="DDPO_", extra="ignore", validate_default=True, populate_by_name=True
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    scorers: Annotated[list[str] | None, NoDecode] = Field(
        None, description="Scorers to load (comma-separated in env); None: all whose weights exist."
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="Accepted bearer keys, comma-separated in env; held as sha256 hashes only. "
        "An entry `sha256:<hex>` is taken as an already hashed key.",
    )
    allow_unauthenticated_public: bool = Field(
        False, description="Allow binding a non-loopback host without any API key (unsafe)."
    )

    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0)
    max_items: int = Field(MAX_ITEMS_PER_REQUEST, ge=1, le=MAX_ITEMS_PER_REQUEST)
    max_pixels: int = Field(MAX_PIXELS_PER_IMAGE, ge=1, description="Per image.")
    max_request_pixels: int = Field(
        128 * 1024 * 1024,
        ge=1,
        description="All images of one request together: bounds decoded memory (~3 B/pixel), "
        "since tiny PNGs can hold huge flat images.",
    )
    batch_max_wait_ms: float = Field(5.0, ge=0)

    # -- operations --
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one JSON object per line (for log shippers); text: for people."
    )
    shutdown_timeout_s: float = Field(
        30.0,
        gt=0,
        description="On SIGTERM, how long in-flight requests may take before they are cancelled.",
    )

    device: Literal["auto", "cpu", "cuda"] = "auto"
    allow_download: bool = Field(
        False, description="Let scorers download missing weights from the Hugging Face hub."
    )
    models_dir: Path | None = Field(
        Path("models"), description="Local weights, looked up before the hub cache."
    )
    aesthetic_clip_model: str = Field(
        "openai/clip-vit-large-patch14", description="Hub id or local directory of a CLIP model."
    )
    aesthetic_head: str = Field(
        LAION_AESTHETIC_HEAD,
        description="Local file (.pth/.safetensors) or `owner/repo/path/in/repo` on the hub.",
    )

    # -- text-image scorers (`pickscore`, `clip_score`) --
    pickscore_model: str = Field(
        "yuvalkirstain/PickScore_v1", description="Hub id or local directory of PickScore's CLIP."
    )
    pickscore_processor: str = Field(
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        description="Hub id or local directory of the tokenizer and preprocessor config "
        "PickScore was trained with (its model repo ships none).",
    )
    clip_score_model: str = Field(
        "openai/clip-vit-large-patch14",
        description="Hub id or local directory of the CLIP model (with tokenizer and "
        "preprocessor config) for `clip_score`.",
    )

    # -- vision-language judge (scorer `vlm_judge`) --
    vlm_judge_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible API (vLLM, SGLang), e.g. "
        "http://127.0.0.1:8001/v1; the scorer loads only when it is set.",
    )
    vlm_judge_model: str = Field(
        "Qwen/Qwen2.5-VL-7B-Instruct", description="Model name the endpoint serves."
    )
    vlm_judge_api_key: SecretStr | None = Field(
        None, description="Sent as `Authorization: Bearer KEY` to the judge endpoint."
    )
    vlm_judge_question: str = Field(
        'Does this figure show "{prompt}"? Please answer yes or no.',
        description="The question asked with each image; `{prompt}` is replaced by its prompt.",
    )
    vlm_judge_score: Literal["p_yes", "yes_vs_no"] = Field(
        "p_yes",
        description="p_yes: the probability of answering yes (VQAScore); yes_vs_no: "
        "P(yes) / (P(yes) + P(no)), which ignores probability spent on other first tokens.",
    )
    vlm_judge_top_logprobs: int = Field(
        20, ge=1, le=20, description="Alternatives asked for the first answer token."
    )
    vlm_judge_concurrency: int = Field(
        8, ge=1, le=256, description="Requests in flight to the judge endpoint at once."
    )
    vlm_judge_timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")

    # -- human rating queue (scorers `human`, `human_pairwise`) --
    data_dir: Path = Field(
        Path("data"), description="Where the SQLite rating database lives (if no database_url)."
    )
    database_url: str | None = Field(
        None,
        repr=False,
        validation_alias=AliasChoices("DATABASE_URL", "DDPO_DATABASE_URL"),
        description="SQLAlchemy URL of the rating database, e.g. postgresql://user@host/db; "
        "default: SQLite (WAL) at data_dir/ratings.db.",
    )
    ratings_per_item: int = Field(
        1, ge=1, le=100, description="Ratings (k) each item of a human job needs for a score."
    )
    rating_lease_s: float = Field(
        120.0, gt=0, description="How long a rater holds an item before it goes back to the queue."
    )
    job_deadline_s: float = Field(
        3600.0, gt=0, description="Longest life of a human job; clients may ask for less."
    )
    job_max_wait_s: float = Field(
        30.0, gt=0, le=300, description="Cap on GET /v1/jobs/{id}?wait=S long polls."
    )
    public_url: str | None = Field(
        None, description="Base URL raters reach this server at (for invite links)."
    )

    # -- learned reward (scorer `reward_head`, `ddpo fit-reward`) --
    reward_head_dir: Path | None = Field(
        None,
        description="Where `ddpo fit-reward` saves reward heads (versions/<v>/ and LATEST) and "
        "the `reward_head` scorer loads them; default: data_dir/reward_head.",
    )

    @field_validator("scorers", mode="before")
    @classmethod
    def _parse_scorers(cls, value: Any) -> Any:
        value = _split_csv(value)
        return value or None

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        return _split_csv(value) if value is not None else []

    @field_validator("api_keys")
    @classmethod
    def _hash_keys(cls, keys: list[str]) -> list[str]:
        hashed = []
        for key in keys:
            if not key:
                continue
            hashed.append(key if _is_hashed(key) else hash_api_key(key))
        return hashed

    @property
    def auth_required(self) -> bool:
        return bool(self.api_keys)

    def check_api_key(self, candidate: str) -> bool:
        """Constant-time comparison of the candidate's hash against every stored hash."""
        digest = hash_api_key(candidate)
        ok = False
        for stored in self.api_keys:
            ok |= hmac.compare_digest(digest, stored)
        return ok

    def resolved_database_url(self) -> str:
        """database_url, or the default SQLite file under data_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ratings.db').resolve()}"

    def resolved_reward_head_dir(self) -> Path:
        """reward_head_dir, or data_dir/reward_head (beside the ratings it is fitted on)."""
        return (
            self.reward_head_dir
            if self.reward_head_dir is not None
            else self.data_dir / "reward_head"
        )

    def resolve_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
