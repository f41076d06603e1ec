"""`ddpo demo`: the whole loop on the built-in tiny model, on a CPU, in minutes.

Starts a reward server subprocess, fine-tunes models/tiny-sd with DDPO through
it, and writes before/after images and a reward curve.

With `reward="human"` the server queues every sample for the rating page and
the demo prints an invite link: a person's 1-10 ratings are the reward. Its
prompts name a shape but leave the colour open, so the rater's taste, not the
prompt, decides which colours the model drifts towards.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

from ddpo.demo_fidelity import (
    FidelityReport,
    UserJudgement,
    eval_grid,
    fidelity_report,
    judge_as_user,
    train_prompts,
)
from ddpo.demo_figures import before_after_png, reward_curve_png
from shared.shapes import all_prompts, held_out_prompts
from trainer.config import TrainConfig, apply_overrides, build_config
from trainer.thread_guard import ThreadGuard

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The built-in models by the name `ddpo demo --model` takes: a UNet (SD 1.x-shaped) model
#: and a FLUX.1-shaped flow-matching one, made the same way (docs/tiny-model.md).
BUILTIN_MODELS = {
    "sd": REPO_ROOT / "models" / "tiny-sd",
    "flow": REPO_ROOT / "models" / "tiny-flux",
}
BUILTIN_MODEL = BUILTIN_MODELS["sd"]
DEMO_REWARDS = ("prompt_fidelity", "jpeg_incompressibility", "jpeg_compressibility", "human")
HUMAN = "human"

#: Prompts of the human demo: the shape is given, colour and background are left to taste.
#: The base model draws each in all four colours (6-22% red each, 32 samples per prompt);
#: "a square" comes out only yellow or red and "a triangle" only green or yellow.
HUMAN_PROMPTS = ["a circle", "circle", "square", "triangle"]
HUMAN_EVAL_SEEDS = [101, 202, 303, 404]

#: The prompts shown in before_after.png (a subset of the scored grid, first seed of each):
#: the combinations the model never saw in training, then two it did.
SHOWN_PROMPTS = [
    *held_out_prompts(),
    "a red circle on a white background",
    "a blue square on a gray background",
]
DEMO_STEPS = 10
#: How the demo names each `train_algorithm` to a reader.
METHOD_NAMES = {"ppo": "DDPO (PPO)", "nft": "DiffusionNFT", "awm": "AWM"}

#: The automatic rewards' recipe, shared with users as a preset (its batch layout is the
#: demo's own below): DiffusionNFT, which gained more per sample than PPO on JPEG on both
#: tiny models and on held-out prompt fidelity (docs/learning.md, 2026-12-05).
AUTOMATIC_PRESET = REPO_ROOT / "configs" / "presets" / "small-budget-nft.toml"
#: prompt_fidelity's recipe: the same layout at lr 3e-3 for its 120 epochs (lr 1e-2 fixed the
#: held-out combinations within 60 and then broke the seen ones; docs/learning.md).
ALIGNMENT_PRESET = REPO_ROOT / "configs" / "presets" / "alignment-nft.toml"
#: DiffusionNFT on cross-attention K/V, chosen on a scripted blue rater (blue rating 2.09 ->
#: 4.92 in 12 epochs, where the PPO recipe before it gave 2.09 -> 2.11 on this model) and
#: confirmed on the other tastes (docs/rlhf.md).
HUMAN_RECIPE: dict = {
    "use_lora": True,
    "lora_target_modules": ["attn2.to_k", "attn2.to_v"],
    "train_algorithm": "nft",
    "train_learning_rate": 1e-2,
    "sample_group_size": 4,
    "train_kl_coef": 0.0,
}
#: Weight of `prompt_fidelity` beside the rater (weight 1), so the taste does not cost the
#: prompt's shape; 0: the rater alone. Each reward's advantages are normalised apart, then
#: weighted (reward_aggregation = "advantages"). Measured 2026-12-07 (docs/rlhf.md): with 1,
#: blue, red, yellow and dark raters rose with shape accuracy kept at or above the base
#: model's; the rater alone took yellow's shape accuracy from 0.98 to 0.75.
HUMAN_PROMPT_WEIGHT = 1.0


@dataclass
class DemoResult:
    output_dir: Path
    #: Mean reward on the fixed evaluation prompts; None for human ratings (people rate
    #: the training samples only, so nothing scores the evaluation images).
    reward_before: float | None
    reward_after: float | None
    first_epoch_reward: float
    last_epoch_reward: float
    weights: Path
    num_rated: int = 0
    num_dropped: int = 0
    #: Size of the held-out grid the rewards before and after are averaged over.
    num_eval_images: int = 0
    #: Both judges on the scored grid, seen and held-out combinations apart (not for human).
    fidelity_before: FidelityReport | None = None
    fidelity_after: FidelityReport | None = None
    #: The same grid sampled as a user would (ddpo.user_pipeline: plain diffusers pipeline,
    #: deterministic DDIM, at the run's guidance and at 7.5), so a gain is not our sampler's.
    fidelity_user: list[UserJudgement] = field(default_factory=list)


def resolve_model(model: str | Path | None) -> Path:
    """A built-in model's name ("sd", "flow") or a pipeline directory; None: the default."""
    if model is None:
        return BUILTIN_MODEL
    return BUILTIN_MODELS.get(str(model), Path(model))


