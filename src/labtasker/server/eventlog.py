"""The event log: a persisted, bounded log of the queues' state transitions.

Every state transition (task ``created -> pending``, ``pending -> running`` ...; worker
``created -> active`` ...) is written to the ``events`` table **in the same transaction** as
the change it describes (:func:`record`), so an event exists exactly when the change
committed. The table is the only source of truth of the live event streams (``sse.py``): a
stream sends exactly the rows with ``event_id`` greater than the last one it sent. The
newest ``EVENT_LOG_SIZE`` events *of each queue* are kept (:func:`prune`, run by the timeout
sweep), so a client that reconnects with ``Last-Event-ID`` gets what it missed as far back
as its queue's log reaches; each queue records the highest id pruned from its log
(``queues.events_pruned_through``), and a stream that would resume below it is told that
events were lost. Heartbeats publish nothing.

An event's entity document is stored compact (:func:`record`): without the keys the row
already holds, and, for tasks and workers, without the values a frozen layout restores (the
defaults, the row's new state, timestamps equal to the event's time); :func:`document` gives
back the document exactly as it was logged. A task's creation event is about 35 bytes of JSON
instead of about 370.

Besides inserting the rows, the commit hook (``_Flusher``) arranges the wake-up of the
listeners of the affected queues (``notifier.py``): on PostgreSQL it runs
``pg_notify(CHANNEL, <queue_id>)``, delivered at commit and only if the transaction commits;
on SQLite it notes the queue ids on the write connection (``conn.info[WAKE_KEY]``), fired by
the notifier once the connection is returned to the pool after the commit.

This module is what storage imports: SQLAlchemy only, no web framework. Timestamps in
events are UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.engine import Connection, Row

from labtasker.server.db import BEFORE_COMMIT, Database
from labtasker.server.schema import events, queues
from labtasker.server.settings import DEFAULT_EVENT_LOG_SIZE

CHANNEL = "labtasker_events"  # PostgreSQL NOTIFY channel; payload: the queue id
WAKE_KEY = "labtasker_events_wake"  # conn.info: queue ids to wake after an SQLite commit
BATCH = 500  # most events read at once by a stream


def _jsonable(entity: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy of a task/worker dict with its datetime columns as ISO text. Only the
    top level can hold datetimes: nested values (args, metadata, summary) come from JSON."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in entity.items()}


_ID_KEYS = {"task": "task_id", "worker": "worker_id"}


@dataclass(frozen=True)
class _Layout:
    """How a compact event document (:func:`_compact`) is written and read back for one
    entity type and layout version.

    ``keys``: the document's keys in order, as they stand between the row keys (the entity
    id and queue id at the head, ``_id`` at the end); ``defaults``: values left out of the
    stored document (compared by type and value, so ``1`` never stands for ``True`` nor
    ``10.0`` for ``10``); ``times``: timestamp keys that, when equal to the event's own time,
    are left out and named by one bit each of the marker; ``status``: the state key, left
    out when equal to the row's ``new_state``.

    A layout is frozen once written: a changed set of task or worker fields gets a new
    version (documents of other shapes are stored in full), so that old rows read back as
    they were written."""

    keys: tuple[str, ...]
    defaults: dict[str, Any]
    times: tuple[str, ...]
    status: str = "status"


_LAYOUTS: dict[tuple[str, int], _Layout] = {
    ("task", 1): _Layout(
        keys=(
            "status",
            "task_name",
            "created_at",
            "start_time",
            "last_heartbeat",
            "last_modified",
            "heartbeat_timeout",
            "task_timeout",
            "max_retries",
            "retries",
            "priority",
            "metadata",
            "args",
            "cmd",
            "summary",
            "worker_id",
            "run_id",
            "progress",
        ),
        defaults={
            "task_name": None,
            "created_at": None,
            "start_time": None,
            "last_heartbeat": None,
            "last_modified": None,
            "heartbeat_timeout": None,
            "task_timeout": None,
            "max_retries": 3,
            "retries": 0,
            "priority": 10,
            "metadata": {},
            "args": {},
            "cmd": "",
            "summary": {},
            "worker_id": None,
            "run_id": None,
            "progress": None,
        },
        times=("created_at", "start_time", "last_heartbeat", "last_modified"),
    ),
    ("worker", 1): _Layout(
        keys=(
            "status",
            "worker_name",
            "metadata",
            "retries",
            "max_retries",
            "created_at",
            "last_modified",
            "gone_at",
        ),
        defaults={
            "worker_name": None,
            "metadata": {},
            "retries": 0,
            "created_at": None,
            "last_modified": None,
            "gone_at": None,
        },
        times=("created_at", "last_modified", "gone_at"),
    ),
}
# The layout new rows are written with, per entity type.
_CURRENT = {"task": 1, "worker": 1}
MARKER = "~"  # a compact document's first key: [layout version, bit mask of ``times``]


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _utc_text(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat()


def _compact(doc: dict[str, Any], entity_type: str, new: str, when: str) -> dict[str, Any]:
    """The document as stored (``doc`` without its row keys, see :func:`_without_row_keys`):
    with the current layout of its entity type, when its keys are exactly the layout's, only
    the values that differ from what the layout restores, after a marker ``{"~": [version,
    mask]}``; otherwise ``doc`` itself. ``when``: the event's time as UTC ISO text. A task's
    creation event keeps about a tenth of the full document (its args and what was set)."""
    version = _CURRENT.get(entity_type)
    if version is None:
        return doc
    layout = _LAYOUTS[entity_type, version]
    if tuple(doc) != layout.keys:
        return doc
    mask = 0
    out: dict[str, Any] = {MARKER: None}
    defaults = layout.defaults
    for key, value in doc.items():
        if key == layout.status and _same(value, new):
            continue
        if key in layout.times and _same(value, when):
            mask |= 1 << layout.times.index(key)
            continue
        if key in defaults and _same(value, defaults[key]):
            continue
        out[key] = value
    out[MARKER] = [version, mask]
    return out


def _expand(stored: dict[str, Any], entity_type: str, new: str, when: datetime) -> dict[str, Any]:
    """The inverse of :func:`_compact` (a full document comes back unchanged); ``new``: the
    row's ``new_state``, ``when``: its ``created_at``."""
    marker = stored.get(MARKER)
    if not isinstance(marker, list) or len(marker) != 2:
        return stored
    layout = _LAYOUTS.get((entity_type, marker[0]))
    if layout is None:
        return stored
    mask = marker[1]
    at = _utc_text(when)
    out: dict[str, Any] = {}
    for key in layout.keys:
        if key in stored:
            out[key] = stored[key]
        elif key == layout.status:
            out[key] = new
        elif key in layout.times and mask >> layout.times.index(key) & 1:
            out[key] = at
        else:
            value = layout.defaults[key]
            out[key] = {} if value == {} else value  # a fresh dict per document
    return out


