"""How the event log stores entity documents: compact rows (only what differs from the
layout's defaults, the event's own time and state) read back as exactly the document that was
logged, key order and JSON types included; documents of another shape, and rows written by
earlier versions, read back unchanged. Real database files (the backend under test)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from labtasker.server import eventlog
from labtasker.server.db import Database
from labtasker.server.schema import events
from labtasker.server.sql_storage import SqlStorage
from labtasker.timeutil import utc_now

T0 = utc_now()
T1 = T0 + timedelta(seconds=5)


@pytest.fixture(scope="module")
def db(scratch_dbs):
    db = Database(scratch_dbs.new_url())
    db.migrate()
    yield db
    db.dispose()


@pytest.fixture
def qid(db):
    return SqlStorage(db).create_queue("q-" + uuid.uuid4().hex[:12], "pw", None)


def task_doc(**changes):
    tid = str(uuid.uuid4())
    doc = {
        "task_id": tid,
        "queue_id": None,  # set by the caller
        "status": "pending",
        "task_name": None,
        "created_at": T0.isoformat(),
        "start_time": None,
        "last_heartbeat": None,
        "last_modified": T0.isoformat(),
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
    }
    doc.update(changes)
    return doc


def log_and_read(db, qid, doc, *, new="pending", when=T0, entity_type="task"):
    """Record ``doc`` as one event, commit, and read it back: (document, stored JSON)."""
    doc = {**doc, "queue_id": qid} if "queue_id" in doc else doc
    entity_id = doc.get("task_id") or doc.get("worker_id") or str(uuid.uuid4())
    with db.write() as conn:
        eventlog.record(
            conn,
            queue_id=qid,
            entity_type=entity_type,
            entity_id=entity_id,
            old="created",
            new=new,
            data=doc,
            now=when,
        )
    with db.read() as conn:
        row = conn.execute(
            select(events).where(events.c.entity_id == entity_id).order_by(events.c.event_id)
        ).fetchall()[-1]
    return eventlog.document(row), row.entity_data, {**doc, "_id": entity_id}


def same_json(a, b, ordered: bool = True) -> bool:
    """Equal as JSON text: ``1``/``1.0``/``true`` told apart, and key order unless not
    ``ordered``."""
    return json.dumps(a, sort_keys=not ordered) == json.dumps(b, sort_keys=not ordered)


LOOK_ALIKES = [
    {},  # every value the default: the smallest row
    {"priority": 10.0},  # a float 10 is not the default int 10
    {"priority": True, "retries": False},  # bools are not 1 / 0
    {"max_retries": 3.0, "retries": 0.0},
    {"task_name": "", "cmd": None, "metadata": None},  # empty text, null: not the defaults
    {"cmd": [], "summary": [], "args": {"": {}}},
    {"status": "running"},  # a state other than the row's new state is kept
    {"created_at": T1.isoformat()},  # a time other than the event's
    {"start_time": T0.isoformat(), "last_heartbeat": T0.isoformat()},  # the event's time
    {"last_modified": T0.replace(tzinfo=None).isoformat()},  # same instant, other text
    {"progress": {"step": 1, "total": 2}, "run_id": "r", "worker_id": "w"},
    {"args": {"lr": 0.1, "nested": {"x": [1, 2.0, None, True]}}, "metadata": {"~": [1, 0]}},
]


@pytest.mark.parametrize("changes", LOOK_ALIKES, ids=range(len(LOOK_ALIKES)))
def test_compact_task_rows_read_back_exactly(db, qid, changes):
    doc, stored, want = log_and_read(db, qid, task_doc(**changes))
    assert same_json(doc, want), (doc, want)
    assert eventlog.MARKER in stored  # the current layout was used
    assert not {"task_id", "queue_id", "_id"} & set(stored)


def test_a_default_task_document_is_stored_in_a_few_bytes(db, qid):
    _, stored, _ = log_and_read(db, qid, task_doc(args={"i": 7}))
    assert stored == {eventlog.MARKER: [1, 9], "args": {"i": 7}}  # created_at, last_modified


def test_documents_of_another_shape_are_stored_in_full(db, qid):
    """(PostgreSQL's ``jsonb`` keeps a full document's keys in an order of its own; a compact
    one comes back in the layout's order.)"""
    ordered = db.dialect != "postgresql"
    extra = {**task_doc(), "new_field": 1}  # a key the layout does not know
    doc, stored, want = log_and_read(db, qid, extra)
    assert same_json(doc, want, ordered) and eventlog.MARKER not in stored
    reordered = dict(reversed(list(task_doc().items())))
    doc, stored, want = log_and_read(db, qid, reordered)
    assert same_json(doc, want, ordered) and eventlog.MARKER not in stored
    doc, stored, want = log_and_read(db, qid, {"a": 1}, entity_type="other")
    assert same_json(doc, want, ordered)


def test_worker_rows_compact_and_read_back(db, qid):
    wid = str(uuid.uuid4())
    worker = {
        "worker_id": wid,
        "queue_id": qid,
        "status": "active",
        "worker_name": None,
        "metadata": {},
        "retries": 0,
        "max_retries": 3,
        "created_at": T0.isoformat(),
        "last_modified": T0.isoformat(),
        "gone_at": None,
    }
    doc, stored, want = log_and_read(db, qid, worker, new="active", entity_type="worker")
    assert same_json(doc, want)
    assert stored == {eventlog.MARKER: [1, 3], "max_retries": 3}
    worker = {**worker, "status": "suspended", "retries": 2, "gone_at": T1.isoformat()}
    doc, _, want = log_and_read(db, qid, worker, new="active", entity_type="worker", when=T1)
    assert same_json(doc, want)


def test_rows_written_before_compaction_read_back_as_stored(db, qid):
    """Full documents (with or without the row keys) and a marker of an unknown layout
    version are returned as they are."""
    tid = str(uuid.uuid4())
    full = {**task_doc(task_id=tid), "queue_id": qid, "_id": tid}
    without_keys = {k: v for k, v in full.items() if k not in ("task_id", "queue_id", "_id")}
    future = {eventlog.MARKER: [99, 0], "args": {}}
    with db.write() as conn:
        conn.execute(
            insert(events),
            [
                {
                    "queue_id": qid,
                    "created_at": T0,
                    "entity_type": "task",
                    "entity_id": tid,
                    "old_state": "created",
                    "new_state": "pending",
                    "entity_data": data,
                }
                for data in (full, without_keys, future)
            ],
        )
    with db.read() as conn:
        rows = conn.execute(
            select(events).where(events.c.entity_id == tid).order_by(events.c.event_id)
        ).fetchall()
    docs = [eventlog.document(r) for r in rows]
    ordered = db.dialect != "postgresql"  # (jsonb: keys in an order of its own)
    assert same_json(docs[0], full, ordered) and same_json(docs[1], full, ordered)
    want = {"task_id": tid, "queue_id": qid, **future, "_id": tid}
    assert same_json(docs[2], want, ordered)
