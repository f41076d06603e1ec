"""Tiny random CLIP weights, so the real loading and embedding code runs with no download.

`write_tiny_aesthetic_weights` saves a randomly initialised CLIP vision model
with the real projection width (768) and a LAION-shaped head, so the real
loading code runs end to end on a CPU in about a second. `write_tiny_clip`
saves a smaller one for fitting reward heads: even random, its embeddings of
the procedural shapes carry their colour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal


def write_tiny_aesthetic_weights(
    directory: Path,
    image_size: int = 32,
    head_format: Literal["laion", "trl", "safetensors"] = "laion",
    full_clip: bool = False,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Save a tiny CLIP (vision-only, or a full CLIPModel) and a random head; return both paths."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPModel,
        CLIPTextConfig,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from reward_server.scorers.aesthetic import EMBED_DIM, AestheticHead

    torch.manual_seed(seed)
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=8,
        projection_dim=EMBED_DIM,
    )
    clip_dir = directory / ("tiny-clip-full" if full_clip else "tiny-clip")
    if full_clip:
        text = CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            vocab_size=99,
            max_position_embeddings=16,
            projection_dim=EMBED_DIM,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
        config = CLIPConfig(
            text_config=text.to_dict(),
            vision_config=CLIPVisionConfig(**vision).to_dict(),
            projection_dim=EMBED_DIM,
        )
        CLIPModel(config).save_pretrained(clip_dir)
    else:
        CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)).save_pretrained(clip_dir)

    torch.manual_seed(seed)  # the head alone decides the seed's weights, whatever CLIP drew
    state = AestheticHead().state_dict()
    if head_format == "trl":
        head_path = directory / "aesthetic-model.pth"
        torch.save({f"mlp.{k}": v for k, v in state.items()}, head_path)
    elif head_format == "safetensors":
        from safetensors.torch import save_file

        head_path = directory / "aesthetic-head.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(head_path))
    else:
        head_path = directory / "sac+logos+ava1-l14-linearMSE.pth"
        torch.save(state, head_path)
    return clip_dir, head_path


def write_tiny_clip(
    directory: Path, image_size: int = 32, projection_dim: int = 64, seed: int = 0
) -> Path:
    """Save a random CLIP vision model (with projection) as `directory`/tiny-clip-<dim>; return it.

    Measured on 300 shapes.draw images: a linear probe on its normalised
    embeddings predicts "is red" with held-out r = 0.78 (image_size 32) and
    0.89 (64), for two init seeds each; embedding them takes well under a
    second on one CPU thread.
    """
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=8,
        projection_dim=projection_dim,
    )
    clip_dir = directory / f"tiny-clip-{projection_dim}"
    CLIPVisionModelWithProjection(config).save_pretrained(clip_dir)
    return clip_dir
