"""The storage contract: what ``SqlStorage`` promises the HTTP layer (``server.storage.Storage``),
checked on the storage object itself, without HTTP, on the backend under test (SQLite, and
PostgreSQL in the PostgreSQL half of the suite). Every test works in its own queue.

Promises checked: queues are scoped (no operation reaches another queue's data) and names
unique; tasks start ``pending`` with their submitted fields; a claim takes the highest
priority, then least recently modified, task whose args have exactly the required fields,
and fences the run with a ``run_id``; reports apply the retry rule and refuse a stale run;
``update_tasks`` is all or nothing; heartbeats and the timeout sweep follow the server
clock; worker states gate claims; every transition is logged once, in commit order."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest

from labtasker.server import eventlog, leaf_sort
from labtasker.server.db import Database
from labtasker.server.errors import Conflict, Forbidden, Invalid, NotFound
from labtasker.server.sql_storage import SqlStorage
from labtasker.timeutil import utc_now

NO_FILTER = dict(
    extra_filter=None, task_id=None, task_name=None, status=None, sort=None, offset=0, limit=100
)


@pytest.fixture(scope="module")
def store(scratch_dbs):
    db = Database(scratch_dbs.new_url())
    db.migrate()
    yield SqlStorage(db)
    db.dispose()


@pytest.fixture
def qid(store):
    return store.create_queue("q-" + uuid.uuid4().hex[:12], "pw", {"team": "a"})


CLAIM_ARGS = dict(
    worker_id=None,
    task_timeout=None,
    heartbeat_timeout=None,
    start_heartbeat=True,
    required_fields=None,
    extra_filter=None,
    cmd=None,
)


def claim(store, qid, **kw):
    return store.fetch_task(qid, **{**CLAIM_ARGS, **kw})


def test_queue_names_are_unique_and_queues_scoped(store, qid):
    queue = store.get_queue(qid)
    assert queue["metadata"] == {"team": "a"}
    with pytest.raises(Conflict):
        store.create_queue(queue["queue_name"], "other", None)
    found_id, stored_hash = store.queue_credentials(queue["queue_name"])
    assert found_id == qid and stored_hash != "pw"  # a KDF hash, never the password
    assert store.queue_credentials(qid)[0] == qid  # the id works as username too
    other = store.create_queue("q-" + uuid.uuid4().hex[:12], "pw", None)
    tid = store.submit_task(qid, {"args": {"a": 1}})
    with pytest.raises(NotFound):
        store.get_task(other, tid)
    assert store.search_tasks(other, **NO_FILTER) == []
    assert claim(store, other) is None


def test_queue_update_and_delete(store, qid):
    store.update_queue(qid, None, None, {"k": 1})
    assert store.get_queue(qid)["metadata"] == {"team": "a", "k": 1}
    store.update_queue(qid, None, None, {})
    assert store.get_queue(qid)["metadata"] == {}
    store.submit_task(qid, {"args": {"a": 1}})
    with pytest.raises(Conflict):
        store.delete_queue(qid, cascade=False)  # still has a task
    store.delete_queue(qid, cascade=True)
    with pytest.raises(NotFound):
        store.get_queue(qid)


def test_submitted_tasks_are_pending_with_their_fields(store, qid):
    ids = store.submit_tasks(
        qid,
        [
            {"args": {"i": i}, "priority": i, "task_name": f"t{i}", "max_retries": 2}
            for i in range(3)
        ],
    )
    assert len(set(ids)) == 3
    tasks = [store.get_task(qid, t) for t in ids]
    assert [t["args"] for t in tasks] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert {(t["status"], t["retries"], t["max_retries"], t["run_id"]) for t in tasks} == {
        ("pending", 0, 2, None)
    }
    assert tasks[0]["created_at"].tzinfo is not None  # timestamps are tz-aware UTC
    with pytest.raises(Invalid):
        store.submit_tasks(qid, [{"args": {"ok": 1}}, {"args": {"a": 1, "a.b": 2}}])
    assert len(store.search_tasks(qid, **NO_FILTER)) == 3  # the refused batch left nothing


def test_claim_order_and_no_more_no_less(store, qid):
    low = store.submit_task(qid, {"args": {"x": 1}, "priority": 0})
    high = store.submit_task(qid, {"args": {"x": 2}, "priority": 20})
    wide = store.submit_task(qid, {"args": {"x": 3, "y": 1}, "priority": 30})
    assert claim(store, qid, required_fields=["x"])["task_id"] == high  # wide has more
    assert claim(store, qid, required_fields=["x", "y"])["task_id"] == wide
    assert claim(store, qid, required_fields=["x"], extra_filter={"args.x": {"$gt": 5}}) is None
    assert claim(store, qid, required_fields=["x"])["task_id"] == low
    assert claim(store, qid) is None


def test_a_batch_is_claimed_and_listed_in_its_order(store, qid):
    """The tasks of one batch (a grid) come out in the batch's order, not by random id."""
    ids = store.submit_tasks(qid, [{"args": {"n": n}} for n in range(40)])
    listed = store.search_tasks(qid, **NO_FILTER)
    assert [t["task_id"] for t in listed] == ids
    assert [claim(store, qid)["args"]["n"] for _ in range(40)] == list(range(40))


