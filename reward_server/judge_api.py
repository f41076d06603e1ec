"""The OpenAI chat-completions wire format, as far as a yes/no judge of an image needs it.

One request per image: the image as a PNG data URL and the question, one
answer token, greedy, with its top alternatives' log-probabilities. vLLM and
SGLang serve this API for vision-language models (Qwen2.5-VL, UnifiedReward,
LLaVA). The score is read from those log-probabilities (VQAScore, Lin et al.
2024: P("yes") as the answer), so the score is graded rather than a bare yes or no.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

from PIL import Image
from pydantic import BaseModel, Field

#: Tokenizer word-start markers (byte-level BPE, SentencePiece) left in some token strings.
_MARKERS = "Ġ▁"


def image_data_url(image: Image.Image) -> str:
    """Lossless PNG, base64, as the `image_url` content part takes it."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def chat_request(model: str, question: str, image: Image.Image, top_logprobs: int) -> dict:
    """The body of POST {base}/chat/completions asking `question` about `image`."""
    return {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                    {"type": "text", "text": question},
                ],
            }
        ],
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": True,
        "top_logprobs": top_logprobs,
    }


class TopLogprob(BaseModel):
    token: str
    logprob: float


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class Choice(BaseModel):
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    """Only the fields the judge reads; everything else is ignored."""

    choices: list[Choice] = Field(min_length=1)


class NoLogprobs(ValueError):
    """The answer came without token log-probabilities."""


def _word(token: str) -> str:
    return token.strip().strip(_MARKERS).strip(" .,!:;\"'").lower()


def answer_probabilities(completion: ChatCompletion) -> dict[str, Any]:
    """P(yes) and P(no) of the first answer token, summed over spellings ("Yes", " yes").

    Only the alternatives the server returned are seen, so both are lower bounds;
    with 20 alternatives what is missing is negligible for a yes/no question.
    """
    logprobs = completion.choices[0].logprobs
    if logprobs is None or not logprobs.content:
        raise NoLogprobs("the answer has no logprobs")
    first = logprobs.content[0]
    seen = {alt.token: alt.logprob for alt in first.top_logprobs}
    seen.setdefault(first.token, first.logprob)
    p = {"yes": 0.0, "no": 0.0}
    for token, logprob in seen.items():
        word = _word(token)
        if word in p and math.isfinite(logprob):
            p[word] += math.exp(logprob)
    return {"p_yes": min(p["yes"], 1.0), "p_no": min(p["no"], 1.0), "answer": first.token}
