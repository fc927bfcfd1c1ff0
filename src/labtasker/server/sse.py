"""The live event stream: ``GET /api/v1/queues/me/events`` as Server-Sent Events.

The format is labtasker 1.0.1's (``connection``, ``ping`` and ``event`` messages, same
payload), plus an SSE ``id:`` per event: a client that reconnects with ``Last-Event-ID`` gets
what it missed, as far back as the event log (``eventlog.py``) reaches. A stream reads the log
when the app's ``Notifier`` (``notifier.py``) wakes it and at the latest every
``EVENT_POLL_INTERVAL`` s; it sends a ``ping`` every ``SSE_PING_INTERVAL`` s (both from
``ServerSettings``). With N listeners on a queue, each event costs N indexed reads; an idle
listener costs one read per ``EVENT_POLL_INTERVAL`` s.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse

from labtasker.server.auth import password_fingerprint
from labtasker.server.db import Database
from labtasker.server.deps import queue_id
from labtasker.server.errors import Invalid
from labtasker.server.eventlog import BATCH, latest_id, payload, read_stream
from labtasker.server.notifier import Notifier
from labtasker.server.settings import ServerSettings

router = APIRouter()


def sse_message(
    event: str, data: str = "", event_id: int | None = None, retry: int | None = None
) -> str:
    """One SSE message: ``event:``, optional ``id:``, one ``data:`` line per line of
    ``data``, optional ``retry:`` (milliseconds); CRLF line ends, blank line after."""
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in (data.split("\n") if data else [""]))
    if retry is not None:
        lines.append(f"retry: {retry}")
    return "\r\n".join(lines) + "\r\n\r\n"


LOST_DETAIL = (
    "Events after the last one this client saw were pruned from the queue's log "
    "(it keeps the newest EVENT_LOG_SIZE); re-read the queue's state"
)
CLOSED_REASONS = {
    "password_changed": "The queue's password changed: connect again with the new one",
    "queue_deleted": "The queue was deleted",
}


async def stream(
    request: Request, db: Database, queue_id: str, after: int | None, fingerprint: str | None = None
) -> AsyncIterator[str]:
    """The SSE body: ``connection`` first, then every event after ``after`` (or, without
    ``Last-Event-ID``, every event committed after the ``connection`` message was sent),
    ``ping`` every ``SSE_PING_INTERVAL`` s. Re-reads the log when woken by the app's
    ``Notifier`` and at the latest every ``EVENT_POLL_INTERVAL`` s.

    Events lost: when events the stream has not sent were pruned from the queue's log (a
    ``Last-Event-ID`` older than what is kept, or a reader that fell that far behind), it
    sends ``lost``, ``{"after": <last id sent or asked for>, "pruned_through": <highest
    pruned id>, "detail": <text>}``, then goes on with the oldest event kept; the client
    should re-read the state it shows.

    ``fingerprint``: ``auth.password_fingerprint`` of the password hash the client was
    authorized under (default: the queue's hash at the first read). Every read also reads
    the queue's hash; once it differs (the password changed) or the queue is gone, the
    stream sends a last ``closed`` message, ``{"reason": "password_changed" |
    "queue_deleted", "detail": <text>}``, and ends. Both changes wake the queue's streams
    (``eventlog.wake``), so this happens at once, on every server of the database."""
    notifier: Notifier | None = getattr(request.app.state, "notifier", None)
    settings: ServerSettings = getattr(request.app.state, "settings", None) or ServerSettings()
    poll_seconds, ping_seconds = settings.event_poll_interval, settings.sse_ping_interval
    last = after if after is not None else await anyio.to_thread.run_sync(latest_id, db)
    client_id = str(uuid.uuid4())
    yield sse_message(
        "connection", json.dumps({"status": "connected", "client_id": client_id}), retry=3000
    )
    loop = asyncio.get_running_loop()
    next_ping = loop.time() + ping_seconds
    if notifier is not None:
        notifier.streams += 1
    try:
        while (
            not (notifier is not None and notifier.closing) and not await request.is_disconnected()
        ):
            woken = notifier.waiter(queue_id) if notifier is not None else asyncio.Event()
            rows, password_hash, pruned = await anyio.to_thread.run_sync(
                read_stream, db, queue_id, last
            )
            lost = last < pruned
            if lost:
                yield sse_message(
                    "lost",
                    json.dumps({"after": last, "pruned_through": pruned, "detail": LOST_DETAIL}),
                )
            for row in rows:
                last = row.event_id
                yield sse_message("event", json.dumps(payload(row)), event_id=row.event_id)
            if lost:
                last = max(last, pruned)
            reason = None
            if password_hash is None:
                reason = "queue_deleted"
            elif fingerprint is None:
                fingerprint = password_fingerprint(password_hash)
            elif password_fingerprint(password_hash) != fingerprint:
                reason = "password_changed"
            if reason is not None:
                yield sse_message(
                    "closed", json.dumps({"reason": reason, "detail": CLOSED_REASONS[reason]})
                )
                return
            now = loop.time()
            if now >= next_ping:
                next_ping = now + ping_seconds
                yield sse_message("ping")
            if len(rows) < BATCH:
                try:
                    await asyncio.wait_for(woken.wait(), min(poll_seconds, next_ping - now))
                except asyncio.TimeoutError:
                    pass
    finally:
        if notifier is not None:
            notifier.streams -= 1


@router.get("/api/v1/queues/me/events")
async def listen(
    request: Request,
    qid: Annotated[str, Depends(queue_id)],
    last_event_id: Annotated[str | None, Header()] = None,
):
    """Server-Sent Events of the queue's state transitions (1.0.1's format, plus ``id:`` and
    ``Last-Event-ID`` resume, plus a last ``closed`` message when the queue's password
    changes or the queue is deleted: ``stream``). 400 when ``Last-Event-ID`` is not an
    integer from 0 to 2**63 - 1."""
    password_hash = getattr(request.state, "password_hash", None)
    return open_stream(
        request, qid, last_event_id, password_fingerprint(password_hash) if password_hash else None
    )


def open_stream(
    request: Request, qid: str, last_event_id: str | None, fingerprint: str | None
) -> StreamingResponse:
    """The event stream response of queue ``qid`` (``listen``; the dashboard's
    ``/ui/api/events``); ``fingerprint`` as in ``stream``. Raises ``Invalid`` for a bad
    ``Last-Event-ID``."""
    after = None
    if last_event_id is not None:
        try:
            after = int(last_event_id) if len(last_event_id) <= 20 else -1
        except ValueError as exc:
            raise Invalid("Last-Event-ID must be an integer event id") from exc
        if not 0 <= after <= 2**63 - 1:
            raise Invalid("Last-Event-ID must be an event id from 0 to 2**63 - 1")
    return StreamingResponse(
        stream(request, request.app.state.db, qid, after, fingerprint),
        media_type="text/event-stream",
        headers={
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
            "Connection": "keep-alive",
        },
    )