def test_claim_fences_the_run_and_reports_end_it(store, qid):
    tid = store.submit_task(qid, {"args": {"a": 1}})
    task = claim(store, qid)
    assert task["status"] == "running" and task["run_id"] and task["start_time"]
    with pytest.raises(Conflict):
        store.report_task(qid, tid, status="success", worker_id=None, run_id="stale", summary=None)
    assert store.get_task(qid, tid)["status"] == "running"  # the refusal changed nothing
    store.report_task(
        qid, tid, status="success", worker_id=None, run_id=task["run_id"], summary={"acc": 0.9}
    )
    done = store.get_task(qid, tid)
    assert (done["status"], done["run_id"], done["summary"]) == ("success", None, {"acc": 0.9})
    with pytest.raises(Invalid):
        store.report_task(qid, tid, status="success", worker_id=None, run_id=None, summary=None)


def test_report_and_claim_is_one_transaction(store, qid):
    """``report_and_claim`` stores the report and claims the next task in one transaction:
    its events are the report's then the claim's, in one commit; a refused claim (worker
    suspended) keeps the report; a stale run or a bad filter stores nothing."""
    wid = store.create_worker(qid, "w1", None, 3)
    tids = [store.submit_task(qid, {"args": {"a": i}}) for i in range(3)]
    first = claim(store, qid, worker_id=wid)
    report = dict(status="success", worker_id=wid, summary={"acc": 1})
    next_claim = {**CLAIM_ARGS, "worker_id": wid}
    with pytest.raises(Conflict):  # a stale run: nothing stored, nothing claimed
        store.report_and_claim(
            qid, first["task_id"], run_id="stale", **report, claim_next=next_claim
        )
    with pytest.raises(Invalid):  # a bad filter: refused before the report
        store.report_and_claim(
            qid,
            first["task_id"],
            run_id=first["run_id"],
            **report,
            claim_next={**next_claim, "extra_filter": {"args.a": {"$nope": 1}}},
        )
    assert store.get_task(qid, first["task_id"])["status"] == "running"
    assert [store.get_task(qid, t)["status"] for t in tids].count("pending") == 2
    after = eventlog.latest_id(store.db)
    claimed, second = store.report_and_claim(
        qid, first["task_id"], run_id=first["run_id"], **report, claim_next=next_claim
    )
    assert claimed and second is not None and second["task_id"] in tids
    assert (second["status"], second["worker_id"]) == ("running", wid)
    done = store.get_task(qid, first["task_id"])
    assert (done["status"], done["summary"]) == ("success", {"acc": 1})
    rows = eventlog.read_after(store.db, qid, after)
    assert [(r.entity_id, r.old_state, r.new_state) for r in rows] == [
        (first["task_id"], "running", "success"),
        (second["task_id"], "pending", "running"),
    ]
    assert rows[0].created_at == rows[1].created_at  # one transaction: one reading of the clock
    # the worker is suspended: the report is stored, no claim is made
    store.report_worker(qid, wid, "suspended")
    claimed, third = store.report_and_claim(
        qid, second["task_id"], run_id=second["run_id"], **report, claim_next=next_claim
    )
    assert (claimed, third) == (False, None)
    assert store.get_task(qid, second["task_id"])["status"] == "success"
    assert [store.get_task(qid, t)["status"] for t in tids].count("pending") == 1
    # an active worker and an empty queue: claimed, nothing found
    store.report_worker(qid, wid, "active")
    last = claim(store, qid, worker_id=wid)
    claimed, none = store.report_and_claim(
        qid, last["task_id"], run_id=last["run_id"], **report, claim_next=next_claim
    )
    assert (claimed, none) == (True, None)


def test_failures_retry_until_max_retries(store, qid):
    tid = store.submit_task(qid, {"args": {"a": 1}, "max_retries": 2})
    run = claim(store, qid)["run_id"]
    store.report_task(qid, tid, status="failed", worker_id=None, run_id=run, summary=None)
    assert (store.get_task(qid, tid)["status"], store.get_task(qid, tid)["retries"]) == (
        "pending",
        1,
    )
    run = claim(store, qid)["run_id"]
    store.report_task(qid, tid, status="failed", worker_id=None, run_id=run, summary=None)
    assert (store.get_task(qid, tid)["status"], store.get_task(qid, tid)["retries"]) == (
        "failed",
        2,
    )


def test_update_tasks_is_all_or_nothing(store, qid):
    a = store.submit_task(qid, {"args": {"a": 1}, "priority": 1})
    b = store.submit_task(qid, {"args": {"b": 1}, "priority": 1})
    with pytest.raises(Invalid, match="nothing was changed"):
        store.update_tasks(
            qid,
            [
                {"task_id": a, "replace_fields": [], "priority": 5},
                {"task_id": b, "replace_fields": [], "status": "bogus"},
            ],
            reset_pending=False,
        )
    assert store.get_task(qid, a)["priority"] == 1
    [updated] = store.update_tasks(
        qid, [{"task_id": a, "replace_fields": [], "args": {"c": 2}}], reset_pending=False
    )
    assert updated["args"] == {"a": 1, "c": 2}  # dict fields merge key by key


