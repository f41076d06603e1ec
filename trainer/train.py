"""The DDPO loop: sample, score over HTTP (overlapped), normalise, PPO, checkpoint."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from trainer.advantages import RewardStatTrackers, epoch_advantages_by_reward
from trainer.algorithms import Algorithm, build_algorithm
from trainer.checkpoint import (
    ResumeState,
    latest_checkpoint,
    load_algorithm_state,
    load_checkpoint,
    save_checkpoint,
)
from trainer.config import TrainConfig
from trainer.ema import EMA
from trainer.families import DiffusionFamily, load_family
from trainer.families.base import PromptEmbeds
from trainer.kl import ReferenceModel
from trainer.lora import add_lora, save_lora
from trainer.ppo import num_passes
from trainer.prompt_schedule import batch_prompt_ids, check_group_layout, group_ids
from trainer.reward_client import RewardClient, RewardResult, gather_results
from trainer.rng_state import gather_rng_states
from trainer.run_log import RunLog
from trainer.sampling import Trajectories, sample_seed
from trainer.sde_window import sde_window
from trainer.stat_tracker import PerPromptStatTracker
from trainer.step_baseline import baseline_figures, step_advantages
from trainer.thread_guard import ThreadGuard

log = logging.getLogger(__name__)

_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: PPO statistics whose largest value over ranks is logged; every other one is averaged.
_MAX_STATS = ("log_ratio_abs_max", "old_log_prob_drift")


@dataclass
class TrainResult:
    output_dir: Path
    epochs_run: int
    final_weights: Path | None


@dataclass
class Run:
    """What the epoch loop works with: set up once, passed to each phase."""

    cfg: TrainConfig
    accelerator: Accelerator
    family: DiffusionFamily
    unet: torch.nn.Module  # accelerate-wrapped
    optimizer: torch.optim.Optimizer
    client: RewardClient
    tracker: PerPromptStatTracker
    prompts: list[str]
    resolution: int
    uncond: PromptEmbeds
    output_dir: Path
    algorithm: Algorithm  # train_algorithm: what is sampled and kept, and the update
    reference: ReferenceModel | None = None  # with train_kl_coef > 0
    ema: EMA | None = None  # with ema_decay

    @property
    def rank(self) -> int:
        return self.accelerator.process_index


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


def prepare_trainable_unet(
    cfg: TrainConfig, family: DiffusionFamily, accelerator: Accelerator
) -> torch.nn.Module:
    """The UNet as it is trained: LoRA on weights in the mixed-precision dtype, or all fp32."""
    unet = family.unet
    if cfg.use_lora:
        unet.to(accelerator.device, dtype=_DTYPES[cfg.mixed_precision])
        add_lora(unet, cfg)
    else:
        unet.to(accelerator.device, dtype=torch.float32)
        unet.requires_grad_(True)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet


def optimizer_steps_per_epoch(cfg: TrainConfig) -> int:
    """Optimizer steps in one epoch (the config guarantees accumulation divides the batches)."""
    samples = cfg.sample_batch_size * cfg.sample_num_batches_per_epoch
    batches = samples // cfg.train_batch_size
    return cfg.train_num_inner_epochs * batches // cfg.train_gradient_accumulation_steps


def sample_epoch(run: Run, epoch: int) -> tuple[Trajectories, list, list]:
    """Sample this rank's batches; each is sent for scoring as soon as it is decoded.

    The second list holds the futures of the step baselines' predicted images
    (`train_step_baseline`; empty without), one per batch, each sample's steps in a row.
    """
    cfg, acc = run.cfg, run.accelerator
    run.unet.eval()
    parts: list[Trajectories] = []
    futures = []
    value_futures = []
    for b in tqdm(
        range(cfg.sample_num_batches_per_epoch),
        desc=f"epoch {epoch}: sampling",
        leave=False,
        disable=not acc.is_local_main_process,
    ):
        ids = batch_prompt_ids(cfg, len(run.prompts), epoch, run.rank, acc.num_processes, b)
        seeds = [sample_seed(cfg.seed, epoch, run.rank, b, i) for i in range(len(ids))]
        with acc.autocast():
            traj = run.algorithm.sample(
                run.family,
                run.unet,
                [run.prompts[i] for i in ids],
                torch.tensor(ids),
                seeds,
                cfg.sample_num_steps,
                cfg.sample_guidance_scale,
                cfg.sample_eta,
                run.resolution,
                uncond=run.uncond,
                window=sde_window(cfg, epoch, run.rank, b),
                predict_x0_images=cfg.train_step_baseline,
            )
        parts.append(traj)
        sample_ids = [f"e{epoch}-r{run.rank}-b{b}-{i}" for i in range(len(ids))]
        futures.append(run.client.submit(traj.images, traj.prompts, ids=sample_ids))
        if traj.x0_images is not None:
            steps = traj.x0_images.shape[1]
            value_futures.append(
                run.client.submit(
                    traj.x0_images.reshape(-1, *traj.x0_images.shape[2:]),
                    [p for p in traj.prompts for _ in range(steps)],
                    ids=[f"{sid}-x0-{t}" for sid in sample_ids for t in range(steps)],
                )
            )
    return run.algorithm.cat(parts), futures, value_futures


def epoch_advantages(
    run: Run, trajs: Trajectories, rewards: RewardResult, values: np.ndarray | None = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """This rank's advantages, from every rank's rewards; and the reward figures to log.

    With `values` (this rank's (n, steps) step baselines) the advantages are per step.
    """
    acc = run.accelerator
    all_rewards = acc.gather(torch.as_tensor(rewards.rewards, device=acc.device)).cpu().numpy()
    all_ids = acc.gather(trajs.prompt_ids.to(acc.device)).cpu().numpy()
    groups = group_ids(run.cfg, 0, len(all_rewards))
    per_scorer = {
        name: acc.gather(torch.as_tensor(v, device=acc.device)).cpu().numpy()
        for name, v in sorted(rewards.per_scorer.items())
    }
    step_figures: dict[str, float] = {}
    if values is None:
        adv, per_reward_adv = epoch_advantages_by_reward(
            run.cfg, run.tracker, [run.prompts[i] for i in all_ids], all_rewards, per_scorer, groups
        )
    else:
        all_values = acc.gather(torch.as_tensor(values, device=acc.device)).cpu().numpy()
        adv, per_reward_adv = step_advantages(run.cfg, all_rewards, all_values, groups), {}
        step_figures = baseline_figures(all_rewards, all_values)
    adv_t = torch.as_tensor(adv, dtype=torch.float32)
    adv_local = adv_t.reshape(acc.num_processes, -1, *adv_t.shape[1:])[run.rank]
    counts = torch.tensor(
        [rewards.num_rated, rewards.num_dropped, rewards.num_filled], device=acc.device
    )
    num_rated, num_dropped, num_filled = acc.reduce(counts, "sum").tolist()
    scored = all_rewards[np.isfinite(all_rewards)]
    figures = {
        "reward_mean": float(scored.mean()) if scored.size else float("nan"),
        "reward_std": float(scored.std()) if scored.size else float("nan"),
        "num_samples": int(all_rewards.size),
        "num_dropped": int(num_dropped),
        "num_filled": int(num_filled),
        "num_rated": int(num_rated),
        **{f"reward_{k}_mean": float(np.nanmean(v)) for k, v in per_scorer.items()},
        **{f"reward_{k}_std": float(np.nanstd(v)) for k, v in per_scorer.items()},
        # How hard each reward pulls (before its weight): 0 where its groups are all ties.
        **{f"advantage_{k}_abs_mean": float(np.abs(a).mean()) for k, a in per_reward_adv.items()},
        **step_figures,
    }
    return adv_local, figures


def update(run: Run, epoch: int, trajs: Trajectories, adv: torch.Tensor) -> dict[str, float]:
    """The algorithm's update on this rank's samples; statistics averaged (or maxed) over ranks."""
    gen = torch.Generator().manual_seed(sample_seed(run.cfg.seed, epoch, run.rank, 2**31, 0))
    stats = run.algorithm.update(
        run.accelerator,
        run.family,
        run.unet,
        run.optimizer,
        trajs,
        adv,
        run.cfg,
        gen,
        run.uncond,
        reference=run.reference,
        ema=run.ema,
    )
    return global_stats(run.accelerator, stats)


def global_stats(accelerator: Accelerator, stats: dict[str, float]) -> dict[str, float]:
    """The largest value over ranks for maxima, the mean over ranks for everything else."""
    out: dict[str, float] = {}
    device = accelerator.device
    means = [k for k in stats if k not in _MAX_STATS]
    if means:
        local = torch.tensor([stats[k] for k in means], dtype=torch.float64, device=device)
        out.update(zip(means, accelerator.reduce(local, "mean").tolist(), strict=True))
    maxima = [k for k in _MAX_STATS if k in stats]
    if maxima:
        local = torch.tensor([[stats[k] for k in maxima]], dtype=torch.float64, device=device)
        out.update(zip(maxima, accelerator.gather(local).max(dim=0).values.tolist(), strict=True))
    return out


def save_epoch_checkpoint(run: Run, epoch: int, global_step: int) -> None:
    """Every rank hands over its RNG state; the main process writes the checkpoint."""
    acc = run.accelerator
    acc.wait_for_everyone()
    rng_states = gather_rng_states()
    if acc.is_main_process:
        save_checkpoint(
            run.output_dir,
            pipeline_cls=type(run.family.pipeline),
            unet=acc.unwrap_model(run.unet),
            denoiser_name=run.family.denoiser_name,
            optimizer=run.optimizer.optimizer,
            scaler=acc.scaler,
            rng_states=rng_states,
            ema=run.ema,
            state=ResumeState(
                epoch=epoch + 1,
                global_step=global_step,
                stat_tracker=run.tracker.state_dict(),
                family=run.family.name,
                use_lora=run.cfg.use_lora,
            ),
            keep=run.cfg.num_checkpoint_limit,
            algorithm_state=run.algorithm.state_dict(),
        )
    acc.wait_for_everyone()


def resume_from_checkpoint(run: Run) -> ResumeState:
    ckpt = latest_checkpoint(run.output_dir)
    if ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint under {run.output_dir / 'checkpoints'}")
    acc = run.accelerator
    state = load_checkpoint(
        ckpt,
        acc.unwrap_model(run.unet),
        run.optimizer.optimizer,
        scaler=acc.scaler,
        rank=run.rank,
        world_size=acc.num_processes,
        ema=run.ema,
    )
    run.tracker.load_state_dict(state.stat_tracker)
    run.algorithm.load_state_dict(load_algorithm_state(ckpt))
    if acc.is_main_process:
        log.info("resumed from %s at epoch %d", ckpt, state.epoch)
    return state


def save_final_weights(run: Run) -> Path | None:
    """The trained weights in diffusers format; the moving average of them with ema_decay."""
    if not run.accelerator.is_main_process:
        return None
    unet = run.accelerator.unwrap_model(run.unet)
    with run.ema.swapped_in() if run.ema is not None else contextlib.nullcontext():
        if run.cfg.use_lora:
            return save_lora(type(run.family.pipeline), unet, run.output_dir / "lora")
        final = run.output_dir / run.family.denoiser_name
        unet.save_pretrained(final, safe_serialization=True)
    return final


def setup_run(cfg: TrainConfig, accelerator: Accelerator, client: RewardClient) -> Run:
    set_seed(cfg.seed, device_specific=True)
    family = load_family(
        cfg.pretrained_model,
        cfg.pretrained_revision,
        accelerator.device,
        _DTYPES[cfg.mixed_precision],
    )
    resolution = cfg.resolution or family.default_resolution
    check_group_layout(cfg, accelerator.num_processes)
    unet = prepare_trainable_unet(cfg, family, accelerator)
    trainable = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    optimizer = _build_optimizer(cfg, [p for _, p in trainable])
    reference = None
    if cfg.train_kl_coef > 0:  # before any update (and before a resume loads weights)
        reference = ReferenceModel(unet, cfg.use_lora, keep_on_cpu=cfg.train_kl_reference_on_cpu)
    ema = EMA(trainable, cfg.ema_decay) if cfg.ema_decay is not None else None
    unet, optimizer = accelerator.prepare(unet, optimizer)
    return Run(
        cfg=cfg,
        accelerator=accelerator,
        family=family,
        unet=unet,
        optimizer=optimizer,
        client=client,
        tracker=RewardStatTrackers(
            cfg.per_prompt_stat_tracking_buffer_size, cfg.per_prompt_stat_tracking_min_count
        ),
        prompts=cfg.prompt_list(),
        resolution=resolution,
        uncond=family.encode_unconditional(resolution),
        output_dir=Path(cfg.output_dir),
        algorithm=build_algorithm(cfg, trainable),
        reference=reference,
        ema=ema,
    )


def precision_for_device(cfg: TrainConfig, cuda: bool) -> TrainConfig:
    """fp16 without a GPU trains in float32: CPU fp16 kernels are emulated (a tiny UNet
    pass measured 26x slower), and the fp16 default is meant for GPUs."""
    if cuda or cfg.mixed_precision != "fp16":
        return cfg
    log.warning(
        "mixed_precision = fp16 has no fast kernels on a CPU (about 26x slower there); "
        'training in float32 (set mixed_precision = "no" or "bf16" to choose)'
    )
    return cfg.model_copy(update={"mixed_precision": "no"})


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Run DDPO as configured; safe to call under `accelerate launch` / torchrun."""
    cfg = precision_for_device(cfg, torch.cuda.is_available())
    accelerator = Accelerator(
        # Without a GPU, accelerate only sets up gloo multi-process when told it is on CPU.
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.train_gradient_accumulation_steps * num_passes(cfg),
    )
    client = RewardClient(cfg.rewards, deadline_s=cfg.reward_epoch_deadline_s)
    try:
        client.check_ready()  # fail fast, before minutes of model loading
        run = setup_run(cfg, accelerator, client)
    except BaseException:
        client.close()
        raise
    start_epoch, global_step = 0, 0
    if resume:
        state = resume_from_checkpoint(run)
        start_epoch, global_step = state.epoch, state.global_step
    run_log = RunLog(run.output_dir, enabled=accelerator.is_main_process, start_epoch=start_epoch)
    if accelerator.is_main_process:
        (run.output_dir / "config.json").write_text(cfg.model_dump_json(indent=1))

    guard = ThreadGuard()
    try:
        for epoch in range(start_epoch, cfg.num_epochs):
            t0 = time.perf_counter()
            trajs, futures, value_futures = sample_epoch(run, epoch)
            t_sampled = time.perf_counter()
            rewards, wait_s = gather_results(futures)
            values = None
            if value_futures:
                scored, value_wait_s = gather_results(value_futures)
                values, wait_s = scored.rewards.reshape(len(trajs), -1), wait_s + value_wait_s
            t_rewarded = time.perf_counter()
            adv, reward_figures = epoch_advantages(run, trajs, rewards, values)
            stats = update(run, epoch, trajs, adv)
            global_step += optimizer_steps_per_epoch(cfg)
            t_trained = time.perf_counter()
            last = epoch + 1 == cfg.num_epochs
            if (epoch + 1) % cfg.save_freq == 0 or last:
                save_epoch_checkpoint(run, epoch, global_step)
            record = {
                "epoch": epoch,
                **reward_figures,
                **stats,
                "time_sampling_s": t_sampled - t0,
                "time_reward_wait_s": wait_s,
                "time_training_s": t_trained - t_rewarded,
                "global_step": global_step,
                "time_total_s": time.perf_counter() - t0,
                "cpu_threads": torch.get_num_threads(),
            }
            guard.after_epoch((t_sampled - t0) + (t_trained - t_rewarded))
            log_images = cfg.log_images_every and epoch % cfg.log_images_every == 0
            run_log.write_epoch(
                record, images=trajs.images if log_images else None, prompts=trajs.prompts
            )
    finally:
        client.close()
        run_log.close()

    final = save_final_weights(run)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(run.output_dir, cfg.num_epochs - start_epoch, final)
