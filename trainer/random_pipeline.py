"""Tiny random-weight pipelines with the real SD architectures, for tests and benchmarks.

Nothing is downloaded: configs are written here and the tokenizer vocabulary
is generated (every byte as a token), so the loaders run the same code paths
they run on hub weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch


def _byte_chars() -> list[str]:
    """The printable stand-in character for each byte that byte-level BPE vocabularies use."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _write_char_tokenizer(directory: Path) -> int:
    """A CLIP BPE tokenizer with a byte-level vocabulary and no merges."""
    chars = _byte_chars()
    vocab_list = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return len(vocab)


def _tokenizer(directory: Path, max_length: int):
    from transformers import CLIPTokenizer

    vocab_size = _write_char_tokenizer(directory)
    vocab = json.loads((directory / "vocab.json").read_text())
    try:  # transformers >= 5 takes the vocabulary itself and ignores file arguments
        tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)
    except TypeError:  # transformers 4
        tok = CLIPTokenizer(
            vocab_file=str(directory / "vocab.json"),
            merges_file=str(directory / "merges.txt"),
            model_max_length=max_length,
        )
    if len(tok) != vocab_size:
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, expected {vocab_size}")
    return tok, vocab_size


def _text_encoder(vocab_size: int, hidden: int, projection: bool, max_length: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_length,
        projection_dim=hidden,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _vae(**overrides):
    """A 2x-downsampling VAE, 4 latent channels; `overrides` set other config keys."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        **overrides,
    )


def _scheduler(prediction_type: str):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def build_random_sd(
    path: Path, prediction_type: str = "epsilon", sample_size: int = 16, seed: int = 0
) -> Path:
    """SD 1.x/2.x-shaped pipeline (v_prediction for the 2.x flavour), a few hundred kB."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    path = Path(path)
    max_length = 16
    tok, vocab_size = _tokenizer(path / "_tok_src", max_length)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=_text_encoder(vocab_size, 32, False, max_length),
        tokenizer=tok,
        unet=unet,
        scheduler=_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    for src in path.glob("_tok_src*"):
        shutil.rmtree(src)
    return path


def build_random_sdxl(path: Path, sample_size: int = 16, seed: int = 0) -> Path:
    """SDXL-shaped pipeline: two text encoders, pooled embeddings, added time ids."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    path = Path(path)
    max_length = 16
    tok, vocab_size = _tokenizer(path / "_tok_src", max_length)
    tok2, _ = _tokenizer(path / "_tok_src2", max_length)
    hidden1, hidden2 = 16, 32
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        cross_attention_dim=hidden1 + hidden2,
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=hidden2 + 6 * 8,
        norm_num_groups=8,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=_text_encoder(vocab_size, hidden1, False, max_length),
        text_encoder_2=_text_encoder(vocab_size, hidden2, True, max_length),
        tokenizer=tok,
        tokenizer_2=tok2,
        unet=unet,
        scheduler=_scheduler("epsilon"),
    )
    pipe.save_pretrained(path, safe_serialization=True)
    for src in path.glob("_tok_src*"):
        shutil.rmtree(src)
    return path