def test_heartbeat_and_timeout_sweep_use_the_server_clock(store, qid):
    tid = store.submit_task(qid, {"args": {"a": 1}, "heartbeat_timeout": 60})
    with pytest.raises(NotFound):
        store.heartbeat(qid, tid, worker_id=None, run_id=None)  # not running
    task = claim(store, qid)
    store.heartbeat(qid, tid, worker_id=None, run_id=task["run_id"])
    assert store.sweep_timeouts(utc_now() + timedelta(seconds=30)) == 0
    assert store.sweep_timeouts(utc_now() + timedelta(seconds=120)) >= 1
    swept = store.get_task(qid, tid)
    assert swept["status"] == "pending" and swept["retries"] == 1 and swept["run_id"] is None
    assert swept["summary"]["labtasker_timeout"] == "heartbeat"


def test_the_summary_shows_the_latest_runs_outcome(store, qid):
    """A run's end removes the outcome keys of earlier runs (a timeout, a failed job's
    exception and exit code) before merging its report; the job's own keys stay, and the
    run history keeps every run's outcome."""
    tid = store.submit_task(qid, {"args": {"a": 1}, "heartbeat_timeout": 60, "max_retries": 5})
    claim(store, qid)
    assert store.sweep_timeouts(utc_now() + timedelta(seconds=120)) >= 1
    assert store.get_task(qid, tid)["summary"]["labtasker_timeout"] == "heartbeat"
    run = claim(store, qid)["run_id"]
    failure = {
        "labtasker_exception": {"type": "LabtaskerJobFailed", "message": "exit 1", "traceback": ""},
        "exit_code": 1,
        "output_tail": "x",
        "epoch": 3,
    }
    store.report_task(qid, tid, status="failed", worker_id=None, run_id=run, summary=failure)
    assert store.get_task(qid, tid)["summary"] == failure  # the timeout's keys are gone
    run = claim(store, qid)["run_id"]
    store.report_task(
        qid, tid, status="success", worker_id=None, run_id=run, summary={"accuracy": 0.9}
    )
    assert store.get_task(qid, tid)["summary"] == {"epoch": 3, "accuracy": 0.9}
    # a success reported without a summary (1.0.1's finish()) drops the stale outcome too
    tid2 = store.submit_task(qid, {"args": {"b": 1}, "max_retries": 5})
    run = claim(store, qid)["run_id"]
    store.report_task(
        qid,
        tid2,
        status="failed",
        worker_id=None,
        run_id=run,
        summary={"exit_code": 2, "note": "kept"},
    )
    run = claim(store, qid)["run_id"]
    store.report_task(qid, tid2, status="success", worker_id=None, run_id=run, summary=None)
    assert store.get_task(qid, tid2)["summary"] == {"note": "kept"}
    assert [r["status"] for r in store.list_task_runs(qid, tid)[:3]] == [
        "success",
        "failed",
        "timed_out",
    ]


def test_worker_states_gate_claims(store, qid):
    wid = store.create_worker(qid, "w1", None, 1)
    assert store.get_worker(qid, wid)["status"] == "active"
    with pytest.raises(NotFound):
        claim(store, qid, worker_id="no-such-worker")
    for i in range(2):
        tid = store.submit_task(qid, {"args": {"a": i}, "max_retries": 3})
        run = claim(store, qid, worker_id=wid, extra_filter={"args.a": i})["run_id"]
        store.report_task(qid, tid, status="failed", worker_id=wid, run_id=run, summary=None)
        # alone, nothing confirms that the machine is to blame: twice max_retries (1)
        assert store.get_worker(qid, wid)["status"] == ("active", "crashed")[i]
    with pytest.raises(Forbidden):
        claim(store, qid, worker_id=wid)
    with pytest.raises(Invalid):
        store.report_worker(qid, wid, "crashed")  # set by failures only
    store.report_worker(qid, wid, "active")
    assert store.get_worker(qid, wid)["retries"] == 0
    store.report_worker(qid, wid, "suspended")
    with pytest.raises(Forbidden):
        claim(store, qid, worker_id=wid)


def test_a_streak_confirmed_by_a_success_elsewhere_crashes_at_max_retries(store, qid):
    """A worker whose tasks fail while another worker's succeed is crashed at its
    max_retries; one whose streak began after the other's success is not yet, until the next
    success elsewhere."""

    def run(worker, status, args):
        tid = store.submit_task(qid, {"args": args, "max_retries": 3})
        task = claim(store, qid, worker_id=worker, extra_filter={"task_id": tid})
        store.report_task(
            qid, tid, status=status, worker_id=worker, run_id=task["run_id"], summary=None
        )

    def state(worker):
        w = store.get_worker(qid, worker)
        return w["status"], w["retries"]

    late = store.create_worker(qid, "late", None, 1)
    good = store.create_worker(qid, "good", None, 3)
    run(good, "success", {"ok": 1})
    bad = store.create_worker(qid, "bad", None, 1)  # created after that success
    run(bad, "failed", {"a": 1})
    assert state(bad) == ("active", 1)  # no success elsewhere since its streak began
    run(good, "success", {"ok": 2})
    # that success confirms bad's streak, kept active at max_retries: crashed now
    assert state(bad) == ("crashed", 1)
    run(late, "failed", {"b": 1})
    assert state(late) == ("crashed", 1)  # good succeeded during its streak: confirmed
    # a lone streak at max_retries (unconfirmed: kept active) is crashed by the next success
    # elsewhere
    lone = store.create_worker(qid, "lone", None, 1)
    run(lone, "failed", {"c": 1})
    assert state(lone) == ("active", 1)
    run(good, "success", {"ok": 3})
    assert state(lone) == ("crashed", 1)


