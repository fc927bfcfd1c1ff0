"""FastAPI dependencies shared by the routes: the app's storage and HTTP Basic
authentication of a queue (``Store`` and ``QueueId`` as ``Annotated`` aliases)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import os
import time
from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from labtasker.server import auth
from labtasker.server.storage import Storage

AUTHENTICATED = "labtasker.authenticated"  # scope key: ((user, password), queue id, hash)
MAX_CREDENTIAL_LENGTH = 1000  # characters in a Basic user name or password


def parse_basic(header: str) -> tuple[str, str] | None:
    """(user name, password) of an ``Authorization: Basic`` header, decoded as UTF-8 (RFC
    7617 ``charset="UTF-8"``); ``None`` when it is missing, undecodable, holds NUL or is
    longer than ``MAX_CREDENTIAL_LENGTH`` characters per part."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    username, sep, password = decoded.partition(":")
    if (
        not sep
        or "\x00" in decoded
        or len(username) > MAX_CREDENTIAL_LENGTH
        or len(password) > MAX_CREDENTIAL_LENGTH
    ):
        return None
    return username, password


class _Utf8Basic(HTTPBasic):
    """HTTP Basic with UTF-8 credentials (``parse_basic``; FastAPI's own decodes ASCII only,
    so a non-ASCII password could never log in). Bad credentials answer 401 like wrong ones."""

    async def __call__(self, request: Request) -> HTTPBasicCredentials | None:  # type: ignore[override]
        found = parse_basic(request.headers.get("Authorization", ""))
        if found is None:
            raise _unauthorized()
        return HTTPBasicCredentials(username=found[0], password=found[1])


def _unauthorized() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, "Invalid credentials", headers={"WWW-Authenticate": "Basic"}
    )


_basic = _Utf8Basic()


async def storage(request: Request) -> Storage:
    """The app's storage (async: resolved on the event loop, no thread hop)."""
    return request.app.state.storage


async def authenticate(
    store: Storage, username: str, password: str, address: str | None = None
) -> str | None:
    """The id of the queue whose name or id is ``username`` when ``password`` is its
    password, else ``None`` (unknown queue or wrong password: the same answer, in the same
    time). Shared by the API (HTTP Basic, ``queue_id``) and the dashboard's log-in. See
    ``authenticate_hash``."""
    found = await authenticate_hash(store, username, password, address)
    return found[0] if found is not None else None


async def authenticate_hash(
    store: Storage, username: str, password: str, address: str | None = None
) -> tuple[str, str] | None:
    """``(queue id, stored password hash)`` when ``password`` is the password of the queue
    whose name or id is ``username``, else ``None``. The hash is the one the password was
    checked against (an event stream ends when it changes, ``sse.stream``).

    The stored hash is read on every call (a password changed through any server takes
    effect at once); the Argon2 check runs in a worker thread only when this password was
    not verified against this hash (and used since) in the last ``auth.CACHE_SECONDS``. On the
    embedded SQLite file the read runs on the event loop (no thread hop: ~0.1 ms, never
    waits for writers); on a database server it runs in a worker thread, so that a slow or
    unreachable database never stalls the event loop. Checks are bounded
    (``_verify_bounded``: 429 when saturated; ``address``, the client's, is throttled after
    repeated failures).
    """
    if store.reads_are_local:
        found = store.queue_credentials(username)
    else:
        found = await anyio.to_thread.run_sync(store.queue_credentials, username)
    qid, stored = found if found is not None else (None, None)
    ok = auth.verified_recently(qid, stored, password)
    if not ok:
        ok = await _verify_bounded(address, qid, stored, password)
    return (qid, stored) if ok and qid is not None and stored is not None else None


