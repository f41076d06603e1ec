"""The PPO update over stored denoising trajectories (clipped ratio, as in DDPO)."""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from trainer.config import TrainConfig
from trainer.ddim_logprob import gaussian_log_prob
from trainer.ema import EMA
from trainer.families.base import DiffusionFamily, PromptEmbeds, expand_embeds
from trainer.kl import ReferenceModel, gaussian_kl_same_std
from trainer.sampling import Trajectories


@dataclass
class PPOStats:
    loss: torch.Tensor
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor
    ratio_mean: torch.Tensor
    log_ratio_abs_max: torch.Tensor


def ppo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    adv_clip_max: float,
) -> PPOStats:
    """Clipped surrogate loss; the ratio's clip keeps each update near the sampling policy."""
    advantages = advantages.clamp(-adv_clip_max, adv_clip_max)
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        log_ratio = log_prob - old_log_prob
        approx_kl = 0.5 * (log_ratio**2).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_range).float().mean()
    return PPOStats(loss, approx_kl, clipfrac, ratio.detach().mean(), log_ratio.abs().max())


@dataclass
class StepDistribution:
    """The Gaussian of stored steps under some weights, and the latents it must explain."""

    mean: torch.Tensor
    std: torch.Tensor
    next_latents: torch.Tensor

    def log_prob(self) -> torch.Tensor:
        return gaussian_log_prob(self.next_latents, self.mean, self.std)


def step_distribution(
    family: DiffusionFamily,
    unet: torch.nn.Module,
    batch: Trajectories,
    step_index: torch.Tensor,
    uncond: PromptEmbeds | None,
    guidance_scale: float,
    eta: float,
    rows: torch.Tensor | None = None,
) -> StepDistribution:
    """Step Gaussians of stored steps (row `rows[i]`, step `step_index[i]`) under `unet`.

    `rows` defaults to one step per sample; passing rows repeated lets several
    timesteps of the same samples go through the UNet in one batched pass.
    """
    if rows is None:
        rows = torch.arange(len(batch), device=step_index.device)
    latents = batch.latents[rows, step_index]
    timesteps = batch.timesteps[rows, step_index]
    cond = {k: v[rows] for k, v in batch.embeds.items()}
    if uncond is not None:
        uncond = expand_embeds(uncond, len(rows))
    out = family.predict(
        unet, family.model_input(latents, timesteps), timesteps, cond, uncond, guidance_scale
    )
    mean, std = family.step_mean_std(out.float(), timesteps, latents, eta)
    return StepDistribution(mean, std, batch.latents[rows, step_index + 1])


