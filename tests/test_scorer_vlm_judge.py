"""`vlm_judge` against a small OpenAI-compatible chat-completions server written here.

The fake judge answers like a served VLM would: the image's redness is its
P(yes) when the question asks for something red (its blueness otherwise),
split over two spellings of "yes", with "No" and a filler token after it.
Prompts starting with `!` make it misbehave in the ways real servers do.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.testclient import TestClient
from PIL import Image

from ddpo.server_process import free_port
from reward_server.app import create_app
from reward_server.scorers import vlm_judge
from reward_server.scorers.base import ScorerUnavailable, ScorerUpstreamError
from reward_server.scorers.vlm_judge import VlmJudgeScorer
from reward_server.settings import ServerSettings
from shared.images import encode_png
from shared.protocol import Problem, ScoreResponse
from tests.helpers.loopback_server import LoopbackServer

KEY = "judge-key"
MODEL = "tiny-vl"


def p_yes_of(image: Image.Image, question: str) -> float:
    r, _, b = np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0) / 255
    return 0.05 + 0.9 * (r if "red" in question else b)


class FakeJudge:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            if request.headers.get("authorization") != f"Bearer {KEY}":
                return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
            body = await request.json()
            self.bodies.append(body)
            content = body["messages"][0]["content"]
            url = next(c["image_url"]["url"] for c in content if c["type"] == "image_url")
            question = next(c["text"] for c in content if c["type"] == "text")
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(0.05 if "slow" not in question else 5)
            finally:
                self.in_flight -= 1
            if "!error" in question:
                return JSONResponse({"error": {"message": "CUDA out of memory"}}, 500)
            if "!garbage" in question:
                return PlainTextResponse("<html>gateway</html>")
            png = base64.b64decode(url.removeprefix("data:image/png;base64,"))
            p = p_yes_of(Image.open(io.BytesIO(png)), question)
            top = [
                {"token": "Yes", "logprob": math.log(0.7 * p)},
                {"token": " yes", "logprob": math.log(0.3 * p)},
                {"token": "No", "logprob": math.log(0.8 * (1 - p))},
                {"token": "The", "logprob": math.log(0.2 * (1 - p))},
            ]
            first = max(top, key=lambda t: t["logprob"])
            logprobs = (
                None if "!nologprobs" in question else {"content": [{**first, "top_logprobs": top}]}
            )
            return {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": first["token"]},
                        "logprobs": logprobs,
                        "finish_reason": "length",
                    }
                ],
            }

        return app


@pytest.fixture(scope="module")
def judge() -> Iterator[tuple[FakeJudge, str]]:
    fake = FakeJudge()
    server = LoopbackServer(fake.app).start()
    yield fake, f"{server.url}/v1"
    server.stop()


def _images() -> list[Image.Image]:
    colours = [(250, 10, 10), (10, 10, 240), (128, 0, 128), (200, 40, 90)]
    return [Image.new("RGB", (24, 24), c) for c in colours]


def _scorer(url: str, **kw: Any) -> VlmJudgeScorer:
    kw.setdefault("api_key", KEY)
    return VlmJudgeScorer(url, MODEL, **kw)


def test_score_is_p_yes_summed_over_spellings(judge: tuple[FakeJudge, str]) -> None:
    fake, url = judge
    scorer = _scorer(url, top_logprobs=5)
    prompts = ["a red square", "a red square", "a blue square", "something blue"]
    fake.bodies.clear()
    scores, details = scorer.score(_images(), prompts)
    expected = [p_yes_of(i, p) for i, p in zip(_images(), prompts, strict=True)]
    assert scores == pytest.approx(expected, abs=1e-6)
    assert scores[0] > 0.8 > 0.2 > scores[1]  # "a red square": the red image yes, the blue no
    assert details is not None and details[0]["answer"] == "Yes" and details[1]["answer"] == "No"
    assert details[1]["p_no"] == pytest.approx(0.8 * (1 - expected[1]))
    body = fake.bodies[0]
    assert body["model"] == MODEL and body["max_tokens"] == 1 and body["temperature"] == 0
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    questions = sorted(
        c["text"] for b in fake.bodies for c in b["messages"][0]["content"] if c["type"] == "text"
    )
    assert questions[0] == 'Does this figure show "a blue square"? Please answer yes or no.'
    scorer.close()


def test_yes_vs_no_ignores_other_first_tokens(judge: tuple[FakeJudge, str]) -> None:
    _, url = judge
    scorer = _scorer(url, score_mode="yes_vs_no", question="Is it {prompt}?")
    scores, _ = scorer.score(_images()[:2], ["red", "red"])
    for image, got in zip(_images()[:2], scores, strict=True):
        p = p_yes_of(image, "red")
        assert got == pytest.approx(p / (p + 0.8 * (1 - p)), abs=1e-6)
    scorer.close()


def test_concurrency_is_bounded(judge: tuple[FakeJudge, str]) -> None:
    fake, url = judge
    scorer = _scorer(url, concurrency=3)
    fake.max_in_flight = 0
    scorer.score([_images()[0]] * 10, ["red"] * 10)
    assert fake.max_in_flight == 3
    scorer.close()


@pytest.mark.parametrize(
    ("prompt", "status", "words"),
    [
        ("!error", 502, "answered 500: .*CUDA out of memory"),
        ("!garbage", 502, "sent no chat completion"),
        ("!nologprobs", 502, "without logprobs.*--max-logprobs"),
        ("slow", 504, "did not answer within 0.5s"),
    ],
)
def test_judge_failures_are_upstream_errors(
    judge: tuple[FakeJudge, str], prompt: str, status: int, words: str
) -> None:
    _, url = judge
    scorer = _scorer(url, timeout_s=0.5)
    with pytest.raises(ScorerUpstreamError, match=words) as info:
        scorer.score(_images()[:2], ["red", prompt])
    assert info.value.status == status
    scorer.close()


def test_wrong_key_and_unreachable_judge(judge: tuple[FakeJudge, str]) -> None:
    _, url = judge
    scorer = _scorer(url, api_key="wrong")
    with pytest.raises(ScorerUpstreamError, match="answered 401"):
        scorer.score(_images()[:1], ["red"])
    scorer.close()
    down = _scorer(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(ScorerUpstreamError, match="cannot reach the VLM judge") as info:
        down.score(_images()[:1], ["red"])
    assert info.value.status == 502
    down.close()


def test_built_from_settings_only_when_a_url_is_set(
    judge: tuple[FakeJudge, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = judge
    with pytest.raises(ScorerUnavailable, match="DDPO_VLM_JUDGE_URL"):
        vlm_judge.build(ServerSettings())
    monkeypatch.setenv("DDPO_VLM_JUDGE_URL", url)
    monkeypatch.setenv("DDPO_VLM_JUDGE_API_KEY", KEY)
    monkeypatch.setenv("DDPO_VLM_JUDGE_MODEL", MODEL)
    settings = ServerSettings()
    assert KEY not in repr(settings)
    scorer = vlm_judge.build(settings)
    assert scorer.score(_images()[:1], ["red"])[0][0] == pytest.approx(
        p_yes_of(_images()[0], "red")
    )
    scorer.close()


def _items(prompts: list[str]) -> list[dict[str, Any]]:
    return [
        {"id": str(i), "prompt": p, "image": encode_png(np.asarray(img)).model_dump()}
        for i, (img, p) in enumerate(zip(_images(), prompts, strict=False))
    ]


def _client(scorer: VlmJudgeScorer) -> TestClient:
    return TestClient(create_app(ServerSettings(batch_max_wait_ms=20), {"vlm_judge": scorer}))


def test_served_through_the_app(judge: tuple[FakeJudge, str]) -> None:
    _, url = judge
    prompts = ["red", "red", "blue"]
    with _client(_scorer(url)) as client:
        response = client.post("/v1/score", json={"scorer": "vlm_judge", "items": _items(prompts)})
    assert response.status_code == 200, response.text
    scored = ScoreResponse.model_validate(response.json())
    expected = [p_yes_of(i, p) for i, p in zip(_images(), prompts, strict=False)]
    assert scored.scores == pytest.approx(expected, abs=1e-6)
    assert scored.details is not None and scored.details[0]["id"] == "0"
    assert scored.details[0]["p_yes"] == pytest.approx(expected[0], abs=1e-6)
    assert scored.version == f"{MODEL}:p_yes"


@pytest.mark.parametrize(("prompt", "status"), [("!error", 502), ("slow", 504)])
def test_a_failing_judge_is_a_problem_not_a_500(
    judge: tuple[FakeJudge, str], prompt: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    _, url = judge
    started = time.monotonic()
    with _client(_scorer(url, timeout_s=0.5)) as client:
        response = client.post(
            "/v1/score", json={"scorer": "vlm_judge", "items": _items(["red", prompt])}
        )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = Problem.model_validate(response.json())
    assert problem.type == "urn:ddpo:problem:upstream-failed"
    assert "VLM judge" in (problem.detail or "")
    assert "Traceback" not in caplog.text
    assert time.monotonic() - started < 30
