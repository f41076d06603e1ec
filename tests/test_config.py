import tomllib
from pathlib import Path

import pytest

from trainer.config import ConfigError, build_config, load_config

REPO = Path(__file__).resolve().parents[1]

BASE = """
pretrained_model = "some/model"
prompts = ["a cat", "a dog"]
sample_batch_size = 4
train_batch_size = 2

[[rewards]]
url = "http://127.0.0.1:8000"
scorer = "jpeg_compressibility"
weight = 1.0
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_loads_and_overrides(tmp_path):
    cfg = load_config(
        write(tmp_path, BASE),
        [
            "num_epochs=7",
            "train_learning_rate=1e-5",
            "use_lora=false",
            "rewards.0.weight=2.5",
            'prompts=["x"]',
            "output_dir=/tmp/x",
        ],
    )
    assert cfg.num_epochs == 7
    assert cfg.train_learning_rate == 1e-5
    assert cfg.use_lora is False
    assert cfg.rewards[0].weight == 2.5
    assert cfg.prompt_list() == ["x"]
    assert str(cfg.output_dir) == "/tmp/x"


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="num_epoch: unknown key"):
        load_config(write(tmp_path, BASE + "\nnum_epoch = 3\n"))
    with pytest.raises(ConfigError, match="rewards.0.wieght: unknown key"):
        load_config(write(tmp_path, BASE), ["rewards.0.wieght=1"])


def test_bad_value_is_named(tmp_path):
    with pytest.raises(ConfigError, match="sample_num_steps"):
        load_config(write(tmp_path, BASE), ["sample_num_steps=many"])
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_config(write(tmp_path, BASE), ["mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="train_batch_size"):
        load_config(write(tmp_path, BASE), ["train_batch_size=3"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(write(tmp_path, BASE), ["num_epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_prompts_file_resolves_next_to_config(tmp_path):
    (tmp_path / "p.txt").write_text("# comment\nred\n\nblue\n")
    text = BASE.replace('prompts = ["a cat", "a dog"]', 'prompts_file = "p.txt"')
    assert load_config(write(tmp_path, text)).prompt_list() == ["red", "blue"]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.toml")))
def test_shipped_configs_validate(name):
    load_config(REPO / "configs" / name)


def test_reference_lora_config_has_reference_settings():
    cfg = load_config(REPO / "configs" / "sd15-aesthetic-lora.toml")
    assert (cfg.num_epochs, cfg.sample_batch_size, cfg.sample_num_batches_per_epoch) == (200, 6, 4)
    assert (cfg.train_batch_size, cfg.train_gradient_accumulation_steps) == (3, 1)
    assert cfg.sample_num_steps == 50 and cfg.per_prompt_stat_tracking_buffer_size == 32
    assert cfg.use_lora and cfg.mixed_precision != "no" and cfg.train_learning_rate == 3e-4
    full = load_config(REPO / "configs" / "sd15-aesthetic-full.toml")
    assert not full.use_lora and full.mixed_precision == "no" and full.train_learning_rate == 1e-5


@pytest.mark.parametrize(
    "name",
    [
        "sd15-aesthetic-lora.toml",
        "sd15-aesthetic-full.toml",
        "sdxl-aesthetic-lora.toml",
        "sd35-medium-grpo-lora.toml",
        "flux1-dev-grpo-lora.toml",
        "presets/small-budget-lora.toml",
    ],
)
def test_ppo_configs_name_their_algorithm(name):
    """The default is nft: a DDPO / Flow-GRPO config must say ppo or it trains something else."""
    assert tomllib.loads((REPO / "configs" / name).read_text())["train_algorithm"] == "ppo"


def test_config_docs_are_current():
    from trainer.config_docs import render_config_docs

    assert (REPO / "docs" / "config.md").read_text() == render_config_docs(), (
        "run: python -m trainer.config_docs > docs/config.md"
    )


PRESETS = REPO / "configs" / "presets"


@pytest.mark.parametrize("name", sorted(p.name for p in PRESETS.glob("*.toml")))
def test_presets_are_recipes_that_validate(name):
    """A preset holds recipe keys only and validates on top of a run's own keys."""
    preset = tomllib.loads((PRESETS / name).read_text())
    run_keys = {"pretrained_model", "prompts", "prompts_file", "rewards", "output_dir", "seed"}
    assert not run_keys & preset.keys()
    base = {
        "pretrained_model": "x",
        "prompts": ["a"],
        "rewards": [{"url": "http://127.0.0.1:1", "scorer": "jpeg_compressibility"}],
    }
    build_config({**base, **preset})
