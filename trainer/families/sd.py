"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, epsilon or v-prediction."""

from __future__ import annotations

import torch

from trainer.families.base import DiffusionFamily, PromptEmbeds, guided


class StableDiffusionFamily(DiffusionFamily):
    name = "sd"

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], resolution: int) -> PromptEmbeds:
        ids = self.token_ids(self.pipeline.tokenizer, prompts)
        embeds = self.pipeline.text_encoder(ids)[0]
        return {"prompt_embeds": embeds.to(self.dtype)}

    def predict(
        self,
        unet: torch.nn.Module,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        cond: PromptEmbeds,
        uncond: PromptEmbeds | None,
        guidance_scale: float,
    ) -> torch.Tensor:
        embeds = cond["prompt_embeds"]
        if uncond is not None:
            latents = torch.cat([latents, latents])
            timesteps = torch.cat([timesteps, timesteps])
            embeds = torch.cat([uncond["prompt_embeds"], embeds])
        out = unet(latents, timesteps, encoder_hidden_states=embeds, return_dict=False)[0]
        return guided(out, guidance_scale, uncond is not None)
