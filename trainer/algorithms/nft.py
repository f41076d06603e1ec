"""DiffusionNFT (arXiv 2509.16117): negative-aware fine-tuning on the forward process.

With the old policy's prediction p_old (frozen) and the trained one p_theta, in the
model's own prediction space (epsilon, v or flow velocity),
    p+ = (1 - beta) p_old + beta p_theta,   p- = (1 + beta) p_old - beta p_theta,
each sample's reward becomes r = 1/2 + 1/2 clip(A / Z, -1, 1) and the loss on a
re-noised clean sample is r L(p+) + (1 - r) L(p-) (`forward_losses.nft_loss`), plus
train_kl_coef x the squared velocity distance to the reference. The old policy
samples, and follows the trained weights by EMA after every epoch.
"""

from __future__ import annotations

import torch

from trainer.algorithms.forward_losses import nft_loss, optimality_probability, velocity_sq_error
from trainer.algorithms.forward_process import (
    ForwardProcessAlgorithm,
    Pass,
    predicting_as,
    reference_model,
)


class NFT(ForwardProcessAlgorithm):
    name = "nft"
    samples_with_old_policy = True

    def anchor_models(self, family, unet, reference):
        models = {"old": predicting_as(unet, self.old.swapped_in())}
        if reference is not None and self.cfg.train_kl_coef > 0:
            models["ref"] = reference_model(reference, family)
        return models

    def pass_loss(self, family, pred, anchors, p: Pass, adv: torch.Tensor):
        cfg, beta = self.cfg, self.cfg.train_nft_beta
        old = anchors["old"]
        pos = (1 - beta) * old + beta * pred
        neg = (1 + beta) * old - beta * pred
        r = optimality_probability(adv, cfg.train_adv_clip_max)
        x0_pos = family.predicted_x0(pos, p.t, p.x_t)
        x0_neg = family.predicted_x0(neg, p.t, p.x_t)
        policy = nft_loss(x0_pos, x0_neg, p.x0, r, beta, cfg.train_adv_clip_max).mean()
        x0_theta = family.predicted_x0(pred, p.t, p.x_t)
        figures = {
            "policy_loss": policy.detach(),
            "r_mean": r.mean(),
            "r_abs_dev_mean": (r - 0.5).abs().mean(),
            "denoise_loss": velocity_sq_error(x0_theta, p.x0, p.s).mean().detach(),
        }
        loss = policy
        if "ref" in anchors:
            x0_ref = family.predicted_x0(anchors["ref"], p.t, p.x_t)
            kl = velocity_sq_error(x0_theta, x0_ref, p.s).mean()
            loss = loss + cfg.train_kl_coef * kl
            figures["kl_to_reference"] = kl.detach()
        return loss, figures
