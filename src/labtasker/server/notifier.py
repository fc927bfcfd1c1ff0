"""Cross-thread and cross-process wake-ups of this server's event streams.

The event log (``eventlog.py``) is the only source of truth; a wake-up only tells a stream
(``sse.py``) *when* to read the log again and carries no payload a client relies on. Hence
a spurious wake-up costs one indexed read, and a lost one costs latency, never an event,
because every stream also re-reads on its own every ``EVENT_POLL_INTERVAL`` s (the safety
net, not the delivery path).

* No lost wake-up between "read" and "wait": a stream takes its queue's current wake-up
  (an ``asyncio.Event``, replaced each time it fires, :meth:`Notifier.waiter`) *before*
  reading, so a commit that lands while the read runs fires the event the stream is about to
  wait on.
* PostgreSQL (several servers on one database): the commit hook of the event log runs
  ``pg_notify('labtasker_events', <queue_id>)`` in the same statement as the per-queue lock
  (no extra round trip). PostgreSQL delivers a notification only when, and only if, the
  transaction commits, to every session listening, on any server, with the rows visible by
  then. Each server process holds **one** dedicated connection in ``LISTEN labtasker_events``
  (a daemon thread, not a pool connection) and hands each notification to the event loop
  (``call_soon_threadsafe``, coalesced), which fires the wake-up of that queue's streams.
  Notifications sent while that connection is down are lost, so the thread reconnects on its
  own (0.1 s, doubling to 5 s between attempts) and, after every successful ``LISTEN`` (the
  first one included), wakes every stream once. TCP keepalives, and re-issuing ``LISTEN``
  every ``LISTEN_CHECK_SECONDS``, detect a connection that died silently. Cost: NOTIFY makes
  committing transactions take PostgreSQL's notification-queue lock in turn; commits that
  publish events of one queue are already serialised by the per-queue lock, so this only
  matters at very high rates across queues.
* SQLite: the commit hook runs *before* COMMIT, so waking streams there would let them read
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
  wait for listeners.

Times are in seconds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from functools import partial
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.engine import make_url

from labtasker.server.db import Database
from labtasker.server.eventlog import CHANNEL, WAKE_KEY

LISTEN_CHECK_SECONDS = 30.0  # re-issue LISTEN this often to notice a dead connection
WATCH_SECONDS = 0.05  # SQLite: how often to look for commits of other processes
RECONNECT_SECONDS = (0.1, 5.0)  # first and longest pause between LISTEN reconnect attempts

log = logging.getLogger("labtasker.server.events")


class Notifier:
    """Wakes this server process's event streams when events of their queue commit, on this
    server or (PostgreSQL) any other one; see the module docstring.

    ``start()`` inside the running event loop (app lifespan), ``stop()`` at shutdown.
    ``waiter(queue_id)`` is called from the loop; ``wake()`` from any thread.
    """

    def __init__(self, db: Database) -> None:
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
        arriving before the loop ran the previous ones are merged into one.

        Queues without a waiting stream are skipped (no hand-off to the loop, which costs a
        write to its wake-up pipe): it is called after the commit, so a stream that takes its
        waiter after this check reads the committed rows anyway (``waiter``)."""
        loop = self._loop
        if loop is None:
            return
        waiting = self._waiters  # read from this thread: membership tests only
        if queue_ids is None:
            if not waiting:
                return
        else:
            queue_ids = [qid for qid in queue_ids if qid in waiting]
            if not queue_ids:
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
        queue_ids = record.info.pop(WAKE_KEY, None) if record is not None else None
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
                        conn = sqlite3.connect(
                            path, timeout=30, isolation_level=None, check_same_thread=False
                        )
                        version = None
                    now = conn.execute("PRAGMA data_version").fetchone()[0]
                    if now == version and last is not None:
                        continue
                    version = now
                    if last is None:  # (re)starting: baseline, and wake all in case we missed
                        last = conn.execute(
                            "SELECT coalesce(max(event_id), 0) FROM events"
                        ).fetchone()[0]
                        self.wake(None)
                        continue
                    rows = conn.execute(
                        "SELECT queue_id, max(event_id) FROM events "
                        "WHERE event_id > ? GROUP BY queue_id",
                        (last,),
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
        for key, value in (
            ("keepalives", 1),
            ("keepalives_idle", 30),
            ("keepalives_interval", 10),
            ("keepalives_count", 3),
        ):
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
                log.warning(
                    "event notifications: LISTEN connection lost or refused (%s: %s); "
                    "reconnecting in %.1f s",
                    type(exc).__name__,
                    reason,
                    pause,
                )
            self._stop.wait(pause)
            pause = min(2 * pause, RECONNECT_SECONDS[1])
