"""Live events: a persisted, bounded log of state transitions and its SSE stream.

Every state transition (task ``created -> pending``, ``pending -> running`` ...; worker
``created -> active`` ...) is written to the ``events`` table **in the same transaction** as
the change it describes (``record``), so an event exists exactly when the change committed.
``GET /api/v1/queues/me/events`` streams a queue's events as Server-Sent Events in the format
of labtasker 1.0.1 (spec §2.4: ``connection``, ``ping`` and ``event`` messages, same payload),
plus an SSE ``id:`` per event. A client that reconnects with ``Last-Event-ID`` gets what it
missed, as far back as the log reaches (``EVENT_LOG_SIZE`` newest events are kept, pruned by
the sweeper). Listeners read the log by polling an index every ``POLL_SECONDS``, so events
committed by any server on the same database reach every listener, and a slow listener never
holds up the writers. Heartbeats publish nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.engine import Connection

from labtasker.server.db import BEFORE_COMMIT
from labtasker.server.errors import Invalid
from labtasker.server.routes import queue_id
from labtasker.server.schema import events

POLL_SECONDS = 0.2
EVENT_LOG_SIZE = int(os.environ.get("EVENT_LOG_SIZE", "100000"))
PING_SECONDS = float(os.environ.get("SSE_PING_INTERVAL", "15"))
BATCH = 500

router = APIRouter()


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def record(conn: Connection, *, queue_id: str, entity_type: str, entity_id: str, old: str,
           new: str, data: dict[str, Any], now: datetime) -> None:
    """Log one transition as part of the caller's write transaction.

    ``entity_type``: ``task`` | ``worker``; ``old``/``new``: states (``created`` for a new
    entity); ``data``: the entity after the change (datetimes become ISO text). The rows are
    inserted just before the commit (``_Flusher``), under a per-queue lock on PostgreSQL, so
    that within a queue event ids are assigned in commit order: a listener that has read up
    to id N can never later see a smaller id appear (which would be a silently missed event).
    """
    doc = _jsonable(data)
    doc.setdefault("_id", entity_id)
    hooks = conn.info.setdefault(BEFORE_COMMIT, [])
    flusher = next((h for h in hooks if isinstance(h, _Flusher)), None)
    if flusher is None:
        flusher = _Flusher()
        hooks.append(flusher)
    flusher.rows.append({"queue_id": queue_id, "created_at": now, "entity_type": entity_type,
                         "entity_id": entity_id, "old_state": old, "new_state": new,
                         "entity_data": doc})


class _Flusher:
    """Inserts a transaction's events just before its commit (see ``record``); dropped with
    the transaction's hooks when it rolls back."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def __call__(self, conn: Connection) -> None:
        if not self.rows:
            return
        if conn.dialect.name == "postgresql":
            # Held until commit; taken in a fixed order so two transactions never deadlock.
            for qid in sorted({r["queue_id"] for r in self.rows}):
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:q, 7))"),
                             {"q": qid})
        conn.execute(insert(events), self.rows)


def prune(conn: Connection, keep: int = EVENT_LOG_SIZE) -> int:
    """Delete all but the newest ``keep`` events; returns how many were deleted."""
    newest = conn.execute(select(func.max(events.c.event_id))).scalar()
    if newest is None or newest <= keep:
        return 0
    return conn.execute(delete(events).where(events.c.event_id <= newest - keep)).rowcount


def payload(row) -> dict[str, Any]:
    """The 1.0.1 ``EventResponse`` JSON for one log row."""
    when = row.created_at.isoformat()
    return {
        "sequence": row.event_id,
        "timestamp": when,
        "event": {
            "type": "state_transition",
            "queue_id": row.queue_id,
            "timestamp": when,
            "metadata": {},
            "entity_type": row.entity_type,
            "entity_id": row.entity_id,
            "old_state": row.old_state,
            "new_state": row.new_state,
            "entity_data": row.entity_data,
        },
    }


def read_after(db, queue_id: str, after: int, limit: int = BATCH) -> list:
    """Events of ``queue_id`` with id > ``after``, oldest first (at most ``limit``)."""
    with db.read() as conn:
        return conn.execute(
            select(events)
            .where(events.c.queue_id == queue_id, events.c.event_id > after)
            .order_by(events.c.event_id)
            .limit(limit)
        ).fetchall()


def latest_id(db) -> int:
    with db.read() as conn:
        return conn.execute(select(func.max(events.c.event_id))).scalar() or 0


def _sse(event: str, data: str = "", event_id: int | None = None, retry: int | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in (data.split("\n") if data else [""]))
    if retry is not None:
        lines.append(f"retry: {retry}")
    return "\r\n".join(lines) + "\r\n\r\n"


async def stream(request: Request, db, queue_id: str, after: int | None) -> AsyncIterator[str]:
    """The SSE body: ``connection`` first, then every event after ``after`` (or, without
    ``Last-Event-ID``, every event from now on), ``ping`` every ``SSE_PING_INTERVAL`` s."""
    client_id = str(uuid.uuid4())
    yield _sse(
        "connection", json.dumps({"status": "connected", "client_id": client_id}), retry=3000
    )
    last = after if after is not None else await anyio.to_thread.run_sync(latest_id, db)
    last_ping = asyncio.get_running_loop().time()
    while not await request.is_disconnected():
        rows = await anyio.to_thread.run_sync(read_after, db, queue_id, last)
        for row in rows:
            last = row.event_id
            yield _sse("event", json.dumps(payload(row)), event_id=row.event_id)
        now = asyncio.get_running_loop().time()
        if now - last_ping >= PING_SECONDS:
            last_ping = now
            yield _sse("ping")
        if len(rows) < BATCH:
            await asyncio.sleep(POLL_SECONDS)


@router.get("/api/v1/queues/me/events")
async def listen(
    request: Request,
    qid: Annotated[str, Depends(queue_id)],
    last_event_id: Annotated[str | None, Header()] = None,
):
    """Server-Sent Events of the queue's state transitions (spec §2.4, with ``id:`` and
    ``Last-Event-ID`` resume). 400 when ``Last-Event-ID`` is not an integer."""
    after = None
    if last_event_id is not None:
        try:
            after = int(last_event_id)
        except ValueError as exc:
            raise Invalid("Last-Event-ID must be an integer event id") from exc
    return StreamingResponse(
        stream(request, request.app.state.db, qid, after),
        media_type="text/event-stream",
        headers={
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
            "Connection": "keep-alive",
        },
    )