def test_every_transition_is_logged_once_in_commit_order(store, qid):
    after = eventlog.latest_id(store.db)
    tid = store.submit_task(qid, {"args": {"a": 1}})
    run = claim(store, qid)["run_id"]
    store.report_task(qid, tid, status="success", worker_id=None, run_id=run, summary=None)
    rows = eventlog.read_after(store.db, qid, after)
    assert [(r.entity_id, r.old_state, r.new_state) for r in rows] == [
        (tid, "created", "pending"),
        (tid, "pending", "running"),
        (tid, "running", "success"),
    ]
    assert [r.event_id for r in rows] == sorted(r.event_id for r in rows)
    assert eventlog.payload(rows[-1])["event"]["entity_data"]["status"] == "success"


def test_each_event_document_is_the_entity_as_it_was_then(store, qid):
    """However an event row is stored (compact: only what differs from the layout's
    defaults, the event's own time and state), its document reads back as the task or
    worker was right after the change: same keys in the same order, same values and types.
    Checked after each step of a task's and a worker's life, and on a batch submit (the
    encoding itself, with look-alike values such as ``True``/``1``: test_events)."""

    def jsonable(entity, entity_id):
        entity = {k: v for k, v in entity.items() if k != "running_task_ids"}  # (not logged)
        return {
            **{k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in entity.items()},
            "_id": entity_id,
        }

    def last_document(entity_id):
        rows = eventlog.read_after(store.db, qid, 0, limit=10_000)
        row = [r for r in rows if r.entity_id == entity_id][-1]
        return eventlog.payload(row)["event"]["entity_data"], row

    def check_task(tid, task=None):
        """``task``: the task as the operation returned it (a claim answers with the run's
        own timeouts), else as read now."""
        doc, _ = last_document(tid)
        want = jsonable(task or store.get_task(qid, tid), tid)
        assert list(doc) == list(want) and doc == want
        assert [(k, type(v)) for k, v in doc.items()] == [(k, type(v)) for k, v in want.items()]

    wid = store.create_worker(qid, None, None, 2)
    doc, _ = last_document(wid)
    want = jsonable(store.get_worker(qid, wid), wid)
    assert list(doc) == list(want) and doc == want
    tid = store.submit_task(
        qid,
        {
            "args": {"a": 1, "flag": True, "none": None, "empty": {}},
            "priority": 10,
            "max_retries": 2,
            "task_name": "",
            "cmd": ["python", "t.py"],
            "metadata": {"tag": "x"},
            "heartbeat_timeout": 60.0,
        },
    )
    check_task(tid)
    task = claim(store, qid, worker_id=wid)
    check_task(tid, task)
    run = task["run_id"]
    store.report_task(qid, tid, status="failed", worker_id=wid, run_id=run, summary={"e": 1})
    check_task(tid)  # back to pending, one retry counted
    run = claim(store, qid, worker_id=wid)["run_id"]
    store.report_task(qid, tid, status="success", worker_id=wid, run_id=run, summary={"acc": 1})
    check_task(tid)
    store.update_tasks(
        qid,
        [{"task_id": tid, "replace_fields": [], "priority": 3, "retries": 0}],
        reset_pending=True,
    )
    check_task(tid)
    store.report_worker(qid, wid, "suspended")
    doc, row = last_document(wid)
    want = jsonable(store.get_worker(qid, wid), wid)
    assert list(doc) == list(want) and doc == want
    ids = store.submit_tasks(qid, [{"args": {"n": n}} for n in range(3)])
    for tid in ids:
        check_task(tid)
        _, row = last_document(tid)
        assert len(json.dumps(row.entity_data)) < 60, row.entity_data
    # every row of this life used the current layouts (a changed set of task or worker
    # fields needs a new layout version in eventlog, else its events are stored in full)
    rows = eventlog.read_after(store.db, qid, 0, limit=10_000)
    assert len(rows) == 12 and all(eventlog.MARKER in r.entity_data for r in rows)


