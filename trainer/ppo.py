"""The PPO update over stored denoising trajectories (clipped ratio, as in DDPO)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from trainer.config import TrainConfig
from trainer.ddim_logprob import ddim_step_with_logprob
from trainer.families.base import DiffusionFamily, PromptEmbeds, expand_embeds
from trainer.sampling import Trajectories


@dataclass
class PPOStats:
    loss: torch.Tensor
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor
    ratio_mean: torch.Tensor


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
        approx_kl = 0.5 * ((log_prob - old_log_prob) ** 2).mean()
        clipfrac = ((ratio - 1.0).abs() > clip_range).float().mean()
    return PPOStats(loss, approx_kl, clipfrac, ratio.detach().mean())


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
    """Log-prob under the current weights of stored steps (row `rows[i]`, step `step_index[i]`).

    `rows` defaults to one step per sample; passing rows repeated lets several
    timesteps of the same samples go through the UNet in one batched pass.
    """
    if rows is None:
        rows = torch.arange(len(batch), device=step_index.device)
    latents = batch.latents[rows, step_index]
    next_latents = batch.latents[rows, step_index + 1]
    timesteps = batch.timesteps[rows, step_index]
    cond = {k: v[rows] for k, v in batch.embeds.items()}
    if uncond is not None:
        uncond = expand_embeds(uncond, len(rows))
    scheduler = family.pipeline.scheduler
    out = family.predict(
        unet,
        scheduler.scale_model_input(latents, timesteps),
        timesteps,
        cond,
        uncond,
        guidance_scale,
    )
    _, log_prob = ddim_step_with_logprob(
        scheduler,
        out.float(),
        timesteps,
        latents.float(),
        eta=eta,
        prev_sample=next_latents.float(),
    )
    return log_prob


def num_train_timesteps(cfg: TrainConfig) -> int:
    return max(1, int(cfg.sample_num_steps * cfg.train_timestep_fraction))


def num_passes(cfg: TrainConfig) -> int:
    """UNet forward/backward passes per train batch."""
    return math.ceil(num_train_timesteps(cfg) / cfg.train_timesteps_per_pass)


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
) -> dict[str, float]:
    """Inner epochs of PPO over this process's samples; returns averaged stats.

    Samples are shuffled, and each sample's timesteps are permuted independently
    before `train_timestep_fraction` of them are kept, as in DDPO. Kept timesteps
    go through the UNet `train_timesteps_per_pass` at a time; each pass's loss is
    weighted so that the accumulated gradient equals DDPO's one-timestep-per-pass
    loop. One optimizer step per `train_gradient_accumulation_steps` train batches.
    """
    scheduler = family.pipeline.scheduler
    scheduler.set_timesteps(cfg.sample_num_steps, device=family.device)
    n, steps = trajs.log_probs.shape
    kept = num_train_timesteps(cfg)
    passes = num_passes(cfg)
    accelerator.gradient_accumulation_steps = cfg.train_gradient_accumulation_steps * passes
    use_cfg = cfg.train_cfg and cfg.sample_guidance_scale != 1.0
    if use_cfg and uncond is None:
        raise ValueError("classifier-free guidance in training needs the unconditional embeds")
    advantages = advantages.to(family.device)
    totals: dict[str, list[torch.Tensor]] = defaultdict(list)
    unet.train()

    batches_per_inner = n // cfg.train_batch_size
    bar = tqdm(
        total=cfg.train_num_inner_epochs * batches_per_inner * kept,
        desc="training",
        unit="step",
        leave=False,
        disable=not accelerator.is_local_main_process,
    )
    for _ in range(cfg.train_num_inner_epochs):
        order = torch.randperm(n, generator=generator)
        perms = torch.stack([torch.randperm(steps, generator=generator) for _ in range(n)])
        for b in range(batches_per_inner):
            idx = order[b * cfg.train_batch_size : (b + 1) * cfg.train_batch_size]
            batch = trajs.select(idx)
            size = len(idx)
            batch_adv = advantages[idx.to(family.device)]
            step_perm = perms[idx][:, :kept].to(family.device)  # (size, kept)
            for start in range(0, kept, cfg.train_timesteps_per_pass):
                cols = step_perm[:, start : start + cfg.train_timesteps_per_pass]  # (size, m)
                m = cols.shape[1]
                rows = torch.arange(size, device=family.device).repeat_interleave(m)
                cols = cols.reshape(-1)
                old_log_prob = batch.log_probs[rows, cols]
                with accelerator.accumulate(unet), accelerator.autocast():
                    log_prob = recompute_log_prob(
                        family,
                        unet,
                        batch,
                        cols,
                        uncond if use_cfg else None,
                        cfg.sample_guidance_scale,
                        cfg.sample_eta,
                        rows=rows,
                    )
                    stats = ppo_loss(
                        log_prob,
                        old_log_prob,
                        batch_adv[rows],
                        cfg.train_clip_range,
                        cfg.train_adv_clip_max,
                    )
                    # accelerate divides by the number of passes; m / kept * passes
                    # turns that into DDPO's mean over kept timesteps.
                    accelerator.backward(stats.loss * (m * passes / kept))
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(unet.parameters(), cfg.train_max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for key in ("loss", "approx_kl", "clipfrac", "ratio_mean"):
                    totals[key].append(getattr(stats, key).detach())
                bar.update(m)
    bar.close()
    unet.eval()
    return {k: float(torch.stack(v).mean()) for k, v in totals.items()}
