"""The DDPO loop: sample, score over HTTP (overlapped), normalise, PPO, checkpoint."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from trainer.checkpoint import (
    ResumeState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from trainer.config import TrainConfig
from trainer.families import DiffusionFamily, load_family
from trainer.lora import add_lora, save_lora
from trainer.ppo import num_passes, ppo_update
from trainer.reward_client import RewardClient, gather_results
from trainer.run_log import RunLog
from trainer.sampling import Trajectories, sample_seed, sample_trajectories
from trainer.stat_tracker import PerPromptStatTracker, normalize_global

log = logging.getLogger(__name__)

_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    output_dir: Path
    epochs_run: int
    final_weights: Path | None


def _build_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.train_use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise RuntimeError(
                "train_use_8bit_adam needs bitsandbytes: pip install bitsandbytes"
            ) from exc
        opt_cls = bnb.optim.AdamW8bit
    else:
        opt_cls = torch.optim.AdamW
    return opt_cls(
        params,
        lr=cfg.train_learning_rate,
        betas=(cfg.train_adam_beta1, cfg.train_adam_beta2),
        weight_decay=cfg.train_adam_weight_decay,
        eps=cfg.train_adam_epsilon,
    )


def _pick_prompts(
    cfg: TrainConfig, prompts: list[str], epoch: int, rank: int, batch: int
) -> list[int]:
    rng = np.random.default_rng([cfg.seed, epoch, rank, batch, 7])
    return rng.integers(0, len(prompts), size=cfg.sample_batch_size).tolist()


def advantages(
    cfg: TrainConfig, tracker: PerPromptStatTracker, prompts: list[str], rewards: np.ndarray
) -> np.ndarray:
    """Normalised advantages; samples without a reward (NaN: dropped) get 0.

    Dropped samples stay in the PPO batch with zero advantage, so they exert no
    gradient while every rank keeps the same number of train batches (DDP needs that).
    """
    adv = np.zeros(len(rewards), dtype=np.float32)
    ok = np.isfinite(rewards)
    if not ok.any():
        return adv
    if cfg.per_prompt_stat_tracking:
        adv[ok] = tracker.update([p for p, k in zip(prompts, ok, strict=True) if k], rewards[ok])
    else:
        adv[ok] = normalize_global(rewards[ok])
    return adv


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Run DDPO as configured; safe to call under `accelerate launch` / torchrun."""
    accelerator = Accelerator(
        # Without a GPU, accelerate only sets up gloo multi-process when told it is on CPU.
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.train_gradient_accumulation_steps * num_passes(cfg),
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    client = RewardClient(cfg.rewards, deadline_s=cfg.reward_epoch_deadline_s)
    try:
        client.check_ready()  # fail fast, before minutes of model loading
    except BaseException:
        client.close()
        raise
    set_seed(cfg.seed, device_specific=True)
    output_dir = Path(cfg.output_dir)
    prompts = cfg.prompt_list()

    weight_dtype = _DTYPES[cfg.mixed_precision]
    family: DiffusionFamily = load_family(
        cfg.pretrained_model, cfg.pretrained_revision, accelerator.device, weight_dtype
    )
    resolution = cfg.resolution or family.default_resolution
    unet = family.unet
    if cfg.use_lora:
        unet.to(accelerator.device, dtype=weight_dtype)
        add_lora(unet, cfg)
    else:
        unet.to(accelerator.device, dtype=torch.float32)
        unet.requires_grad_(True)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = _build_optimizer(cfg, params)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    unwrapped = accelerator.unwrap_model(unet)

    tracker = PerPromptStatTracker(
        cfg.per_prompt_stat_tracking_buffer_size, cfg.per_prompt_stat_tracking_min_count
    )
    start_epoch, global_step = 0, 0
    if resume:
        ckpt = latest_checkpoint(output_dir)
        if ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {output_dir / 'checkpoints'}")
        state = load_checkpoint(ckpt, unwrapped, optimizer.optimizer)
        start_epoch, global_step = state.epoch, state.global_step
        tracker.load_state_dict(state.stat_tracker)
        if accelerator.is_main_process:
            log.info("resumed from %s at epoch %d", ckpt, start_epoch)

    run_log = RunLog(output_dir, enabled=accelerator.is_main_process, start_epoch=start_epoch)
    if accelerator.is_main_process:
        (output_dir / "config.json").write_text(cfg.model_dump_json(indent=1))

    uncond = family.encode_unconditional(resolution)
    pipeline_cls = type(family.pipeline)
    try:
        for epoch in range(start_epoch, cfg.num_epochs):
            t0 = time.perf_counter()
            unet.eval()
            parts: list[Trajectories] = []
            futures = []
            for b in tqdm(
                range(cfg.sample_num_batches_per_epoch),
                desc=f"epoch {epoch}: sampling",
                leave=False,
                disable=not accelerator.is_local_main_process,
            ):
                ids = _pick_prompts(cfg, prompts, epoch, rank, b)
                seeds = [sample_seed(cfg.seed, epoch, rank, b, i) for i in range(len(ids))]
                with accelerator.autocast():
                    traj = sample_trajectories(
                        family,
                        unet,
                        [prompts[i] for i in ids],
                        torch.tensor(ids),
                        seeds,
                        cfg.sample_num_steps,
                        cfg.sample_guidance_scale,
                        cfg.sample_eta,
                        resolution,
                        uncond=uncond,
                    )
                parts.append(traj)
                futures.append(
                    client.submit(
                        traj.images,
                        traj.prompts,
                        ids=[f"e{epoch}-r{rank}-b{b}-{i}" for i in range(len(ids))],
                    )
                )
            t_sampled = time.perf_counter()
            rewards_result, wait_s = gather_results(futures)
            t_rewarded = time.perf_counter()
            trajs = Trajectories.cat(parts)

            local_rewards = torch.as_tensor(rewards_result.rewards, device=accelerator.device)
            all_rewards = accelerator.gather(local_rewards).cpu().numpy()
            all_ids = accelerator.gather(trajs.prompt_ids.to(accelerator.device)).cpu().numpy()
            adv = advantages(cfg, tracker, [prompts[i] for i in all_ids], all_rewards)
            adv = torch.as_tensor(adv, dtype=torch.float32).reshape(world, -1)[rank]
            counts = torch.tensor(
                [rewards_result.num_rated, rewards_result.num_dropped, rewards_result.num_filled],
                device=accelerator.device,
            )
            num_rated, num_dropped, num_filled = accelerator.reduce(counts, "sum").tolist()
            scored = all_rewards[np.isfinite(all_rewards)]

            gen = torch.Generator().manual_seed(sample_seed(cfg.seed, epoch, rank, 2**31, 0))
            stats = ppo_update(accelerator, family, unet, optimizer, trajs, adv, cfg, gen, uncond)
            global_step += cfg.train_num_inner_epochs * (len(trajs) // cfg.train_batch_size)
            t_trained = time.perf_counter()

            per_scorer_all = {
                name: accelerator.gather(torch.as_tensor(v, device=accelerator.device))
                .cpu()
                .numpy()
                for name, v in sorted(rewards_result.per_scorer.items())
            }
            record = {
                "epoch": epoch,
                "reward_mean": float(scored.mean()) if scored.size else float("nan"),
                "reward_std": float(scored.std()) if scored.size else float("nan"),
                "num_samples": int(all_rewards.size),
                "num_dropped": int(num_dropped),
                "num_filled": int(num_filled),
                "num_rated": int(num_rated),
                **{f"reward_{k}_mean": float(np.nanmean(v)) for k, v in per_scorer_all.items()},
                **stats,
                "time_sampling_s": t_sampled - t0,
                "time_reward_wait_s": wait_s,
                "time_training_s": t_trained - t_rewarded,
                "global_step": global_step,
            }
            last = epoch + 1 == cfg.num_epochs
            if (epoch + 1) % cfg.save_freq == 0 or last:
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    save_checkpoint(
                        output_dir,
                        pipeline_cls=pipeline_cls,
                        unet=unwrapped,
                        optimizer=optimizer.optimizer,
                        state=ResumeState(
                            epoch=epoch + 1,
                            global_step=global_step,
                            stat_tracker=tracker.state_dict(),
                            family=family.name,
                            use_lora=cfg.use_lora,
                        ),
                        keep=cfg.num_checkpoint_limit,
                    )
                accelerator.wait_for_everyone()
            record["time_total_s"] = time.perf_counter() - t0
            images = (
                trajs.images if cfg.log_images_every and epoch % cfg.log_images_every == 0 else None
            )
            run_log.write_epoch(record, images=images, prompts=trajs.prompts)
    finally:
        client.close()
        run_log.close()

    final = None
    if accelerator.is_main_process:
        if cfg.use_lora:
            final = save_lora(pipeline_cls, unwrapped, output_dir / "lora")
        else:
            final = output_dir / "unet"
            unwrapped.save_pretrained(final, safe_serialization=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(output_dir, cfg.num_epochs - start_epoch, final)