# Password checks (Argon2: ~64 MiB and ~0.1 s each) run in a pool of their own, so that a
# flood of wrong passwords cannot take the threads and memory that serve requests; passwords
# verified and in use (``auth.verified_recently``) never come here.
# Argon2 checks at once: half the cores (one check is one thread), so that a flood of wrong
# passwords leaves the other half to the requests of every other client.
KDF_CONCURRENCY = max(1, (os.cpu_count() or 2) // 2)
KDF_QUEUE = 16  # checks waiting for a slot; more answer 429
# checks of one client address waiting or running at once; more answer 429 (a flood from one
# address cannot fill the queue and lock out the first log-in of everybody else)
KDF_PER_ADDRESS = 2
FAILURE_LIMIT = 30  # failed checks per client address per FAILURE_WINDOW; more answer 429
FAILURE_WINDOW = 60.0  # seconds
_kdf_limiter: anyio.CapacityLimiter | None = None
_kdf_waiting = 0
_failures: dict[str, tuple[float, int]] = {}
_checking: dict[str, int] = {}  # checks waiting or running, by client address
# checks under way, by (queue id, stored hash, SHA-256 of the password): a request whose check
# is already running waits for its answer instead of running the KDF again
_inflight: dict[tuple[str | None, str | None, bytes], asyncio.Future[bool | None]] = {}


def _too_many(detail: str, retry_after: float) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        detail,
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


async def _verify_bounded(
    address: str | None, qid: str | None, stored: str | None, password: str
) -> bool:
    """``auth.verify_password`` in the KDF pool. 429 (``Retry-After`` in seconds) when the
    client ``address`` failed ``FAILURE_LIMIT`` checks in the last ``FAILURE_WINDOW``
    seconds or has ``KDF_PER_ADDRESS`` checks waiting or running, or when ``KDF_QUEUE``
    checks are already waiting. Concurrent checks of the same
    password against the same hash share one KDF run (the clients of a queue starting at
    once cost one check, not one each)."""
    global _kdf_limiter, _kdf_waiting
    now = time.monotonic()
    started, count = _failures.get(address, (now, 0)) if address else (now, 0)
    if now - started > FAILURE_WINDOW:
        started, count = now, 0
    if count >= FAILURE_LIMIT:
        raise _too_many(
            "Too many failed password checks from this address", FAILURE_WINDOW - (now - started)
        )
    key = (qid, stored, hashlib.sha256(password.encode()).digest())
    while (running := _inflight.get(key)) is not None:
        # the same check is under way (many clients of one queue starting at once)
        shared = await asyncio.shield(running)
        if shared is not None:
            return shared
    if _kdf_limiter is None:
        _kdf_limiter = anyio.CapacityLimiter(KDF_CONCURRENCY)
    if _kdf_waiting >= KDF_QUEUE:
        raise _too_many("Too many password checks in progress", 1)
    if address and _checking.get(address, 0) >= KDF_PER_ADDRESS:
        raise _too_many("Too many password checks from this address in progress", 1)
    _kdf_waiting += 1
    if address:
        _checking[address] = _checking.get(address, 0) + 1
    future: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
    _inflight[key] = future
    ok: bool | None = None  # None: this check did not finish (cancelled); others run their own
    try:
        ok = await anyio.to_thread.run_sync(
            auth.verify_password, qid, stored, password, limiter=_kdf_limiter
        )
    finally:
        _kdf_waiting -= 1
        if address:
            if _checking[address] <= 1:
                del _checking[address]
            else:
                _checking[address] -= 1
        del _inflight[key]
        future.set_result(ok)
    if not ok and address:
        if len(_failures) > 10_000:
            _failures.clear()
        _failures[address] = (started, count + 1)
    return ok


async def queue_id(
    request: Request, credentials: Annotated[HTTPBasicCredentials, Depends(_basic)]
) -> str:
    """Authenticate HTTP Basic credentials (username = queue name or id) -> queue id
    (``authenticate``). 401 ``Invalid credentials`` for an unknown queue or a wrong
    password. The hash the password was checked against is left in
    ``request.state.password_hash``."""
    early = request.scope.get(AUTHENTICATED)  # checked before the body was read (limits.py)
    if early is not None and early[0] == (credentials.username, credentials.password):
        request.state.password_hash = early[2]
        return early[1]
    found = await authenticate_hash(
        request.app.state.storage,
        credentials.username,
        credentials.password,
        address=request.client.host if request.client else None,
    )
    if found is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Invalid credentials",
            headers={"WWW-Authenticate": "Basic"},
        )
    request.state.password_hash = found[1]
    return found[0]


def legacy_client(client_version: str | None) -> bool:
    """True for labtasker 1.0.x clients (they send ``client_version`` in request bodies)."""
    if not client_version:
        return False
    parts = client_version.split(".")
    try:
        return (int(parts[0]), int(parts[1])) < (1, 1)
    except (ValueError, IndexError):
        return False


Store = Annotated[Storage, Depends(storage)]
QueueId = Annotated[str, Depends(queue_id)]
