"""PickScore and CLIPScore throughput for benchmarks/gpu_suite.py, on random weights.

The real architectures (PickScore: CLIP ViT-H/14, clip_score: OpenAI CLIP ViT-L/14,
built by benchmarks/scorer_throughput.py's `random_clip`; random weights compute as
fast as trained ones) scored as the reward server scores them: `Scorer.score` on
PIL images of the size the trainer posts, preprocessing included. Beside it, the
model alone on preprocessed pixels in fp32 (what the server runs) and in bf16, so a
gap between the two says whether preprocessing or the GPU limits.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

#: part name -> (architecture in scorer_throughput.ARCHS, scorer module, class name)
CLIP_SCORERS: dict[str, tuple[str, str, str]] = {
    "pickscore": ("vit-h-14", "reward_server.scorers.pickscore", "PickScoreScorer"),
    "clip_score": ("vit-l-14", "reward_server.scorers.clip_score", "ClipScoreScorer"),
}


def images_per_s(fn: Callable[[], Any], batch: int, repeats: int) -> float:
    """Batches timed after two warm-up calls, the device synchronised around the clock."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return batch * repeats / (time.perf_counter() - t0)


def part_clip_scorer(name: str) -> Callable[[argparse.Namespace, Any, Any], None]:
    """A gpu_suite part timing one CLIP text-image scorer (tiny CLIP under --smoke)."""
    arch, module_name, class_name = CLIP_SCORERS[name]

    def run_part(args: argparse.Namespace, sizes: Any, report: Any) -> None:
        import importlib

        import torch
        from scorer_throughput import PROMPTS, images, random_clip

        device = "cuda" if torch.cuda.is_available() else "cpu"
        use = arch if sizes.check_params else "tiny"
        scorer_cls = getattr(importlib.import_module(module_name), class_name)
        batch, px = sizes.aesthetic_batch, sizes.aesthetic_image_px
        repeats = sizes.aesthetic_repeats
        with torch.device(device):  # random init of ~1 B parameters: seconds there, not here
            clip = random_clip(use, device)
        scorer = scorer_cls(clip, max_batch_size=batch)
        report.figures["params"] = sum(p.numel() for p in clip.model.parameters())
        report.settings.update(
            architecture=use, batch=batch, image_px=px, dtype="float32 (as the scorer loads it)"
        )
        imgs = images(batch, px)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        report.figures["images_per_s"] = images_per_s(
            lambda: scorer.score(imgs, prompts), batch, repeats
        )
        report.put(
            "peak_memory_gib",
            torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            "no CUDA device",
        )
        report.figures["preprocess_images_per_s"] = images_per_s(
            lambda: clip.preprocess(imgs), batch, repeats
        )
        pixels = clip.preprocess(imgs).to(clip.device)

        def model_only() -> None:
            with torch.inference_mode():
                clip.model.vision_model(pixel_values=pixels)

        report.figures["model_images_per_s"] = images_per_s(model_only, batch, repeats)
        clip.model.to(torch.bfloat16)
        pixels = pixels.to(torch.bfloat16)
        report.figures["model_images_per_s_bf16"] = images_per_s(model_only, batch, repeats)
        report.notes.append(
            "images_per_s: Scorer.score end to end (PIL preprocessing, text and image towers); "
            "model_*: the vision tower alone on preprocessed pixels"
        )

    return run_part
