"""Security properties of the reward server, route by route (docs/security.md).

- Every route of the app is classified below; a new route that is not fails
  `test_every_route_is_classified`, so nobody can add an endpoint and forget its auth.
- With API keys configured: no credentials -> 401, a rater token on /v1 -> 403, an
  API key on the rating routes -> 403, the right credential -> neither.
- API keys are held hashed; request size limits hold on every route; no pickle loading.

Limits already covered in tests/test_server_app.py (not repeated here):
body by Content-Length and streamed (`test_body_too_large_*`), items per request
(`test_too_many_items`), pixels per image and per request (`test_too_many_pixels*`).
"""

from __future__ import annotations

import ast
import base64
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from reward_server.app import create_app
from reward_server.scorers.human import HumanScorer
from reward_server.settings import ServerSettings, hash_api_key
from reward_server.storage import RatingStore
from shared.images import encode_png
from tests.helpers.recording_scorer import RecordingScorer

ROOT = Path(__file__).resolve().parents[1]
KEY = "sec-test-key-7f3a"
PROBLEM = "application/problem+json"
HTML = "text/html"

# -- the route table -------------------------------------------------------------------

#: Open to anyone: probes, metrics, API docs, sign-in forms and the rating page's assets.
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/rate/login"),  # checks the invite token itself
    ("POST", "/rate/logout"),
    ("GET", "/rate/static/{name}"),
    ("POST", "/admin/login"),  # checks the API key itself
}
#: Rater token only (bearer or cookie); API keys get 403. (route, media type of its 401/403)
RATER = {
    ("GET", "/rate/api/next"): PROBLEM,
    ("POST", "/rate/api/rate"): PROBLEM,
    ("POST", "/rate/api/skip"): PROBLEM,
    ("GET", "/rate"): HTML,
    ("POST", "/rate"): HTML,
}
#: Rater token (for images it holds a lease on) or an API key (admins may look at any image).
RATER_OR_ADMIN = {("GET", "/rate/image/{item_id}"): PROBLEM}
#: API key only (bearer or the admin page's cookie); rater tokens get 403.
ADMIN = {("GET", "/admin"): HTML, ("GET", "/admin/stats.json"): PROBLEM}
# Everything under /v1 needs an API key; rater tokens get 403 (collected from the app).

_JOB_BODY_PNG = encode_png(np.zeros((8, 8, 3), dtype=np.uint8)).data
#: A request that would succeed for each route given the right credential.
REQUESTS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/v1/scorers"): {"url": "/v1/scorers"},
    ("POST", "/v1/score"): {
        "url": "/v1/score",
        "json": {"scorer": "recording", "items": [{"id": "a", "image": {"data": _JOB_BODY_PNG}}]},
    },
    ("POST", "/v1/jobs"): {
        "url": "/v1/jobs",
        "json": {"scorer": "human", "items": [{"id": "a", "image": {"data": _JOB_BODY_PNG}}]},
    },
    ("GET", "/v1/jobs/{job_id}"): {"url": "/v1/jobs/nope"},
    ("DELETE", "/v1/jobs/{job_id}"): {"url": "/v1/jobs/nope"},
    ("GET", "/rate/api/next"): {"url": "/rate/api/next"},
    ("POST", "/rate/api/rate"): {"url": "/rate/api/rate", "json": {"lease": "x", "score": 5}},
    ("POST", "/rate/api/skip"): {"url": "/rate/api/skip", "json": {"lease": "x"}},
    ("GET", "/rate"): {"url": "/rate"},
    ("POST", "/rate"): {"url": "/rate", "data": {"lease": "x", "score": "5"}},
    ("GET", "/rate/image/{item_id}"): {"url": "/rate/image/1"},
    ("GET", "/admin"): {"url": "/admin"},
    ("GET", "/admin/stats.json"): {"url": "/admin/stats.json"},
}


