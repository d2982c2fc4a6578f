"""``GET /ops``: the operators' console, one HTML page with its script and style inlined.

The page holds no data, so it is public; everything it shows comes from the admin API, called by
the browser with the operator's token. The Content-Security-Policy allows exactly the inlined
script and style (by hash) and requests to this API only.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from chalice import Blueprint, Response

from chalicelib import http

console = Blueprint(__name__)

_FILES = Path(__file__).parent / "ops_console"


@dataclass(frozen=True)
class Page:
    html: str
    content_security_policy: str


def _source_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


@cache
def page() -> Page:
    """The page, built once per process from ops.html, ops.js and ops.css (read on first use)."""
    script = (_FILES / "ops.js").read_text(encoding="utf-8")
    style = (_FILES / "ops.css").read_text(encoding="utf-8")
    html = (_FILES / "ops.html").read_text(encoding="utf-8")
    html = html.replace("{{style}}", style).replace("{{script}}", script)
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_source_hash(script)}",
            f"style-src {_source_hash(style)}",
            "connect-src 'self'",
            "img-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return Page(html=html, content_security_policy=policy)


@http.route(
    console,
    "/ops",
    "GET",
    summary="The operators' console (an HTML page)",
    description=(
        "A `text/html` page with no data of its own: it calls the admin routes with the operator's bearer "
        "token, read from the URL fragment (`/ops#token=...`) or typed in, and kept in the tab's sessionStorage."
    ),
    responses={200: None},
    tags=("operations",),
    backend=False,
)
def operators_console() -> Response:
    built = page()
    return Response(
        body=built.html,
        status_code=200,
        headers={
            "Content-Type": "text/html; charset=utf-8",
            "Content-Security-Policy": built.content_security_policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )
