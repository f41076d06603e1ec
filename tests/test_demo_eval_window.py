"""The demo scores its held-out grid with the sampler the run trained: same stochastic steps."""

from pathlib import Path

from ddpo.demo import demo_config, eval_window
from trainer.config import build_config
from trainer.sde_window import sde_window

PPO_PRESET = Path(__file__).parents[1] / "configs" / "presets" / "small-budget-lora.toml"


def config(tmp_path: Path, **overrides):
    """The demo's config with the PPO recipe (`--recipe`), whose window these checks need."""
    cfg = demo_config(
        "prompt_fidelity", 2, tmp_path, "http://127.0.0.1:1", Path("m"), recipe=PPO_PRESET
    )
    return build_config({**cfg.model_dump(mode="json"), **overrides})


def test_fixed_window_is_the_trained_one(tmp_path):
    cfg = config(tmp_path)
    window = eval_window(cfg)
    assert window is not None and len(window) == cfg.sample_sde_window_size
    # every sampling batch of every epoch draws this same window
    assert all(sde_window(cfg, e, 0, b) == window for e in range(3) for b in range(2))


def test_early_window(tmp_path):
    cfg = config(tmp_path, sample_sde_window_size=3, sample_sde_window_range=[0, 3])
    assert eval_window(cfg) == range(0, 3)


def test_no_window_or_a_moving_one_samples_every_step(tmp_path):
    assert eval_window(config(tmp_path, sample_sde_window_size=0)) is None
    moving = config(tmp_path, sample_sde_window_size=3, sample_sde_window_range=[0, 9])
    assert eval_window(moving) is None


def test_eval_images_samples_with_the_window():
    """Deterministic steps outside the window: the last step's noise no longer reaches the image."""
    from ddpo.demo import BUILTIN_MODEL, eval_images

    prompt, seed = ["a red circle on a white background"], [101]
    all_steps = eval_images(BUILTIN_MODEL, None, prompt, seed)
    window = eval_images(BUILTIN_MODEL, None, prompt, seed, range(0, 9))
    again = eval_images(BUILTIN_MODEL, None, prompt, seed, range(0, 9))
    assert (window == again).all()
    assert (window != all_steps).any()


def test_eval_images_samples_with_the_runs_algorithm(tmp_path):
    """A forward-process run is judged with its own deterministic DDIM, at the run's guidance."""
    import numpy as np

    from ddpo.demo import BUILTIN_MODEL, eval_images

    prompt, seed = ["a blue circle on a white background"], [202]
    nft = config(tmp_path, train_algorithm="nft")
    ppo = config(tmp_path)
    assert nft.sample_guidance_scale == ppo.sample_guidance_scale == 3.0
    by_nft = eval_images(BUILTIN_MODEL, None, prompt, seed, None, nft)
    # PPO's sampler with only the last (sigma ~0.01) step stochastic is nearly DDIM's chain
    by_ddim = eval_images(BUILTIN_MODEL, None, prompt, seed, range(9, 10), ppo)
    stochastic = eval_images(BUILTIN_MODEL, None, prompt, seed, None, ppo)
    near = np.abs(by_nft.astype(int) - by_ddim.astype(int)).mean()
    far = np.abs(by_nft.astype(int) - stochastic.astype(int)).mean()
    assert near < 1.0 and far > 4 * near, (near, far)
    unguided = eval_images(
        BUILTIN_MODEL,
        None,
        prompt,
        seed,
        None,
        config(tmp_path, train_algorithm="nft", sample_guidance_scale=1.0),
    )
    assert np.abs(unguided.astype(int) - by_nft.astype(int)).mean() > 4 * near


def test_every_algorithm_has_a_name_in_the_demo():
    from ddpo.demo import METHOD_NAMES
    from trainer.algorithms import ALGORITHMS

    assert set(METHOD_NAMES) == set(ALGORITHMS)