def recompute_log_prob(
    family: DiffusionFamily,
    unet: torch.nn.Module,
    batch: Trajectories,
    step_index: torch.Tensor,
    uncond: PromptEmbeds | None,
    guidance_scale: float,
    eta: float,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-prob under the current weights of stored steps (see `step_distribution`)."""
    dist = step_distribution(
        family, unet, batch, step_index, uncond, guidance_scale, eta, rows=rows
    )
    return dist.log_prob()


def trained_steps_per_sample(cfg: TrainConfig) -> int:
    """Denoising steps of each trajectory that PPO trains on (`train_timestep_fraction`).

    With an SDE window only its stochastic steps are stored, so only they are trained.
    """
    stochastic = cfg.sample_sde_window_size or cfg.sample_num_steps
    return max(1, int(stochastic * cfg.train_timestep_fraction))


def num_passes(cfg: TrainConfig) -> int:
    """UNet forward/backward passes per train batch."""
    return math.ceil(trained_steps_per_sample(cfg) / cfg.train_timesteps_per_pass)


#: Largest |log-prob at sampling - log-prob at the training batch shape| taken as "the same"
#: under reduced precision (bf16/fp16): over it, `auto` recomputes the old log-probs.
DRIFT_TOLERANCE = 1e-6
#: In float32, the share of the clip range a drift may take before `auto` recomputes.
FP32_CLIP_SHARE = 0.1


def recompute_tolerance(cfg: TrainConfig, device: torch.device) -> float:
    """The largest probed drift `auto` keeps the sampled log-probs for.

    A drift d offsets every log ratio by up to d, and PPO only notices a ratio
    through its clip at +-`train_clip_range`. In true float32 the kernels'
    rounding differences are ~1e-7 relative and the probed last step magnifies
    them most, so a drift under a tenth of the clip range cannot move a ratio
    across the clip by more than a tenth of it: recomputing would cost a
    forward per trained step (1.2-1.5x the update, docs/benchmarks.md) for
    nothing. Under bf16/fp16, or float32 on a GPU that allows TF32, one probe
    does not bound the rounding of the other steps (a drift of 0.2 sat on one
    step alone), so any drift there is recomputed.
    """
    tf32 = device.type == "cuda" and (
        torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    )
    if cfg.mixed_precision != "no" or tf32:
        return DRIFT_TOLERANCE
    return max(DRIFT_TOLERANCE, FP32_CLIP_SHARE * cfg.train_clip_range)


@dataclass
class TrainPass:
    """One UNet pass: entries (sample `idx[rows[i]]`, step `cols[i]`) of one train batch."""

    idx: torch.Tensor  # (size,) sample indices of the train batch
    rows: torch.Tensor  # (size * m,) row within the batch of each entry
    cols: torch.Tensor  # (size * m,) denoising step of each entry


def plan_inner_epoch(
    n: int, steps: int, cfg: TrainConfig, generator: torch.Generator, device: torch.device
) -> list[list[TrainPass]]:
    """Train batches (each a list of passes) of one inner epoch, as DDPO shuffles them.

    Samples are shuffled, and each sample's steps are permuted independently
    before `train_timestep_fraction` of them are kept.
    """
    kept = trained_steps_per_sample(cfg)
    order = torch.randperm(n, generator=generator)
    perms = torch.stack([torch.randperm(steps, generator=generator) for _ in range(n)])
    batches = []
    for b in range(n // cfg.train_batch_size):
        idx = order[b * cfg.train_batch_size : (b + 1) * cfg.train_batch_size]
        step_perm = perms[idx][:, :kept].to(device)  # (size, kept)
        passes = []
        for start in range(0, kept, cfg.train_timesteps_per_pass):
            cols = step_perm[:, start : start + cfg.train_timesteps_per_pass]  # (size, m)
            rows = torch.arange(len(idx), device=device).repeat_interleave(cols.shape[1])
            passes.append(TrainPass(idx.to(device), rows, cols.reshape(-1)))
        batches.append(passes)
    return batches


@torch.no_grad()
def rescore_old_log_probs(
    accelerator,
    family: DiffusionFamily,
    unet: torch.nn.Module,
    trajs: Trajectories,
    batches: list[list[TrainPass]],
    cfg: TrainConfig,
    uncond: PromptEmbeds | None,
) -> tuple[torch.Tensor, float]:
    """Old log-probs of the entries of `batches` recomputed at the training batch shape.

    Under reduced precision a kernel may round differently for a batch of 2 x
    sample_batch_size (sampling) than for 2 x train_batch_size x m (training),
    so the ratio would be off 1 before any update. Returns the updated copy of
    `trajs.log_probs` and the largest change made.
    """
    old = trajs.log_probs.clone()
    drift = 0.0
    for passes in batches:
        batch = trajs.select(passes[0].idx.cpu())
        for p in passes:
            with accelerator.autocast():
                lp = recompute_log_prob(
                    family,
                    unet,
                    batch,
                    p.cols,
                    uncond,
                    cfg.sample_guidance_scale,
                    cfg.sample_eta,
                    rows=p.rows,
                ).to(old.device)
            samples, cols = p.idx[p.rows].to(old.device), p.cols.to(old.device)
            drift = max(drift, float((lp - old[samples, cols]).abs().max()))
            old[samples, cols] = lp
    return old, drift


def ppo_update(
    accelerator,
    family: DiffusionFamily,
    unet: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trajs: Trajectories,
    advantages: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
    uncond: PromptEmbeds | None,
    *,
    reference: ReferenceModel | None = None,
    ema: EMA | None = None,
) -> dict[str, float]:
    """Inner epochs of PPO over this process's samples; returns averaged stats.

    `trajs` must have been sampled with the current weights: old log-probs may be
    recomputed from them (`train_recompute_old_log_probs`).

    Kept timesteps go through the UNet `train_timesteps_per_pass` at a time;
    each pass's loss is weighted so that the accumulated gradient equals DDPO's
    one-timestep-per-pass loop. One optimizer step per
    `train_gradient_accumulation_steps` train batches.

    `log_ratio_abs_max` is the largest |log ratio| seen (0 before any update
    means the ratio is exactly what PPO assumes); `old_log_prob_drift` is how far
    the sampling-time log-probs were from those at the training batch shape.
    With `reference` and `train_kl_coef` > 0 the loss adds beta x the KL to the
    reference (`kl_to_reference`); `ema` is updated after every optimizer step.
    """
    family.set_timesteps(cfg.sample_num_steps, tuple(trajs.latents.shape[2:]))
    n, steps = trajs.log_probs.shape
    kept = trained_steps_per_sample(cfg)
    passes = num_passes(cfg)
    accelerator.gradient_accumulation_steps = cfg.train_gradient_accumulation_steps * passes
    use_cfg = cfg.train_cfg and cfg.sample_guidance_scale != 1.0
    if use_cfg and uncond is None:
        raise ValueError("classifier-free guidance in training needs the unconditional embeds")
    train_uncond = uncond if use_cfg else None
    advantages = advantages.to(family.device)
    plans = [
        plan_inner_epoch(n, steps, cfg, generator, family.device)
        for _ in range(cfg.train_num_inner_epochs)
    ]
    unet.train()
    old_log_probs, drift, recomputed = _old_log_probs(
        accelerator, family, unet, trajs, plans[0], cfg, train_uncond
    )
    old_log_probs = old_log_probs.to(family.device)
    totals: dict[str, list[torch.Tensor]] = defaultdict(list)
    bar = tqdm(
        total=sum(len(batches) for batches in plans) * kept,
        desc="training",
        unit="step",
        leave=False,
        disable=not accelerator.is_local_main_process,
    )
    for batches in plans:
        for train_batch in batches:
            batch = trajs.select(train_batch[0].idx.cpu())
            # A frozen reference kept on the CPU reads its own copy, made once per batch.
            ref_batch = batch.to(reference.device) if reference is not None else None
            batch_adv = advantages[train_batch[0].idx]
            batch_old = old_log_probs[train_batch[0].idx]
            for p in train_batch:
                m = len(p.cols) // len(p.idx)
                with accelerator.accumulate(unet), accelerator.autocast():
                    ref_mean = None
                    if reference is not None and cfg.train_kl_coef > 0:
                        ref_mean = reference_step_mean(
                            family, reference, ref_batch, p, cfg, train_uncond
                        )
                    dist = step_distribution(
                        family,
                        unet,
                        batch,
                        p.cols,
                        train_uncond,
                        cfg.sample_guidance_scale,
                        cfg.sample_eta,
                        rows=p.rows,
                    )
                    stats = ppo_loss(
                        dist.log_prob(),
                        batch_old[p.rows, p.cols],
                        batch_adv[p.rows, p.cols] if batch_adv.ndim == 2 else batch_adv[p.rows],
                        cfg.train_clip_range,
                        cfg.train_adv_clip_max,
                    )
                    loss = stats.loss
                    if ref_mean is not None:
                        kl = gaussian_kl_same_std(dist.mean, ref_mean, dist.std).mean()
                        loss = loss + cfg.train_kl_coef * kl
                        totals["kl_to_reference"].append(kl.detach())
                    # accelerate divides by the number of passes; m / kept * passes
                    # turns that into DDPO's mean over kept timesteps.
                    accelerator.backward(loss * (m * passes / kept))
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(unet.parameters(), cfg.train_max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None and accelerator.sync_gradients:
                        ema.update()
                for key in ("loss", "approx_kl", "clipfrac", "ratio_mean", "log_ratio_abs_max"):
                    totals[key].append(getattr(stats, key).detach())
                bar.update(m)
    bar.close()
    unet.eval()
    out = {k: float(torch.stack(v).mean()) for k, v in totals.items()}
    out["log_ratio_abs_max"] = float(torch.stack(totals["log_ratio_abs_max"]).max())
    if drift is not None:
        out["old_log_prob_drift"] = drift
        out["old_log_prob_recomputed"] = float(recomputed)
    return out


@torch.no_grad()
def reference_step_mean(
    family: DiffusionFamily,
    reference: ReferenceModel,
    batch: Trajectories,
    p: TrainPass,
    cfg: TrainConfig,
    uncond: PromptEmbeds | None,
) -> torch.Tensor:
    """The reference model's step means for the entries of pass `p`, on the family's device.

    `batch` is on the reference's device already.
    """
    device = reference.device
    if device != family.device:  # a frozen copy kept on the CPU
        uncond = {k: v.to(device) for k, v in uncond.items()} if uncond is not None else None
        p = TrainPass(p.idx.to(device), p.rows.to(device), p.cols.to(device))
    on_cpu = device.type == "cpu" and family.dtype != torch.float32
    autocast = torch.autocast("cpu", dtype=family.dtype) if on_cpu else contextlib.nullcontext()
    with reference.model() as ref_unet, autocast:
        dist = step_distribution(
            family,
            ref_unet,
            batch,
            p.cols,
            uncond,
            cfg.sample_guidance_scale,
            cfg.sample_eta,
            rows=p.rows,
        )
    return dist.mean.to(family.device)


def _old_log_probs(
    accelerator,
    family: DiffusionFamily,
    unet: torch.nn.Module,
    trajs: Trajectories,
    first_epoch: list[list[TrainPass]],
    cfg: TrainConfig,
    uncond: PromptEmbeds | None,
) -> tuple[torch.Tensor, float | None, bool]:
    """The log-probs PPO divides by: as sampled, or recomputed (`train_recompute_old_log_probs`).

    `auto` probes one pass of each shape the first inner epoch uses and
    recomputes that whole inner epoch's entries only if the log-prob at the
    training batch shape moved by more than `recompute_tolerance`. The probe
    re-scores the last denoising step, whose small sigma magnifies a rounding
    difference most (a probe on random steps missed a drift of 0.2 confined to
    it). Returns (log-probs, drift or None if not probed, whether recomputed).
    """
    mode = cfg.train_recompute_old_log_probs
    if mode == "never" or not first_epoch:
        return trajs.log_probs, None, False
    if mode == "auto":
        probes: dict[int, TrainPass] = {}
        last_step = trajs.log_probs.shape[1] - 1
        for p in first_epoch[0]:  # the last pass of a batch may hold fewer timesteps
            probes.setdefault(
                len(p.rows), TrainPass(p.idx, p.rows, torch.full_like(p.cols, last_step))
            )
        _, drift = rescore_old_log_probs(
            accelerator, family, unet, trajs, [[p] for p in probes.values()], cfg, uncond
        )
        if drift <= recompute_tolerance(cfg, family.device):
            return trajs.log_probs, drift, False
    old, drift = rescore_old_log_probs(accelerator, family, unet, trajs, first_epoch, cfg, uncond)
    return old, drift, True
