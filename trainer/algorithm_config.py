"""Config keys of the training algorithm (PPO, DiffusionNFT, AWM), mixed into TrainConfig.

Kept apart from trainer/config.py so that the algorithm's keys live in one place.
The forward-process algorithms train the conditional model without guidance, as
their papers do; unless a config sets them, they sample without guidance too
(`sample_guidance_scale = 1`) and AWM clips its ratio at 1 (its authors' setting).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

#: What a config that names no algorithm trains with: DiffusionNFT reached a held-out JPEG
#: gain in every seed on both built-in models where PPO never did (docs/learning.md).
DEFAULT_ALGORITHM = "nft"

#: Defaults that differ from PPO's for the forward-process algorithms, applied only where
#: the config does not set the key: (algorithm, key) -> value.
ALGORITHM_DEFAULTS: dict[str, dict[str, Any]] = {
    "nft": {"sample_guidance_scale": 1.0},
    "awm": {"sample_guidance_scale": 1.0, "train_clip_range": 1.0},
}


class AlgorithmKeys(BaseModel):
    """The algorithm and the keys of the forward-process ones (docs/learning.md)."""

    train_algorithm: Literal["ppo", "nft", "awm"] = Field(
        DEFAULT_ALGORITHM,
        description="nft (the default): DiffusionNFT, reward-weighted denoising loss on "
        "implicit positive and negative policies. ppo: DDPO / Flow-GRPO, PPO on the log-probs "
        "of stochastic denoising steps (name it to train DDPO). awm: Advantage Weighted "
        "Matching, advantage-weighted denoising loss with a clipped ratio. nft and awm keep "
        "only each sample's clean latent, sample with the deterministic DDIM / flow ODE and "
        "(unless set) without guidance.",
    )
    train_fp_timesteps: int | None = Field(
        None,
        ge=1,
        description="nft / awm: timesteps per sample and inner epoch, stratified over the first "
        "train_timestep_fraction of the sampling schedule, each with fresh noise (AWM: 6). "
        "None: every one of those steps (NFT).",
    )
    train_fp_stochastic_sampler: bool = Field(
        False,
        description="nft / awm: sample with the stochastic step (DDIM eta / flow SDE noise "
        "sample_eta) instead of the deterministic DDIM / flow ODE.",
    )
    train_nft_beta: float = Field(
        1.0,
        gt=0,
        description="nft: how far the implicit policies lie from the old one, v+- = v_old +- "
        "beta (v_theta - v_old) (paper: 1; 0.1 faster, less stable).",
    )
    train_old_policy_decay_rate: float = Field(
        0.001,
        ge=0,
        description="nft / awm: the old policy (nft: it samples and anchors the implicit "
        "policies; awm: the EMA the extra KL pulls to) follows the trained weights after "
        "every epoch with decay min(rate x optimizer steps so far, max).",
    )
    train_old_policy_decay_max: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="The cap of that decay; None: the paper's (nft 0.5, awm 0.3).",
    )
    train_awm_weight_power: float | None = Field(
        0.25,
        gt=0,
        description="awm: the per-timestep loss l is weighted as s ((l + 1e-10)^p - 1e-10^p) / p "
        "(the authors' generalised Huber, p = 0.25); None: plain l.",
    )
    train_awm_ema_kl_coef: float = Field(
        1.0,
        ge=0,
        description="awm: weight of the squared velocity distance to the old-policy EMA (the "
        "authors' ema_beta 1; off 'can easily lead to collapse').",
    )

    @model_validator(mode="before")
    @classmethod
    def _algorithm_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            algorithm = str(data.get("train_algorithm", DEFAULT_ALGORITHM))
            defaults = ALGORITHM_DEFAULTS.get(algorithm, {})
            data = {**defaults, **data}
        return data

    @model_validator(mode="after")
    def _check_algorithm(self) -> AlgorithmKeys:
        if self.train_algorithm != "ppo" and getattr(self, "train_step_baseline", False):
            raise ValueError(
                "train_step_baseline is PPO's per-step baseline; nft and awm train on the "
                "clean samples only"
            )
        return self

    def old_policy_decay_max(self) -> float:
        if self.train_old_policy_decay_max is not None:
            return self.train_old_policy_decay_max
        return 0.3 if self.train_algorithm == "awm" else 0.5