def is_flow_model(model: Path) -> bool:
    """Whether the pipeline's denoiser is a transformer trained by flow matching."""
    index = Path(model) / "model_index.json"
    return index.is_file() and "transformer" in json.loads(index.read_text(encoding="utf-8"))


def eval_prompts_and_seeds(reward: str) -> tuple[list[str], list[int]]:
    """The scored grid on held-out seeds, prompt-major.

    All 36 prompts (demo_fidelity.eval_grid), so a model that serves one image for every
    prompt cannot score well; the human demo's shape-only prompts for ratings.
    """
    if reward != HUMAN:
        return eval_grid()
    prompts, seeds = HUMAN_PROMPTS, HUMAN_EVAL_SEEDS
    return [p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds]


def shown_subset(reward: str, prompts: list[str]) -> list[int]:
    """Indices of the grid that before_after.png shows (all of them for the human demo)."""
    if reward == HUMAN:
        return list(range(len(prompts)))
    return [prompts.index(p) for p in SHOWN_PROMPTS]


def demo_config(
    reward: str,
    epochs: int,
    output_dir: Path,
    server_url: str,
    model: Path,
    rating_deadline_s: float = 600.0,
    recipe: Path | None = None,
    prompt_weight: float = HUMAN_PROMPT_WEIGHT,
) -> TrainConfig:
    """The demo's recipe, chosen by measurement on 2 CPU cores (docs/learning.md).

    Automatic rewards: `recipe`, else `default_recipe(reward)`: DiffusionNFT with LoRA on
    attention, group-relative advantages (4 samples per prompt), deterministic DDIM
    sampling at guidance 3, every step re-noised and trained. With `--recipe
    configs/presets/small-budget-lora.toml`, PPO with the last denoising step deterministic
    (its sigma of 0.01 sent every prompt to one texture). `prompt_fidelity` trains on the
    held-out combinations and their seen neighbours (demo_fidelity.train_prompts); the JPEG
    rewards on all 36 prompts.

    Human ratings: an epoch waits up to `rating_deadline_s` for its 32 ratings,
    then trains on those that came (unrated samples are dropped, not failed).
    """
    human = reward == HUMAN
    flow = is_flow_model(model)
    if human and flow:  # its recipe's LoRA targets the UNet's cross-attention (attn2)
        raise ValueError("the human demo runs on UNet models only; drop --model flow")
    if human:
        endpoints = [{"url": server_url, "scorer": HUMAN, "mode": "job", "missing": "drop"}]
        recipe_keys = HUMAN_RECIPE
        if prompt_weight > 0:
            scorer = {"scorer": "prompt_fidelity", "weight": prompt_weight}
            endpoints.append({"url": server_url, **scorer})
            recipe_keys = {**recipe_keys, "reward_aggregation": "advantages"}
    else:
        endpoints = [{"url": server_url, "scorer": reward, "weight": 1.0}]
        recipe = recipe or default_recipe(reward)
        recipe_keys = tomllib.loads(Path(recipe).read_text(encoding="utf-8"))
    if human:
        prompts = HUMAN_PROMPTS
    else:
        prompts = train_prompts() if reward == "prompt_fidelity" else all_prompts()
    demo = dict(
        pretrained_model=str(model),
        prompts=prompts,
        output_dir=output_dir,
        seed=0,
        num_epochs=epochs,
        mixed_precision="no",
        resolution=64,
        sample_num_steps=DEMO_STEPS,
        # the tiny flow model has no guidance embedding and trains without CFG, as FLUX.1-schnell
        sample_guidance_scale=1.0 if flow else recipe_keys.get("sample_guidance_scale", 3.0),
        sample_batch_size=8,
        sample_num_batches_per_epoch=4 if human else 2,
        train_batch_size=8,
        train_timesteps_per_pass=DEMO_STEPS,
        per_prompt_stat_tracking=False,
        save_freq=max(1, epochs),
        log_images_every=max(1, epochs // 5),
        rewards=endpoints,
        reward_epoch_deadline_s=rating_deadline_s if human else 600.0,
    )
    return TrainConfig(**{**recipe_keys, **demo})


@torch.no_grad()
def eval_images(
    model: Path,
    trained: Path | None,
    prompts: list[str],
    seeds: list[int],
    window: range | None = None,
    cfg: TrainConfig | None = None,
) -> np.ndarray:
    """One image per (prompt, seed) with the trainer's own sampler, uint8 HWC.

    `trained` is a run's output directory: its lora/ (LoRA) or unet/ (full fine-tuning).
    `cfg`: the run's config, whose algorithm samples (PPO: DDIM at eta 1 in `window`;
    NFT / AWM: deterministic DDIM) at its guidance scale; without it PPO's sampler at
    guidance 3. `window`: PPO's stochastic steps, as the run sampled them (default: all),
    so the policy is scored as it was trained.
    """
    from trainer.algorithms import build_algorithm
    from trainer.families import load_family

    family = load_family(str(model), None, torch.device("cpu"), torch.float32)
    if trained is not None and (trained / "lora").is_dir():
        family.pipeline.load_lora_weights(str(trained / "lora"))
    elif trained is not None:  # full fine-tuning: the UNet's or transformer's own folder
        name = family.denoiser_name
        trained_denoiser = type(family.denoiser).from_pretrained(str(trained / name))
        setattr(family.pipeline, name, trained_denoiser.requires_grad_(False))
    if cfg is None:
        cfg = TrainConfig(
            pretrained_model=str(model),
            train_algorithm="ppo",
            prompts=prompts,
            rewards=[{"url": "http://127.0.0.1:1", "scorer": "jpeg_compressibility"}],
            sample_guidance_scale=3.0,
        )
    samples = build_algorithm(cfg, []).sample(
        family,
        family.unet,
        prompts,
        torch.arange(len(prompts)),
        seeds,
        num_steps=DEMO_STEPS,
        guidance_scale=cfg.sample_guidance_scale,
        eta=cfg.sample_eta,
        resolution=64,
        window=window,
    )
    return samples.images


def trained_weights(run: Path) -> Path:
    """A run's saved weights: its lora/, else the full UNet's or transformer's folder."""
    for name in ("lora", "unet", "transformer"):
        if (run / name).is_dir():
            return run / name
    raise FileNotFoundError(f"no lora/, unet/ or transformer/ under {run}")


def eval_window(cfg: TrainConfig) -> range | None:
    """The stochastic steps the run samples with, when they are the same for every batch."""
    from trainer.sde_window import sde_window

    if not cfg.sample_sde_window_size:
        return None
    window = sde_window(cfg, 0, 0, 0)
    lo, hi = cfg.sample_sde_window_range or (0, cfg.sample_num_steps)
    return window if hi - lo == cfg.sample_sde_window_size else None


def _score(server_url: str, scorer: str, images: np.ndarray, prompts: list[str]) -> np.ndarray:
    from trainer.config import RewardEndpoint
    from trainer.reward_client import RewardClient

    with RewardClient([RewardEndpoint(url=server_url, scorer=scorer)]) as client:
        return client.submit(images, prompts).result(timeout=120).rewards


def _invite_rater(server_url: str, data_dir: Path) -> str:
    """A fresh rater ("you", or "you-2" on a re-run) in the demo server's database."""
    from reward_server.invites import invite_rater

    database = f"sqlite:///{(data_dir / 'ratings.db').resolve()}"
    return invite_rater(database, "you", server_url, first_free=True)


def default_epochs(reward: str) -> int:
    """120 for prompt fidelity (about 4 minutes on 2 cores), 15 for JPEG; 12 for a person.

    A person's 12 epochs are 384 ratings, minutes by keyboard; at 8 a yellow rater moved
    its held-out rating by 0.6 points, at 12 by 2.7 (docs/rlhf.md, 2026-12-07).
    """
    return {HUMAN: 12, "prompt_fidelity": 120}.get(reward, 15)


def default_recipe(reward: str) -> Path:
    """The preset a demo reward trains with unless --recipe names another."""
    return ALIGNMENT_PRESET if reward == "prompt_fidelity" else AUTOMATIC_PRESET


def run_demo(
    reward: str = "prompt_fidelity",
    epochs: int | None = None,
    output_dir: Path = Path("outputs/demo"),
    model: Path = BUILTIN_MODEL,
    console=None,
    overrides: list[str] | None = None,
    rating_deadline_s: float = 600.0,
    recipe: Path | None = None,
    prompt_weight: float = HUMAN_PROMPT_WEIGHT,
) -> DemoResult:
    """Run the demo; the reward server child is stopped however this exits."""
    from ddpo.server_process import RewardServerProcess
    from trainer.run_log import read_metrics
    from trainer.train import train

    def say(message: str) -> None:  # soft wrap: links must stay on one line to be clickable
        if console is not None:
            console.print(message, soft_wrap=True)
        else:
            print(message, flush=True)

    if reward not in DEMO_REWARDS:
        raise ValueError(f"unknown demo reward {reward!r}; choose from {', '.join(DEMO_REWARDS)}")
    human = reward == HUMAN
    epochs = epochs or default_epochs(reward)

    def config(url: str) -> TrainConfig:
        cfg = demo_config(
            reward, epochs, output_dir, url, model, rating_deadline_s, recipe, prompt_weight
        )
        if overrides:
            cfg = build_config(apply_overrides(cfg.model_dump(mode="json"), list(overrides)))
        return cfg

    sampler_cfg = config("http://127.0.0.1:1")  # a bad override fails here, early
    window = eval_window(sampler_cfg)
    if not (Path(model) / "model_index.json").is_file():
        raise FileNotFoundError(f"no diffusers pipeline at {model} (model_index.json missing)")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    env = {"OMP_NUM_THREADS": "1"}
    if human:  # the rating queue lives with the run's outputs, one rating per image
        env |= {"DDPO_DATA_DIR": str(output_dir / "ratings"), "DDPO_RATINGS_PER_ITEM": "1"}
    scorers = list(dict.fromkeys(e.scorer for e in sampler_cfg.rewards))
    server = RewardServerProcess(scorers, log_file=output_dir / "reward_server.log", extra_env=env)
    prompts, seeds = eval_prompts_and_seeds(reward)
    say(f"starting the reward server ({', '.join(scorers)}) ...")
    with server:
        say(f"reward server ready at {server.url} (pid {server.proc.pid})")
        ThreadGuard()  # one thread from the start if another program is busy now
        say("sampling the base model on the evaluation prompts ...")
        before = eval_images(model, None, prompts, seeds, window, sampler_cfg)
        score_before = None if human else _score(server.url, reward, before, prompts)
        cfg = config(server.url)
        if human:
            invite = _invite_rater(server.url, output_dir / "ratings")
            say(
                "\n[bold]Rate the samples in your browser[/bold] (1-10; keys 1-9, 0 = 10):\n"
                f"  {invite}\n"
                f"Each epoch waits up to {cfg.reward_epoch_deadline_s:.0f} s for its "
                f"{cfg.sample_batch_size * cfg.sample_num_batches_per_epoch} ratings; unrated "
                "samples are dropped. No time to rate? Let a script with a taste do it "
                "(red, green, blue, yellow, big or dark):\n"
                f'  python -m reward_server.scripted_rater "{invite}" --prefers red\n'
            )
            keep = [e.weight for e in cfg.rewards if e.scorer == "prompt_fidelity"]
            if keep:
                say(
                    f"Beside your ratings, prompt_fidelity (weight {keep[0]:g}) keeps each "
                    "prompt's shape; --prompt-weight 0 trains on your ratings alone."
                )
        say(f"fine-tuning with {METHOD_NAMES[cfg.train_algorithm]} for {cfg.num_epochs} epochs ...")
        train(cfg)
        after = eval_images(model, output_dir, prompts, seeds, window, sampler_cfg)
        score_after = None if human else _score(server.url, reward, after, prompts)
    user: list[UserJudgement] = []
    if reward == "prompt_fidelity":
        say("judging both models as a user samples them (diffusers pipeline, DDIM) ...")
        user = judge_as_user(
            model, output_dir, prompts, seeds, cfg.sample_guidance_scale, is_flow_model(model)
        )

    records = read_metrics(output_dir)
    shown = shown_subset(reward, prompts)
    before_after_png(
        output_dir / "before_after.png",
        [prompts[i] for i in shown],
        before[shown],
        after[shown],
        None if score_before is None else score_before[shown],
        None if score_after is None else score_after[shown],
        reward,
        (score_before, score_after, len(prompts)),
        METHOD_NAMES[cfg.train_algorithm],
    )
    # the rater's own curve when prompt_fidelity shares the run (human demo)
    key = f"reward_{HUMAN}" if human and f"reward_{HUMAN}_mean" in records[0] else "reward"
    reward_curve_png(output_dir / "reward_curve.png", records, reward, key)
    result = DemoResult(
        output_dir=output_dir,
        reward_before=None if score_before is None else float(score_before.mean()),
        reward_after=None if score_after is None else float(score_after.mean()),
        first_epoch_reward=records[0][f"{key}_mean"],
        last_epoch_reward=records[-1][f"{key}_mean"],
        weights=trained_weights(output_dir),
        num_rated=sum(int(r.get("num_rated", 0)) for r in records),
        num_dropped=sum(int(r.get("num_dropped", 0)) for r in records),
        num_eval_images=len(prompts),
        fidelity_before=None if human else fidelity_report(before, prompts),
        fidelity_after=None if human else fidelity_report(after, prompts),
        fidelity_user=user,
    )

    def plain(value: object) -> object:
        if isinstance(value, BaseModel):  # FidelityReport, UserJudgement
            return value.model_dump()
        if isinstance(value, list):
            return [plain(v) for v in value]
        return str(value) if isinstance(value, Path) else value

    (output_dir / "demo_summary.json").write_text(
        json.dumps({k: plain(v) for k, v in result.__dict__.items()})
    )
    return result
