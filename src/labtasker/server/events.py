"""Live events: a persisted, bounded log of state transitions and its SSE stream.

Every state transition (task ``created -> pending``, ``pending -> running`` ...; worker
``created -> active`` ...) is written to the ``events`` table **in the same transaction** as
the change it describes (``record``), so an event exists exactly when the change committed.
``GET /api/v1/queues/me/events`` streams a queue's events as Server-Sent Events in the format
of labtasker 1.0.1 (``connection``, ``ping`` and ``event`` messages, same payload),
plus an SSE ``id:`` per event. A client that reconnects with ``Last-Event-ID`` gets what it
missed, as far back as the log reaches (``EVENT_LOG_SIZE`` newest events are kept, pruned by
the sweeper). Heartbeats publish nothing.

**How a listener learns about new events.** The table is the only source of truth: a stream
sends exactly the rows with ``event_id`` greater than the last one it sent, read from the
database. Wake-ups (``Notifier``) only tell a stream *when* to read again; they carry no
payload that a client relies on. Hence a spurious wake-up costs one indexed read, and a lost
one costs latency, never an event, because every stream also re-reads on its own every
``EVENT_POLL_INTERVAL`` s (default 2 s; the safety net, not the delivery path).

* No lost wake-up between "read" and "wait": a stream takes its queue's current wake-up
  (an ``asyncio.Event``, replaced each time it fires) *before* reading, so a commit that lands
  while the read runs fires the event the stream is about to wait on.
* PostgreSQL (several servers on one database): the ``_Flusher`` that inserts a transaction's
  rows just before its commit also runs ``pg_notify('labtasker_events', <queue_id>)``, in the
  same statement as the per-queue lock (no extra round trip). PostgreSQL delivers a
  notification only when, and only if, the transaction commits, to every session listening,
  on any server, with the rows visible by then. Each server process holds **one** dedicated
  connection in ``LISTEN labtasker_events`` (a daemon thread, not a pool connection) and hands
  each notification to the event loop (``call_soon_threadsafe``, coalesced), which fires the
  wake-up of that queue's streams. Notifications sent while that connection is down are lost,
  so the thread reconnects on its own (0.1 s, doubling to 5 s between attempts) and, after
  every successful ``LISTEN`` (the first one included), wakes every stream once. TCP
  keepalives, and re-issuing ``LISTEN`` every ``LISTEN_CHECK_SECONDS``, detect a connection
  that died silently. Cost: NOTIFY makes committing transactions take PostgreSQL's
  notification-queue lock in turn; commits that publish events of one queue are already
  serialised by the per-queue lock, so this only matters at very high rates across queues.
* SQLite: the ``_Flusher`` runs *before* COMMIT, so waking streams there would let them read
  before the rows are visible and go back to sleep until the next poll. Instead it notes the
  queue ids on the write connection (``conn.info``) and a pool ``checkin`` listener on the
  write engine fires them: ``Database.write`` returns its connection to the pool only after
  the commit (after a rollback too, which makes a harmless spurious wake-up). That covers the
  commits of this process. Other processes may write the same file (``serve --workers N``,
  tools): while this process has open streams, a watcher thread checks every
  ``WATCH_SECONDS`` (0.05 s) whether anyone committed, with ``PRAGMA data_version`` on its own
  connection (answered from the WAL index, no table read), and if so wakes the queues that got
  events since its last look (one indexed query per process, not per stream). Commits of this
  process are seen there too; the second wake-up costs each of those streams one extra read.
* A slow client only delays its own stream: wake-ups never block, and the writers never
  wait for listeners. With N listeners on a queue, each event costs N indexed reads; an idle
  listener costs one read per ``EVENT_POLL_INTERVAL`` s instead of five per second.

Times are in seconds; timestamps in events are UTC.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, make_url

from labtasker.server.db import BEFORE_COMMIT
from labtasker.server.errors import Invalid
from labtasker.server.routes import queue_id
from labtasker.server.schema import events


def _seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name, str(default))
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from exc
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


POLL_SECONDS = _seconds_from_env("EVENT_POLL_INTERVAL", 2.0)  # fallback re-read of each stream
CHANNEL = "labtasker_events"  # PostgreSQL NOTIFY channel; payload: the queue id
LISTEN_CHECK_SECONDS = 30.0  # re-issue LISTEN this often to notice a dead connection
WATCH_SECONDS = 0.05  # SQLite: how often to look for commits of other processes
RECONNECT_SECONDS = (0.1, 5.0)  # first and longest pause between LISTEN reconnect attempts
_WAKE_KEY = "labtasker_events_wake"  # conn.info: queue ids to wake after an SQLite commit
EVENT_LOG_SIZE = int(os.environ.get("EVENT_LOG_SIZE", "100000"))
PING_SECONDS = float(os.environ.get("SSE_PING_INTERVAL", "15"))
BATCH = 500

log = logging.getLogger("labtasker.server.events")
router = APIRouter()


def _jsonable(entity: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy of a task/worker dict with its datetime columns as ISO text. Only the
    top level can hold datetimes: nested values (args, metadata, summary) come from JSON."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in entity.items()}


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
    """Inserts a transaction's events just before its commit (see ``record``) and arranges
    the wake-up of the listeners of their queues (see the module docstring); dropped with the
    transaction's hooks when it rolls back."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def __call__(self, conn: Connection) -> None:
        if not self.rows:
            return
        queue_ids = sorted({r["queue_id"] for r in self.rows})
        if conn.dialect.name == "postgresql":
            # The lock is held until commit, taken in a fixed order so two transactions never
            # deadlock; the notification is delivered at commit, and only if it commits.
            for qid in queue_ids:
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:q, 7)), "
                                  f"pg_notify('{CHANNEL}', :q)"), {"q": qid})
        else:
            conn.info[_WAKE_KEY] = queue_ids  # fired after the commit (Notifier, checkin)
        conn.execute(insert(events), self.rows)


