"""A pure ASGI middleware in front of the API: authentication, body size, content type.

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``) so that the endpoints see the client's own
``receive`` channel: a non-streaming request learns that its client went away
(``http.disconnect``) and is aborted, where ``BaseHTTPMiddleware`` made ``is_disconnected()``
always false. API keys are compared in constant time. A POST must say ``application/json``: a
browser's cross-origin ``text/plain`` POST (which needs no CORS preflight) is refused before
anything runs.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from vlkit.serve.errors import APIError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

OPEN_PATHS = ("/health",)


def key_ok(given: str | None, keys: list[str]) -> bool:
    """Whether ``given`` is one of ``keys``, compared in constant time (every key is compared)."""
    if given is None:
        return False
    raw = given.encode()
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(raw, k.encode())
    return ok


class Guard:
    """Wraps the app; ``on_reject(path, status)`` counts each refusal."""

    def __init__(self, app: Any, *, api_keys: list[str], max_body_bytes: int,
                 on_reject: Callable[[str, int], None] | None = None) -> None:
        self.app = app
        self.api_keys = list(api_keys)
        self.max_body_bytes = max_body_bytes
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self.check(scope)
        except APIError as err:
            if self.on_reject is not None:
                self.on_reject(scope.get("path", ""), err.status)
            await send_error(send, err)
            return
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if self.api_keys and path not in OPEN_PATHS:
            auth = headers.get("authorization", "")
            key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
            if not key_ok(key, self.api_keys):
                raise APIError(401, "missing or invalid API key", type="authentication_error", code="invalid_api_key")
        if scope.get("method") == "POST":
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                raise APIError(413, f"request body of {length} bytes exceeds {self.max_body_bytes}",
                               code="request_too_large")
            ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if ctype != "application/json":
                raise APIError(415, f"Content-Type must be application/json, got {ctype or 'none'!r}",
                               code="unsupported_media_type")


async def send_error(send: Send, err: APIError) -> None:
    body = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