def test_search_filters_sorts_and_pages(store, qid):
    ids = store.submit_tasks(qid, [{"args": {"n": n}, "priority": n % 3} for n in range(7)])
    page = store.search_tasks(
        qid, **{**NO_FILTER, "sort": [("priority", -1), ("args.n", 1)], "limit": 3}
    )
    assert [t["args"]["n"] for t in page] == [2, 5, 1]
    rest = store.search_tasks(
        qid, **{**NO_FILTER, "sort": [("priority", -1), ("args.n", 1)], "offset": 3}
    )
    assert len(page) + len(rest) == len(ids)
    found = store.search_tasks(qid, **{**NO_FILTER, "extra_filter": {"args.n": {"$gte": 5}}})
    assert sorted(t["args"]["n"] for t in found) == [5, 6]
    with pytest.raises(Invalid):
        store.search_tasks(qid, **{**NO_FILTER, "extra_filter": {"$where": "1"}})


def test_search_projection_reads_only_the_fields_asked_for(store, qid):
    docs = [
        {
            "task_name": f"t{n}",
            "args": {"lr": [0.1, 0.01][n % 2], "model": {"depth": n}},
            "metadata": {"tag": "x"},
            "heartbeat_timeout": 60,
        }
        for n in range(5)
    ]
    docs[4]["args"] = {"other": True}  # no args.lr: that path is None
    store.submit_tasks(qid, docs)
    claimed = claim(store, qid, heartbeat_timeout=5)  # the run's override is in force
    sort = [("last_modified", 1)]
    whole = store.search_tasks(qid, **{**NO_FILTER, "sort": sort})
    fields = ["task_id", "args", "args.lr", "args.model.depth", "heartbeat_timeout"]
    part = store.search_tasks(qid, **{**NO_FILTER, "sort": sort, "fields": fields})
    assert [list(p) for p in part] == [fields] * 5  # exactly the keys asked for, in order
    assert [p["task_id"] for p in part] == [t["task_id"] for t in whole]
    for p, t in zip(part, whole, strict=True):
        assert p["args"] == t["args"]
        assert p["args.lr"] == t["args"].get("lr")
        assert p["args.model.depth"] == t["args"].get("model", {}).get("depth")
        assert p["heartbeat_timeout"] == t["heartbeat_timeout"]
        assert type(p["args.lr"]) is type(t["args"].get("lr"))  # JSON numbers stay numbers
    assert {p["heartbeat_timeout"] for p in part if p["task_id"] == claimed["task_id"]} == {5}
    assert {p["args.lr"] for p in part} == {0.1, 0.01, None}
    # objects come back whole; filters, status and keyset cursors work as without fields
    nested = store.search_tasks(
        qid,
        **{
            **NO_FILTER,
            "task_id": claimed["task_id"],
            "fields": ["args.model", "metadata.tag", "status"],
        },
    )
    depth = claimed["args"]["model"]["depth"]
    assert nested == [{"args.model": {"depth": depth}, "metadata.tag": "x", "status": "running"}]
    only = store.search_tasks(
        qid,
        **{
            **NO_FILTER,
            "extra_filter": {"args.lr": 0.01},
            "status": "pending",
            "fields": ["args.lr"],
        },
    )
    pending = [t for t in whole if t["status"] == "pending" and t["args"].get("lr") == 0.01]
    assert only == [{"args.lr": 0.01}] * len(pending) and pending
    for bad in ([], ["nope"], ["args"] * 2, ["args..lr"], ["queue.x"], ["task_id.x"], [3]):
        with pytest.raises(Invalid, match="fields"):
            store.search_tasks(qid, **{**NO_FILTER, "fields": bad})


def test_projection_json_values_decode_as_json_loads():
    from labtasker.server.sql_storage import _json_value

    texts = ["0.01", "-1.5e-3", "12345678901234567890", "true", "null", '"mlp"', '"a\\u00e9"']
    texts += ['{"a": 1, "b": [1, 2]}', "[]", " 1", "1 ", '{"depth":3}', "NaN"]
    for text in texts:
        assert _json_value(text) == json.loads(text) or text == "NaN", text
    with pytest.raises(ValueError):
        _json_value("1 x")


# ------------------------------------------------------------------ the leaf index
def _expected_leaves(task: dict) -> set[tuple]:
    """The leaf-index rows a task must have (``leaf_rows.py``), computed from its documents:
    ``(path, kind, number, text)`` for every node reached through objects."""
    out: set[tuple] = set()

    def walk(value, path):
        if isinstance(value, dict):
            out.add((path, 3, 0, ""))
            for key, sub in value.items():
                bare = key.isascii() and key[:1].isalpha() and key.isalnum()
                walk(sub, f"{path}.{key}" if bare else f'{path}."{key}"')
        elif isinstance(value, list):
            out.add((path, 4, 0, ""))
        elif value is None:
            out.add((path, 0, 0, ""))
        elif isinstance(value, bool):
            out.add((path, 5, int(value), ""))
        elif isinstance(value, (int, float)):
            out.add((path, 1, value, ""))
        else:
            out.add((path, 2, 0, value))

    for column in ("args", "metadata", "summary"):
        walk(task[column], column)
        out.discard((column, 3, 0, ""))  # the column itself is not a node of the index
    return out


