"""Images per second of the pickscore, clip_score and vlm_judge scorers, on random weights.

Nothing is downloaded: the CLIP models are built here with random weights,
either tiny (what the tests use: the server's own overhead, preprocessing
included) or with the real architectures (--real: PickScore's ViT-H/14 and
clip_score's ViT-L/14, which decide the speed of a real deployment; random
weights compute exactly as fast as trained ones). vlm_judge is measured
against an instant in-process judge (httpx.MockTransport), so its figure is
this server's side only (PNG encoding, JSON, HTTP client): the VLM's own time
is the serving engine's. Each scorer is timed calling `score` directly and
through the dynamic batcher (four concurrent requests splitting the batch).

    python benchmarks/scorer_throughput.py [--real] [--device cuda] [--batch 16] [--image-px 512]

Writes benchmarks/results/scorer_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import OUR_PACKAGES, machine_info, versions, write_result  # noqa: E402
from reward_server.batching import DynamicBatcher  # noqa: E402
from reward_server.clip_preprocess import ClipPreprocess  # noqa: E402
from reward_server.clip_text_image import ClipTextImage  # noqa: E402
from reward_server.scorers.base import Scorer  # noqa: E402
from reward_server.scorers.clip_score import ClipScoreScorer  # noqa: E402
from reward_server.scorers.pickscore import PickScoreScorer  # noqa: E402
from reward_server.scorers.vlm_judge import VlmJudgeScorer  # noqa: E402
from trainer.random_pipeline import _tokenizer  # noqa: E402

#: (vision, text, projection) sizes: hidden, intermediate, layers, heads (+ patch, image).
ARCHS: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision": dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            patch_size=8,
            image_size=32,
        ),
        "text": dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
        ),
        "projection": 16,
    },
    # laion/CLIP-ViT-H-14-laion2B-s32B-b79K, which PickScore_v1 fine-tunes (config.json).
    "vit-h-14": {
        "vision": dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            patch_size=14,
            image_size=224,
        ),
        "text": dict(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16
        ),
        "projection": 1024,
    },
    # openai/clip-vit-large-patch14 (config.json).
    "vit-l-14": {
        "vision": dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            patch_size=14,
            image_size=224,
        ),
        "text": dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12
        ),
        "projection": 768,
    },
}

PROMPTS = [
    "a photograph of an astronaut riding a horse on the moon",
    "a red cube on a wooden table, studio lighting",
    "a watercolor painting of a lighthouse at dawn",
    "two cats sleeping on a sofa",
]


def random_clip(arch: str, device: str = "cpu") -> ClipTextImage:
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    spec = ARCHS[arch]
    with tempfile.TemporaryDirectory() as tmp:
        tok, vocab = _tokenizer(Path(tmp), 77)
    text = CLIPTextConfig(
        vocab_size=vocab,
        max_position_embeddings=77,
        projection_dim=spec["projection"],
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **spec["text"],
    )
    vision = CLIPVisionConfig(projection_dim=spec["projection"], **spec["vision"])
    config = CLIPConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=spec["projection"],
    )
    torch.manual_seed(0)
    model = CLIPModel(config)
    return ClipTextImage(model, tok, ClipPreprocess(spec["vision"]["image_size"]), device)


def instant_judge() -> VlmJudgeScorer:
    """A judge that answers at once: what is left is this server's side of the exchange."""
    top = [{"token": "Yes", "logprob": math.log(0.8)}, {"token": "No", "logprob": math.log(0.2)}]
    answer = {"choices": [{"index": 0, "logprobs": {"content": [{**top[0], "top_logprobs": top}]}}]}

    def handler(request: httpx.Request) -> httpx.Response:
        json.loads(request.content)  # the judge has to read the body, as a real one does
        return httpx.Response(200, json=answer)

    return VlmJudgeScorer(
        "http://judge/v1", "bench", concurrency=16, transport=httpx.MockTransport(handler)
    )


def images(n: int, px: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (px, px, 3), dtype=np.uint8)) for _ in range(n)]


def timed_pair(
    first: Callable[[], object], second: Callable[[], object], reps: int
) -> tuple[list[float], list[float]]:
    """Interleaved, so a burst of load from other processes hits both alike."""
    first(), second()  # warm-up
    a, b = [], []
    for _ in range(reps):
        for fn, out in ((first, a), (second, b)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return a, b


def through_batcher(scorer: Scorer, imgs: list[Image.Image], prompts: list[str]) -> None:
    async def main() -> None:
        batcher = DynamicBatcher(scorer, max_wait_s=0.005, max_batch_size=len(imgs))
        quarter = max(1, len(imgs) // 4)
        await asyncio.gather(
            *(
                batcher.submit(imgs[i : i + quarter], prompts[i : i + quarter])
                for i in range(0, len(imgs), quarter)
            )
        )
        await batcher.aclose()

    asyncio.run(main())


def measure(name: str, scorer: Scorer, batch: int, px: int, reps: int) -> dict[str, Any]:
    imgs = images(batch, px)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    direct, batched = timed_pair(
        lambda: scorer.score(imgs, prompts), lambda: through_batcher(scorer, imgs, prompts), reps
    )
    row = {
        "scorer": name,
        "batch": batch,
        "image_px": px,
        "direct_images_per_s": batch / statistics.median(direct),
        "batcher_images_per_s": batch / statistics.median(batched),
        "direct_best_images_per_s": batch / min(direct),
        "batcher_best_images_per_s": batch / min(batched),
        "direct_s": direct,
        "batcher_s": batched,
    }
    print(
        f"{name:26s} batch {batch:3d} @ {px}px, images/s median (best): "
        f"direct {row['direct_images_per_s']:7.1f} ({row['direct_best_images_per_s']:7.1f}), "
        f"batcher {row['batcher_images_per_s']:7.1f} ({row['batcher_best_images_per_s']:7.1f})",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-px", type=int, default=512)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--real", action="store_true", help="also the real architectures")
    parser.add_argument("--device", default="cpu", help="where the CLIP models run (cuda)")
    parser.add_argument("--real-batch", type=int, default=4)
    parser.add_argument("--real-reps", type=int, default=3)
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    rows = [
        measure(
            "pickscore (tiny)",
            PickScoreScorer(random_clip("tiny", args.device)),
            args.batch,
            args.image_px,
            args.reps,
        ),
        measure(
            "clip_score (tiny)",
            ClipScoreScorer(random_clip("tiny", args.device)),
            args.batch,
            args.image_px,
            args.reps,
        ),
        measure("vlm_judge (instant judge)", instant_judge(), args.batch, args.image_px, args.reps),
    ]
    if args.real:
        for name, arch, cls in (
            ("pickscore (ViT-H/14)", "vit-h-14", PickScoreScorer),
            ("clip_score (ViT-L/14)", "vit-l-14", ClipScoreScorer),
        ):
            started = time.perf_counter()
            scorer = cls(random_clip(arch, args.device))
            params = sum(p.numel() for p in scorer.clip.model.parameters())
            print(
                f"{name}: {params / 1e6:.0f}M parameters, built in "
                f"{time.perf_counter() - started:.0f}s",
                flush=True,
            )
            row = measure(name, scorer, args.real_batch, args.image_px, args.real_reps)
            rows.append({**row, "parameters": params})
            del scorer
    out = {
        "command": " ".join(["python", *sys.argv]),
        **machine_info(),
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "device": args.device,
        "versions": versions(OUR_PACKAGES),
        "rows": rows,
    }
    print(f"wrote {write_result('scorer_throughput', out)}")


if __name__ == "__main__":
    main()
