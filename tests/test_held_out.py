"""The held-out combinations: what the built-in model never saw, and the demo trains on."""

from __future__ import annotations

from ddpo.demo_fidelity import HELD_OUT_EVAL_SEEDS, SEEN_EVAL_SEEDS, eval_grid, train_prompts
from shared import shapes


def test_held_out_pairs_are_unseen_but_every_word_is_seen_with_the_others() -> None:
    """A held-out prompt asks for a shape and colour never drawn together, while each of its
    words was drawn with every value of the other attributes that is not held out with it."""
    seen = [t for t in shapes.all_triples() if t not in shapes.HELD_OUT]
    for shape, colour in shapes.HELD_OUT_PAIRS:
        assert not any(t[:2] == (shape, colour) for t in seen)
        assert {t[1] for t in seen if t[0] == shape} == set(shapes.COLOURS) - {colour}
        assert {t[0] for t in seen if t[1] == colour} == set(shapes.SHAPES) - {shape}
    for shape, colour, background in shapes.HELD_OUT:
        assert any(t[0] == shape and t[2] == background for t in seen)
        assert any(t[1] == colour and t[2] == background for t in seen)
    assert len({p[0] for p in shapes.HELD_OUT_PAIRS}) == len(shapes.HELD_OUT_PAIRS)
    assert len({p[1] for p in shapes.HELD_OUT_PAIRS}) == len(shapes.HELD_OUT_PAIRS)
    assert len(set(shapes.HELD_OUT)) == len(shapes.HELD_OUT) == 9
    assert len(shapes.seen_prompts()) + len(shapes.held_out_prompts()) == 36


def test_demo_trains_on_held_out_prompts_and_seen_neighbours() -> None:
    prompts = train_prompts()
    held = shapes.held_out_prompts()
    assert prompts[: len(held)] == held
    neighbours = [shapes.parse_prompt(p) for p in prompts[len(held) :]]
    assert len(set(neighbours)) == len(held)
    for (shape, colour, background), n in zip(shapes.HELD_OUT, neighbours, strict=True):
        assert n not in shapes.HELD_OUT and n[1:] == (colour, background) and n[0] != shape


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
