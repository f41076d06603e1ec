"""Stable Diffusion 3 / 3.5: two CLIP encoders and T5, pooled embeddings, two-pass CFG."""

from __future__ import annotations

import torch

from trainer.families.base import PromptEmbeds, guided
from trainer.families.flow_matching import FlowMatchingFamily, t5_length


class StableDiffusion3Family(FlowMatchingFamily):
    name = "sd3"

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], resolution: int) -> PromptEmbeds:
        # The pipeline's own encoder: CLIP-L and CLIP-G penultimate states side by side,
        # zero-padded to T5's width, then T5's tokens after them; pooled = both CLIP poolings.
        embeds, _, pooled, _ = self.pipeline.encode_prompt(
            prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=t5_length(self.pipeline.tokenizer_3),
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
        embeds, pooled = cond["prompt_embeds"], cond["pooled_embeds"]
        if uncond is not None:
            latents = torch.cat([latents, latents])
            timesteps = torch.cat([timesteps, timesteps])
            embeds = torch.cat([uncond["prompt_embeds"], embeds])
            pooled = torch.cat([uncond["pooled_embeds"], pooled])
        out = unet(
            hidden_states=latents,
            timestep=timesteps,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        return guided(out, guidance_scale, uncond is not None)
