"""Stable Diffusion XL: two text encoders, pooled embeddings and added time ids."""

from __future__ import annotations

import torch

from trainer.families.base import DiffusionFamily, PromptEmbeds, guided


class StableDiffusionXLFamily(DiffusionFamily):
    name = "sdxl"

    def _encode_one(self, tokenizer, encoder, prompts: list[str]):
        return encoder(self.token_ids(tokenizer, prompts), output_hidden_states=True)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], resolution: int) -> PromptEmbeds:
        pipe = self.pipeline
        out1 = self._encode_one(pipe.tokenizer, pipe.text_encoder, prompts)
        out2 = self._encode_one(pipe.tokenizer_2, pipe.text_encoder_2, prompts)
        # SDXL conditions on the penultimate layer of both encoders, concatenated.
        embeds = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        pooled = out2[0]  # text_embeds of the projection model
        # (original size, crop top-left, target size): an uncropped image at `resolution`.
        time_ids = torch.tensor(
            [resolution, resolution, 0, 0, resolution, resolution], device=self.device
        ).repeat(len(prompts), 1)
        return {
            "prompt_embeds": embeds.to(self.dtype),
            "pooled_embeds": pooled.to(self.dtype),
            "time_ids": time_ids.to(self.dtype),
        }

    @torch.no_grad()
    def encode_unconditional(self, resolution: int) -> PromptEmbeds:
        embeds = self.encode_prompts([""], resolution)
        if self.pipeline.config.get("force_zeros_for_empty_prompt", True):
            embeds["prompt_embeds"] = torch.zeros_like(embeds["prompt_embeds"])
            embeds["pooled_embeds"] = torch.zeros_like(embeds["pooled_embeds"])
        return embeds

    def predict(
        self,
        unet: torch.nn.Module,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        cond: PromptEmbeds,
        uncond: PromptEmbeds | None,
        guidance_scale: float,
    ) -> torch.Tensor:
        embeds, pooled, time_ids = cond["prompt_embeds"], cond["pooled_embeds"], cond["time_ids"]
        if uncond is not None:
            latents = torch.cat([latents, latents])
            timesteps = torch.cat([timesteps, timesteps])
            embeds = torch.cat([uncond["prompt_embeds"], embeds])
            pooled = torch.cat([uncond["pooled_embeds"], pooled])
            time_ids = torch.cat([uncond["time_ids"], time_ids])
        out = unet(
            latents,
            timesteps,
            encoder_hidden_states=embeds,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
            return_dict=False,
        )[0]
        return guided(out, guidance_scale, uncond is not None)