def _stored_leaves(store, qid: str, task_id: str) -> set[tuple]:
    from sqlalchemy import select

    from labtasker.server.schema import leaf_paths, task_leaves

    stmt = (
        select(leaf_paths.c.path, task_leaves.c.kind, task_leaves.c.num, task_leaves.c.txt)
        .join(leaf_paths, leaf_paths.c.path_id == task_leaves.c.path_id)
        .where(leaf_paths.c.queue_id == qid, task_leaves.c.task_id == task_id)
    )
    with store.db.read() as conn:
        return {
            (r.path, r.kind, float(r.num) if r.kind == 1 and r.num % 1 else int(r.num), r.txt)
            for r in conn.execute(stmt)
        }


def _search(store, qid, filt):
    return {t["task_id"] for t in store.search_tasks(qid, **{**NO_FILTER, "extra_filter": filt})}


def test_leaf_index_follows_submit_update_report_and_delete(store, qid):
    """The leaf index holds exactly the nodes of each task's args, metadata and summary
    after every kind of write (submit, update with merge and with replace, a report's
    summary, requeue, delete), and filters read from it see each change."""
    tid, other = store.submit_tasks(
        qid,
        [
            {
                "args": {
                    "lr": 0.1,
                    "model": {"depth": 3, "name": "cnn"},
                    "tags": ["a"],
                    "flag": True,
                    "none": None,
                },
                "metadata": {"owner": "ann"},
            },
            {"args": {"lr": 0.2, "model": {"depth": 4}}},
        ],
    )
    task = store.get_task(qid, tid)
    assert _stored_leaves(store, qid, tid) == _expected_leaves(task)
    assert ("args.model.depth", 1, 3, "") in _expected_leaves(task)
    assert _search(store, qid, {"args.model.depth": 3}) == {tid}
    assert _search(store, qid, {"metadata.owner": "ann"}) == {tid}

    store.update_tasks(
        qid, [{"task_id": tid, "args": {"model.depth": 5, "extra": "x"}}], reset_pending=False
    )  # a merge
    task = store.get_task(qid, tid)
    assert task["args"]["model"] == {"depth": 5, "name": "cnn"}
    assert _stored_leaves(store, qid, tid) == _expected_leaves(task)
    assert _search(store, qid, {"args.model.depth": 3}) == set()
    assert _search(store, qid, {"args.model.depth": {"$gte": 4}}) == {tid, other}

    store.update_tasks(
        qid,
        [
            {
                "task_id": tid,
                "args": {"lr": 0.3},
                "metadata": {"k-1": 2},
                "replace_fields": ["args", "metadata"],
            }
        ],
        reset_pending=False,
    )
    task = store.get_task(qid, tid)
    assert (
        _stored_leaves(store, qid, tid)
        == _expected_leaves(task)
        == {("args.lr", 1, 0.3, ""), ('metadata."k-1"', 1, 2, "")}
    )
    assert _search(store, qid, {"metadata.k-1": 2}) == {tid}

    running = claim(store, qid, extra_filter={"args.lr": 0.3})
    assert running["task_id"] == tid
    store.report_task(
        qid,
        tid,
        status="success",
        worker_id=None,
        run_id=running["run_id"],
        summary={"acc": 0.9, "curve": [1, 2]},
    )
    task = store.get_task(qid, tid)
    assert _stored_leaves(store, qid, tid) == _expected_leaves(task)
    assert _search(store, qid, {"summary.acc": {"$gt": 0.5}}) == {tid}
    assert _search(store, qid, {"summary.curve": 2}) == {tid}  # through the array, from JSON
    store.requeue_tasks(qid, task_ids=[tid])
    assert _search(store, qid, {"summary.acc": 0.9}) == {tid}  # the summary is kept

    store.delete_task(qid, tid)
    assert _stored_leaves(store, qid, tid) == set()
    assert _search(store, qid, {"args.lr": {"$in": [0.2, 0.3]}}) == {other}
    store.delete_queue(qid)
    assert _stored_leaves(store, qid, other) == set()


def test_leaf_index_is_scoped_to_the_queue(store, qid):
    """Two queues with the same argument values: a filter answered by the index finds only
    the tasks of the queue asked for, and the index rows of each queue are its own."""
    other = store.create_queue("q-" + uuid.uuid4().hex[:12], "pw", None)
    mine = store.submit_task(qid, {"args": {"i": 7}})
    theirs = store.submit_task(other, {"args": {"i": 7}})
    assert _search(store, qid, {"args.i": 7}) == {mine}
    assert _search(store, other, {"args.i": {"$in": [7, 8]}}) == {theirs}
    assert store.count_tasks(qid, extra_filter={"args.i": 7})["total"] == 1
    assert _stored_leaves(store, qid, theirs) == set()


# Documents whose leaf rows are easy to get wrong in Python: quoted and escaped keys, keys a
# path cannot name (``[``, outside ``[A-Za-z0-9_-]``, a final newline), numbers of every JSON
# form, nesting, empty objects and arrays.
_TRICKY_DOCS = [
    {"i": 0},
    {"lr": 0.1, "neg": -2.5e-7, "big": 1e300, "tiny": 5e-324, "zero": -0.0, "one": 1.0},
    {"m": 2**63 - 1, "n": -(2**63), "t": True, "f": False, "z": None, "s": "", "u": "é☃"},
    {"a_b": 1, "a-b": 2, "1a": 3, "a.b": 4, "a b": 5, "x[0]": 6, "é": 7, "a\n": 8, "": 9},
    {"model": {"depth": 3, "opt": {"name": "adam", "betas": [0.9, 0.99]}, "x y": {"q": 1}}},
    {"empty": {}, "list": [], "nested": {"empty": {}}, 'quo"te': "v", "back\\slash": 1},
]


