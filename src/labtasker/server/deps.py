"""FastAPI dependencies shared by the routes: the app's storage and HTTP Basic
authentication of a queue (``Store`` and ``QueueId`` as ``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from labtasker.server import auth
from labtasker.server.storage import Storage

_basic = HTTPBasic()


async def storage(request: Request) -> Storage:
    """The app's storage (async: resolved on the event loop, no thread hop)."""
    return request.app.state.storage


async def authenticate(store: Storage, username: str, password: str) -> str | None:
    """The id of the queue whose name or id is ``username`` when ``password`` is its
    password, else ``None`` (unknown queue or wrong password: the same answer, in the same
    time). Shared by the API (HTTP Basic, ``queue_id``) and the dashboard's log-in.

    The stored hash is read on every call (a password changed through any server takes
    effect at once); the Argon2 check runs in a worker thread only when this password was
    not verified against this hash in the last minute (``auth.CACHE_SECONDS``). On the
    embedded SQLite file the read runs on the event loop (no thread hop: ~0.1 ms, never
    waits for writers); on a database server it runs in a worker thread, so that a slow or
    unreachable database never stalls the event loop.
    """
    if store.reads_are_local:
        found = store.queue_credentials(username)
    else:
        found = await anyio.to_thread.run_sync(store.queue_credentials, username)
    qid, stored = found if found is not None else (None, None)
    ok = auth.verified_recently(qid, stored, password)
    if not ok:
        ok = await anyio.to_thread.run_sync(auth.verify_password, qid, stored, password)
    return qid if ok and qid is not None else None


async def queue_id(request: Request,
                   credentials: Annotated[HTTPBasicCredentials, Depends(_basic)]) -> str:
    """Authenticate HTTP Basic credentials (username = queue name or id) -> queue id
    (``authenticate``). 401 ``Invalid credentials`` for an unknown queue or a wrong
    password."""
    qid = await authenticate(request.app.state.storage, credentials.username,
                             credentials.password)
    if qid is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Invalid credentials",
                            headers={"WWW-Authenticate": "Basic"})
    return qid


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