def _walk(routes: Any, prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every HTTP route, through included routers and mounts."""
    for route in routes:
        if isinstance(route, (APIRoute, Route)):
            yield prefix + route.path, set(route.methods or ())
        elif hasattr(route, "effective_route_contexts"):  # FastAPI >= 0.16x: lazy include
            for ctx in route.effective_route_contexts():
                yield prefix + ctx.path, set(ctx.methods or ())
        elif hasattr(route, "routes"):  # a Mount
            yield from _walk(route.routes, prefix + getattr(route, "path", ""))


def _routes(app: Any) -> set[tuple[str, str]]:
    return {(m, path) for path, methods in _walk(app.routes) for m in methods if m != "HEAD"}


def _v1(app: Any) -> set[tuple[str, str]]:
    return {r for r in _routes(app) if r[1].startswith("/v1/")}


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    """An app with an API key and human scorers; yields (client, a rater's token)."""
    store = RatingStore(f"sqlite:///{tmp_path / 'r.db'}")
    _, token = store.add_rater("alice")
    scorers = {"human": HumanScorer(store, "score", 1), "recording": RecordingScorer()}
    settings = ServerSettings(api_keys=[KEY], max_items=4, max_body_bytes=100_000)
    with TestClient(
        create_app(settings, scorers, rating_store=store), follow_redirects=False
    ) as client:
        yield client, token
    store.close()


def _call(client: TestClient, route: tuple[str, str], token: str | None) -> Any:
    kwargs = dict(REQUESTS[route])
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.request(route[0], kwargs.pop("url"), headers=headers, **kwargs)


def _assert_refused(response: Any, status: int, media: str, route: tuple[str, str]) -> None:
    assert response.status_code == status, (route, response.status_code, response.text)
    assert response.headers["content-type"].startswith(media), (route, response.headers)
    if media == PROBLEM:
        body = response.json()
        assert body["status"] == status and body["type"].startswith("urn:ddpo:problem:"), body


def test_every_route_is_classified(secured: tuple[TestClient, str]) -> None:
    client, _ = secured
    routes = _routes(client.app)
    protected = _v1(client.app) | set(RATER) | set(RATER_OR_ADMIN) | set(ADMIN)
    unclassified = routes - PUBLIC - protected
    assert not unclassified, f"classify these routes in tests/test_security.py: {unclassified}"
    assert not (PUBLIC & protected)
    assert protected <= set(REQUESTS), f"add a request for: {protected - set(REQUESTS)}"
    assert {("POST", "/v1/score"), ("POST", "/v1/jobs"), ("GET", "/v1/scorers")} <= routes


def test_v1_needs_an_api_key_and_refuses_rater_tokens(secured: tuple[TestClient, str]) -> None:
    client, token = secured
    for route in sorted(_v1(client.app)):
        response = _call(client, route, None)
        _assert_refused(response, 401, PROBLEM, route)
        assert response.headers["www-authenticate"].startswith("Bearer"), route
        _assert_refused(_call(client, route, "not-a-key"), 401, PROBLEM, route)
        refused = _call(client, route, token)
        _assert_refused(refused, 403, PROBLEM, route)
        assert "rater" in refused.json()["detail"]
        allowed = _call(client, route, KEY)
        assert allowed.status_code not in (401, 403), (route, allowed.text)
        assert allowed.status_code < 500, (route, allowed.text)


def test_rating_routes_need_a_rater_token_and_refuse_api_keys(
    secured: tuple[TestClient, str],
) -> None:
    client, token = secured
    for route, media in sorted(RATER.items()):
        _assert_refused(_call(client, route, None), 401, media, route)
        _assert_refused(_call(client, route, "not-a-token"), 401, media, route)
        _assert_refused(_call(client, route, KEY), 403, media, route)
        allowed = _call(client, route, token)
        assert allowed.status_code not in (401, 403), (route, allowed.text)
        assert allowed.status_code < 500, (route, allowed.text)
    for route, media in RATER_OR_ADMIN.items():
        _assert_refused(_call(client, route, None), 401, media, route)
        for credential in (token, KEY):  # not leased / no such image: 404, never 401/403
            assert _call(client, route, credential).status_code == 404, route


def test_admin_routes_need_an_api_key_and_refuse_rater_tokens(
    secured: tuple[TestClient, str],
) -> None:
    client, token = secured
    for route, media in sorted(ADMIN.items()):
        _assert_refused(_call(client, route, None), 401, media, route)
        # A rater token is recognised and refused outright (problem+json even on the page).
        _assert_refused(_call(client, route, token), 403, PROBLEM, route)
        assert _call(client, route, KEY).status_code == 200, route


def test_public_routes_need_nothing(secured: tuple[TestClient, str]) -> None:
    client, _ = secured
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/rate/static/rate.css"):
        assert client.get(path).status_code == 200, path
    assert client.get("/rate/login?token=wrong").status_code == 401
    assert client.post("/admin/login", data={"key": "wrong"}).status_code == 401


# -- API keys are held hashed ------------------------------------------------------


def test_api_keys_are_never_held_in_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDPO_API_KEYS", f"{KEY}, other-key")
    settings = ServerSettings()
    assert settings.api_keys == [hash_api_key(KEY), hash_api_key("other-key")]
    # Nowhere in the object: fields, repr, dumps.
    for text in (repr(settings), str(vars(settings)), settings.model_dump_json()):
        assert KEY not in text
    # Nor in the running app's settings after a request authenticated with it.
    app = create_app(ServerSettings(api_keys=[KEY]), {"recording": RecordingScorer()})
    with TestClient(app) as client:
        ok = client.get("/v1/scorers", headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
    held = app.state.runtime.settings
    assert KEY not in repr(vars(held)) and held.api_keys == [hash_api_key(KEY)]
    # A hash can be configured directly, so the plaintext need not be in the environment.
    assert ServerSettings(api_keys=[hash_api_key(KEY)]).check_api_key(KEY)


# -- bounded requests on every route (see the module docstring for /v1/score) -----------


def test_body_limit_holds_before_auth_on_every_route(secured: tuple[TestClient, str]) -> None:
    """An anonymous caller cannot make the server buffer a large body, on any route."""
    client, _ = secured
    big = b"{" + b" " * 100_001 + b"}"
    for path in ("/v1/score", "/v1/jobs", "/rate/api/rate", "/rate", "/admin/login"):
        response = client.post(path, content=big, headers={"content-type": "application/json"})
        _assert_refused(response, 413, PROBLEM, ("POST", path))


def test_job_route_bounds_items_and_pixels(secured: tuple[TestClient, str]) -> None:
    client, _ = secured
    auth = {"Authorization": f"Bearer {KEY}"}
    item = {"id": "a", "image": {"data": _JOB_BODY_PNG}}
    many = client.post("/v1/jobs", json={"scorer": "human", "items": [item] * 5}, headers=auth)
    _assert_refused(many, 422, PROBLEM, ("POST", "/v1/jobs"))
    assert many.json()["type"].endswith("too-many-items")
    huge = {"id": "a", "image": {"data": _png_claiming(3000, 3000)}}
    big = client.post("/v1/jobs", json={"scorer": "human", "items": [huge]}, headers=auth)
    _assert_refused(big, 422, PROBLEM, ("POST", "/v1/jobs"))


def _png_claiming(width: int, height: int) -> str:
    """A PNG of a few bytes whose header claims width x height: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


@pytest.mark.parametrize("side", [3_000, 100_000])  # over our limit; over Pillow's own bomb limit
def test_decompression_bomb_is_refused_before_decoding(side: int) -> None:
    app = create_app(ServerSettings(), {"recording": RecordingScorer()})
    body = {
        "scorer": "recording",
        "items": [{"id": "a", "image": {"data": _png_claiming(side, side)}}],
    }
    with TestClient(app) as client:
        response = client.post("/v1/score", json=body)
    _assert_refused(response, 422, PROBLEM, ("POST", "/v1/score"))
    assert "items[0].image" in response.json()["detail"]


# -- no pickle ------------------------------------------------------------------------

_PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}


def _unsafe_loads(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names]
            if any(name.split(".")[0] in _PICKLERS for name in names):
                found.append((node.lineno, "imports a pickle module"))
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        owner_name = owner.id if isinstance(owner, ast.Name) else None
        keywords = {k.arg: k.value for k in node.keywords}
        if node.func.attr in ("load", "loads") and owner_name in _PICKLERS:
            found.append((node.lineno, f"{owner_name}.{node.func.attr}"))
        if node.func.attr == "load" and owner_name == "torch":
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append((node.lineno, "torch.load without weights_only=True"))
        if node.func.attr == "load" and owner_name in ("np", "numpy"):
            flag = keywords.get("allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append((node.lineno, "np.load with allow_pickle"))
    return found


def test_scanner_catches_unsafe_loads() -> None:
    bad = (
        "import pickle\npickle.load(f)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
        "np.load(p, allow_pickle=True)\n"
    )
    assert [line for line, _ in _unsafe_loads(ast.parse(bad))] == [1, 2, 3, 4, 5]
    assert _unsafe_loads(ast.parse("torch.load(p, map_location='cpu', weights_only=True)")) == []


def test_no_pickle_loading_in_source() -> None:
    problems = []
    files = [p for d in ("trainer", "reward_server", "shared") for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        problems += [f"{path.relative_to(ROOT)}:{ln}: {what}" for ln, what in _unsafe_loads(tree)]
    assert not problems, "\n".join(problems)
