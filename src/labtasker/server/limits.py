"""Request limits applied before a route runs (an ASGI middleware, ``RequestGuard``).

* The request body: at most ``max_body_bytes`` (from ``Content-Length`` and while reading);
  413 naming the limit otherwise. It must arrive within ``body_timeout`` seconds of the
  moment the server starts reading it (after the credentials are checked); a client that
  sends it slower is answered 408 naming the limit and the connection is closed. Requests
  without a body (event streams among them) never wait here.
* JSON bodies are checked strictly before FastAPI parses them: ``NaN``/``Infinity`` (and
  numbers such as ``1e400`` that overflow to infinity), integers outside 64 bits, lone
  surrogates and NUL characters (in strings and keys) are refused with 422 naming the JSON
  path, so no such value is ever stored (PostgreSQL cannot store them; SQLite would store NaN
  as null) or compared.
* URL paths with NUL characters or undecodable bytes are refused with 400.
* Requests to a queue (``/api/v1/queues/me...``) are authenticated before their body is
  read: wrong credentials answer 401 without the server reading or parsing the body.

The limits are what one tenant can make the server hold or parse; see docs/deployment.md.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from labtasker import error_codes

INT64 = (-(2**63), 2**63 - 1)
QUEUE_PREFIX = "/api/v1/queues/me"  # routes authenticated by the queue's password

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BadJson(ValueError):
    """A JSON value the server refuses; ``loc`` is its path in the body."""

    def __init__(self, loc: list[str | int], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "NUL characters are not allowed in text"
    for char in text:
        if 0xD800 <= ord(char) <= 0xDFFF:
            return "lone surrogates (invalid Unicode) are not allowed in text"
    return None


def check_value(value: Any, loc: list[str | int]) -> None:
    """Raise ``BadJson`` at the first refused value (module doc) under ``value``."""
    stack: list[tuple[Any, list[str | int]]] = [(value, loc)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            problem = _bad_text(item)
            if problem:
                raise BadJson(where, problem)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise BadJson(
                    where,
                    "NaN and infinity are not valid JSON numbers (a number "
                    "such as 1e400 overflows to infinity)",
                )
        elif isinstance(item, int):
            if not INT64[0] <= item <= INT64[1]:
                raise BadJson(where, f"integer {item} does not fit in 64 bits")
        elif isinstance(item, dict):
            for key, child in item.items():
                problem = _bad_text(key)
                if problem:
                    raise BadJson(where, f"key {key!r}: {problem}")
                stack.append((child, [*where, key]))
        elif isinstance(item, list):
            stack.extend((child, [*where, i]) for i, child in enumerate(item))


def parse_strict(body: bytes) -> Any:
    """Parse a JSON body, raising ``BadJson`` for values the server refuses (module doc);
    ``ValueError`` for text that is not JSON (FastAPI answers that one itself)."""
    value = json.loads(body)
    check_value(value, [])
    return value


def _path_problem(scope: Scope) -> str | None:
    path = scope.get("path", "")
    if "\x00" in path:
        return "NUL characters are not allowed in the URL path"
    raw = scope.get("raw_path")
    if raw is not None:
        try:
            from urllib.parse import unquote_to_bytes

            unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return "the URL path is not valid UTF-8"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in path):
        return "the URL path is not valid UTF-8"
    return None


_CODES = {
    400: error_codes.INVALID_REQUEST,
    401: error_codes.INVALID_CREDENTIALS,
    408: error_codes.REQUEST_TIMEOUT,
    413: error_codes.TOO_LARGE,
    422: error_codes.INVALID_REQUEST,
    429: error_codes.TOO_MANY_REQUESTS,
    503: error_codes.STORAGE_UNAVAILABLE,
}


async def _answer(send: Send, status: int, detail: Any, headers: list | None = None) -> None:
    """Send a JSON ``{"detail": ..., "code": ...}`` error answer (the shape of every error
    answer of the app, ``labtasker.error_codes``)."""
    body = json.dumps(
        {"detail": detail, "code": _CODES.get(status, error_codes.INVALID_REQUEST)}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


DEFAULT_BODY_TIMEOUT = 30.0


class RequestGuard:
    """ASGI middleware enforcing the body limit and deadline and the strict JSON checks
    (module doc). ``max_body_bytes``: bytes; ``body_timeout``: seconds."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        max_body_bytes: int,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout

    async def _authenticate(
        self, scope: Scope, headers: dict[bytes, bytes]
    ) -> tuple[int, Any, list] | None:
        """Check the queue's credentials before the body is read (a client without them
        cannot make the server read or parse a body); the result is left in the scope for
        ``deps.queue_id``. Returns the refusal (status, detail, headers) or ``None``."""
        from fastapi import HTTPException

        from labtasker.server import deps
        from labtasker.server.errors import Unavailable

        app = scope.get("app")
        storage = getattr(getattr(app, "state", None), "storage", None)
        if storage is None:
            return None
        found = deps.parse_basic(headers.get(b"authorization", b"").decode("latin-1"))
        unauthorized = (401, "Invalid credentials", [(b"www-authenticate", b"Basic")])
        if found is None:
            return unauthorized
        client = scope.get("client")
        try:
            verified = await deps.authenticate_hash(
                storage, found[0], found[1], address=client[0] if client else None
            )
        except HTTPException as exc:
            extra = [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]
            return exc.status_code, exc.detail, extra
        except Unavailable as exc:
            # the credentials could not be read (the database connection was lost, the file
            # is locked...): 503 with Retry-After, as the routes answer, never a 500 (this
            # runs outside the app's exception handlers)
            retry = str(max(1, math.ceil(exc.retry_after))).encode()
            return 503, str(exc), [(b"retry-after", retry)]
        if verified is None:
            return unauthorized
        scope[deps.AUTHENTICATED] = (found, *verified)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = _path_problem(scope)
        if problem:
            await _answer(send, 400, problem)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        limit = self.max_body_bytes
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _answer(send, 400, "Content-Length is not a number")
                return
            if declared > limit:
                await _answer(
                    send,
                    413,
                    f"request body too large: {declared} bytes "
                    f"(limit {limit} bytes, --max-body-bytes)",
                )
                return
        if scope.get("method") in ("GET", "HEAD", "DELETE", "OPTIONS") and length is None:
            await self.app(scope, receive, send)
            return
        if scope.get("path", "").startswith(QUEUE_PREFIX):
            refusal = await self._authenticate(scope, headers)
            if refusal is not None:
                await _answer(send, *refusal)
                return
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                timeout = f"{self.body_timeout:g}"
                await _answer(
                    send,
                    408,
                    f"request body not received within {timeout} s "
                    f"({size} bytes arrived; limit {timeout} s, "
                    "--body-timeout)",
                    [(b"connection", b"close")],
                )
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _answer(
                    send,
                    413,
                    f"request body too large: more than {limit} bytes "
                    f"(limit {limit} bytes, --max-body-bytes)",
                )
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = headers.get(b"content-type", b"")
        if body and b"json" in content_type:
            try:
                parse_strict(body)
            except BadJson as exc:
                await _answer(
                    send,
                    422,
                    [
                        {
                            "type": "value_error",
                            "loc": ["body", *exc.loc],
                            "msg": str(exc),
                            "input": None,
                        }
                    ],
                )
                return
            except (ValueError, RecursionError):
                pass  # not JSON: FastAPI answers 422 itself
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
