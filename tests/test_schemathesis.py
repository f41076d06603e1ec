"""Property-based fuzzing of the reward server's OpenAPI spec with schemathesis, in-process.

Every operation of `create_app`'s own /openapi.json gets generated requests (valid and
invalid ones) over ASGI; the only check is that the server never answers 5xx: bad input
must be a 4xx problem+json, never a crash. Bounded to a few examples per operation so
the whole module stays well under a minute on two CPU cores.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is not installed (pip install -e '.[test]')"
)
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from reward_server.app import create_app  # noqa: E402
from reward_server.scorers.human import HumanScorer  # noqa: E402
from reward_server.scorers.jpeg import JpegCompressibility, JpegIncompressibility  # noqa: E402
from reward_server.settings import ServerSettings  # noqa: E402
from reward_server.storage import RatingStore  # noqa: E402

MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The app with both jpeg scorers and a human (job) scorer, so /v1/jobs is live too."""
    db = Path(tmp_path_factory.mktemp("schemathesis")) / "ratings.db"
    store = RatingStore(f"sqlite:///{db}")
    scorers = {
        "jpeg_compressibility": JpegCompressibility(),
        "jpeg_incompressibility": JpegIncompressibility(),
        "human": HumanScorer(store, "score", 1),
    }
    # Short long-polls: a generated `wait=` must not stall the run.
    app = create_app(ServerSettings(max_items=4, job_max_wait_s=0.05), scorers, rating_store=store)
    yield app
    asgi = getattr(schemathesis, "python", None)
    shutdown = getattr(getattr(asgi, "asgi", None), "shutdown_lifespans", None)
    if callable(shutdown):
        shutdown()  # stop the app's batchers before its store goes away
    store.close()


@pytest.fixture(scope="module")
def api_schema(fuzzed_app: Any) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)


def test_no_server_errors(api_schema: Any) -> None:
    """Each operation in turn (a loop, not schemathesis' pytest plugin: works on any pytest)."""
    labels, failures = [], []
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    for operation, mode in itertools.product(operations, list(GenerationMode)):
        labels.append(operation.label)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Any) -> None:
            response = case.call()
            statuses[response.status_code] += 1
            case.validate_response(response, checks=[not_a_server_error])

        try:
            fuzz()
        except Unsatisfiable:
            continue  # no parameters to break: an operation like GET /healthz has no negative case
        except Exception as exc:  # keep going: report every operation that fails
            failures.append(f"{operation.label} ({mode.value}): {exc}")
    print(
        f"schemathesis: {sum(statuses.values())} calls, statuses {dict(sorted(statuses.items()))}"
    )
    assert "POST /v1/score" in labels and "POST /v1/jobs" in labels, labels
    assert any(400 <= s < 500 for s in statuses) and any(s < 300 for s in statuses), statuses
    assert not failures, "\n\n".join(failures)
