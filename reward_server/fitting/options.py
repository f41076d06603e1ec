"""What a fit is asked to do (`FitOptions`) and how it reports progress."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: progress(phase, done, total); phases "embedding", "early stopping", "training".
FitProgress = Callable[[str, int, int], None]


class FitOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "score", "pair"] = Field(
        "auto", description="auto: score if there are 1-10 ratings, else pair."
    )
    holdout: float = Field(0.2, gt=0, lt=1, description="Share held out for the reported metric.")
    epochs: int = Field(300, ge=1, description="Most epochs; early stopping usually ends sooner.")
    patience: int = Field(30, ge=1, description="Epochs without validation gain before stopping.")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    batch_size: int = Field(256, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [256, 64])
    dropout: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
