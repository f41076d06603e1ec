"""The rating page in a real browser (headless Chromium through Playwright).

Skipped, with the reason, where Playwright or Chromium is missing; .ci/run
installs both. Chromium is Debian's (/usr/bin/chromium, or $DDPO_CHROMIUM):
Playwright's own browser download is not needed.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn

from reward_server.app import create_app
from reward_server.scorers.human import HumanScorer
from reward_server.settings import ServerSettings
from reward_server.storage import NewItem, RatingStore
from shared.images import encode_png

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = os.environ.get("DDPO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EVIL = "<script>window.__pwned = 1</script><b>bold?</b>"


def _png(value: int) -> bytes:
    import base64

    return base64.b64decode(encode_png(np.full((32, 32, 3), value, dtype=np.uint8)).data)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, RatingStore]]:
    store = RatingStore(f"sqlite:///{tmp_path / 'r.db'}")
    scorers = {
        "human": HumanScorer(store, "score", 1),
        "human_pairwise": HumanScorer(store, "pair"),
    }
    app = create_app(ServerSettings(), scorers, rating_store=store)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", store
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
    store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        except Exception as exc:  # a broken or incompatible Chromium
            pytest.skip(f"cannot launch Chromium at {CHROMIUM}: {exc}")
        yield b
        b.close()


def _scores(store: RatingStore) -> list[int | None]:
    return [row["score"] for row in store.export_rows()]


def test_sign_in_and_rate_by_mouse_and_keyboard(live, browser) -> None:
    url, store = live
    _, token = store.add_rater("alice")
    items = [NewItem(f"s{i}", p, _png(40 * i), {}) for i, p in enumerate([EVIL, "a red circle"])]
    store.create_job("human", "score", 1, items, deadline_s=300)

    page = browser.new_page(viewport={"width": 375, "height": 740})  # a phone
    page.goto(f"{url}/rate")
    assert "invite link" in page.content()  # not signed in yet
    page.goto(f"{url}/rate/login?token={token}")
    assert page.url == f"{url}/rate"
    assert "2 waiting" in page.inner_text("#waiting")

    # The prompt with markup is shown as text and its script never ran.
    assert page.inner_text("#prompt") == EVIL
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("#prompt b").count() == 0
    # Usable at phone width: nothing overflows sideways, every score button is on screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert all(page.locator(f"button.score[value='{n}']").is_visible() for n in range(1, 11))
    assert page.evaluate("document.querySelector('img.single').naturalWidth") == 32

    with page.expect_navigation():
        page.click("button.score[value='7']")  # the mouse
    assert _scores(store) == [7]
    assert page.inner_text("#prompt") == "a red circle"

    with page.expect_navigation():
        page.keyboard.press("0")  # the keyboard: 0 means 10
    assert _scores(store) == [7, 10]
    assert "Nothing to rate" in page.content()
    page.close()


def test_ab_mode_with_keys(live, browser) -> None:
    url, store = live
    _, token = store.add_rater("bob")
    items = [NewItem(f"s{i}", "two cats", _png(100 * i), {}) for i in range(2)]
    job, _ = store.create_job("human_pairwise", "pair", 1, items, deadline_s=300)

    page = browser.new_page()
    page.goto(f"{url}/rate/login?token={token}")
    page.goto(f"{url}/rate?mode=pair")
    assert page.locator("button.choice").count() == 2
    a_src = page.get_attribute("figure:first-child img", "src")
    with page.expect_navigation():
        page.keyboard.press("a")
    (row,) = store.export_rows()
    assert row["mode"] == "pair" and a_src == f"/rate/image/{row['item_id']}"  # A won
    assert store.job_view(job).status == "done"
    page.close()