def test_submitted_leaf_rows_are_the_rows_the_triggers_make(store, qid):
    """The rows the submit path writes from Python (``leaf_rows.build_rows``) are exactly,
    value for value, those the database's own triggers make for the same tasks (read back
    after deleting the rows and refilling them with ``leaf_rows.backfill``)."""
    from sqlalchemy import delete, select

    from labtasker.server import leaf_rows
    from labtasker.server.schema import leaf_paths, task_leaves

    batch = [{"args": doc, "metadata": _TRICKY_DOCS[-1 - i]} for i, doc in enumerate(_TRICKY_DOCS)]
    ids = store.submit_tasks(qid, batch)
    stmt = (
        select(leaf_paths.c.path, task_leaves.c.kind, task_leaves.c.num, task_leaves.c.txt)
        .add_columns(task_leaves.c.task_id)
        .join(leaf_paths, leaf_paths.c.path_id == task_leaves.c.path_id)
        .where(task_leaves.c.task_id.in_(ids))
    )

    def stored():
        with store.db.read() as conn:
            return sorted((tuple(r), type(r.num)) for r in conn.execute(stmt))

    made = stored()
    assert ("args.i", 1, 0, "", ids[0]) in [row for row, _ in made]
    assert len(made) > 40
    with store.db.write() as conn:
        conn.execute(delete(task_leaves).where(task_leaves.c.task_id.in_(ids)))
    assert stored() == []
    with store.db.write() as conn:
        leaf_rows.backfill(conn)
    assert stored() == made


def _pages_by_cursor(store, qid, sort, limit) -> list[str]:
    """The task ids of every page of ``limit`` tasks in ``sort`` order, each page after the
    cursor of the one before (``leaf_sort.next_cursor``); every cursor fits within
    ``leaf_sort.MAX_CURSOR`` characters."""
    seen, cursor = [], None
    while True:
        page = store.search_tasks(
            qid, **{**NO_FILTER, "sort": sort, "limit": limit, "cursor": cursor}
        )
        seen += [t["task_id"] for t in page]
        if len(page) < limit:
            return seen
        cursor = leaf_sort.next_cursor(leaf_sort.json_sort(sort), page[-1])
        assert len(cursor) <= leaf_sort.MAX_CURSOR


def test_sort_on_a_summary_path_pages_by_cursor_like_a_python_sort(store, qid):
    """A sort on one JSON path is read from the leaf index (``leaf_sort``): its pages, first
    page, cursor pages and offset pages, in both directions, equal a Python sort in the type order
    (missing/null, numbers, strings, objects, arrays, booleans; ties by task_id in the sort's
    direction) and the listing compiled from the JSON (a second key forces that path)."""

    values = [1, 2.5, -3, 1.0, 1, "b", "a", "", "é", True, False, True, None, 10**15, 0.1]
    values += [{"k": 1}, {"k": 1}, [2], [1], -0.5, "a"]
    docs = [{"summary": {"x": v}} for v in values]
    docs += [{"summary": {}}, {}, {"summary": {"x": 7}, "args": {"x": 7}}, {"summary": {"y": 1}}]
    docs += [{"summary": {"x": {"k": 2}}}]  # same keys, a greater value (both backends agree)
    ids = store.submit_tasks(qid, docs)
    # written by the update path (the triggers), not the submit path
    store.update_tasks(qid, [{"task_id": ids[-4], "summary": {"x": 4}}], False)
    store.update_tasks(qid, [{"task_id": ids[-5], "summary": {"x": "z"}}], False)
    whole = {t["task_id"]: t for t in store.search_tasks(qid, **NO_FILTER)}
    assert len(whole) == len(docs)

    def key(task):
        v = task["summary"].get("x") if isinstance(task["summary"], dict) else None
        kind = leaf_sort.kind_of(v)
        if kind in (1, 5):
            return (kind, float(v), "")
        if kind == 2:
            return (kind, 0.0, v)
        return (kind, 0.0, json.dumps(v) if kind in (3, 4) else "")

    for direction in (1, -1):
        reference = sorted(whole, key=lambda i: (key(whole[i]), i), reverse=direction == -1)
        old = store.search_tasks(
            qid, **{**NO_FILTER, "sort": [("summary.x", direction), ("task_id", direction)]}
        )
        assert [t["task_id"] for t in old] == reference
        for limit in (1, 4, 7):
            sort = [("summary.x", direction)]
            assert _pages_by_cursor(store, qid, sort, limit) == reference, (direction, limit)
            # pages by offset: the groups the offset passes whole are counted
            for offset in (1, 2, 5, 13, 14, len(reference) - 1, len(reference) + 3):
                page = store.search_tasks(
                    qid, **{**NO_FILTER, "sort": sort, "limit": limit, "offset": offset}
                )
                want = reference[offset : offset + limit]
                assert [t["task_id"] for t in page] == want, (direction, limit, offset)
        # a filter and a projection: the same order restricted to the matching tasks
        flt = {"summary.x": {"$exists": True}}
        fields = ["task_id", "summary.x"]
        page = store.search_tasks(
            qid,
            **{**NO_FILTER, "sort": [("summary.x", direction)], "extra_filter": flt},
            fields=fields,
        )
        assert [p["task_id"] for p in page] == [
            i for i in reference if "x" in (whole[i]["summary"] or {})
        ]
    with pytest.raises(Invalid, match="cursor"):
        store.search_tasks(qid, **{**NO_FILTER, "sort": [("summary.x", 1)], "cursor": "e30"})