class Notifier:
    """Wakes this server process's event streams when events of their queue commit, on this
    server or (PostgreSQL) any other one; see the module docstring.

    ``start()`` inside the running event loop (app lifespan), ``stop()`` at shutdown.
    ``waiter(queue_id)`` is called from the loop; ``wake()`` from any thread.
    """

    def __init__(self, db) -> None:
        self.db = db
        self.streams = 0  # open event streams of this process (maintained by ``stream``)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, asyncio.Event] = {}
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._pending_all = False
        self._scheduled = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.closing = False  # the server is shutting down: streams end (``close_streams``)

    def close_streams(self) -> None:
        """Make every open event stream of this process end now (server shutdown). Without
        this uvicorn would wait its graceful-shutdown timeout for the never-ending streams and
        then cancel them with a logged traceback. Any thread; listeners reconnect."""
        self.closing = True
        self.wake(None)

    # --------------------------------------------------------------- event loop side
    def start(self) -> None:
        """Bind to the running loop. PostgreSQL: start the LISTEN thread. SQLite: hook the
        write engine's pool (commits of this process) and start the ``data_version`` watcher
        (commits of other processes on the file)."""
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        if self.db.dialect == "postgresql":
            target, name = self._listen, "labtasker-events-listen"
        else:
            sa_event.listen(self.db.write_engine, "checkin", self._on_checkin)
            path = make_url(self.db.url).database
            if not path or path == ":memory:":
                return
            target, name = partial(self._watch_sqlite, path), "labtasker-events-watch"
        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread (within about a second) and unhook the pool."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if sa_event.contains(self.db.write_engine, "checkin", self._on_checkin):
            sa_event.remove(self.db.write_engine, "checkin", self._on_checkin)
        self._loop = None

    def waiter(self, queue_id: str) -> asyncio.Event:
        """The event that fires at the next wake-up of ``queue_id`` (take it before reading)."""
        waiter = self._waiters.get(queue_id)
        if waiter is None:
            waiter = self._waiters[queue_id] = asyncio.Event()
        return waiter

    def _deliver(self) -> None:
        with self._lock:
            pending, wake_all = self._pending, self._pending_all
            self._pending, self._pending_all, self._scheduled = set(), False, False
        for qid in list(self._waiters) if wake_all else pending:
            waiter = self._waiters.pop(qid, None)
            if waiter is not None:
                waiter.set()

    # --------------------------------------------------------------- any thread
    def wake(self, queue_ids: Iterable[str] | None) -> None:
        """Wake the streams of ``queue_ids`` (``None``: every stream). Never blocks; wake-ups
        arriving before the loop ran the previous ones are merged into one."""
        loop = self._loop
        if loop is None:
            return
        with self._lock:
            if queue_ids is None:
                self._pending_all = True
            else:
                self._pending.update(queue_ids)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # loop closed: shutting down, nobody left to wake
            with self._lock:
                self._scheduled = False

    def _on_checkin(self, _dbapi_conn, record) -> None:
        queue_ids = record.info.pop(_WAKE_KEY, None) if record is not None else None
        if queue_ids:
            self.wake(queue_ids)

    def _watch_sqlite(self, path: str) -> None:
        """The SQLite watcher thread: while this process has event streams, check every
        ``WATCH_SECONDS`` whether any connection committed (``PRAGMA data_version``, read from
        the WAL index without touching the tables) and, if so, wake the queues that got new
        events since the last check (one indexed query)."""
        import sqlite3

        conn: sqlite3.Connection | None = None
        version = last = None
        try:
            while not self._stop.wait(WATCH_SECONDS):
                if not self.streams:
                    last = None
                    continue
                try:
                    if conn is None:
                        conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                               check_same_thread=False)
                        version = None
                    now = conn.execute("PRAGMA data_version").fetchone()[0]
                    if now == version and last is not None:
                        continue
                    version = now
                    if last is None:  # (re)starting: baseline, and wake all in case we missed
                        last = conn.execute("SELECT coalesce(max(event_id), 0) FROM events"
                                            ).fetchone()[0]
                        self.wake(None)
                        continue
                    rows = conn.execute("SELECT queue_id, max(event_id) FROM events "
                                        "WHERE event_id > ? GROUP BY queue_id", (last,)
                                        ).fetchall()
                    if rows:
                        last = max(newest for _, newest in rows)
                        self.wake(qid for qid, _ in rows)
                except sqlite3.Error as exc:
                    log.warning("event watcher: %s: %s", type(exc).__name__, exc)
                    if conn is not None:
                        conn.close()
                    conn, last = None, None
                    self._stop.wait(1.0)
        finally:
            if conn is not None:
                conn.close()

    def _connect_args(self) -> dict[str, Any]:
        engine = self.db.write_engine
        _, params = engine.dialect.create_connect_args(engine.url)
        params = {k: v for k, v in params.items() if k != "context"}
        params.setdefault("connect_timeout", 10)
        params.setdefault("application_name", "labtasker-events")
        for key, value in (("keepalives", 1), ("keepalives_idle", 30),
                           ("keepalives_interval", 10), ("keepalives_count", 3)):
            params.setdefault(key, value)
        return params

    def _listen(self) -> None:
        """The LISTEN thread: hand notifications to the loop; reconnect when dropped."""
        import psycopg

        params = self._connect_args()
        pause = RECONNECT_SECONDS[0]
        while not self._stop.is_set():
            try:
                with psycopg.connect(autocommit=True, **params) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.wake(None)  # whatever was committed while we were not listening
                    pause = RECONNECT_SECONDS[0]
                    checked = time.monotonic()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self.wake((note.payload,))
                        if time.monotonic() - checked >= LISTEN_CHECK_SECONDS:
                            conn.execute(f"LISTEN {CHANNEL}")  # a no-op round trip
                            checked = time.monotonic()
            except Exception as exc:  # psycopg.OperationalError and the like
                if self._stop.is_set():
                    break
                reason = (str(exc).strip().splitlines() or [""])[0]
                log.warning("event notifications: LISTEN connection lost or refused (%s: %s); "
                            "reconnecting in %.1f s", type(exc).__name__, reason, pause)
            self._stop.wait(pause)
            pause = min(2 * pause, RECONNECT_SECONDS[1])


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
    """The newest event id of any queue (0 when the log is empty)."""
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
    ``Last-Event-ID``, every event committed after the ``connection`` message was sent),
    ``ping`` every ``SSE_PING_INTERVAL`` s. Re-reads the log when woken by the app's
    ``Notifier`` and at the latest every ``EVENT_POLL_INTERVAL`` s."""
    notifier: Notifier | None = getattr(request.app.state, "notifier", None)
    last = after if after is not None else await anyio.to_thread.run_sync(latest_id, db)
    client_id = str(uuid.uuid4())
    yield _sse(
        "connection", json.dumps({"status": "connected", "client_id": client_id}), retry=3000
    )
    loop = asyncio.get_running_loop()
    next_ping = loop.time() + PING_SECONDS
    if notifier is not None:
        notifier.streams += 1
    try:
        while not (notifier is not None and notifier.closing) \
                and not await request.is_disconnected():
            woken = notifier.waiter(queue_id) if notifier is not None else asyncio.Event()
            rows = await anyio.to_thread.run_sync(read_after, db, queue_id, last)
            for row in rows:
                last = row.event_id
                yield _sse("event", json.dumps(payload(row)), event_id=row.event_id)
            now = loop.time()
            if now >= next_ping:
                next_ping = now + PING_SECONDS
                yield _sse("ping")
            if len(rows) < BATCH:
                try:
                    await asyncio.wait_for(woken.wait(), min(POLL_SECONDS, next_ping - now))
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
