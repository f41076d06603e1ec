"""`vlm_judge`: a vision-language model, served elsewhere, asked whether the image shows its prompt.

The model runs behind an OpenAI-compatible chat-completions API (vLLM or
SGLang), so it can be any size, on other GPUs, shared by several reward
servers. Each image is one request (reward_server/judge_api.py); a batch from
the dynamic batcher goes out `vlm_judge_concurrency` requests at a time, and
the serving engine batches them on its side. The score is P(yes) (or P(yes)
relative to P(no)) of the first answer token. Whatever goes wrong with that
endpoint (refused, timed out, an error status, an answer without logprobs) is
a ScorerUpstreamError: the client gets a 502 or 504 problem saying what,
never a 500. Built only when `DDPO_VLM_JUDGE_URL` is set; nothing is
contacted until the first batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Literal

import httpx
from PIL import Image
from pydantic import ValidationError

from reward_server.judge_api import ChatCompletion, NoLogprobs, answer_probabilities, chat_request
from reward_server.scorers.base import Scorer, ScorerUnavailable, ScorerUpstreamError
from reward_server.settings import ServerSettings

log = logging.getLogger(__name__)

_BODY_PREVIEW = 200


class VlmJudgeScorer(Scorer):
    name = "vlm_judge"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        question: str = 'Does this figure show "{prompt}"? Please answer yes or no.',
        api_key: str | None = None,
        score_mode: Literal["p_yes", "yes_vs_no"] = "p_yes",
        top_logprobs: int = 20,
        concurrency: int = 8,
        timeout_s: float = 60.0,
        max_batch_size: int = 64,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if "{prompt}" not in question:
            raise ScorerUnavailable(f"the judge question must contain {{prompt}}: {question!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.question = question
        self.score_mode = score_mode
        self.top_logprobs = top_logprobs
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_batch_size = max_batch_size
        self.version = f"{model}:{score_mode}"
        self.description = (
            f"VLM judge {model} at {base_url}: asked whether the image shows the prompt; "
            + (
                "score P(yes) of its first answer token (0-1, VQAScore)."
                if score_mode == "p_yes"
                else "score P(yes) / (P(yes) + P(no)) of its first answer token (0-1)."
            )
        )
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # The scorer's own event loop, on its own thread: `score` is called from the
        # batcher's worker thread, `close` from the server's loop, and both can hand it work.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="vlm-judge-http", daemon=True
        )
        self._thread.start()
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=concurrency),
            transport=transport,
        )

    def score(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[list[float], list[dict[str, Any]] | None]:
        future = asyncio.run_coroutine_threadsafe(self._ask_all(images, prompts), self._loop)
        answers = future.result()
        return [self._value(a) for a in answers], answers

    def _value(self, answer: dict[str, Any]) -> float:
        p_yes, p_no = answer["p_yes"], answer["p_no"]
        if self.score_mode == "p_yes":
            return p_yes
        return p_yes / (p_yes + p_no) if p_yes + p_no > 0 else 0.5

    async def _ask_all(self, images: list[Image.Image], prompts: list[str]) -> list[dict]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(image: Image.Image, prompt: str) -> dict[str, Any]:
            async with gate:
                return await self._ask(image, prompt)

        try:
            async with asyncio.TaskGroup() as group:  # the first failure cancels the rest
                tasks = [group.create_task(one(i, p)) for i, p in zip(images, prompts, strict=True)]
        except* ScorerUpstreamError as failures:
            raise failures.exceptions[0] from None
        return [t.result() for t in tasks]

    async def _ask(self, image: Image.Image, prompt: str) -> dict[str, Any]:
        body = chat_request(
            self.model, self.question.replace("{prompt}", prompt), image, self.top_logprobs
        )
        try:
            response = await self._client.post(self.url, json=body)
        except httpx.TimeoutException:
            raise ScorerUpstreamError(
                f"VLM judge at {self.url} did not answer within {self.timeout_s:g}s", 504
            ) from None
        except httpx.HTTPError as exc:
            raise ScorerUpstreamError(
                f"cannot reach the VLM judge at {self.url}: {type(exc).__name__}: {exc}"
            ) from None
        if response.status_code >= 400:
            preview = response.text[:_BODY_PREVIEW].strip()
            raise ScorerUpstreamError(
                f"VLM judge at {self.url} answered {response.status_code}: {preview}"
            )
        try:
            return answer_probabilities(ChatCompletion.model_validate_json(response.content))
        except ValidationError as exc:
            raise ScorerUpstreamError(
                f"VLM judge at {self.url} sent no chat completion: {exc.error_count()} "
                f"error(s), first: {exc.errors()[0]['msg']}"
            ) from None
        except NoLogprobs:
            raise ScorerUpstreamError(
                f"VLM judge at {self.url} sent an answer without logprobs; the server must "
                f"allow top_logprobs={self.top_logprobs} (vLLM: --max-logprobs)"
            ) from None

    def close(self) -> None:
        """Called by the server at shutdown: closes the connections and stops the loop."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def build(settings: ServerSettings) -> VlmJudgeScorer:
    if not settings.vlm_judge_url:
        raise ScorerUnavailable(
            "no judge endpoint: set DDPO_VLM_JUDGE_URL (e.g. http://127.0.0.1:8001/v1)"
        )
    key = settings.vlm_judge_api_key
    log.info("vlm_judge: %s at %s", settings.vlm_judge_model, settings.vlm_judge_url)
    return VlmJudgeScorer(
        settings.vlm_judge_url,
        settings.vlm_judge_model,
        question=settings.vlm_judge_question,
        api_key=key.get_secret_value() if key is not None else None,
        score_mode=settings.vlm_judge_score,
        top_logprobs=settings.vlm_judge_top_logprobs,
        concurrency=settings.vlm_judge_concurrency,
        timeout_s=settings.vlm_judge_timeout_s,
    )
