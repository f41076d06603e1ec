"""Reading a ScoreRequest body: content type, JSON, limits, image decoding.

The body is validated here rather than by FastAPI so that each failure gets
its own status and problem type, and a detail that names the field or item.
"""

from __future__ import annotations

from fastapi import Request
from PIL import Image
from pydantic import ValidationError

from reward_server.problems import (
    INVALID_IMAGE,
    INVALID_JSON,
    INVALID_REQUEST,
    TOO_MANY_ITEMS,
    TOO_MANY_PIXELS,
    UNSUPPORTED_MEDIA_TYPE,
    ProblemError,
    describe_errors,
)
from shared.images import ImageDecodeError, decode_image
from shared.protocol import ScoreItem, ScoreRequest


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON (a missing Content-Type counts as JSON)."""
    content_type = request.headers.get("content-type", "application/json")
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ProblemError(
            415,
            f"Content-Type {media!r} is not supported; send application/json",
            UNSUPPORTED_MEDIA_TYPE,
        )


def parse_score_request(raw: bytes, max_items: int) -> ScoreRequest:
    """Validate the body ourselves so each failure gets its own status and a clear detail."""
    if not raw.strip():
        raise ProblemError(400, "request body is empty; send a JSON ScoreRequest", INVALID_JSON)
    try:
        request = ScoreRequest.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        bad_json = [e for e in errors if e["type"] == "json_invalid"]
        if bad_json:
            reason = bad_json[0].get("ctx", {}).get("error") or bad_json[0]["msg"]
            raise ProblemError(
                400, f"request body is not valid JSON: {reason}", INVALID_JSON
            ) from None
        too_many = [e for e in errors if e["loc"] == ("items",) and e["type"] == "too_long"]
        if too_many:
            raise ProblemError(
                422,
                f"items: too many items; this server accepts at most {max_items} per request",
                TOO_MANY_ITEMS,
            ) from None
        raise ProblemError(422, describe_errors(errors), INVALID_REQUEST) from None
    if len(request.items) > max_items:
        raise ProblemError(
            422,
            f"items: {len(request.items)} items; this server accepts at most {max_items} "
            "per request",
            TOO_MANY_ITEMS,
        )
    return request


def decode_items(
    items: list[ScoreItem], max_pixels: int, max_request_pixels: int
) -> list[Image.Image]:
    """Decode every image (in a worker thread), naming the item that fails."""
    images: list[Image.Image] = []
    total = 0
    for i, item in enumerate(items):
        try:
            image = decode_image(item.image, max_pixels=max_pixels)
        except ImageDecodeError as exc:
            raise ProblemError(422, f"items[{i}].image: {exc}", INVALID_IMAGE) from None
        except Exception as exc:  # a Pillow failure shared.images did not anticipate
            raise ProblemError(
                422, f"items[{i}].image: cannot decode image: {exc}", INVALID_IMAGE
            ) from None
        total += image.width * image.height
        if total > max_request_pixels:
            raise ProblemError(
                422,
                f"items[{i}].image: the request's images total more than "
                f"{max_request_pixels} pixels; send fewer or smaller images per request",
                TOO_MANY_PIXELS,
            )
        images.append(image)
    return images
