"""The one training config: a pydantic model, loaded from TOML plus `--set` overrides.

Key names follow trl's DDPOConfig where one exists, so trl users feel at home.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from trainer.algorithm_config import AlgorithmKeys
from trainer.reward_endpoint import RewardEndpoint


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key."""


class TrainConfig(AlgorithmKeys):
    """Everything `ddpo train` needs. See docs/config.md for each key."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # model
    pretrained_model: str = Field(..., description="Hub id or local diffusers pipeline directory.")
    pretrained_revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit) of pretrained_model."
    )
    use_lora: bool = Field(
        True, description="Train a LoRA adapter on the UNet (true) or the full UNet (false)."
    )
    lora_rank: int = Field(4, ge=1, description="LoRA rank r.")
    lora_alpha: float = Field(
        4.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank."
    )
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"],
        description="UNet module names that get LoRA adapters.",
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "fp16",
        description="no, fp16 or bf16; frozen weights are cast to it, LoRA weights stay fp32. "
        "fp16 without a GPU trains in float32 (CPU fp16 is emulated, ~26x slower).",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute UNet activations in backward to save memory."
    )
    resolution: int | None = Field(None, ge=8, description="Default: the pipeline's own.")

    # prompts
    prompts: list[str] | None = Field(
        None, description="Inline list of training prompts (or use prompts_file)."
    )
    prompts_file: Path | None = Field(
        None,
        description="One prompt per line, '#' comments; relative to the config file.",
    )

    # run
    seed: int = Field(
        0,
        description="Seeds noise, prompt choice and shuffling: a run is reproducible.",
    )
    output_dir: Path = Field(
        Path("outputs/ddpo"),
        description="Where metrics.jsonl, tensorboard/, checkpoints/ and the final weights go.",
    )
    num_epochs: int = Field(100, ge=1, description="Number of epochs (sample, score, train).")
    save_freq: int = Field(1, ge=1, description="Checkpoint every N epochs (and at the end).")
    num_checkpoint_limit: int = Field(3, ge=1, description="Checkpoints kept; older ones go.")
    log_images_every: int = Field(1, ge=0, description="TensorBoard image grid every N epochs.")

    # sampling
    sample_num_steps: int = Field(50, ge=1, description="Denoising steps per sample.")
    sample_eta: float = Field(
        1.0,
        gt=0,
        description="Noise of each stochastic step, > 0 so that it has a log-probability: DDIM "
        "eta for SD/SDXL; Flow-GRPO's SDE noise level a for SD3/FLUX (it uses 0.7 and 0.9).",
    )
    sample_sde_window_size: int = Field(
        0,
        ge=0,
        description="k > 0: only k consecutive steps of each chain are stochastic, the others "
        "deterministic (ODE / DDIM eta 0); only those k are stored and trained (Flow-GRPO-Fast, "
        "MixGRPO). 0: every step is stochastic and trainable.",
    )
    sample_sde_window_range: tuple[int, int] | None = Field(
        None,
        description="Step indices [start, stop) the window lies in (Flow-GRPO-Fast: [0, "
        "num_steps / 2]); None: the whole chain.",
    )
    sample_sde_window_shift_every: int = Field(
        0,
        ge=0,
        description="0: the window's start is drawn per sampling batch, uniformly within the "
        "range. n > 0: it slides one step later every n epochs, back to the range's start "
        "after its end (MixGRPO's sliding window).",
    )
    sample_guidance_scale: float = Field(
        5.0,
        description="Classifier-free guidance scale (1 disables guidance). nft and awm, "
        "which train without guidance, default to 1 unless it is set; 5 is PPO's.",
    )
    sample_batch_size: int = Field(1, ge=1, description="Images per sampling batch, per process.")
    sample_num_batches_per_epoch: int = Field(
        2, ge=1, description="Sampling batches per epoch, per process."
    )
    sample_group_size: int = Field(
        1,
        ge=1,
        description="k > 1: every prompt of an epoch is sampled k times (other seeds) and "
        "advantages are group-relative (GRPO); k must divide the samples per epoch over all "
        "processes. 1: prompts drawn independently, advantages from per_prompt_stat_tracking.",
    )
    group_advantage_std: Literal["group", "batch"] = Field(
        "group",
        description="With sample_group_size > 1: divide by each group's reward std, or by one "
        "std over the whole batch (keeps groups of near-equal rewards from being blown up).",
    )

    # training
    train_batch_size: int = Field(
        1, ge=1, description="Trajectories per PPO minibatch, per process."
    )
    train_gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        description="Minibatches accumulated per optimizer step (timesteps always accumulate).",
    )
    train_learning_rate: float = Field(
        3e-4, gt=0, description="AdamW learning rate (3e-4 for LoRA, ~1e-5 for full fine-tuning)."
    )
    train_adam_beta1: float = Field(0.9, description="AdamW beta1.")
    train_adam_beta2: float = Field(0.999, description="AdamW beta2.")
    train_adam_weight_decay: float = Field(1e-4, description="AdamW weight decay.")
    train_adam_epsilon: float = Field(1e-8, description="AdamW epsilon.")
    train_use_8bit_adam: bool = Field(
        False, description="Use bitsandbytes' 8-bit AdamW (needs bitsandbytes and a GPU)."
    )
    train_num_inner_epochs: int = Field(
        1, ge=1, description="PPO passes over each epoch's samples."
    )
    train_clip_range: float = Field(
        1e-4,
        gt=0,
        description="Clip range of the importance ratio (PPO; awm defaults to 1, its authors').",
    )
    train_adv_clip_max: float = Field(
        5.0, gt=0, description="Advantages are clipped to [-max, max]."
    )
    train_timestep_fraction: float = Field(
        1.0,
        gt=0,
        le=1.0,
        description="Fraction of each trajectory's steps trained on (random per sample).",
    )
    train_max_grad_norm: float = Field(1.0, gt=0, description="Gradient norm clipping.")
    train_timesteps_per_pass: int = Field(
        1,
        ge=1,
        description="Timesteps of a train batch batched into one UNet pass (same gradient; "
        "more memory, better device use).",
    )
    train_cfg: bool = Field(
        True,
        description="Use classifier-free guidance when re-computing log-probs in training "
        "(must match sampling: false needs sample_guidance_scale = 1).",
    )
    train_kl_coef: float = Field(
        0.0,
        ge=0,
        description="Weight (beta) of the KL to the reference model per trained step, closed "
        "form ||mu - mu_ref||^2 / (2 sigma^2); the reference is the base UNet with LoRA "
        "disabled, or a frozen copy with full fine-tuning. 0: off (no extra forward pass).",
    )
    train_kl_reference_on_cpu: bool = Field(
        False,
        description="Full fine-tuning with train_kl_coef > 0: keep the frozen reference UNet "
        "on the CPU (saves device memory, slower).",
    )
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Keep an exponential moving average of the trained weights (e.g. 0.95) "
        "and save it as the final weights; sampling stays on the live weights. None: off.",
    )
    train_recompute_old_log_probs: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Recompute the sampled steps' log-probs at the training batch shape before "
        "the first update, so the PPO ratio starts at exactly 1 where kernels round differently "
        "by batch shape (reduced precision on GPUs). auto: probe one pass per epoch, recompute "
        "only if it differs (bf16/fp16/TF32: by over 1e-6; float32: by over a tenth of "
        "train_clip_range); costs one forward pass per trained step when it does.",
    )

    # advantages
    per_prompt_stat_tracking: bool = Field(
        True, description="Normalise rewards per prompt (true) or over the whole batch (false)."
    )
    per_prompt_stat_tracking_buffer_size: int = Field(
        32, ge=1, description="Rewards remembered per prompt."
    )
    per_prompt_stat_tracking_min_count: int = Field(
        16, ge=1, description="Below this many rewards for a prompt, batch statistics are used."
    )
    train_step_baseline: bool = Field(
        False,
        description="Give each stochastic step its own baseline: the reward of the image its "
        "x0 prediction decodes to, so a step is credited with the reward it added (r - "
        "V(x_t); unbiased, less noise). Costs one VAE decode and one scored image per step "
        "and sample; automatic rewards only (not human ratings), reward_aggregation = sum.",
    )

    # rewards
    rewards: list[RewardEndpoint] = Field(
        default_factory=list,
        description="Reward endpoints ([[rewards]] tables); the reward is their weighted sum.",
    )
    reward_aggregation: Literal["sum", "advantages"] = Field(
        "sum",
        description="With several rewards: sum: advantages of the weighted sum of rewards. "
        "advantages: each reward's advantages separately (same rule: groups, its own "
        "per-prompt tracker, or batch), then their weighted sum, so rewards on different "
        "scales pull by their weights alone.",
    )
    reward_epoch_deadline_s: float = Field(
        600.0,
        gt=0,
        description="Longest wait for an epoch's rewards before the run fails; the clock stops "
        "while a reward endpoint is down (that is bounded by its outage_budget_s instead).",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if (self.prompts is None) == (self.prompts_file is None):
            raise ValueError("set exactly one of 'prompts' (a list) or 'prompts_file' (a path)")
        if self.prompts is not None and not self.prompts:
            raise ValueError("'prompts' is empty")
        if not self.rewards:
            raise ValueError("'rewards' is empty: name at least one [[rewards]] endpoint")
        total = self.sample_batch_size * self.sample_num_batches_per_epoch
        if total % self.train_batch_size:
            raise ValueError(
                f"train_batch_size ({self.train_batch_size}) must divide the samples per epoch "
                f"per process ({total} = sample_batch_size x sample_num_batches_per_epoch)"
            )
        batches = total // self.train_batch_size
        if batches % self.train_gradient_accumulation_steps:
            raise ValueError(
                f"train_gradient_accumulation_steps ({self.train_gradient_accumulation_steps}) "
                f"must divide the train batches per inner epoch ({batches} = {total} samples / "
                f"train_batch_size {self.train_batch_size}); otherwise the last gradients would "
                "leak into the next epoch's first step"
            )
        if self.sample_sde_window_size:
            lo, hi = self.sample_sde_window_range or (0, self.sample_num_steps)
            if not 0 <= lo < hi <= self.sample_num_steps or hi - lo < self.sample_sde_window_size:
                raise ValueError(
                    f"sample_sde_window_size {self.sample_sde_window_size} does not fit "
                    f"sample_sde_window_range [{lo}, {hi}) within {self.sample_num_steps} steps"
                )
        if self.train_step_baseline:
            rated = [ep.scorer for ep in self.rewards if ep.mode == "job" or ep.scorer == "human"]
            if rated:
                raise ValueError(
                    f"train_step_baseline scores every step's predicted image; {rated[0]!r} is "
                    "rated by people (a job endpoint): use it with automatic rewards only"
                )
            if self.reward_aggregation != "sum":
                raise ValueError("train_step_baseline needs reward_aggregation = 'sum'")
            if self.sample_group_size == 1 and self.per_prompt_stat_tracking:
                raise ValueError(
                    "train_step_baseline normalises within groups or over the batch: set "
                    "sample_group_size > 1 or per_prompt_stat_tracking = false"
                )
        direct = [ep for ep in self.rewards if ep.pair_score == "win_rate"]
        several = len(self.rewards) > 1 and self.reward_aggregation == "sum"
        if direct and (several or self.train_step_baseline):
            raise ValueError(
                "pair_score = 'win_rate' gives advantages, not rewards: beside other rewards "
                "set reward_aggregation = 'advantages'; it takes no train_step_baseline"
            )
        if self.train_algorithm == "ppo" and not self.train_cfg and self.sample_guidance_scale != 1:
            raise ValueError(
                f"train_cfg = false with sample_guidance_scale = {self.sample_guidance_scale:g} "
                "trains a policy other than the one that sampled (off-policy from the first "
                "step): set train_cfg = true, or sample_guidance_scale = 1"
            )
        return self

    def prompt_list(self) -> list[str]:
        if self.prompts is not None:
            return list(self.prompts)
        assert self.prompts_file is not None
        lines = Path(self.prompts_file).read_text(encoding="utf-8").splitlines()
        prompts = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
        if not prompts:
            raise ConfigError(f"prompts_file {self.prompts_file} holds no prompts")
        return prompts


def _parse_value(raw: str) -> Any:
    """Parse an override value as TOML/JSON when it looks like one, else keep the string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` overrides; dotted keys reach into tables (`rewards.0.url=...`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        node: Any = data
        for part in parts[:-1]:
            if isinstance(node, list):
                try:
                    node = node[int(part)]
                except (ValueError, IndexError) as exc:
                    raise ConfigError(f"override key {key!r}: no element {part!r}") from exc
            else:
                node = node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list):
            try:
                node[int(last)] = _parse_value(raw)
            except (ValueError, IndexError) as exc:
                raise ConfigError(f"override key {key!r}: no element {last!r}") from exc
        else:
            node[last] = _parse_value(raw)
    return data


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(config)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg}")
    return "invalid config:\n" + "\n".join(lines)


def build_config(data: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def load_config(path: Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a TOML file (relative paths in it resolve against the file) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        if "prompts_file" in data and not Path(data["prompts_file"]).is_absolute():
            data["prompts_file"] = str((path.parent / data["prompts_file"]).resolve())
    data = apply_overrides(data, overrides or [])
    return build_config(data)
