"""What DiffusionNFT and AWM share: clean samples, re-noised at a few timesteps with
fresh noise, the denoiser trained on them, an old policy that follows by EMA.

Per inner epoch every sample gets `train_fp_timesteps` timesteps (stratified over
the kept part of the sampling schedule) and fresh noise from the epoch's generator,
so a resumed run draws the same. The predictions of the frozen models (old policy,
reference) do not change within an epoch and are computed once, before the updates.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from trainer.algorithms.base import Algorithm, NamedParams
from trainer.algorithms.clean_samples import CleanSamples, sample_clean
from trainer.algorithms.old_policy import OldPolicy
from trainer.config import TrainConfig
from trainer.ema import EMA
from trainer.families.base import DiffusionFamily, PromptEmbeds
from trainer.kl import ReferenceModel


@dataclass
class Entries:
    """One inner epoch's entries: sample `rows[i]` at schedule step `steps[i]`, noise `noise[i]`."""

    order: torch.Tensor  # (n,) shuffled sample order
    steps: torch.Tensor  # (n, k) schedule indices per sample
    noise: torch.Tensor  # (n, k, C, H, W)


@dataclass
class Pass:
    """A UNet pass over entries (sample rows[i], slot cols[i]), with their inputs."""

    rows: torch.Tensor
    cols: torch.Tensor
    t: torch.Tensor
    x0: torch.Tensor
    x_t: torch.Tensor
    s: torch.Tensor
    cond: PromptEmbeds


def fp_timesteps(cfg: TrainConfig) -> tuple[int, int]:
    """(kept schedule steps, timesteps trained per sample and inner epoch)."""
    kept = max(1, int(cfg.sample_num_steps * cfg.train_timestep_fraction))
    return kept, min(cfg.train_fp_timesteps or kept, kept)


