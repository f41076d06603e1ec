"""tests/helpers/protocol_cases.py against the plain app: what every deployment must answer.

tests/test_ray_serve.py sends the same requests to the app on Ray Serve.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from reward_server.app import create_app
from reward_server.settings import ServerSettings
from tests.helpers.protocol_cases import CASES, Case, case_settings, check
from tests.helpers.tiny_clip_model import write_tiny_clip_model


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip_model(tmp_path_factory.mktemp("cases") / "clip", seed=7)


@pytest.fixture(scope="module")
def plain(clip_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(ServerSettings(**case_settings(clip_dir)))) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.05)
        yield client


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_plain_server_answers(case: Case, plain: TestClient) -> None:
    check(case, case.send(plain))
