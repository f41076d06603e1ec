"""FLUX.1: CLIP pooled and T5 embeddings, packed 2x2 latents with image ids, guidance embedding.

Trajectories keep the latents unpacked (C, H, W), as the VAE sees them; packing
into the transformer's token sequence happens around each forward pass only.
FLUX.1-dev is guidance-distilled: the guidance scale goes into the transformer
as an input, one pass, and the CFG negative is never used.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from trainer.families.base import PromptEmbeds
from trainer.families.flow_matching import FlowMatchingFamily, t5_length


class FluxFamily(FlowMatchingFamily):
    name = "flux"

    @property
    def default_resolution(self) -> int:
        return int(self.pipeline.default_sample_size) * self.vae_scale_factor

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        channels = int(self.denoiser.config.in_channels) // 4  # 2x2 patches packed per token
        side = 2 * (resolution // (self.vae_scale_factor * 2))
        return channels, side, side

    def set_timesteps(self, num_steps: int, latent_shape: tuple[int, ...]) -> None:
        """FluxPipeline's schedule: sigmas 1 .. 1/N, shifted by mu from the token count."""
        scheduler = self.pipeline.scheduler
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        mu = None
        if scheduler.config.get("use_dynamic_shifting", False):
            tokens = (int(latent_shape[-2]) // 2) * (int(latent_shape[-1]) // 2)
            mu = calculate_shift(
                tokens,
                scheduler.config.get("base_image_seq_len", 256),
                scheduler.config.get("max_image_seq_len", 4096),
                scheduler.config.get("base_shift", 0.5),
                scheduler.config.get("max_shift", 1.15),
            )
        scheduler.set_timesteps(num_steps, device=self.device, sigmas=sigmas, mu=mu)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], resolution: int) -> PromptEmbeds:
        embeds, pooled, _ = self.pipeline.encode_prompt(
            prompts, device=self.device, max_sequence_length=t5_length(self.pipeline.tokenizer_2)
        )
        return {"prompt_embeds": embeds.to(self.dtype), "pooled_embeds": pooled.to(self.dtype)}

    def predict(
        self,
        unet: torch.nn.Module,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        cond: PromptEmbeds,
        uncond: PromptEmbeds | None,
        guidance_scale: float,
    ) -> torch.Tensor:
        batch, channels, height, width = latents.shape
        pipe = self.pipeline
        packed = pipe._pack_latents(latents, batch, channels, height, width)
        img_ids = pipe._prepare_latent_image_ids(
            batch, height // 2, width // 2, latents.device, latents.dtype
        )
        embeds = cond["prompt_embeds"]
        txt_ids = torch.zeros(embeds.shape[1], 3, device=latents.device, dtype=latents.dtype)
        guidance = None
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full((batch,), guidance_scale, device=latents.device)
        out = unet(
            hidden_states=packed,
            timestep=timesteps / 1000,
            guidance=guidance,
            pooled_projections=cond["pooled_embeds"],
            encoder_hidden_states=embeds,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return pipe._unpack_latents(
            out,
            height * self.vae_scale_factor,
            width * self.vae_scale_factor,
            self.vae_scale_factor,
        )