def _without_row_keys(
    doc: dict[str, Any], entity_type: str, entity_id: str, queue_id: str
) -> dict[str, Any]:
    """The document as stored: without the keys the event row already holds (the entity id
    and queue id at the head, ``_id`` at the end; about a third of a task document), where
    :func:`_with_row_keys` puts them back in the same places. Keys elsewhere or with other
    values stay."""
    keys = list(doc)
    id_key = _ID_KEYS.get(entity_type)
    out = dict(doc)
    if (
        id_key is not None
        and keys[:2] == [id_key, "queue_id"]
        and doc[id_key] == entity_id
        and doc["queue_id"] == queue_id
    ):
        del out[id_key], out["queue_id"]
    if keys[-1:] == ["_id"] and doc["_id"] == entity_id:
        del out["_id"]
    return out


def _with_row_keys(
    doc: dict[str, Any], entity_type: str, entity_id: str, queue_id: str
) -> dict[str, Any]:
    """The full document of an event row (the inverse of :func:`_without_row_keys`; rows
    written before it are already full and come back unchanged)."""
    id_key = _ID_KEYS.get(entity_type)
    if id_key is not None and id_key not in doc and "queue_id" not in doc:
        doc = {id_key: entity_id, "queue_id": queue_id, **doc}
    if "_id" not in doc:
        doc = {**doc, "_id": entity_id}
    return doc


def record(
    conn: Connection,
    *,
    queue_id: str,
    entity_type: str,
    entity_id: str,
    old: str,
    new: str,
    data: dict[str, Any],
    now: datetime,
) -> None:
    """Log one transition as part of the caller's write transaction.

    ``entity_type``: ``task`` | ``worker``; ``old``/``new``: states (``created`` for a new
    entity); ``data``: the entity after the change (datetimes become ISO text), stored without
    the keys the row holds and, in the current layout, without the values the layout restores
    (:func:`_compact`; :func:`document` gives it back whole); ``now``: the event's time
    (UTC). The rows are
    inserted just before the commit (``_Flusher``), under a per-queue lock on PostgreSQL, so
    that within a queue event ids are assigned in commit order: a listener that has read up
    to id N can never later see a smaller id appear (which would be a silently missed event).
    """
    doc = _jsonable(data)
    doc.setdefault("_id", entity_id)
    doc = _without_row_keys(doc, entity_type, entity_id, queue_id)
    doc = _compact(doc, entity_type, new, _utc_text(now))
    _flusher(conn).rows.append(
        {
            "queue_id": queue_id,
            "created_at": now,
            "entity_type": entity_type,
            "entity_id": entity_id,
            "old_state": old,
            "new_state": new,
            "entity_data": doc,
        }
    )


def wake(conn: Connection, queue_id: str) -> None:
    """Wake the listeners of ``queue_id`` when the caller's write transaction commits, without
    logging an event: a change that concerns the streams themselves (the queue's password
    changed, the queue deleted), which every stream then notices on its next read
    (``read_stream``) and ends."""
    _flusher(conn).wake_ids.add(queue_id)


def _flusher(conn: Connection) -> _Flusher:
    hooks = conn.info.setdefault(BEFORE_COMMIT, [])
    flusher = next((h for h in hooks if isinstance(h, _Flusher)), None)
    if flusher is None:
        flusher = _Flusher()
        hooks.append(flusher)
    return flusher


