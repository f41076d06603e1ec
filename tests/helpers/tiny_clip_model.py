"""A tiny random full CLIPModel with its tokenizer and image processor, saved like a hub repo.

For the text-image scorers (pickscore, clip_score): the directory holds what
`CLIPModel.from_pretrained` and `CLIPProcessor.from_pretrained` read
(config.json, weights, tokenizer files, preprocessor_config.json), so the
scorers' real loading code runs with no download. The tokenizer is the
byte-level one of trainer/random_pipeline.py (every byte a token, no merges).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def save_tiny_image_processor(
    directory: Path,
    image_size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resize: int | None = None,
) -> None:
    """Write preprocessor_config.json (resize shortest edge to `resize`, crop `image_size`).

    mean/std None: the processor's defaults (OpenAI CLIP's).
    """
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    norm = {"image_mean": list(mean), "image_std": list(std)} if mean and std else {}
    cls(
        size={"shortest_edge": resize or image_size},
        crop_size={"height": image_size, "width": image_size},
        **norm,
    ).save_pretrained(directory)


def write_tiny_clip_model(
    directory: Path,
    *,
    image_size: int = 32,
    projection_dim: int = 16,
    logit_scale: float | None = None,
    with_processor: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
) -> Path:
    """Save a random CLIPModel (+ tokenizer and image processor) in `directory`; return it.

    logit_scale: the stored log of the temperature (PickScore's differs from CLIP's init).
    with_processor=False leaves out the tokenizer and preprocessor files, as
    PickScore_v1's model repo does (its processor comes from another repo).
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    from trainer.random_pipeline import _tokenizer

    max_length = 77
    tok, vocab_size = _tokenizer(directory / "_tok_src", max_length)
    text = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        projection_dim=projection_dim,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=8,
        projection_dim=projection_dim,
    )
    config = CLIPConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(logit_scale)
    model.save_pretrained(directory)
    if with_processor:
        tok.save_pretrained(directory)
        save_tiny_image_processor(directory, image_size, mean, std)
    return directory


def write_tiny_processor(
    directory: Path,
    image_size: int = 32,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Path:
    """A processor-only repo (tokenizer + preprocessor config), like the one PickScore names."""
    from trainer.random_pipeline import _tokenizer

    tok, _ = _tokenizer(directory / "_tok_src", 77)
    tok.save_pretrained(directory)
    save_tiny_image_processor(directory, image_size, mean, std)
    return directory
