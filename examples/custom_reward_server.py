"""A complete reward server for the DDPO trainer: rewards bright images.

Standalone (fastapi, pillow). Run `uvicorn custom_reward_server:app --port 8001`, then in
the trainer config: [[rewards]] url = "http://127.0.0.1:8001", scorer = "brightness".
Set REWARD_API_KEY to require `Authorization: Bearer <key>`. Protocol: docs/protocol.md.
"""

import base64
import io
import os

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from PIL import Image, ImageStat
from pydantic import BaseModel


class Payload(BaseModel):  # {"format": "png", "data": base64}
    data: str


class Item(BaseModel):  # "prompt" and "metadata" are sent too; this reward ignores them
    id: str
    image: Payload


class ScoreRequest(BaseModel):
    scorer: str
    items: list[Item]


def check_key(authorization: str | None = Header(None)) -> None:
    key = os.environ.get("REWARD_API_KEY")
    if key and authorization != f"Bearer {key}":
        raise HTTPException(401, "missing or invalid API key")


app = FastAPI(title="brightness reward", dependencies=[Depends(check_key)])


@app.exception_handler(HTTPException)
async def problem(request: Request, exc: HTTPException) -> JSONResponse:
    body = {"title": "error", "status": exc.status_code, "detail": str(exc.detail)}
    return JSONResponse(body, exc.status_code, media_type="application/problem+json")


@app.get("/v1/scorers")
def scorers() -> dict:
    return {"scorers": [{"name": "brightness", "version": "1", "description": "mean luma, 0-1"}]}


@app.post("/v1/score")
def score(req: ScoreRequest) -> dict:
    if req.scorer != "brightness":
        raise HTTPException(422, f"unknown scorer {req.scorer!r}; available: brightness")
    scores = []
    for i, item in enumerate(req.items):
        try:
            image = Image.open(io.BytesIO(base64.b64decode(item.image.data))).convert("L")
        except Exception as exc:
            raise HTTPException(422, f"items[{i}].image: not a readable image ({exc})") from exc
        scores.append(ImageStat.Stat(image).mean[0] / 255.0)
    return {"scorer": "brightness", "version": "1", "scores": scores, "details": None}
