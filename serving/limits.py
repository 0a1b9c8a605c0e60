"""Bounds on one request: well-formed paths and a deadline.

A pure ASGI middleware, so it runs before FastAPI parses anything:

* a body larger than ``max_body_bytes`` is refused with 413: from its
  ``Content-Length`` before it is read, or, when it is streamed without one,
  as soon as it grows past the limit (nothing larger is held in memory);
* a path or query string that is not valid UTF-8 once percent-decoded, or
  that holds control characters, is refused with 422 (ids never contain them,
  so such a request would only be answered with a misleading 404 or with
  replacement characters echoed back);
* a request that has not started its response within ``deadline_s`` is
  answered with 503. Python cannot stop the worker thread of a synchronous
  route, so its work runs on to the end, but the client is not kept waiting,
  and the per-request bounds of the routes keep that work small. Routes that
  answer on the event loop (one customer's recommendations, a few
  milliseconds at worst) finish before the deadline can be noticed.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BodyTooLarge(HTTPException):
    """Raised from the body stream; FastAPI passes HTTP exceptions through
    its body parsing, so the app's handler answers it as JSON."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit:,} bytes")


async def _json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _bad_target(scope: Scope) -> str | None:
    """Why the request's path or query cannot name an id, or None when it can."""
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    for what, raw in (("path", raw_path), ("query string", scope.get("query_string", b""))):
        try:
            text = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return f"the {what} is not valid UTF-8 once percent-decoded"
        if what == "query string":
            text = text.replace("+", " ")
        if _CONTROL.search(text):
            return f"the {what} holds a control character (ids never contain one)"
    return None


class RequestLimits:
    """ASGI middleware bounding each HTTP request (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, deadline_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.deadline_s = deadline_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = _bad_target(scope)
        if problem is not None:
            await _json(send, 422, f"invalid request: {problem}")
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                await _json(send, 413, f"request body over {self.max_body_bytes:,} bytes")
                return
        seen = 0

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, bounded_receive, tracked_send), self.deadline_s)
        except TimeoutError:
            if not started:
                await _json(
                    send,
                    503,
                    f"the request took longer than {self.deadline_s:g} s; "
                    "ask for fewer customers or picks",
                )