class _Flusher:
    """Inserts a transaction's events just before its commit (see ``record``) and arranges
    the wake-up of the listeners of their queues and of the ``wake`` ones (see the module
    docstring); dropped with the transaction's hooks when it rolls back."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.wake_ids: set[str] = set()

    def __call__(self, conn: Connection) -> None:
        if not self.rows and not self.wake_ids:
            return
        queue_ids = sorted({r["queue_id"] for r in self.rows} | self.wake_ids)
        if conn.dialect.name == "postgresql":
            # The lock is held until commit, taken in a fixed order so two transactions never
            # deadlock; the notification is delivered at commit, and only if it commits.
            for qid in queue_ids:
                conn.execute(
                    text(
                        "SELECT pg_advisory_xact_lock(hashtextextended(:q, 7)), "
                        f"pg_notify('{CHANNEL}', :q)"
                    ),
                    {"q": qid},
                )
        else:
            conn.info[WAKE_KEY] = queue_ids  # fired after the commit (Notifier, checkin)
        if self.rows:
            conn.execute(insert(events), self.rows)


def prune_cutoffs(conn: Connection, keep: int = DEFAULT_EVENT_LOG_SIZE) -> dict[str, int]:
    """``{queue id: highest event id to prune}`` for each queue with more than ``keep``
    events (one indexed read per queue)."""
    out = {}
    for qid in conn.execute(select(queues.c.queue_id)).scalars():
        cutoff = conn.execute(
            select(events.c.event_id)
            .where(events.c.queue_id == qid)
            .order_by(events.c.event_id.desc())
            .offset(keep)
            .limit(1)
        ).scalar()
        if cutoff is not None:
            out[qid] = cutoff
    return out


def prune_through(conn: Connection, cutoffs: dict[str, int]) -> int:
    """Delete each queue's events up to its cutoff (``prune_cutoffs``) and record it in
    ``queues.events_pruned_through``; returns how many events were deleted."""
    deleted = 0
    for qid, cutoff in sorted(cutoffs.items()):
        deleted += conn.execute(
            delete(events).where(events.c.queue_id == qid, events.c.event_id <= cutoff)
        ).rowcount
        conn.execute(
            update(queues)
            .where(queues.c.queue_id == qid, queues.c.events_pruned_through < cutoff)
            .values(events_pruned_through=cutoff)
        )
    return deleted


def prune(conn: Connection, keep: int = DEFAULT_EVENT_LOG_SIZE) -> int:
    """Keep the newest ``keep`` events of each queue (one busy queue never erases another's
    history); returns how many were deleted. See ``prune_cutoffs``/``prune_through`` to
    find the cutoffs outside the write transaction."""
    return prune_through(conn, prune_cutoffs(conn, keep))


def payload(row: Row[Any]) -> dict[str, Any]:
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
            "entity_data": document(row),
        },
    }


def document(row: Any) -> dict[str, Any]:
    """The entity document of one event row (any object with the ``events`` columns as
    attributes), as it was when the event was logged: the task or worker as the API showed it
    then, whether the row was stored compact, without its row keys, or in full."""
    doc = _expand(row.entity_data, row.entity_type, row.new_state, row.created_at)
    return _with_row_keys(doc, row.entity_type, row.entity_id, row.queue_id)


def read_after(db: Database, queue_id: str, after: int, limit: int = BATCH) -> list[Row[Any]]:
    """Events of ``queue_id`` with id > ``after``, oldest first (at most ``limit``)."""
    with db.read() as conn:
        return list(
            conn.execute(
                select(events)
                .where(events.c.queue_id == queue_id, events.c.event_id > after)
                .order_by(events.c.event_id)
                .limit(limit)
            ).fetchall()
        )


def read_stream(
    db: Database, queue_id: str, after: int, limit: int = BATCH
) -> tuple[list[Row[Any]], str | None, int]:
    """``read_after`` and, in the same transaction, the queue's current password hash
    (``None`` once the queue is deleted) and the highest event id pruned from its log, so
    that a stream can tell that the credentials it was opened with no longer hold and that
    events it has not sent were pruned (``sse.stream``). The events are read first: a prune
    committing in between can only make the pruned id higher, never hide a loss."""
    with db.read() as conn:
        rows = list(
            conn.execute(
                select(events)
                .where(events.c.queue_id == queue_id, events.c.event_id > after)
                .order_by(events.c.event_id)
                .limit(limit)
            ).fetchall()
        )
        found = conn.execute(
            select(queues.c.password_hash, queues.c.events_pruned_through).where(
                queues.c.queue_id == queue_id
            )
        ).first()
    if found is None:
        return rows, None, 0
    return rows, found.password_hash, found.events_pruned_through or 0


def latest_id(db: Database) -> int:
    """The newest event id of any queue (0 when the log is empty)."""
    with db.read() as conn:
        return conn.execute(select(func.max(events.c.event_id))).scalar() or 0
