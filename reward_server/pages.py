"""Server-rendered HTML of the rating and admin pages.

Jinja2 autoescapes every value (prompts are untrusted text), and every page
goes out with a strict Content-Security-Policy: its only script and
stylesheet come from this server, so it works offline and a prompt can never
inject markup.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

from fastapi.responses import HTMLResponse

_CSP = (
    "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_DISABLED = "Human rating is not enabled on this server (it needs the `human` scorer)."


@lru_cache(maxsize=1)
def _templates() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("reward_server", "templates"),
        autoescape=True,  # every {{ value }} is HTML-escaped: prompts are untrusted text
        trim_blocks=True,
        lstrip_blocks=True,
    )


def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Render templates/<name> with the page security headers."""
    html = _templates().get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers=_PAGE_HEADERS)


def ratings_disabled_page() -> HTMLResponse:
    return page("message.html", 404, title="Ratings disabled", message=_DISABLED)


def fmt_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC" if ts else "-"
