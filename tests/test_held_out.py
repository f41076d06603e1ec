"""The held-out combinations: what the built-in model never saw, and the demo trains on."""

from __future__ import annotations

from itertools import combinations

from ddpo.demo_fidelity import HELD_OUT_EVAL_SEEDS, SEEN_EVAL_SEEDS, eval_grid, train_prompts
from shared import shapes


def test_every_pair_of_a_held_out_triple_is_seen() -> None:
    """Drawing a held-out triple composes parts the model saw together, never a new pair:
    each of its pairs is held out with one value of the third attribute only."""
    seen = [t for t in shapes.all_triples() if t not in shapes.HELD_OUT]
    values = (shapes.SHAPES, shapes.COLOURS, shapes.BACKGROUNDS)
    for triple in shapes.HELD_OUT:
        for i, j in combinations(range(3), 2):
            count = sum(t[i] == triple[i] and t[j] == triple[j] for t in seen)
            assert count == len(values[3 - i - j]) - 1, (triple, i, j)
    assert len(set(shapes.HELD_OUT)) == len(shapes.HELD_OUT) == 6
    assert len(shapes.seen_prompts()) + len(shapes.held_out_prompts()) == 36


def test_demo_trains_on_held_out_prompts_and_seen_neighbours() -> None:
    prompts = train_prompts()
    held = shapes.held_out_prompts()
    assert prompts[: len(held)] == held
    neighbours = [shapes.parse_prompt(p) for p in prompts[len(held) :]]
    assert len(set(neighbours)) == len(held)
    for (shape, colour, _), n in zip(shapes.HELD_OUT, neighbours, strict=True):
        assert n not in shapes.HELD_OUT and n[:2] == (shape, colour)


def test_eval_grid_has_every_prompt_and_more_seeds_for_held_out() -> None:
    prompts, seeds = eval_grid()
    assert set(prompts) == set(shapes.all_prompts())
    for p in shapes.all_prompts():
        wanted = HELD_OUT_EVAL_SEEDS if p in shapes.held_out_prompts() else SEEN_EVAL_SEEDS
        assert [s for q, s in zip(prompts, seeds, strict=True) if q == p] == wanted


def test_fidelity_demo_trains_on_them_and_takes_its_recipe_from_a_preset(tmp_path) -> None:
    """The algorithm is a preset's keys: another preset changes the run, not the demo."""
    from ddpo.demo import demo_config

    url, model = "http://127.0.0.1:1", tmp_path / "m"
    cfg = demo_config("prompt_fidelity", 2, tmp_path, url, model)
    assert cfg.prompts == train_prompts()
    assert cfg.rewards[0].scorer == "prompt_fidelity"
    assert demo_config("jpeg_compressibility", 2, tmp_path, url, model).prompts == (
        shapes.all_prompts()
    )
    preset = tmp_path / "other.toml"
    preset.write_text("use_lora = false\ntrain_learning_rate = 1e-5\n")
    other = demo_config("prompt_fidelity", 2, tmp_path, url, model, recipe=preset)
    assert not other.use_lora and other.train_learning_rate == 1e-5
