"""AWM, Advantage Weighted Matching (arXiv 2509.25050): the pretraining loss, weighted
by the advantage, inside PPO's clipped ratio.

log pi(x0) is taken as minus the (generalised-Huber-weighted) velocity-matching loss
of the re-noised clean sample (`forward_losses.awm_log_prob`); the ratio is to its
value under the weights that sampled, computed before the epoch's first update (the
authors' on-policy setting, where it is the first pass's detached value). Plus
train_kl_coef x the squared velocity distance to the reference and
train_awm_ema_kl_coef x that to the old-policy EMA.
"""

from __future__ import annotations

import contextlib

import torch

from trainer.algorithms.forward_losses import awm_log_prob, awm_policy_loss, velocity_sq_error
from trainer.algorithms.forward_process import (
    ForwardProcessAlgorithm,
    Pass,
    predicting_as,
    reference_model,
)


class AWM(ForwardProcessAlgorithm):
    name = "awm"
    samples_with_old_policy = False

    def anchor_models(self, family, unet, reference):
        models = {"sampler": predicting_as(unet, contextlib.nullcontext())}
        if self.cfg.train_awm_ema_kl_coef > 0:
            models["ema"] = predicting_as(unet, self.old.swapped_in())
        if reference is not None and self.cfg.train_kl_coef > 0:
            models["ref"] = reference_model(reference, family)
        return models

    def pass_loss(self, family, pred, anchors, p: Pass, adv: torch.Tensor):
        cfg = self.cfg
        power = cfg.train_awm_weight_power
        x0_theta = family.predicted_x0(pred, p.t, p.x_t)
        x0_old = family.predicted_x0(anchors["sampler"], p.t, p.x_t)
        stats = awm_policy_loss(
            awm_log_prob(x0_theta, p.x0, p.s, power),
            awm_log_prob(x0_old, p.x0, p.s, power),
            adv,
            cfg.train_clip_range,
            cfg.train_adv_clip_max,
        )
        figures = {
            "policy_loss": stats.loss.detach(),
            "approx_kl": stats.approx_kl,
            "clipfrac": stats.clipfrac,
            "ratio_mean": stats.ratio_mean,
            "denoise_loss": velocity_sq_error(x0_theta, p.x0, p.s).mean().detach(),
        }
        loss = stats.loss
        for name, coef, key in (
            ("ref", cfg.train_kl_coef, "kl_to_reference"),
            ("ema", cfg.train_awm_ema_kl_coef, "kl_to_old_policy"),
        ):
            if name in anchors:
                anchor = family.predicted_x0(anchors[name], p.t, p.x_t)
                kl = velocity_sq_error(x0_theta, anchor, p.s).mean()
                loss = loss + coef * kl
                figures[key] = kl.detach()
        return loss, figures
