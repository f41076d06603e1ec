import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A random-weight SD-1.x-shaped pipeline directory, built once per session."""
    from trainer.random_pipeline import build_random_sd

    return build_random_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="session")
def tiny_sd_v(tmp_path_factory) -> Path:
    """The same with v-prediction, as SD 2.x ships."""
    from trainer.random_pipeline import build_random_sd

    return build_random_sd(tmp_path_factory.mktemp("tiny-sd-v"), prediction_type="v_prediction")