def test_sort_on_large_values_pages_with_cursors_that_fit_a_url(store, qid):
    """Sort values too large for a cursor (a long list or object of args, text of over
    ``MAX_CURSOR_TEXT`` characters) are carried by reference: every cursor stays within
    ``MAX_CURSOR`` characters (the routes take 2,000), the pages equal the unpaged order,
    and a cursor whose task was deleted since is ``Invalid`` naming the cursor."""

    values = [list(range(n, n + 400)) for n in (3, 1, 2)]
    values += [{"k": "v" * 1500, "n": n} for n in (2, 1)]
    values += ["x" * 1200 + c for c in "cab"] + ["short", 5]
    ids = store.submit_tasks(qid, [{"args": {"big": v}} for v in values])
    for direction in (1, -1):
        sort = [("args.big", direction)]
        reference = [
            t["task_id"]
            for t in store.search_tasks(qid, **{**NO_FILTER, "sort": [*sort, ("task_id", 1)]})
        ]
        assert sorted(reference) == sorted(ids)
        for limit in (1, 3):
            assert _pages_by_cursor(store, qid, sort, limit) == reference, (direction, limit)
    sort = [("args.big", 1)]
    page = store.search_tasks(qid, **{**NO_FILTER, "sort": sort, "limit": 3})
    cursor = leaf_sort.next_cursor(leaf_sort.json_sort(sort), page[-1])
    assert leaf_sort.decode(cursor).by_reference  # 5, "short", then the first long text
    store.delete_task(qid, page[-1]["task_id"])
    with pytest.raises(Invalid, match="cursor: the task the previous page ended with"):
        store.search_tasks(qid, **{**NO_FILTER, "sort": sort, "limit": 2, "cursor": cursor})


def test_arg_keys_list_the_keys_of_the_tasks_the_queue_has(store, qid):
    """``arg_keys``: the dotted args keys of the queue's tasks, sorted; the keys of tasks
    deleted since are no longer listed (their structure comes back with a new task), and
    another queue's keys never are."""
    a, b = store.submit_tasks(
        qid, [{"args": {"lr": 0.1, "model": {"depth": 2}}}, {"args": {"x": 1}}]
    )
    other = store.create_queue("q-" + uuid.uuid4().hex[:12], "pw", None)
    store.submit_task(other, {"args": {"secret": 1}})
    assert store.arg_keys(qid) == ["lr", "model.depth", "x"]
    store.delete_task(qid, b)
    assert store.arg_keys(qid) == ["lr", "model.depth"]
    store.submit_task(qid, {"args": {"x": 2}})
    assert store.arg_keys(qid) == ["lr", "model.depth", "x"]
    store.delete_task(qid, a)
    assert store.arg_keys(qid) == ["x"]


def test_last_run_workers_names_the_worker_of_each_tasks_latest_run(store, qid):
    """``last_run_workers``: one lookup for a page of tasks, the worker of each task's latest
    run (a retried task's second worker), ``None`` for a run without a worker; tasks never
    run and other queues' tasks are left out; too many ids is ``Invalid`` naming the field."""
    a, b, c, never = store.submit_tasks(
        qid, [{"args": {"i": i}, "max_retries": 3} for i in range(3)] + [{"args": {"j": 0}}]
    )
    w1 = store.create_worker(qid, "w1", None, 10)
    w2 = store.create_worker(qid, "w2", None, 10)
    for task_id, worker_id, status in ((a, w1, "failed"), (a, w2, "success"), (b, w1, "success")):
        task = claim(store, qid, worker_id=worker_id, extra_filter={"task_id": task_id})
        assert task["task_id"] == task_id
        store.report_task(
            qid, task_id, status=status, worker_id=worker_id, run_id=task["run_id"], summary={}
        )
    task = claim(store, qid, extra_filter={"task_id": c})  # a run without a worker
    store.report_task(qid, c, status="success", worker_id=None, run_id=task["run_id"], summary={})
    other = store.create_queue("other-" + uuid.uuid4().hex[:8], "pw", None)
    assert store.last_run_workers(qid, [a, b, c, never, a]) == {a: w2, b: w1, c: None}
    assert store.last_run_workers(other, [a, b]) == {}
    assert store.last_run_workers(qid, []) == {}
    with pytest.raises(Invalid, match="task_ids"):
        store.last_run_workers(qid, [f"t{i}" for i in range(1001)])
