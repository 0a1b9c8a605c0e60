"""The marketers' console: one self-contained page at every view's address.

``/``, ``/customers/{id}`` (and ``/?customer={id}``), ``/items``,
``/items/{id}``, ``/campaigns`` and ``/model`` all answer the same page, which
reads its address and asks the JSON API for what it shows, so every view can
be shared as a link. The stylesheet and script are kept as files beside the
page and written into it once, so the page needs no other request to render
and works wherever the API does.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)
STATIC = Path(__file__).resolve().parents[1] / "static"


@cache
def page() -> str:
    """The page with its stylesheet and script inlined (read once per process)."""
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    css = (STATIC / "console.css").read_text(encoding="utf-8")
    js = (STATIC / "console.js").read_text(encoding="utf-8")
    link = '<link rel="stylesheet" href="/static/console.css">'
    script = '<script src="/static/console.js"></script>'
    if link not in html or script not in html:
        raise RuntimeError("serving/static/index.html lost its stylesheet or script tag")
    # "</" cannot end the inlined script or style early
    return html.replace(link, f"<style>\n{css}</style>").replace(
        script, "<script>\n" + js.replace("</", "<\\/") + "</script>"
    )


def _page() -> HTMLResponse:
    return HTMLResponse(page())


for path in ("/", "/customers/{customer_id:path}", "/items", "/items/{item_id:path}",
             "/campaigns", "/model"):  # fmt: skip
    router.add_api_route(path, _page, methods=["GET", "HEAD"], response_class=HTMLResponse)