def stratified_steps(n: int, kept: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """(n, k) schedule indices: one uniform draw in each of k equal strata of [0, kept)."""
    bounds = torch.linspace(0, kept, k + 1)
    u = torch.rand(n, k, generator=generator)
    steps = (bounds[:-1] + u * (bounds[1:] - bounds[:-1])).floor().long()
    return steps.clamp(max=kept - 1)


def plan_entries(
    n: int, shape: tuple[int, ...], cfg: TrainConfig, generator: torch.Generator
) -> Entries:
    kept, k = fp_timesteps(cfg)
    order = torch.randperm(n, generator=generator)
    steps = stratified_steps(n, kept, k, generator)
    return Entries(order, steps, torch.randn(n, k, *shape, generator=generator))


def make_pass(family: DiffusionFamily, samples: CleanSamples, entries: Entries, rows, cols) -> Pass:
    device = family.device
    t = family.pipeline.scheduler.timesteps.to(device)[entries.steps[rows, cols].to(device)]
    x0 = samples.latents[rows.to(samples.latents.device)].to(device)
    x_t = family.forward_noise(x0, entries.noise[rows, cols].to(device), t)
    cond = {k: v[rows.to(v.device)] for k, v in samples.embeds.items()}
    return Pass(rows, cols, t, x0, x_t, family.noise_level(t, x0), cond)


def conditional_prediction(family: DiffusionFamily, unet: torch.nn.Module, p: Pass) -> torch.Tensor:
    """The model's own (unguided) prediction: what the forward-process losses train."""
    out = family.predict(unet, family.model_input(p.x_t, p.t), p.t, p.cond, None, 1.0)
    return out.float()


def batch_passes(cfg: TrainConfig, idx: torch.Tensor, k: int) -> list[tuple[torch.Tensor, ...]]:
    """(rows, cols) of each UNet pass of a train batch: `train_timesteps_per_pass` slots each."""
    out = []
    for start in range(0, k, cfg.train_timesteps_per_pass):
        cols = torch.arange(start, min(k, start + cfg.train_timesteps_per_pass))
        out.append((idx.repeat_interleave(len(cols)), cols.repeat(len(idx))))
    return out


class ForwardProcessAlgorithm(Algorithm):
    """Clean samples in, denoising losses out; subclasses give the frozen predictions they
    need (`anchors`) and the loss of a pass (`pass_loss`)."""

    #: Whether the old policy samples (NFT) or the trained weights do (AWM).
    samples_with_old_policy: ClassVar[bool] = False

    def __init__(self, cfg: TrainConfig, trainable: NamedParams) -> None:
        super().__init__(cfg, trainable)
        self.old = OldPolicy(trainable, cfg.train_old_policy_decay_rate, cfg.old_policy_decay_max())

    def sample(
        self,
        family,
        unet,
        prompts,
        prompt_ids,
        seeds,
        num_steps,
        guidance_scale,
        eta,
        resolution,
        uncond=None,
        window=None,
        predict_x0_images=False,
    ) -> CleanSamples:
        use_old = self.old.swapped_in() if self.samples_with_old_policy else None
        with use_old or contextlib.nullcontext():
            return sample_clean(
                family,
                unet,
                prompts,
                prompt_ids,
                seeds,
                num_steps,
                guidance_scale,
                eta,
                resolution,
                uncond=uncond,
                stochastic=self.cfg.train_fp_stochastic_sampler,
            )

    def cat(self, parts: list[CleanSamples]) -> CleanSamples:
        return CleanSamples.cat(parts)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.old.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.old.load_state_dict(state)

    # -- what subclasses say -------------------------------------------------------------

    def anchor_models(
        self, family: DiffusionFamily, unet: torch.nn.Module, reference: ReferenceModel | None
    ) -> dict[str, contextlib.AbstractContextManager]:
        """Frozen predictors by name: a context under which `unet` predicts as that model."""
        raise NotImplementedError

    def pass_loss(
        self,
        family: DiffusionFamily,
        pred: torch.Tensor,
        anchors: dict[str, torch.Tensor],
        p: Pass,
        adv: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean loss over the pass's entries, and per-pass figures to log."""
        raise NotImplementedError

    # -- the shared loop -------------------------------------------------------------------

    @torch.no_grad()
    def compute_anchors(
        self, accelerator, family, unet, reference, samples: CleanSamples, entries: Entries
    ) -> dict[str, torch.Tensor]:
        """Every entry's prediction under each frozen model, (n, k, C, H, W) on the device."""
        n, k = entries.steps.shape
        out: dict[str, torch.Tensor] = {}
        for name, context in self.anchor_models(family, unet, reference).items():
            preds = torch.empty(n, k, *samples.latents.shape[1:], device=family.device)
            with context as model:
                for b in range(0, n, self.cfg.train_batch_size):
                    idx = torch.arange(b, min(n, b + self.cfg.train_batch_size))
                    for rows, cols in batch_passes(self.cfg, idx, k):
                        p = make_pass(family, samples, entries, rows, cols)
                        with accelerator.autocast():
                            pred = conditional_prediction(family, model, p)
                        preds[rows.to(family.device), cols.to(family.device)] = pred
            out[name] = preds
        return out

    def update(
        self,
        accelerator,
        family: DiffusionFamily,
        unet: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        samples: CleanSamples,
        advantages: torch.Tensor,
        cfg: TrainConfig,
        generator: torch.Generator,
        uncond: PromptEmbeds | None,
        *,
        reference: ReferenceModel | None = None,
        ema: EMA | None = None,
    ) -> dict[str, float]:
        shape = tuple(samples.latents.shape[1:])
        family.set_timesteps(cfg.sample_num_steps, shape)
        n = len(samples)
        _, k = fp_timesteps(cfg)
        passes = math.ceil(k / cfg.train_timesteps_per_pass)
        accelerator.gradient_accumulation_steps = cfg.train_gradient_accumulation_steps * passes
        advantages = advantages.to(family.device).float()
        if advantages.ndim != 1:
            raise ValueError("nft / awm take one advantage per sample")
        totals: dict[str, list[torch.Tensor]] = defaultdict(list)
        steps_taken = 0
        batches = n // cfg.train_batch_size
        bar = tqdm(
            total=cfg.train_num_inner_epochs * batches * k,
            desc="training",
            unit="step",
            leave=False,
            disable=not accelerator.is_local_main_process,
        )
        for _ in range(cfg.train_num_inner_epochs):
            entries = plan_entries(n, shape, cfg, generator)
            unet.eval()
            anchors = self.compute_anchors(accelerator, family, unet, reference, samples, entries)
            unet.train()
            for b in range(batches):
                idx = entries.order[b * cfg.train_batch_size : (b + 1) * cfg.train_batch_size]
                for rows, cols in batch_passes(cfg, idx, k):
                    m = len(rows) // len(idx)
                    p = make_pass(family, samples, entries, rows, cols)
                    dev_rows, dev_cols = rows.to(family.device), cols.to(family.device)
                    frozen = {name: a[dev_rows, dev_cols] for name, a in anchors.items()}
                    with accelerator.accumulate(unet), accelerator.autocast():
                        pred = conditional_prediction(family, unet, p)
                        loss, figures = self.pass_loss(
                            family, pred, frozen, p, advantages[dev_rows]
                        )
                        accelerator.backward(loss * (m * passes / k))
                        if accelerator.sync_gradients:
                            accelerator.clip_grad_norm_(unet.parameters(), cfg.train_max_grad_norm)
                            steps_taken += 1
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        if ema is not None and accelerator.sync_gradients:
                            ema.update()
                    totals["loss"].append(loss.detach())
                    for key, value in figures.items():
                        totals[key].append(value.detach())
                    bar.update(m)
        bar.close()
        unet.eval()
        out = {key: float(torch.stack(v).float().mean()) for key, v in totals.items()}
        out["old_policy_decay"] = self.old.update(steps_taken)
        return out


@contextlib.contextmanager
def predicting_as(model: torch.nn.Module, context: contextlib.AbstractContextManager):
    """`model` for the duration of `context` (old weights swapped in, adapters off...)."""
    with context:
        yield model


class _OnItsDevice(torch.nn.Module):
    """A frozen reference kept elsewhere (train_kl_reference_on_cpu): inputs go to it in
    float32, its output comes back to the caller's device and dtype."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model, self.device = model, device

    def forward(self, *args, **kwargs):
        like = next(a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor))

        def move(x):
            if not isinstance(x, torch.Tensor):
                return x
            return x.to(self.device, torch.float32 if x.is_floating_point() else x.dtype)

        out = self.model(*[move(a) for a in args], **{k: move(v) for k, v in kwargs.items()})
        return (out[0].to(like.device, like.dtype),)


@contextlib.contextmanager
def reference_model(reference: ReferenceModel, family: DiffusionFamily):
    """The reference as a module that takes and returns tensors on the family's device."""
    with reference.model() as ref:
        if reference.device != family.device:
            yield _OnItsDevice(ref, reference.device)
        else:
            yield ref
