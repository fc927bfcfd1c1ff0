"""``Storage`` on SQLAlchemy Core, for SQLite (embedded default) and PostgreSQL.

Every public method runs in exactly one transaction (``Database.write``/``read``): a request
either applies completely or not at all. Business rules come from the shared state machines
(``labtasker.fsm``) and the "no more, no less" rule (``labtasker.keys``); the claim itself is
in ``claim.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from json.decoder import JSONDecoder
from json.scanner import make_scanner
from typing import Any

from sqlalchemy import (
    Text,
    and_,
    any_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from labtasker import error_codes as codes
from labtasker import fields as field_registry
from labtasker import fsm
from labtasker.fields import (
    DICT_TASK_FIELDS,
    MAX_TASK_UPDATES,
    RUN_OUTCOME_KEYS,
    UPDATABLE_TASK_FIELDS,
)
from labtasker.filters.mongo_sql import (
    PG_SELECTIVE,
    SELECTIVE,
    CommonValues,
    FieldMap,
    FilterError,
    LeafIndex,
    backend_for,
    compile_filter,
    is_constant_filter,
    sort_expression,
    value_expression,
)
from labtasker.keys import KeyConflictError, shape_key, shape_of, unflatten
from labtasker.server import auth, claim, counting, eventlog, leaf_rows, leaf_sort, paging
from labtasker.server.db import Database
from labtasker.server.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge
from labtasker.server.identity import args_hash, request_hash
from labtasker.server.listing import ListingQuery
from labtasker.server.schema import (
    RUNNING,
    arg_shapes,
    leaf_paths,
    queues,
    server_settings,
    submit_keys,
    task_leaves,
    task_runs,
    tasks,
    workers,
)
from labtasker.server.schema import events as events_table
from labtasker.server.settings import DEFAULT_EVENT_LOG_SIZE, DEFAULT_MAX_TASK_BYTES
from labtasker.server.statistics import BulkAnalyzer

# Sweeper summaries (``summary.labtasker_error``; ``summary.labtasker_timeout`` says which).
HEARTBEAT_TIMEOUT_MESSAGE = (
    "Heartbeat timed out: no heartbeat for {age:.1f}s (heartbeat_timeout {limit:g}s)"
)
TASK_TIMEOUT_MESSAGE = "Task execution timed out: running for {age:.1f}s (task_timeout {limit:g}s)"

# The filter/sort field map of tasks, from the task-field registry; ``_id`` names the id.
TASK_FIELDS = FieldMap(
    columns={
        "_id": tasks.c.task_id,
        **{f.name: tasks.c[f.name] for f in field_registry.TASK_FIELDS if f.storage != "json"},
    },
    json_columns={
        f.name: tasks.c[f.name] for f in field_registry.TASK_FIELDS if f.storage == "json"
    },
    datetime_columns=field_registry.DATETIME_TASK_FIELDS,
)

WORKER_FIELDS = FieldMap(
    columns={
        "worker_id": workers.c.worker_id,
        "_id": workers.c.worker_id,
        "queue_id": workers.c.queue_id,
        "status": workers.c.status,
        "worker_name": workers.c.worker_name,
        "retries": workers.c.retries,
        "max_retries": workers.c.max_retries,
        "created_at": workers.c.created_at,
        "last_modified": workers.c.last_modified,
        "gone_at": workers.c.gone_at,
    },
    json_columns={"metadata": workers.c.metadata},
    datetime_columns=frozenset({"created_at", "last_modified", "gone_at"}),
)

TASK_KEYS = field_registry.TASK_FIELD_NAMES
WORKER_KEYS = (
    "worker_id",
    "queue_id",
    "status",
    "worker_name",
    "metadata",
    "retries",
    "max_retries",
    "created_at",
    "last_modified",
    "gone_at",
)
_RUN_TIMEOUT_KEYS = ("run_heartbeat_timeout", "run_task_timeout")
_TASK_COLUMNS = [tasks.c[k] for k in TASK_KEYS] + [tasks.c[k] for k in _RUN_TIMEOUT_KEYS]
# Values that end the current run (report, timeout, reset, manual status change).
_END_RUN = {
    "worker_id": None,
    "run_id": None,
    "run_heartbeat_timeout": None,
    "run_task_timeout": None,
}
_WORKER_COLUMNS = [workers.c[k] for k in WORKER_KEYS]
MAX_REQUEUE = 1000  # tasks requeued by one call (``more`` tells the caller to call again)
REQUEUE_STATUSES = ("success", "failed", "cancelled")  # requeued when no status is given
MAX_PRUNE = 1000  # workers removed by one prune call
MAX_CANCEL = 1000  # distinct task ids of one batch cancel
_CANCELLABLE = ("pending", "running")  # the task states a cancel changes

# What the timeout sweep reads: the running tasks with a timeout, of every queue. The status is
# a literal (``RUNNING``) so that both planners read the partial ``ix_tasks_running``.
SWEEP_CANDIDATES = select(*_TASK_COLUMNS).where(
    tasks.c.status == RUNNING,
    tasks.c.heartbeat_timeout.is_not(None)
    | tasks.c.task_timeout.is_not(None)
    | tasks.c.run_heartbeat_timeout.is_not(None)
    | tasks.c.run_task_timeout.is_not(None),
)


def _machine(worker_id: str | None, metadata: Any) -> tuple:
    """A worker's machine, for the blame policy (``_blame_failure``): its ``metadata.host``
    and ``metadata.gpus`` when it has a host, else the worker itself (a worker created
    without one, or one deleted since)."""
    if isinstance(metadata, dict) and isinstance(metadata.get("host"), str):
        gpus = metadata.get("gpus")
        return ("host", metadata["host"], json.dumps(gpus, sort_keys=True))
    return ("worker", worker_id)


def leaf_index(
    queue_id: str,
    dialect: str,
    probe: Callable[[Any, int], int] | None = None,
    common: CommonValues | None = None,
) -> LeafIndex:
    """The leaf index (``leaf_rows.py``) of one queue's tasks, for the filter compiler;
    ``probe``, ``common``: see ``LeafIndex``. On PostgreSQL a common value is judged from the JSON
    (``per_task`` off: its planner turns the per-task lookup into a scan of the index)."""
    sqlite = dialect == "sqlite"
    return LeafIndex(
        paths=leaf_paths,
        leaves=task_leaves,
        task_id=tasks.c.task_id,
        queue_id=queue_id,
        number=backend_for(dialect).number_literal,
        probe=probe,
        per_task=sqlite,
        driven_in=None if sqlite else _pg_in_array,
        most_hits=SELECTIVE if sqlite else PG_SELECTIVE,
        ordered_probe=not sqlite,
        common=common,
    )


def _pg_in_array(column: Any, candidates: Any) -> Any:
    """``column = ANY(ARRAY(candidates))`` (PostgreSQL): the few candidate ids are computed
    once and each looked up through the column's index (see ``LeafIndex.driven_in``)."""
    return column == any_(func.array(candidates.scalar_subquery()))


def new_id() -> str:
    """A fresh random id: a version-4 UUID as 36 characters of text."""
    return str(uuid.uuid4())


def new_ids(count: int) -> list[str]:
    """``count`` fresh ids like ``new_id``'s (version-4 UUID text), drawn from one
    ``os.urandom`` call: a bulk submit of 5,000 tasks spent 25 ms in one ``uuid4`` per task,
    this takes under 5 ms."""
    digits = os.urandom(16 * count).hex()
    out = []
    for start in range(0, 32 * count, 32):
        d = digits[start : start + 32]
        # version nibble 4; variant bits 10 (RFC 4122): the 17th digit is one of 8, 9, a, b
        out.append(f"{d[:8]}-{d[8:12]}-4{d[13:16]}-{'89ab'[int(d[16], 16) & 3]}{d[17:20]}-{d[20:]}")
    return out


def task_row(row) -> dict[str, Any]:
    """A task as the wire shows it. ``heartbeat_timeout``/``task_timeout`` are the values in
    force: the current run's override (fetch ``heartbeat_timeout``/``eta_max``) while there is
    one, else the task's own submitted values -- what a 1.0.1 client saw after its fetch,
    without the override outliving the run. ``heartbeat_timeout`` is a float (seconds) or
    ``None`` on both backends: SQLite hands a whole number of a ``REAL`` column back as an
    integer through a raw statement's ``RETURNING`` (the claim's). (``task_timeout`` is shown
    as whole seconds by the wire model.)"""
    m = row._mapping
    out = {k: m[k] for k in TASK_KEYS}
    for key in ("heartbeat_timeout", "task_timeout"):
        override = m.get("run_" + key)
        if override is not None:
            out[key] = override
    if out["heartbeat_timeout"] is not None:
        out["heartbeat_timeout"] = float(out["heartbeat_timeout"])
    return out


MAX_RUN_LOOKUP = 1000  # task ids of one ``last_run_workers`` call
MAX_PROJECTION = 100  # fields of one projection (``search_tasks(fields=...)``)


# (typeshed types make_scanner as a class taking itself; it takes a JSONDecoder)
_scan_json: Callable[[str, int], tuple[Any, int]] = make_scanner(JSONDecoder())  # type: ignore[arg-type]


def _json_value(text: str) -> Any:
    """``json.loads(text)`` for the JSON text the database gives (one value, no
    surrounding space), by the decoder's C scanner: about a sixth of ``json.loads``'s cost
    per call, which dominates a projection of small values (``args.lr``) over many tasks.
    Anything else goes to ``json.loads``."""
    try:
        value, end = _scan_json(text, 0)
    except (StopIteration, ValueError):
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def _projection(
    fields: Sequence[str] | None, dialect: str
) -> tuple[list[Any], Callable[[Any], dict[str, Any]]]:
    """``(columns to select, row -> task dict)`` for ``search_tasks``'s ``fields``.

    ``None``: every column and ``task_row``. Else, for each name: a task field selects its
    column (``heartbeat_timeout``/``task_timeout`` also the run's override, as ``task_row``);
    a JSON field or a dotted path into one selects its JSON text, decoded here (one
    ``json.loads``, no per-column type processing). Raises
    ``Invalid`` for an empty or too long list, a repeated name or an unknown field."""
    if fields is None:
        return _TASK_COLUMNS, task_row
    if not 1 <= len(fields) <= MAX_PROJECTION:
        raise Invalid(f"fields: give 1 to {MAX_PROJECTION} fields, got {len(fields)}")
    if len(set(fields)) != len(fields):
        raise Invalid("fields: a field is named twice")
    columns: list[Any] = []
    paths: list[str] = []  # JSON fields and paths: JSON text to decode
    overridden: list[str] = []
    for name in fields:
        if not isinstance(name, str):
            raise Invalid(f"fields: {name!r} is not a field name")
        if name in TASK_FIELDS.json_columns:  # a whole JSON field: its text, one json.loads
            text = cast(tasks.c[name], Text) if dialect == "postgresql" else tasks.c[name]
            columns.append(type_coerce(text, Text).label(name))
            paths.append(name)
            continue
        if name in TASK_KEYS:
            columns.append(tasks.c[name].label(name))
            if name in ("heartbeat_timeout", "task_timeout"):
                columns.append(tasks.c["run_" + name].label("run_" + name))
                overridden.append(name)
            continue
        if "." not in name or name.split(".")[0] not in TASK_FIELDS.json_columns:
            raise Invalid(
                f"fields: unknown field {name!r}; use task fields or paths like 'args.lr'"
            )
        try:
            expr, _ = value_expression(name, TASK_FIELDS, dialect)
        except FilterError as exc:
            raise Invalid(f"fields: {exc}") from exc
        columns.append((cast(expr, Text) if dialect == "postgresql" else expr).label(name))
        paths.append(name)

    def decode(row) -> dict[str, Any]:
        m = row._mapping
        out = {name: m[name] for name in fields}
        for name in paths:
            if out[name] is not None:
                out[name] = _json_value(out[name])
        for name in overridden:
            if m["run_" + name] is not None:
                out[name] = m["run_" + name]
        return out

    return columns, decode


def _compiled_filter(
    extra_filter: dict | None, fields: FieldMap, dialect: str, index: LeafIndex | None = None
):
    """A request's ``extra_filter`` compiled (``compile_filter``); a bad one -> ``Invalid``
    (HTTP 400). A constant (``{"$expr": 1}``, see ``is_constant_filter``) is refused naming
    the field: it would select every task (or none) instead of some."""
    if is_constant_filter(extra_filter):
        shown = json.dumps(extra_filter, default=str)
        raise Invalid(
            f"extra_filter: the filter {shown} is not a condition (e.g. "
            '{"args.lr": {"$gt": 0.1}}; {} selects everything)'
        )
    try:
        return compile_filter(extra_filter, fields, dialect, index=index)
    except FilterError as exc:
        raise Invalid(str(exc)) from exc


def worker_row(row) -> dict[str, Any]:
    return {k: row._mapping[k] for k in WORKER_KEYS}


def _unflatten(value: dict | None, what: str) -> dict:
    try:
        return unflatten(value or {})
    except KeyConflictError as exc:
        raise Invalid(f"{what}: {exc}") from exc


def _merge(base: dict, patch: dict) -> dict:
    """Apply ``patch`` one level deep: each top-level (possibly dotted) key sets that path."""
    out = json.loads(json.dumps(base))
    for key, value in patch.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[parts[-1]] = unflatten(value) if isinstance(value, dict) else value
    return out


def _without_outcome(summary: dict) -> dict:
    """``summary`` without the keys that describe how an earlier run ended
    (``fields.RUN_OUTCOME_KEYS``): the base a new run's outcome is merged onto."""
    return {k: v for k, v in summary.items() if k not in RUN_OUTCOME_KEYS}


def _order(sort, fields: FieldMap, dialect: str, default):
    if not sort:
        return default
    out = []
    for field, direction in sort:
        expr = sort_expression(field, fields, dialect)
        out.append(expr.asc() if direction == 1 else expr.desc())
    return out


# Hot-path statements built once: SQLAlchemy then reuses their cache keys and compiled forms
# instead of rebuilding the expression tree on every request.
_CREDENTIALS = select(queues.c.queue_id, queues.c.password_hash).where(
    or_(queues.c.queue_id == bindparam("username"), queues.c.queue_name == bindparam("username"))
)

_WORKER_STATUS = select(workers.c.status, workers.c.gone_at).where(
    workers.c.worker_id == bindparam("worker_id"), workers.c.queue_id == bindparam("queue_id")
)
_TASK = select(*_TASK_COLUMNS).where(
    tasks.c.task_id == bindparam("task_id"), tasks.c.queue_id == bindparam("queue_id")
)
_TASK_LOCKED = _TASK.with_for_update()  # SQLite renders no FOR UPDATE (writers serialised)
_SHAPE_ID = select(arg_shapes.c.shape_id).where(
    arg_shapes.c.queue_id == bindparam("queue_id"), arg_shapes.c.shape_key == bindparam("shape_key")
)
_INSERT_TASKS = insert(tasks)
_UNIQUE_LOCK = sql_text("SELECT pg_advisory_xact_lock(:lock)")
SUBMIT_KEY_SECONDS = 24 * 3600  # how long a submit's idempotency key is remembered


def _insert_tasks(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """INSERT new tasks (dicts with the same keys). On SQLite, multi-row ``INSERT ... VALUES
    (...), (...)`` statements of up to ``_SQLITE_ROWS_PER_INSERT`` tasks, with the values each
    column's own bind processor makes -- the text SQLAlchemy would store -- and the batch's
    shared timestamps and empty documents converted once (a timestamp by its value: a task's
    ``created_at`` and ``last_modified`` are one value, a microsecond after the previous
    task's).

    Why not one ``executemany``: ``tasks`` has insert triggers (the leaf index), and SQLite
    opens a statement journal for every execution of a statement that can fire one, i.e.
    for every row of an ``executemany``; that doubled the cost of the row insert
    (0.035 -> 0.09 ms per task). A multi-row statement pays it once per statement.
    SQLAlchemy's own per-row parameter handling was about a third of a bulk submit's time."""
    if conn.dialect.name != "sqlite" or not rows:
        conn.execute(_INSERT_TASKS, rows)
        return
    dialect = conn.dialect
    columns = [c for c in tasks.c if c.name in rows[0]]
    converters: list[tuple[str, Any, dict[Any, Any]]] = []
    memos: dict[type, dict[Any, Any]] = {}  # one per column type: shared by its columns
    for column in columns:
        process = column.type._cached_bind_processor(dialect)
        converters.append((column.name, process, memos.setdefault(type(column.type), {})))
    values: list[Any] = []
    for row in rows:
        for name, process, memo in converters:
            value = row[name]
            if process is not None and value is not None:
                if isinstance(value, datetime):
                    # by value: equal instants are one stored text (the UTC time)
                    stored = memo.get(value)
                    if stored is None:
                        stored = memo[value] = process(value)
                    value = stored
                elif value == {}:
                    stored = memo.get("{}")
                    if stored is None:
                        stored = memo["{}"] = process(value)
                    value = stored
                else:
                    value = process(value)
            values.append(value)
    width = len(columns)
    head = f"INSERT INTO tasks ({', '.join(c.name for c in columns)}) VALUES "
    one = "(" + ", ".join("?" * width) + ")"
    step = _SQLITE_ROWS_PER_INSERT
    for start in range(0, len(rows), step):
        count = min(step, len(rows) - start)
        # exec_driver_sql: SQLAlchemy's events and error translation, no per-row handling
        conn.exec_driver_sql(
            head + ", ".join([one] * count), tuple(values[start * width : (start + count) * width])
        )


# Tasks per multi-row INSERT on SQLite (about 25 columns: 5,000 bound values, below the
# smallest SQLITE_MAX_VARIABLE_NUMBER of current builds, 32,766).
_SQLITE_ROWS_PER_INSERT = 200


def _lock_number(queue_id: str) -> int:
    """A signed 64-bit advisory-lock number for unique submits of ``queue_id``."""
    digest = hashlib.sha256(b"labtasker-unique:" + queue_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# Column values come from the execute() parameters (one compiled form per set of keys).
_UPDATE_TASK = (
    update(tasks).where(tasks.c.task_id == bindparam("p_task_id")).returning(*_TASK_COLUMNS)
)
_INSERT_RUN = insert(task_runs)
_RESET_STREAK = (
    update(workers)
    .where(
        workers.c.worker_id == bindparam("p_worker_id"),
        workers.c.queue_id == bindparam("p_queue_id"),
        workers.c.retries > 0,
        workers.c.status != "crashed",
    )
    .values(retries=0, last_modified=bindparam("p_now", type_=workers.c.last_modified.type))
)
_UNCHARGE = (
    update(task_runs)
    .where(task_runs.c.worker_id == bindparam("p_worker_id"), task_runs.c.charged.is_(True))
    .values(charged=False)
)
# Every successful report runs these two (one compiled form each instead of a new tree).
_END_RUN_ROW = (
    update(task_runs)
    .where(task_runs.c.run_id == bindparam("p_run_id"))
    .values(
        ended=bindparam("p_ended", type_=task_runs.c.ended.type),
        status=bindparam("p_status"),
        charged=bindparam("p_charged"),
        summary=bindparam("p_summary", type_=task_runs.c.summary.type),
    )
)
_AT_RETRY_LIMIT = (
    select(workers.c.worker_id)
    .where(
        workers.c.queue_id == bindparam("p_queue_id"),
        workers.c.status == "active",
        workers.c.retries >= workers.c.max_retries,
        workers.c.worker_id != bindparam("p_worker_id"),
    )
    # in id order: two such transactions lock these rows in the same order
    .order_by(workers.c.worker_id)
)
_FAILED_RUNS = ("failed", "timed_out")
# Outcomes of a run in the history (``task_runs.status``).
RUN_STATUSES = ("running", "success", "failed", "timed_out", "cancelled", "requeued")
_RUN_KEYS = ("run_id", "task_id", "worker_id", "started", "ended", "status", "charged", "summary")


# The key structure of a task's args is indexed (unique per queue); PostgreSQL's btree rows
# hold at most 2704 bytes, so both backends refuse larger structures alike.
MAX_SHAPE_KEY_BYTES = 2400


class SqlStorage:
    """The ``Storage`` implementation; see the module docstring."""

    def __init__(
        self,
        db: Database,
        *,
        event_log_size: int = DEFAULT_EVENT_LOG_SIZE,
        max_task_bytes: int = DEFAULT_MAX_TASK_BYTES,
    ):
        """``event_log_size``: newest events of each queue kept by the timeout sweep's pruning;
        ``max_task_bytes``: the largest args + metadata + summary of one task, as JSON."""
        self.db = db
        self.event_log_size = event_log_size
        self.max_task_bytes = max_task_bytes
        # Reads of the embedded SQLite file are local and quick (WAL: never blocked by
        # writers); a database server may be slow or gone (``deps.queue_id``).
        self.reads_are_local = db.dialect == "sqlite"
        # Filter conditions recently probed as common (``LeafIndex.common``).
        self._common_values = CommonValues()
        # PostgreSQL: fresh planner statistics after bulk submits (``statistics``)
        self.analyzer = BulkAnalyzer(db)

    def _check_task_size(self, where: str, args: Any, metadata: Any, summary: Any) -> None:
        """Raise ``TooLarge`` when a task's args + metadata + summary exceed
        ``max_task_bytes`` as compact JSON text."""
        size = sum(
            2 if v == {} else len(json.dumps(v, separators=(",", ":"), default=str).encode())
            for v in (args, metadata, summary)
        )  # (``{}``, most metadata and summaries: two bytes, without an encoder each)
        if size > self.max_task_bytes:
            raise TooLarge(
                f"{where}args + metadata + summary: {size} bytes (limit "
                f"{self.max_task_bytes} bytes, --max-task-bytes)"
            )

    # ------------------------------------------------------------------ queues
    def create_queue(self, name: str, password: str, metadata: dict | None) -> str:
        """Create a queue; raises ``Conflict`` if the name is taken."""
        queue_id = new_id()
        try:
            with self.db.write() as conn:
                now = self.db.now(conn)
                if conn.execute(
                    select(queues.c.queue_id).where(queues.c.queue_name == name)
                ).first():
                    raise Conflict(f"Queue '{name}' already exists", code=codes.NAME_TAKEN)
                conn.execute(
                    insert(queues).values(
                        queue_id=queue_id,
                        queue_name=name,
                        password_hash=auth.hash_password(password),
                        created_at=now,
                        last_modified=now,
                        metadata=_unflatten(metadata, "metadata"),
                    )
                )
        except IntegrityError as exc:
            raise Conflict(f"Queue '{name}' already exists", code=codes.NAME_TAKEN) from exc
        return queue_id

    def queue_credentials(self, username: str) -> tuple[str, str] | None:
        """``(queue_id, password_hash)`` of the queue whose id or name is ``username``
        (an id wins over a name), else ``None``. One indexed read; password checks are
        ``labtasker.server.auth``'s business."""
        with self.db.read() as conn:
            rows = conn.execute(_CREDENTIALS, {"username": username}).fetchall()
        if not rows:
            return None
        row = next((r for r in rows if r.queue_id == username), rows[0])
        return row.queue_id, row.password_hash

    def get_queue(self, queue_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return self._queue(conn, queue_id)

    @staticmethod
    def _queue_hash(conn: Connection, queue_id: str) -> str | None:
        """The stored password hash of a queue (``None`` if it does not exist)."""
        return conn.execute(
            select(queues.c.password_hash).where(queues.c.queue_id == queue_id)
        ).scalar()

    @staticmethod
    def _queue(conn: Connection, queue_id: str, lock: bool = False) -> dict[str, Any]:
        stmt = select(
            queues.c.queue_id,
            queues.c.queue_name,
            queues.c.created_at,
            queues.c.last_modified,
            queues.c.metadata,
        ).where(queues.c.queue_id == queue_id)
        if lock and conn.dialect.name == "postgresql":  # read-modify-write of the metadata
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).first()
        if row is None:
            raise NotFound("Queue not found", code=codes.QUEUE_NOT_FOUND)
        return dict(row._mapping)

    def update_queue(self, queue_id, new_name, new_password, metadata_update):
        """Rename / change password / patch metadata; ``Conflict`` on a taken
        name. ``metadata_update``: None = untouched, {} = reset, else top-level keys set.

        A new password (not the current one again) also hands the queue's running tasks
        back to ``pending``: their loops, which hold the old password, can neither heartbeat
        nor report any more (they stop their jobs at the next heartbeat), so each would
        otherwise wait for its heartbeat timeout and spend a retry. Handed back, the run ends
        as ``requeued``, no retry is spent and no worker is charged."""
        if new_password is not None:
            with self.db.read() as conn:
                stored = self._queue_hash(conn, queue_id)
            if auth.verify_password(queue_id, stored, new_password):
                new_password = None  # the same password: nothing changes
        with self.db.write() as conn:
            current = self._queue(conn, queue_id, lock=True)
            now = self.db.now(conn)
            values: dict[str, Any] = {"last_modified": now}
            if new_name is not None and new_name != current["queue_name"]:
                if conn.execute(
                    select(queues.c.queue_id).where(queues.c.queue_name == new_name)
                ).first():
                    raise Conflict(f"Queue name '{new_name}' already exists", code=codes.NAME_TAKEN)
                values["queue_name"] = new_name
            if new_password is not None:
                values["password_hash"] = auth.hash_password(new_password)
                eventlog.wake(conn, queue_id)  # its open streams end (sse.stream)
                self._hand_back_running(conn, queue_id, now, "the queue's password changed")
            if metadata_update is not None:
                values["metadata"] = (
                    _merge(current["metadata"], metadata_update) if metadata_update else {}
                )
            conn.execute(update(queues).where(queues.c.queue_id == queue_id).values(**values))
            return self._queue(conn, queue_id)

    def _hand_back_running(self, conn: Connection, queue_id: str, now: datetime, why: str):
        """Every running task of the queue back to ``pending`` (retries kept, nobody
        charged), its run ended as ``requeued`` with ``why``; one event each. Cost: the
        queue's running tasks (at most one per live job)."""
        running = [
            r.run_id
            for r in conn.execute(
                select(tasks.c.run_id).where(
                    tasks.c.queue_id == queue_id, tasks.c.status == RUNNING
                )
            )
            if r.run_id
        ]
        self._move_tasks(
            conn,
            queue_id,
            where=(tasks.c.queue_id == queue_id, tasks.c.status == RUNNING),
            runs=running,
            old_state=lambda _task_id: "running",
            now=now,
            status="pending",
            run_status="requeued",
            message=f"handed back: {why}",
        )

    @staticmethod
    def _move_tasks(
        conn: Connection,
        queue_id: str,
        *,
        where: tuple,
        runs: list[str],
        old_state: Callable[[str], str],
        now: datetime,
        status: str,
        run_status: str,
        message: str,
        **values: Any,
    ) -> list[str]:
        """The tasks matching ``where`` to ``status`` (``pending`` or ``cancelled``; their
        claim fields cleared, ``values`` set as well), the runs ``runs`` ended as
        ``run_status`` with ``message`` in their summary, one event each (from
        ``old_state(task_id)`` to ``status``). Returns the ids of the tasks it changed.
        Shared by requeue, the password change's hand-back and the batch cancel, so that
        all of them leave the same history."""
        if runs:  # their runs end here, in the history too
            conn.execute(
                update(task_runs)
                .where(task_runs.c.run_id.in_(runs), task_runs.c.ended.is_(None))
                .values(ended=now, status=run_status, summary={"message": message})
            )
        rows = conn.execute(
            update(tasks)
            .where(*where)
            .values(status=status, last_modified=now, **values, **_END_RUN)
            .returning(*_TASK_COLUMNS)
        ).fetchall()
        done: list[str] = []
        for row in rows:
            task = task_row(row)
            eventlog.record(
                conn,
                queue_id=queue_id,
                entity_type="task",
                entity_id=task["task_id"],
                old=old_state(task["task_id"]),
                new=status,
                data=task,
                now=now,
            )
            done.append(task["task_id"])
        return done

    def delete_queue(self, queue_id: str, cascade: bool = True) -> None:
        """Delete a queue with its tasks, workers and events (no orphans, unlike 1.0.1).
        Without ``cascade`` a queue that still has tasks or workers is not deleted:
        ``Conflict`` saying how many."""
        with self.db.write() as conn:
            if not cascade:
                n_tasks = conn.execute(
                    select(func.count()).select_from(tasks).where(tasks.c.queue_id == queue_id)
                ).scalar_one()
                n_workers = conn.execute(
                    select(func.count()).select_from(workers).where(workers.c.queue_id == queue_id)
                ).scalar_one()
                if n_tasks or n_workers:
                    raise Conflict(
                        f"Queue still has {n_tasks} task(s) and {n_workers} worker(s); delete "
                        "them with it using cascade_delete=true (labtasker queue delete "
                        "--cascade)",
                        code=codes.QUEUE_NOT_EMPTY,
                    )
            conn.execute(delete(tasks).where(tasks.c.queue_id == queue_id))
            conn.execute(delete(task_runs).where(task_runs.c.queue_id == queue_id))
            conn.execute(delete(workers).where(workers.c.queue_id == queue_id))
            conn.execute(delete(arg_shapes).where(arg_shapes.c.queue_id == queue_id))
            conn.execute(delete(leaf_paths).where(leaf_paths.c.queue_id == queue_id))
            conn.execute(delete(events_table).where(events_table.c.queue_id == queue_id))
            conn.execute(delete(submit_keys).where(submit_keys.c.queue_id == queue_id))
            if conn.execute(delete(queues).where(queues.c.queue_id == queue_id)).rowcount == 0:
                raise NotFound("Queue not found", code=codes.QUEUE_NOT_FOUND)
            eventlog.wake(conn, queue_id)  # its open streams end (sse.stream)

    def server_secret(self, name: str) -> str:
        """The server-wide secret ``name`` (64 hex characters), generated on first use and
        stored in the database, so that every server process on it uses the same one."""
        read = select(server_settings.c.value).where(server_settings.c.name == name)
        with self.db.read() as conn:
            found = conn.execute(read).scalar()
        if found is not None:
            return found
        dialect_insert = pg_insert if self.db.dialect == "postgresql" else sqlite_insert
        with self.db.write() as conn:  # two processes at once: the first insert wins
            conn.execute(
                dialect_insert(server_settings)
                .values(name=name, value=secrets.token_hex(32))
                .on_conflict_do_nothing()
            )
            return conn.execute(read).scalar_one()

    def arg_keys(self, queue_id: str) -> list[str]:
        """Every dotted ``args`` key path (leaves only) found in the queue's tasks, sorted.
        Read from the queue's distinct argument structures that some task still has (one
        index probe each: ``ix_tasks_shape_claim``), not from the tasks: the cost does not
        grow with the number of tasks. The structures of deleted tasks stay in the table
        (a later submit reuses them) but are not listed."""
        used = (
            select(tasks.c.task_id)
            .where(tasks.c.queue_id == queue_id, tasks.c.shape_id == arg_shapes.c.shape_id)
            .exists()
        )
        with self.db.read() as conn:
            rows = (
                conn.execute(
                    select(arg_shapes.c.shape_key).where(arg_shapes.c.queue_id == queue_id, used)
                )
                .scalars()
                .all()
            )
        keys: set[str] = set()
        for text in rows:
            keys.update(_leaf_paths(json.loads(text)))
        return sorted(keys)

    def summary_keys(self, queue_id: str, sample: int = 1000) -> list[str]:
        """Dotted ``summary`` key paths (leaves only) of the ``sample`` most recently
        modified tasks that have a summary, sorted. Bounded cost: one indexed read of at
        most ``sample`` summaries."""
        stmt = (
            select(tasks.c.summary)
            .where(tasks.c.queue_id == queue_id)
            .order_by(tasks.c.last_modified.desc())
            .limit(sample)
        )
        keys: set[str] = set()
        with self.db.read() as conn:
            for summary in conn.execute(stmt).scalars():
                if isinstance(summary, dict):
                    keys.update(_leaf_paths(summary))
        return sorted(keys)

    # ------------------------------------------------------------------ tasks
    def _shape_id(self, conn: Connection, queue_id: str, args: dict) -> int:
        key = shape_key(shape_of(args))
        if len(key.encode()) > MAX_SHAPE_KEY_BYTES:
            raise Invalid(
                f"args: the key structure takes {len(key.encode())} bytes (limit "
                f"{MAX_SHAPE_KEY_BYTES} bytes: about 150 keys of 8 characters); nest "
                "related keys or pass a large mapping as one value"
            )
        params = {"queue_id": queue_id, "shape_key": key}
        found = conn.execute(_SHAPE_ID, params).scalar()
        if found is not None:
            return found
        # Another server may insert the same shape concurrently: insert-or-ignore, re-read.
        dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(
            dialect_insert(arg_shapes)
            .values(queue_id=queue_id, shape_key=key)
            .on_conflict_do_nothing()
        )
        return conn.execute(_SHAPE_ID, params).scalar_one()

    def _task_event(
        self,
        conn: Connection,
        queue_id: str,
        task_id: str,
        old: str,
        now: datetime,
        task: dict[str, Any] | None = None,
    ) -> None:
        """Log the task's transition from ``old`` to its current state (same transaction).
        ``task``: the task as it is now, when the caller has it (saves a read)."""
        task = task or self._task(conn, queue_id, task_id)
        eventlog.record(
            conn,
            queue_id=queue_id,
            entity_type="task",
            entity_id=task_id,
            old=old,
            new=task["status"],
            data=task,
            now=now,
        )

    def _worker_event(
        self, conn: Connection, queue_id: str, worker_id: str, old: str, now: datetime
    ) -> None:
        worker = self._worker(conn, queue_id, worker_id)
        eventlog.record(
            conn,
            queue_id=queue_id,
            entity_type="worker",
            entity_id=worker_id,
            old=old,
            new=worker["status"],
            data=worker,
            now=now,
        )

    def submit_task(self, queue_id: str, fields: dict[str, Any]) -> str:
        """Insert a pending task. ``fields``: the TaskSubmitRequest values."""
        return self.submit_tasks(queue_id, [fields])[0]

    def submit_tasks(self, queue_id: str, batch: list[dict[str, Any]]) -> list[str]:
        """Insert many pending tasks in one transaction (all or nothing); ids in order.
        ``submit_batch`` without its options."""
        return self.submit_batch(queue_id, batch)["task_ids"]

    def submit_batch(
        self,
        queue_id: str,
        batch: list[dict[str, Any]],
        *,
        unique: bool = False,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Insert pending tasks in one transaction (all or nothing).

        ``batch``: TaskSubmitRequest values per task; a task is *unique* when its own
        ``unique`` field or ``unique`` is true: it is not created when a task of the queue (in
        any state, or earlier in this batch) has equal args (``identity.args_hash``), and its
        place in the answer holds that task's id. Decided atomically: unique submits of one
        queue are serialised (SQLite: every write is; PostgreSQL: a transaction-scoped
        advisory lock per queue).

        ``idempotency_key`` (at most 100 characters): when a submit with this key was already
        stored for the queue (within ``SUBMIT_KEY_SECONDS``), nothing is inserted and its
        answer is returned again; the same key with a different batch raises ``Conflict``.
        Two requests with one key at the same moment: the second waits for the first.

        Returns ``{"task_ids": [...], "created": [bool, ...]}`` in batch order. Raises
        ``Invalid`` naming the index of a task whose dotted keys conflict.
        """
        rows = []
        flags = []
        ids = new_ids(len(batch))
        for index, fields in enumerate(batch):
            where = f"tasks[{index}]." if len(batch) > 1 else ""
            cmd = fields.get("cmd")
            cmd = "" if cmd is None else cmd
            args = _unflatten(fields.get("args"), where + "args")
            rows.append(
                {
                    "task_id": ids[index],
                    "queue_id": queue_id,
                    "status": "pending",
                    "task_name": fields.get("task_name"),
                    "created_at": None,
                    "start_time": None,
                    "last_heartbeat": None,
                    "last_modified": None,
                    "heartbeat_timeout": fields.get("heartbeat_timeout"),
                    "task_timeout": fields.get("task_timeout"),
                    "max_retries": fields.get("max_retries", 3),
                    "retries": 0,
                    "priority": fields.get("priority", 10),
                    "metadata": _unflatten(fields.get("metadata"), where + "metadata"),
                    "args": args,
                    "cmd": cmd,
                    "summary": {},
                    "worker_id": None,
                    "run_id": None,
                    "args_hash": args_hash(args, cmd),
                }
            )
            flags.append(bool(unique or fields.get("unique")))
        for index, row in enumerate(rows):
            self._check_task_size(
                f"tasks[{index}]: " if len(rows) > 1 else "",
                row["args"],
                row["metadata"],
                row["summary"],
            )
        fingerprint = (
            request_hash({"tasks": batch, "unique": unique}) if idempotency_key is not None else ""
        )
        with self.db.write() as conn:
            now = self.db.now(conn)
            if idempotency_key is not None:
                stored = self._claim_submit_key(conn, queue_id, idempotency_key, fingerprint, now)
                if stored is not None:
                    return stored
            answer_ids = [row["task_id"] for row in rows]
            created = [True] * len(rows)
            if any(flags):
                self._lock_unique(conn, queue_id)
                found = self._existing_hashes(
                    conn, queue_id, {r["args_hash"] for r, f in zip(rows, flags, strict=True) if f}
                )
                new_rows = []
                for i, (row, flag) in enumerate(zip(rows, flags, strict=True)):
                    h = row["args_hash"]
                    if flag and h in found:
                        answer_ids[i], created[i] = found[h], False
                        continue
                    found.setdefault(h, row["task_id"])
                    new_rows.append(row)
                rows = new_rows
            if rows:
                shapes: dict[str, int] = {}
                for i, row in enumerate(rows):
                    # one microsecond apart: the claim order and the default listing order
                    # (last_modified, created_at) keep the batch's order (a grid's order)
                    # instead of falling to the random task ids
                    row["created_at"] = row["last_modified"] = now + timedelta(microseconds=i)
                    key = shape_key(shape_of(row["args"]))
                    if key not in shapes:
                        shapes[key] = self._shape_id(conn, queue_id, row["args"])
                    row["shape_id"] = shapes[key]
                leaf_rows.insert_rows(
                    conn, queue_id, rows, lambda batch: _insert_tasks(conn, batch)
                )
                for row in rows:
                    data = {k: row.get(k) for k in TASK_KEYS}
                    eventlog.record(
                        conn,
                        queue_id=queue_id,
                        entity_type="task",
                        entity_id=row["task_id"],
                        old="created",
                        new="pending",
                        data=data,
                        now=row["created_at"],  # (the batch's microsecond steps, as the task)
                    )
            answer = {"task_ids": answer_ids, "created": created}
            if idempotency_key is not None:
                conn.execute(
                    update(submit_keys)
                    .where(
                        submit_keys.c.queue_id == queue_id,
                        submit_keys.c.idempotency_key == idempotency_key,
                    )
                    .values(answer=answer)
                )
        self.analyzer.inserted(len(rows))
        return answer

    @staticmethod
    def _claim_submit_key(
        conn: Connection, queue_id: str, key: str, fingerprint: str, now: datetime
    ) -> dict[str, Any] | None:
        """Record ``key`` for this submit, or return the answer stored under it. On
        PostgreSQL the insert waits while another transaction holds the same key."""
        dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        inserted = conn.execute(
            dialect_insert(submit_keys)
            .values(
                queue_id=queue_id,
                idempotency_key=key,
                request_hash=fingerprint,
                created_at=now,
                answer=None,
            )
            .on_conflict_do_nothing()
            .returning(submit_keys.c.queue_id)
        ).first()
        if inserted is not None:  # (rowcount is not reliable here on psycopg)
            return None
        row = conn.execute(
            select(submit_keys.c.request_hash, submit_keys.c.answer).where(
                submit_keys.c.queue_id == queue_id, submit_keys.c.idempotency_key == key
            )
        ).first()
        if row is None or row.answer is None:  # pragma: no cover - pruned in between
            raise Conflict(f"Idempotency-Key {key!r} is in use; retry")
        if row.request_hash != fingerprint:
            raise Conflict(
                f"Idempotency-Key {key!r} was already used for a different submit; "
                "use a new key for a new request"
            )
        return row.answer

    @staticmethod
    def _lock_unique(conn: Connection, queue_id: str) -> None:
        """Serialise unique submits of one queue until the transaction ends (PostgreSQL;
        SQLite write transactions are serialised already)."""
        if conn.dialect.name == "postgresql":
            conn.execute(_UNIQUE_LOCK, {"lock": _lock_number(queue_id)})

    @staticmethod
    def _existing_hashes(conn: Connection, queue_id: str, hashes: set[str]) -> dict[str, str]:
        """``{args_hash: task_id}`` of the queue's tasks whose hash is in ``hashes`` (the
        oldest task when several match)."""
        found: dict[str, str] = {}
        pending = sorted(hashes)
        for start in range(0, len(pending), 500):
            chunk = pending[start : start + 500]
            rows = conn.execute(
                select(tasks.c.args_hash, tasks.c.task_id)
                .where(tasks.c.queue_id == queue_id, tasks.c.args_hash.in_(chunk))
                .order_by(tasks.c.created_at.desc(), tasks.c.task_id.desc())
            )
            for row in rows:
                found[row.args_hash] = row.task_id
        return found

    def get_task(self, queue_id: str, task_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return self._task(conn, queue_id, task_id)

    @staticmethod
    def _task(conn: Connection, queue_id: str, task_id: str, lock: bool = False) -> dict:
        """The task (``task_row``); ``lock`` row-locks it on PostgreSQL for a
        read-modify-write. Raises ``NotFound``."""
        row = conn.execute(
            _TASK_LOCKED if lock else _TASK, {"task_id": task_id, "queue_id": queue_id}
        ).first()
        if row is None:
            raise NotFound(f"Task {task_id} not found", code=codes.TASK_NOT_FOUND)
        return task_row(row)

    def _count_rows(self, stmt, limit: int, conn: Connection | None = None) -> int:
        """Rows of the SELECT ``stmt``, counted up to ``limit``: on ``conn`` (the caller's
        read, so the probe costs no transaction of its own: on PostgreSQL that was most of
        its cost), else in one read of its own."""
        count = select(func.count()).select_from(stmt.limit(limit).subquery())
        if conn is not None:
            return conn.execute(count).scalar_one()
        with self.db.read() as own:
            return own.execute(count).scalar_one()

    def _filter(self, fields: FieldMap, extra_filter: dict | None):
        return _compiled_filter(extra_filter, fields, self.db.dialect)

    def _task_filter(
        self, queue_id: str, extra_filter: dict | None, conn: Connection | None = None
    ):
        """``(queue condition, filter)`` for the queue's tasks, the filter compiled with the
        queue's leaf index (``leaf_rows.py``); ``conn``: the read the statement will run in,
        used for the index's probe (else the probe reads on its own). When an index lookup is a condition of the whole
        filter, SQLite's planner is kept from walking the queue's index instead
        (``queue_id || ''``: no index applies to it): it knows no value frequencies and
        would otherwise read every task of the queue in the listing's order."""
        sqlite = self.db.dialect == "sqlite"
        index = leaf_index(
            queue_id,
            self.db.dialect,
            lambda stmt, limit: self._count_rows(stmt, limit, conn),
            self._common_values,
        )
        where = _compiled_filter(extra_filter, TASK_FIELDS, self.db.dialect, index=index)
        if sqlite and index.drives:
            return tasks.c.queue_id.concat("") == queue_id, where
        return tasks.c.queue_id == queue_id, where

    def search_tasks(
        self,
        queue_id,
        *,
        extra_filter,
        task_id,
        task_name,
        status,
        sort,
        offset,
        limit,
        cursor: str | None = None,
        fields: Sequence[str] | None = None,
    ):
        """One page of the queue's tasks matching all given conditions (``ListingQuery``
        says what each argument means).
        Default order: last_modified ascending (as 1.0.1), task_id as the tie-breaker (in
        the direction of the last sort key: ``paging.tie_direction``).

        ``fields``: a projection (``_projection``). ``None``: whole tasks (``task_row``).
        Otherwise each task is a dict of exactly those keys: task fields (``task_id``,
        ``args``, ``last_modified``, ...) as in a whole task, and dotted paths into a JSON
        field (``args.lr``, ``summary.accuracy``) read in SQL (only that value is decoded),
        ``None`` where the path is missing. A caller that pages by ``cursor`` must ask for
        the sort's fields and ``task_id``. Raises ``Invalid`` naming a bad field."""
        query = ListingQuery(
            queue_id=queue_id,
            extra_filter=extra_filter,
            task_id=task_id,
            task_name=task_name,
            status=status,
            sort=sort,
            offset=offset,
            limit=limit,
            cursor=cursor,
            fields=fields,
        )
        columns, decode = _projection(query.fields, self.db.dialect)
        with self.db.read() as conn:
            return self._search_tasks(conn, query, columns, decode)

    def _search_tasks(
        self,
        conn: Connection,
        query: ListingQuery,
        columns: list[Any] = _TASK_COLUMNS,
        decode: Callable[[Any], dict[str, Any]] = task_row,
    ) -> list[dict[str, Any]]:
        """``search_tasks`` inside the read ``conn`` (the filter's probe reads there too);
        ``columns``/``decode``: the projection's of ``query.fields`` (default: whole
        tasks)."""
        cond = list(self._task_filter(query.queue_id, query.extra_filter, conn))
        if query.task_id is not None:
            cond.append(tasks.c.task_id == query.task_id)
        if query.task_name is not None:
            cond.append(tasks.c.task_name == query.task_name)
        if query.status is not None:
            cond.append(tasks.c.status == query.status)
        sort, offset = query.sort, query.offset
        try:
            order = _order(sort, TASK_FIELDS, self.db.dialect, [tasks.c.last_modified.asc()])
        except FilterError as exc:
            raise Invalid(str(exc)) from exc
        if query.json_sort is not None:
            # one JSON path: read from the leaf index in value order (``leaf_sort``)
            rows = leaf_sort.search(conn, self.db.dialect, query, cond, columns)
            return [decode(r) for r in rows]
        if query.cursor is not None:
            keys = paging.keyset_sort(sort)
            if keys is None:
                raise Invalid("cursor: paging by cursor needs a sort on task columns")
            cond.append(paging.after_condition(keys, query.cursor))
            offset = 0
        tie = tasks.c.task_id.desc() if paging.tie_direction(sort) == -1 else tasks.c.task_id
        stmt = (
            select(*columns)
            .where(and_(*cond))
            .order_by(*order, tie)
            .offset(offset)
            .limit(query.limit)
        )
        return [decode(r) for r in conn.execute(stmt)]

    def task_events(self, queue_id: str, task_id: str, limit: int = 200) -> list[dict[str, Any]]:
        """The newest ``limit`` logged transitions of one task, oldest first: dicts with
        ``event_id``, ``created_at`` (UTC), ``old_state``, ``new_state`` and
        ``entity_data`` (the task after the change: worker, run, summary...). The log keeps
        only the newest events of each queue (``event_log_size``), so an old task may
        have none left."""
        stmt = (
            select(events_table)
            .where(
                events_table.c.queue_id == queue_id,
                events_table.c.entity_type == "task",
                events_table.c.entity_id == task_id,
            )
            .order_by(events_table.c.event_id.desc())
            .limit(limit)
        )
        with self.db.read() as conn:
            rows = [
                {
                    "event_id": r.event_id,
                    "created_at": r.created_at,
                    "old_state": r.old_state,
                    "new_state": r.new_state,
                    "entity_data": eventlog.document(r),
                }
                for r in conn.execute(stmt)
            ]
        return rows[::-1]

    def last_run_workers(self, queue_id: str, task_ids: Sequence[str]) -> dict[str, str | None]:
        """The worker of each given task's latest run (``task_runs``, latest ``started``):
        ``{task_id: worker_id}``, ``None`` for a run without a worker; tasks that never ran
        (or of another queue) are left out. One statement for the whole list (a page of
        the tasks table), read through ``ix_task_runs_task``; at most ``MAX_RUN_LOOKUP``
        ids (``Invalid`` beyond)."""
        ids = list(dict.fromkeys(task_ids))
        if len(ids) > MAX_RUN_LOOKUP:
            raise Invalid(f"task_ids: at most {MAX_RUN_LOOKUP} tasks, got {len(ids)}")
        if not ids:
            return {}
        r = task_runs.c
        stmt = (
            select(r.task_id, r.worker_id)
            .where(r.queue_id == queue_id, r.task_id.in_(ids))
            .order_by(r.task_id, r.started, r.run_id)
        )
        with self.db.read() as conn:
            return {row.task_id: row.worker_id for row in conn.execute(stmt)}  # latest wins

    def fetch_task(
        self,
        queue_id,
        *,
        worker_id,
        task_timeout,
        heartbeat_timeout,
        start_heartbeat,
        required_fields,
        extra_filter,
        cmd,
    ):
        """Claim the next matching pending task for a worker; see ``claim.claim_next``."""
        where = self._task_filter(queue_id, extra_filter)[1] if extra_filter else None
        with self.db.write() as conn:
            return self._claim(
                conn,
                self.db.now(conn),
                queue_id,
                where,
                worker_id=worker_id,
                task_timeout=task_timeout,
                heartbeat_timeout=heartbeat_timeout,
                start_heartbeat=start_heartbeat,
                required_fields=required_fields,
                cmd=cmd,
            )

    def report_and_claim(
        self,
        queue_id: str,
        task_id: str,
        *,
        status: str,
        worker_id: str | None,
        run_id: str | None,
        summary: dict | None,
        claim_next: Mapping[str, Any],
    ) -> tuple[bool, dict[str, Any] | None]:
        """``report_task`` with the report's arguments, then ``fetch_task(queue_id,
        **claim_next)``, in one transaction. Returns ``(True, task or None)``, or ``(False,
        None)`` when the claim was refused (its worker unknown, suspended or crashed: the
        report is stored all the same). Raises what ``report_task`` raises, and ``Invalid``
        for a bad ``claim_next["extra_filter"]``, with nothing stored."""
        options = dict(claim_next)
        extra_filter = options.pop("extra_filter", None)
        where = self._task_filter(queue_id, extra_filter)[1] if extra_filter else None
        with self.db.write() as conn:
            now = self.db.now(conn)
            self._report(conn, now, queue_id, task_id, status, worker_id, run_id, summary)
            try:
                return True, self._claim(conn, now, queue_id, where, **options)
            except (NotFound, Forbidden):  # raised before the claim wrote anything
                return False, None

    def _claim(
        self,
        conn: Connection,
        now: datetime,
        queue_id: str,
        where: Any,
        *,
        worker_id: str | None,
        task_timeout: float | None,
        heartbeat_timeout: float | None,
        start_heartbeat: bool,
        required_fields: list[str] | None,
        cmd: Any,
    ) -> dict[str, Any] | None:
        """The claim of ``fetch_task`` inside the transaction ``conn``; ``where``: the
        compiled extra filter. Raises ``NotFound``/``Forbidden`` for the worker before it
        writes anything."""
        if worker_id is not None:
            worker = conn.execute(
                _WORKER_STATUS, {"worker_id": worker_id, "queue_id": queue_id}
            ).first()
            if worker is None:
                raise NotFound(
                    f"Worker '{worker_id}' not found in queue '{queue_id}'",
                    code=codes.WORKER_NOT_FOUND,
                )
            if worker.status != "active":
                raise Forbidden(
                    f"Worker '{worker_id}' is {worker.status} in queue '{queue_id}'",
                    code=codes.WORKER_NOT_ACTIVE,
                )
            if worker.gone_at is not None:  # its id is in use again: live once more
                conn.execute(
                    update(workers).where(workers.c.worker_id == worker_id).values(gone_at=None)
                )
        row = claim.claim_next(
            conn,
            queue_id=queue_id,
            required_fields=required_fields,
            where=where,
            worker_id=worker_id,
            run_id=new_id(),
            now=now,
            task_timeout=task_timeout,
            heartbeat_timeout=heartbeat_timeout,
            start_heartbeat=start_heartbeat,
            cmd=cmd,
        )
        if row is None:
            return None
        task = task_row(row)
        self._start_run(conn, task, now)
        eventlog.record(
            conn,
            queue_id=queue_id,
            entity_type="task",
            entity_id=task["task_id"],
            old="pending",
            new="running",
            data=task,
            now=now,
        )
        return task

    # ------------------------------------------------------------------ runs and blame
    @staticmethod
    def _start_run(conn: Connection, task: dict[str, Any], now: datetime) -> None:
        """Open the history row of the task's current run (same transaction as the claim)."""
        conn.execute(
            _INSERT_RUN,
            {
                "run_id": task["run_id"],
                "task_id": task["task_id"],
                "queue_id": task["queue_id"],
                "worker_id": task["worker_id"],
                "started": now,
                "ended": None,
                "status": "running",
                "charged": False,
                "summary": {},
            },
        )

    @staticmethod
    def _end_run(
        conn: Connection,
        task: dict[str, Any],
        status: str,
        now: datetime,
        summary: dict[str, Any] | None = None,
        charged: bool = False,
    ) -> None:
        """Close the history row of the task's current run with its outcome. A run without a
        row (begun before the history existed) gets one now."""
        if task["run_id"] is None:
            return
        values = {"ended": now, "status": status, "charged": charged, "summary": summary or {}}
        done = conn.execute(
            _END_RUN_ROW,
            {
                "p_run_id": task["run_id"],
                "p_ended": now,
                "p_status": status,
                "p_charged": charged,
                "p_summary": values["summary"],
            },
        ).rowcount
        if not done:
            conn.execute(
                _INSERT_RUN,
                {
                    "run_id": task["run_id"],
                    "task_id": task["task_id"],
                    "queue_id": task["queue_id"],
                    "worker_id": task["worker_id"],
                    "started": task["start_time"] or now,
                    **values,
                },
            )

    def _blame_failure(
        self, conn: Connection, queue_id: str, task: dict[str, Any], now: datetime
    ) -> bool:
        """Decide whom the failed current run of ``task`` counts against; returns whether its
        worker was charged.

        * The task already failed on another worker that is not this worker's predecessor:
          the task is to blame. This worker is not charged, and the charges that those
          workers got for this task (while still in their streak) are taken back
          (``_take_back``). A predecessor is an earlier worker of the same machine -- the
          same ``metadata.host`` and ``metadata.gpus``, as ``labtasker loop`` records them --
          that has started no run since this worker was created: the loop before a restart
          on this node, not a loop running beside this one. Its failures say nothing new
          about the task.
        * The task already failed on this worker: charged at most once. In the current streak
          that charge stands; after a success of this worker since (the streak was reset),
          the machine has run other tasks since, so the task is to blame again and nothing is
          charged (a lone loop whose bad configurations are the last tasks left is not
          crashed by running them to ``failed``).
        * Otherwise the worker is charged (``_charge_worker``): ``retries`` + 1, crashed at
          ``max_retries`` consecutive charged failures. That includes a task that failed only
          on predecessors: a loop restarted on a broken node (a new worker) is crashed after
          its own streak, instead of running every task of the queue to ``failed`` as
          "failed on another worker" (and taking back the charges that had crashed the
          loops before it).
        """
        worker_id = task["worker_id"]
        if worker_id is None:
            return False
        earlier = conn.execute(
            select(
                task_runs.c.run_id,
                task_runs.c.worker_id,
                task_runs.c.charged,
                workers.c.metadata,
            )
            .select_from(task_runs.outerjoin(workers, workers.c.worker_id == task_runs.c.worker_id))
            .where(
                task_runs.c.queue_id == queue_id,
                task_runs.c.task_id == task["task_id"],
                task_runs.c.status.in_(_FAILED_RUNS),
                task_runs.c.run_id != (task["run_id"] or ""),
            )
        ).fetchall()
        if not earlier:
            return self._charge_worker(conn, queue_id, worker_id, now)
        elsewhere = [r for r in earlier if r.worker_id != worker_id]
        if elsewhere:
            me = conn.execute(
                select(workers.c.metadata, workers.c.created_at).where(
                    workers.c.worker_id == worker_id
                )
            ).first()
            machine = _machine(worker_id, me.metadata if me is not None else None)
            kept = []
            for r in elsewhere:
                if me is not None and _machine(r.worker_id, r.metadata) == machine:
                    later = conn.execute(
                        select(func.max(task_runs.c.started)).where(
                            task_runs.c.worker_id == r.worker_id
                        )
                    ).scalar()
                    if later is None or later < me.created_at:
                        continue  # a predecessor on this machine
                kept.append(r)
            elsewhere = kept
        if elsewhere:
            for r in elsewhere:
                if r.charged and r.worker_id is not None:
                    self._take_back(conn, queue_id, r.run_id, r.worker_id, now)
            return False
        if any(r.worker_id == worker_id for r in earlier):
            # failed on this worker before: charged once already, or it has run others since
            return False
        return self._charge_worker(conn, queue_id, worker_id, now)

    def _take_back(
        self, conn: Connection, queue_id: str, run_id: str, worker_id: str, now: datetime
    ) -> None:
        """Take back the charge of one failed run: its worker's ``retries`` - 1; a worker
        crashed by it is ``active`` again once below its ``max_retries``."""
        conn.execute(update(task_runs).where(task_runs.c.run_id == run_id).values(charged=False))
        try:
            row = self._worker(conn, queue_id, worker_id, lock=True)
        except NotFound:
            return
        retries = max(0, row["retries"] - 1)
        status = row["status"]
        if status == "crashed" and not fsm.worker_crashes(
            retries, row["max_retries"], confirmed=self._streak_confirmed(conn, queue_id, row)
        ):
            status = "active"
        conn.execute(
            update(workers)
            .where(workers.c.worker_id == worker_id)
            .values(status=status, retries=retries, last_modified=now)
        )
        if status != row["status"]:
            self._worker_event(conn, queue_id, worker_id, row["status"], now)

    @staticmethod
    def _streak_confirmed(conn: Connection, queue_id: str, worker: dict[str, Any]) -> bool:
        """Whether another worker of the queue has reported a success since ``worker``'s
        streak of failures began (its last success, or its creation if it has none): the
        sweep's tasks run elsewhere, so a failing streak points at this machine."""
        wid = worker["worker_id"]
        since = conn.execute(
            select(func.max(task_runs.c.ended)).where(
                task_runs.c.worker_id == wid, task_runs.c.status == "success"
            )
        ).scalar()
        if since is None:
            since = worker["created_at"]
        found = conn.execute(
            select(task_runs.c.run_id)
            .where(
                task_runs.c.queue_id == queue_id,
                task_runs.c.ended > since,
                task_runs.c.status == "success",
                task_runs.c.worker_id != wid,
            )
            .limit(1)
        ).first()
        return found is not None

    def _crash_confirmed_streaks(
        self, conn: Connection, queue_id: str, worker_id: str | None, now: datetime
    ) -> None:
        """A success of ``worker_id`` confirms the streak of every other active worker of the
        queue that already has ``max_retries`` charged failures (kept active only because
        nothing had succeeded elsewhere): those are crashed now, as if this success had come
        before their last failure."""
        rows = conn.execute(
            _AT_RETRY_LIMIT, {"p_queue_id": queue_id, "p_worker_id": worker_id or ""}
        ).fetchall()
        for row in rows:
            done = conn.execute(
                update(workers)
                .where(workers.c.worker_id == row.worker_id, workers.c.status == "active")
                .values(status="crashed", last_modified=now)
            ).rowcount
            if done:
                self._worker_event(conn, queue_id, row.worker_id, "active", now)

    @staticmethod
    def _reset_streak(
        conn: Connection, queue_id: str, worker_id: str | None, now: datetime
    ) -> None:
        """A success ends the worker's streak of failures: ``retries`` 0 (a crashed worker
        stays crashed until re-activated by hand)."""
        if worker_id is None:
            return
        if conn.execute(
            _RESET_STREAK, {"p_worker_id": worker_id, "p_queue_id": queue_id, "p_now": now}
        ).rowcount:
            conn.execute(_UNCHARGE, {"p_worker_id": worker_id})

    def _charge_worker(
        self, conn: Connection, queue_id: str, worker_id: str | None, now: datetime
    ) -> bool:
        """Count one failed run against ``worker_id`` (active or suspended; a crashed or
        deleted worker is not counted further). Returns whether it was counted."""
        if worker_id is None:
            return False
        # Row-locked read-modify-write: two failures charged to one worker at once (a report
        # and a timeout sweep on PostgreSQL) must both count.
        try:
            row = self._worker(conn, queue_id, worker_id, lock=True)
        except NotFound:
            return False
        confirmed = True
        if row["status"] == "active" and row["retries"] + 1 >= row["max_retries"]:
            confirmed = self._streak_confirmed(conn, queue_id, row)
        status, retries = fsm.worker_after_failure(
            row["status"], row["retries"], row["max_retries"], confirmed=confirmed
        )
        if (status, retries) == (row["status"], row["retries"]):
            return False
        conn.execute(
            update(workers)
            .where(workers.c.worker_id == worker_id)
            .values(status=status, retries=retries, last_modified=now)
        )
        if row["status"] == "active":  # active -> active|crashed is published, as 1.0.1 does
            self._worker_event(conn, queue_id, worker_id, row["status"], now)
        return True

    def report_task(self, queue_id, task_id, *, status, worker_id, run_id, summary):
        """Record a run's outcome: ``success`` | ``failed`` | ``cancelled``.

        Ownership: a ``run_id`` that is not the task's current run, or a ``worker_id`` that is
        not the task's worker, raises ``Conflict`` and changes nothing -- except a repeated
        report of a run that already ended with that same status (a retry whose first answer
        was lost), which succeeds without changing anything. ``failed`` applies the retry rule
        and the blame policy (``_blame_failure``); ``success`` ends the worker's streak of
        failures. The run's outcome is kept in its history row (``list_task_runs``).
        ``summary`` keys are merged into the task's summary (``{}`` resets).
        """
        with self.db.write() as conn:
            self._report(
                conn, self.db.now(conn), queue_id, task_id, status, worker_id, run_id, summary
            )

    def _report(
        self,
        conn: Connection,
        now: datetime,
        queue_id: str,
        task_id: str,
        status: str,
        worker_id: str | None,
        run_id: str | None,
        summary: dict | None,
    ) -> None:
        """The report of ``report_task`` inside the transaction ``conn``."""
        task = self._task(conn, queue_id, task_id, lock=True)
        if run_id is not None and (task["run_id"] != run_id or task["status"] != "running"):
            if self._already_reported(conn, queue_id, task_id, run_id, status):
                return  # a retry of a report that went through: same answer, no change
            raise Conflict(
                f"Task {task_id} is no longer owned by run {run_id}", code=codes.RUN_NOT_OWNER
            )
        if worker_id is not None and task["worker_id"] != worker_id:
            raise Conflict(
                f"Task {task_id} is assigned to worker {task['worker_id']}",
                code=codes.WORKER_NOT_OWNER,
            )
        values: dict[str, Any] = {"last_modified": now}
        if status == "success":
            if task["status"] != "running":
                raise Invalid(
                    f"Cannot transition task from {task['status']} to success.",
                    code=codes.INVALID_TRANSITION,
                )
            values.update(status="success")
            self._end_run(conn, task, "success", now, _run_summary(summary))
            self._reset_streak(conn, queue_id, task["worker_id"], now)
            self._crash_confirmed_streaks(conn, queue_id, task["worker_id"], now)
        elif status == "failed":
            try:
                new_status, retries = fsm.task_after_failure(
                    task["status"], task["retries"], task["max_retries"]
                )
            except fsm.InvalidTransition as exc:
                raise Invalid(
                    f"Cannot fail task in {task['status']} state", code=codes.INVALID_TRANSITION
                ) from exc
            values.update(status=new_status, retries=retries)
            if task["status"] == "running":
                charged = self._blame_failure(conn, queue_id, task, now)
                self._end_run(conn, task, "failed", now, _run_summary(summary), charged)
        elif status == "cancelled":
            values.update(status="cancelled")
            if task["status"] == "running":
                self._end_run(conn, task, "cancelled", now, {"message": "cancelled"})
        else:
            raise Invalid(f"Invalid report status: {status}")
        # A run ends here: the outcome keys of earlier runs go (each run keeps its own in
        # the history); the report's summary is merged onto the rest ({} resets, as 1.0.1).
        base = task["summary"]
        if task["status"] == "running":
            base = _without_outcome(base)
            if base != task["summary"]:
                values["summary"] = base
        if summary is not None:
            values["summary"] = _merge(base, summary) if summary else {}
            self._check_task_size("", task["args"], task["metadata"], values["summary"])
        values.update(_END_RUN)
        values["p_task_id"] = task_id
        row = conn.execute(_UPDATE_TASK, values).first()
        if not (task["status"] == "failed" and values["status"] == "failed"):
            self._task_event(conn, queue_id, task_id, task["status"], now, task=task_row(row))

    @staticmethod
    def _already_reported(
        conn: Connection, queue_id: str, task_id: str, run_id: str, status: str
    ) -> bool:
        """Whether run ``run_id`` of the task already ended with ``status`` by a report."""
        found = conn.execute(
            select(task_runs.c.status).where(
                task_runs.c.run_id == run_id,
                task_runs.c.task_id == task_id,
                task_runs.c.queue_id == queue_id,
            )
        ).scalar()
        return (
            found is not None and found == status and status in ("success", "failed", "cancelled")
        )

    def heartbeat(self, queue_id, task_id, *, worker_id, run_id):
        """Refresh ``last_heartbeat`` of a running task (database clock).

        Raises ``NotFound`` when the task is missing or not running, ``Conflict`` when
        ``run_id`` is not the current run, ``Forbidden`` when ``worker_id`` is not the task's
        worker.
        """
        with self.db.write() as conn:
            cond = self._run_condition(queue_id, task_id, worker_id, run_id)
            if (
                conn.execute(
                    update(tasks).where(*cond).values(last_heartbeat=self.db.now(conn))
                ).rowcount
                == 1
            ):
                return
            raise self._not_owned(conn, queue_id, task_id, run_id)

    @staticmethod
    def _run_condition(queue_id, task_id, worker_id, run_id) -> list:
        cond = [
            tasks.c.task_id == task_id,
            tasks.c.queue_id == queue_id,
            tasks.c.status == "running",
        ]
        if run_id is not None:
            cond.append(tasks.c.run_id == run_id)
        if worker_id is not None:
            cond.append(tasks.c.worker_id == worker_id)
        return cond

    @staticmethod
    def _not_owned(conn, queue_id, task_id, run_id) -> Exception:
        """The error for a heartbeat/progress that matched no running task of that run."""
        row = conn.execute(
            select(tasks.c.status, tasks.c.run_id, tasks.c.worker_id).where(
                tasks.c.task_id == task_id, tasks.c.queue_id == queue_id
            )
        ).first()
        if row is None or row.status != "running":
            return NotFound(
                f"Task '{task_id}' not found in queue '{queue_id}' or not in 'running' state",
                code=codes.TASK_NOT_RUNNING,
            )
        if run_id is not None and row.run_id != run_id:
            return Conflict(
                f"Task {task_id} is no longer owned by run {run_id}", code=codes.RUN_NOT_OWNER
            )
        return Forbidden(
            f"Task {task_id} is assigned to a different worker", code=codes.WORKER_NOT_OWNER
        )

    def report_progress(
        self,
        queue_id,
        task_id,
        *,
        progress: dict[str, Any],
        worker_id: str | None,
        run_id: str | None,
    ) -> dict[str, Any]:
        """Store ``progress`` (``{"step", "total", "metrics"}``, validated by the caller) as
        the latest snapshot of the running task, stamped ``updated_at`` (server clock, ISO
        UTC), and refresh its heartbeat. Returns the snapshot. Errors as ``heartbeat``.
        ``last_modified`` is left alone (listings keep their order)."""
        with self.db.write() as conn:
            now = self.db.now(conn)
            snapshot = {**progress, "updated_at": now.isoformat()}
            cond = self._run_condition(queue_id, task_id, worker_id, run_id)
            if (
                conn.execute(
                    update(tasks).where(*cond).values(progress=snapshot, last_heartbeat=now)
                ).rowcount
                == 1
            ):
                return snapshot
            raise self._not_owned(conn, queue_id, task_id, run_id)

    def update_tasks(self, queue_id, updates, reset_pending):
        """Apply a ``PUT /tasks`` batch, all or nothing (1.0.1 kept the items before a failing one;
        docs/compatibility.md, E6).

        ``updates``: dicts holding ``task_id``, ``replace_fields`` and only the fields the
        client set. Raises ``Invalid`` listing every failed element; nothing is written then.
        """
        if len(updates) > MAX_TASK_UPDATES:
            raise Invalid(f"Too many tasks to update. Maximum is {MAX_TASK_UPDATES}.")
        errors: list[tuple[str, str]] = []
        results: list[str] = []
        conflict = False
        with self.db.write() as conn:
            now = self.db.now(conn)
            for item in updates:
                task_id = item["task_id"]
                try:
                    self._update_one(conn, queue_id, item, reset_pending, now)
                    results.append(task_id)
                except Conflict as exc:
                    conflict = True
                    errors.append((task_id, str(exc)))
                except (NotFound, Invalid, fsm.InvalidTransition) as exc:
                    errors.append((task_id, str(exc)))
            if errors:
                # raising rolls the whole transaction back: nothing of the batch is written
                raise (Conflict if conflict else Invalid)(
                    f"Failed to update {len(errors)}/{len(updates)} tasks; nothing was "
                    f"changed. Detail: {errors}",
                    code=codes.RUN_NOT_OWNER if conflict else codes.INVALID_REQUEST,
                )
            return [self._task(conn, queue_id, t) for t in results]

    def _update_one(self, conn, queue_id, item, reset_pending, now) -> None:
        task = self._task(conn, queue_id, item["task_id"], lock=True)
        fence = item.get("run_id")
        if fence is not None and (task["run_id"] != fence or task["status"] != "running"):
            # the run that sent this update (e.g. the loop's "Ignore") no longer owns the task
            raise Conflict(
                f"Task {item['task_id']} is no longer owned by run {fence}",
                code=codes.RUN_NOT_OWNER,
            )
        replace = set(item.get("replace_fields") or [])
        unknown = replace - set(UPDATABLE_TASK_FIELDS)
        if unknown:
            raise Invalid(f"replace_fields: unknown field(s) {sorted(unknown)}")
        values: dict[str, Any] = {}
        for field in UPDATABLE_TASK_FIELDS:
            if field not in item:
                continue
            value = item[field]
            if field in DICT_TASK_FIELDS:
                if value is None:
                    continue
                value = _unflatten(value, field) if field in replace else _merge(task[field], value)
            values[field] = value
        if ("args" in values or "cmd" in values) and not (
            values.get("args", task["args"]) or values.get("cmd", task["cmd"])
        ):
            # what a submit refuses (``TaskSubmitRequest``): a task with nothing to run
            raise Invalid(
                "args: either args or cmd must be provided; this update leaves the task "
                "with neither"
            )
        if any(field in values for field in DICT_TASK_FIELDS):
            self._check_task_size(
                f"task {item['task_id']}: ",
                *(values.get(f, task[f]) for f in ("args", "metadata", "summary")),
            )
        old = task["status"]
        if reset_pending:
            values.update(status="pending", retries=0)
        new = values.get("status", old)
        if "status" in values:  # an explicit status (or the reset) is checked even if unchanged
            fsm.check_task_transition(old, new)
        started = None
        if new == "pending" or (new != "running" and old == "running"):
            values.update(_END_RUN)
            if old == "running":
                if new == "pending":
                    how = "handed back by its run" if fence is not None else "reset by an update"
                    self._end_run(conn, task, "requeued", now, {"message": how})
                else:
                    self._end_run(conn, task, new, now, {"message": f"set {new} by an update"})
        elif new == "running" and old != "running":
            # a manual start: a fresh run (so stale reports are fenced off) on the server
            # clock, so the task's own timeouts apply to it like to any claimed run
            values.update(_END_RUN)
            values.update(run_id=new_id(), start_time=now, last_heartbeat=now)
            started = {**task, **values}
        if "args" in values:
            values["shape_id"] = self._shape_id(conn, queue_id, values["args"])
        if "args" in values or "cmd" in values:
            values["args_hash"] = args_hash(
                values.get("args", task["args"]), values.get("cmd", task["cmd"])
            )
        values["last_modified"] = now
        conn.execute(update(tasks).where(tasks.c.task_id == item["task_id"]).values(**values))
        if started is not None:
            self._start_run(conn, started, now)
        if reset_pending or new != old:
            self._task_event(conn, queue_id, item["task_id"], old, now)

    def requeue_tasks(
        self,
        queue_id: str,
        *,
        task_ids: list[str] | None = None,
        status: str | None = None,
        extra_filter: dict | None = None,
        limit: int = MAX_REQUEUE,
    ) -> dict[str, Any]:
        """Put matching tasks back to ``pending`` with ``retries`` 0, in one transaction.

        Selection (all given conditions apply): ``task_ids`` (at most ``MAX_REQUEUE``),
        ``status`` (``running``, ``success``, ``failed`` or ``cancelled``; default: the
        ended ones, success/failed/cancelled), ``extra_filter``. A requeued running task's
        run is fenced off (its heartbeats and report are refused, so its loop stops it).
        The summary is kept until the next run starts. At most ``limit`` tasks (<=
        ``MAX_REQUEUE``), least recently modified first, per call; returns::

            {"requeued": int, "task_ids": [str, ...], "more": bool}

        ``more``: further tasks matched; call again (requeued tasks no longer match, so the
        calls end). Raises ``Invalid`` for ``status="pending"`` or too many ids.
        """
        if status == "pending":
            raise Invalid(
                "status: pending tasks are already queued; requeue takes running, "
                "success, failed or cancelled tasks"
            )
        if task_ids is not None and len(task_ids) > MAX_REQUEUE:
            raise Invalid(f"task_ids: at most {MAX_REQUEUE} per request, got {len(task_ids)}")
        limit = max(1, min(limit, MAX_REQUEUE))
        statuses = [status] if status else list(REQUEUE_STATUSES)
        scope, where = self._task_filter(queue_id, extra_filter)
        cond = [scope, tasks.c.status.in_(statuses), where]
        if task_ids is not None:
            cond.append(tasks.c.task_id.in_(task_ids))
        with self.db.write() as conn:
            now = self.db.now(conn)
            stmt = (
                select(tasks.c.task_id, tasks.c.status, tasks.c.run_id)
                .where(*cond)
                .order_by(tasks.c.last_modified, tasks.c.task_id)
                .limit(limit + 1)
            )
            if conn.dialect.name == "postgresql":
                stmt = stmt.with_for_update(of=tasks)
            found = conn.execute(stmt).fetchall()
            more = len(found) > limit
            old = {r.task_id: r.status for r in found[:limit]}
            runs = [r.run_id for r in found[:limit] if r.status == "running" and r.run_id]
            done: list[str] = []
            if old:
                done = self._move_tasks(
                    conn,
                    queue_id,
                    where=(tasks.c.task_id.in_(list(old)), tasks.c.status.in_(statuses)),
                    runs=runs,
                    old_state=old.__getitem__,
                    now=now,
                    status="pending",
                    run_status="requeued",
                    message="requeued",
                    retries=0,
                )
        return {"requeued": len(done), "task_ids": done, "more": more}

    def cancel_tasks(self, queue_id: str, task_ids: list[str]) -> list[dict[str, Any]]:
        """Cancel the queue's tasks ``task_ids`` that have not ended, in one transaction.

        A pending task will not be claimed any more; a running one has its run ended as
        ``cancelled`` (not charged to its worker) and fenced off: its heartbeats and its
        report are refused, so its loop stops the job. Tasks that already ended (success,
        failed, cancelled) are left as they are. The read and the change happen in the same
        write transaction, so a run that ends meanwhile cannot be overwritten.

        Returns ``[{"task_id": str, "before": str | None}, ...]`` in the order asked (a
        repeated id once): the status each task had, ``None`` when the queue has no such
        task. Raises ``Invalid`` for more than ``MAX_CANCEL`` distinct ids.
        """
        ids = list(dict.fromkeys(task_ids))
        if len(ids) > MAX_CANCEL:
            raise Invalid(f"task_ids: at most {MAX_CANCEL} per request, got {len(ids)}")
        with self.db.write() as conn:
            now = self.db.now(conn)
            stmt = select(tasks.c.task_id, tasks.c.status, tasks.c.run_id).where(
                tasks.c.queue_id == queue_id, tasks.c.task_id.in_(ids)
            )
            if conn.dialect.name == "postgresql":
                stmt = stmt.with_for_update(of=tasks)
            before = {r.task_id: r for r in conn.execute(stmt)} if ids else {}
            live = [t for t, r in before.items() if r.status in _CANCELLABLE]
            if live:
                self._move_tasks(
                    conn,
                    queue_id,
                    where=(
                        tasks.c.queue_id == queue_id,
                        tasks.c.task_id.in_(live),
                        tasks.c.status.in_(_CANCELLABLE),
                    ),
                    runs=[
                        before[t].run_id
                        for t in live
                        if before[t].status == "running" and before[t].run_id
                    ],
                    old_state=lambda task_id: before[task_id].status,
                    now=now,
                    status="cancelled",
                    run_status="cancelled",
                    message="cancelled",
                )
        return [{"task_id": t, "before": before[t].status if t in before else None} for t in ids]

    def count_tasks(
        self,
        queue_id: str,
        *,
        extra_filter: dict | None = None,
        status: str | None = None,
        by: str | None = None,
    ) -> dict[str, Any]:
        """Count matching tasks grouped by ``by`` in one query (groups sum to the total).

        ``by``: ``"status"`` (default), a task column or a dotted ``args.*``/``metadata.*``/
        ``summary.*`` path. Returns ``{"total": int, "by": str, "groups": [{"value": v,
        "count": int}, ...], "truncated": bool}``; see ``counting.count_tasks`` for the
        order of groups and the cap. Raises ``Invalid`` for a bad filter or field.
        """
        with self.db.read() as conn:
            scope, where = self._task_filter(queue_id, extra_filter, conn)
            if status is not None:
                where = and_(where, tasks.c.status == status)
            return counting.count_tasks(conn, TASK_FIELDS, queue_id, where, by, scope=scope)

    def queue_overview(self, queue_id: str, *, window_seconds: float = 600.0) -> dict[str, Any]:
        """The queue at a glance (one read transaction): counts per status, runs finished in
        the last ``window_seconds``, throughput and ETA, workers (live per status, gone) and
        the running tasks with their progress. Shape: ``counting.queue_overview``."""
        with self.db.read() as conn:
            self._queue(conn, queue_id)
            return counting.queue_overview(conn, queue_id, self.db.now(conn), window_seconds)

    def delete_task(self, queue_id: str, task_id: str) -> None:
        with self.db.write() as conn:
            if (
                conn.execute(
                    delete(tasks).where(tasks.c.task_id == task_id, tasks.c.queue_id == queue_id)
                ).rowcount
                == 0
            ):
                raise NotFound("Task not found", code=codes.TASK_NOT_FOUND)
            conn.execute(
                delete(task_runs).where(
                    task_runs.c.task_id == task_id, task_runs.c.queue_id == queue_id
                )
            )

    def list_task_runs(self, queue_id: str, task_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The history of a task's runs, newest first (at most ``limit``, 1..1000).

        Each run is ``{"run_id": str, "task_id": str, "worker_id": str | None,
        "started": datetime (UTC), "ended": datetime (UTC) | None (still running),
        "status": "running" | "success" | "failed" | "timed_out" | "cancelled" | "requeued",
        "charged": bool (this failure counts in its worker's current streak), "summary":
        dict}``; ``summary`` holds a few words on the end: ``exit_code`` (int) and/or
        ``message`` (str, at most 300 characters) of a failed run, ``timeout``
        (``"heartbeat"`` | ``"task"``) and ``message`` of a timed-out one. Raises
        ``NotFound`` when the queue has no such task, ``Invalid`` for a bad ``limit``.
        """
        if not 1 <= limit <= 1000:
            raise Invalid(f"limit must be in 1..1000, got {limit}")
        with self.db.read() as conn:
            self._task(conn, queue_id, task_id)
            rows = conn.execute(
                select(*[task_runs.c[k] for k in _RUN_KEYS])
                .where(task_runs.c.queue_id == queue_id, task_runs.c.task_id == task_id)
                .order_by(task_runs.c.started.desc(), task_runs.c.run_id)
                .limit(limit)
            )
            return [dict(r._mapping) for r in rows]

    # ------------------------------------------------------------------ workers
    def create_worker(self, queue_id, name, metadata, max_retries) -> str:
        worker_id = new_id()
        with self.db.write() as conn:
            now = self.db.now(conn)
            conn.execute(
                insert(workers).values(
                    worker_id=worker_id,
                    queue_id=queue_id,
                    status="active",
                    worker_name=name,
                    metadata=_unflatten(metadata, "metadata"),
                    retries=0,
                    max_retries=max_retries,
                    created_at=now,
                    last_modified=now,
                )
            )
            self._worker_event(conn, queue_id, worker_id, "created", now)
        return worker_id

    def search_workers(
        self,
        queue_id,
        *,
        extra_filter,
        worker_id,
        worker_name,
        status,
        sort,
        offset,
        limit,
        gone: bool | None = None,
    ):
        """One page of workers; ``gone``: True only workers whose loop ended, False only
        live ones, None both."""
        cond = [workers.c.queue_id == queue_id, self._filter(WORKER_FIELDS, extra_filter)]
        if gone is not None:
            cond.append(workers.c.gone_at.is_not(None) if gone else workers.c.gone_at.is_(None))
        if worker_id is not None:
            cond.append(workers.c.worker_id == worker_id)
        if worker_name is not None:
            cond.append(workers.c.worker_name == worker_name)
        if status is not None:
            cond.append(workers.c.status == status)
        try:
            order = _order(sort, WORKER_FIELDS, self.db.dialect, [workers.c.last_modified.asc()])
        except FilterError as exc:
            raise Invalid(str(exc)) from exc
        stmt = (
            select(*_WORKER_COLUMNS)
            .where(and_(*cond))
            .order_by(*order, workers.c.worker_id)
            .offset(offset)
            .limit(limit)
        )
        with self.db.read() as conn:
            return self._with_running(conn, queue_id, [worker_row(r) for r in conn.execute(stmt)])

    @staticmethod
    def _with_running(conn, queue_id: str, items: list[dict]) -> list[dict]:
        """Add ``running_task_ids`` (tasks of each worker now running) to worker dicts. It is
        derived from ``tasks`` (index on ``worker_id``), never stored on the worker."""
        if not items:
            return items
        ids = [w["worker_id"] for w in items]
        running: dict[str, list[str]] = {wid: [] for wid in ids}
        rows = conn.execute(
            select(tasks.c.worker_id, tasks.c.task_id)
            .where(
                tasks.c.queue_id == queue_id,
                tasks.c.status == "running",
                tasks.c.worker_id.in_(ids),
            )
            .order_by(tasks.c.start_time, tasks.c.task_id)
        )
        for row in rows:
            running[row.worker_id].append(row.task_id)
        for w in items:
            w["running_task_ids"] = running[w["worker_id"]]
        return items

    def get_worker(self, queue_id: str, worker_id: str) -> dict[str, Any]:
        with self.db.read() as conn:
            return self._with_running(conn, queue_id, [self._worker(conn, queue_id, worker_id)])[0]

    @staticmethod
    def _worker(conn, queue_id, worker_id, lock: bool = False) -> dict[str, Any]:
        """The worker's row; ``lock`` takes a row lock on PostgreSQL for a read-modify-write
        (SQLite transactions here are already serialised by ``BEGIN IMMEDIATE``)."""
        stmt = select(*_WORKER_COLUMNS).where(
            workers.c.worker_id == worker_id, workers.c.queue_id == queue_id
        )
        if lock and conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).first()
        if row is None:
            raise NotFound("Worker not found", code=codes.WORKER_NOT_FOUND)
        return worker_row(row)

    def report_worker(self, queue_id: str, worker_id: str, status: str) -> None:
        """Manual worker status: ``active`` (from crashed also resets retries) or
        ``suspended`` (from active only). ``crashed`` is set by failures, never by hand."""
        if status not in fsm.WORKER_REPORT_STATES:
            raise Invalid(f"Invalid worker status {status!r}: use 'active' or 'suspended'")
        with self.db.write() as conn:
            worker = self._worker(conn, queue_id, worker_id, lock=True)
            fsm.check_worker_transition(worker["status"], status)
            now = self.db.now(conn)
            values: dict[str, Any] = {"status": status, "last_modified": now}
            if status == "active" and worker["status"] == "crashed":
                values["retries"] = 0
                conn.execute(_UNCHARGE, {"p_worker_id": worker_id})  # a fresh streak
            conn.execute(update(workers).where(workers.c.worker_id == worker_id).values(**values))
            self._worker_event(conn, queue_id, worker_id, worker["status"], now)

    def mark_worker_gone(self, queue_id: str, worker_id: str) -> dict[str, Any]:
        """Record that the loop using this worker ended: ``gone_at`` = now (server clock),
        kept if already set. Status and failure count are unchanged. A later fetch with
        this worker id makes it live again. Returns the worker; ``NotFound``."""
        with self.db.write() as conn:
            now = self.db.now(conn)
            conn.execute(
                update(workers)
                .where(
                    workers.c.worker_id == worker_id,
                    workers.c.queue_id == queue_id,
                    workers.c.gone_at.is_(None),
                )
                .values(gone_at=now)
            )
            return self._with_running(conn, queue_id, [self._worker(conn, queue_id, worker_id)])[0]

    def prune_workers(
        self, queue_id: str, *, gone_before: datetime | None = None
    ) -> dict[str, Any]:
        """Delete workers that have gone (``gone_at`` set, before ``gone_before`` if given)
        and run no task. At most ``MAX_PRUNE`` per call, oldest first; returns
        ``{"deleted": int, "worker_ids": [...], "more": bool}``."""
        cond = [
            workers.c.queue_id == queue_id,
            workers.c.gone_at.is_not(None),
            ~select(tasks.c.task_id)
            .where(tasks.c.worker_id == workers.c.worker_id, tasks.c.status == "running")
            .exists(),
        ]
        if gone_before is not None:
            cond.append(workers.c.gone_at < gone_before)
        with self.db.write() as conn:
            ids = list(
                conn.execute(
                    select(workers.c.worker_id)
                    .where(*cond)
                    .order_by(workers.c.gone_at, workers.c.worker_id)
                    .limit(MAX_PRUNE + 1)
                ).scalars()
            )
            more = len(ids) > MAX_PRUNE
            ids = ids[:MAX_PRUNE]
            if ids:
                conn.execute(delete(workers).where(workers.c.worker_id.in_(ids)))
        return {"deleted": len(ids), "worker_ids": ids, "more": more}

    def delete_worker(self, queue_id: str, worker_id: str, cascade_update: bool) -> None:
        """Delete a worker; with ``cascade_update`` its non-running tasks forget it. Running
        tasks keep their ``worker_id`` so that the run can still report or time out."""
        with self.db.write() as conn:
            now = self.db.now(conn)
            deleted = conn.execute(
                delete(workers).where(
                    workers.c.worker_id == worker_id, workers.c.queue_id == queue_id
                )
            ).rowcount
            if deleted == 0:
                raise NotFound("Worker not found", code=codes.WORKER_NOT_FOUND)
            if cascade_update:
                conn.execute(
                    update(tasks)
                    .where(
                        tasks.c.queue_id == queue_id,
                        tasks.c.worker_id == worker_id,
                        tasks.c.status != "running",
                    )
                    .values(worker_id=None, last_modified=now)
                )

    # ------------------------------------------------------------------ maintenance
    def sweep_timeouts(
        self, now: datetime | None = None, uptime: Callable[[], float] | None = None
    ) -> int:
        """Fail every running task whose heartbeat or execution time expired (database clock,
        or ``now`` when given).

        ``uptime()``: seconds for which this server has been running, sweeping and answering
        without a gap, asked inside the transaction once the database answered (``None``: no
        grace). A heartbeat expires only once that uptime also exceeds
        the heartbeat timeout: after a start-up or a stall, every lease gets one full
        heartbeat timeout of server uptime to beat again, since its heartbeats could not be
        received meanwhile. The task timeout (wall time since the start) has no such grace.

        Cost grows with the number of *running* tasks only (``ix_tasks_running``). Idempotent:
        a task already swept is no longer running. Returns the number of tasks failed.
        """
        count = 0
        with self.db.write() as conn:
            now = now or self.db.now(conn)
            up = uptime() if uptime is not None else None
            stmt = SWEEP_CANDIDATES
            if conn.dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            for row in conn.execute(stmt).fetchall():
                task = task_row(row)
                reason = _expired(task, now, up)
                if reason is None:
                    continue
                kind, message = reason
                status, retries = fsm.task_after_failure(
                    "running", task["retries"], task["max_retries"]
                )
                # Guarded by the run id: a run that another sweeper (or a report) already
                # ended is left alone, so the sweep is idempotent across servers.
                done = conn.execute(
                    update(tasks)
                    .where(
                        tasks.c.task_id == task["task_id"],
                        tasks.c.status == "running",
                        tasks.c.run_id == task["run_id"],
                    )
                    .values(
                        status=status,
                        retries=retries,
                        last_modified=now,
                        **_END_RUN,
                        summary=_merge(
                            _without_outcome(task["summary"]),
                            {"labtasker_error": message, "labtasker_timeout": kind},
                        ),
                    )
                ).rowcount
                if done:
                    charged = self._blame_failure(conn, task["queue_id"], task, now)
                    self._end_run(
                        conn, task, "timed_out", now, {"timeout": kind, "message": message}, charged
                    )
                    self._task_event(conn, task["queue_id"], task["task_id"], "running", now)
                    if kind == "heartbeat":
                        self._gone_if_idle(conn, task["worker_id"], now)
                    count += 1
            conn.execute(
                delete(submit_keys).where(
                    submit_keys.c.created_at < now - timedelta(seconds=SUBMIT_KEY_SECONDS)
                )
            )
        self.prune_events()
        return count

    @staticmethod
    def _gone_if_idle(conn: Connection, worker_id: str | None, now: datetime) -> None:
        """A run timed out on heartbeats: its loop has died (``kill -9``, a lost node) or lost
        the server. Its worker, if it holds no other running task, is marked gone
        (``gone_at`` = now) so that it no longer shows as live; a later fetch by a loop that
        was only cut off makes it live again."""
        if worker_id is None:
            return
        busy = conn.execute(
            select(tasks.c.task_id)
            .where(tasks.c.worker_id == worker_id, tasks.c.status == "running")
            .limit(1)
        ).first()
        if busy is None:
            conn.execute(
                update(workers)
                .where(workers.c.worker_id == worker_id, workers.c.gone_at.is_(None))
                .values(gone_at=now)
            )

    def prune_events(self) -> int:
        """Keep the newest ``event_log_size`` events of each queue (``eventlog.prune``); the
        cutoffs are found in a read transaction, so writers wait only for the deletes.
        Returns how many events were deleted."""
        with self.db.read() as conn:
            cutoffs = eventlog.prune_cutoffs(conn, self.event_log_size)
        if not cutoffs:
            return 0
        with self.db.write() as conn:
            return eventlog.prune_through(conn, cutoffs)

    def ping(self) -> None:
        self.db.ping()

    def check_writable(self) -> None:
        """Commit a small write; raises ``Unavailable`` naming the cause when the database
        cannot write (disk full, read-only, unreachable)."""
        self.db.probe_write()


def _run_summary(summary: dict[str, Any] | None) -> dict[str, Any]:
    """The few words a run's history keeps of a reported summary: ``exit_code`` and the
    ``message`` of ``labtasker_exception`` / ``labtasker_error`` (300 characters at most)."""
    out: dict[str, Any] = {}
    if not summary:
        return out
    code = summary.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool):
        out["exit_code"] = code
    exc = summary.get("labtasker_exception")
    message = exc.get("message") if isinstance(exc, dict) else summary.get("labtasker_error")
    if isinstance(message, str) and message:
        out["message"] = message[:300]
    return out


def _expired(task: dict, now: datetime, uptime: float | None = None) -> tuple[str, str] | None:
    """``("heartbeat" | "task", message)`` if the run's time is up (strictly greater than the
    timeout), else ``None``. ``task`` holds the timeouts in force; a heartbeat expires only
    when ``uptime`` (seconds, ``None`` = no grace) exceeds its timeout too."""
    hb, hb_timeout = task["last_heartbeat"], task["heartbeat_timeout"]
    if hb is not None and hb_timeout is not None and (uptime is None or uptime > hb_timeout):
        age = (now - hb).total_seconds()
        if age > hb_timeout:
            return "heartbeat", HEARTBEAT_TIMEOUT_MESSAGE.format(age=age, limit=hb_timeout)
    start, limit = task["start_time"], task["task_timeout"]
    if start is not None and limit is not None:
        age = (now - start).total_seconds()
        if age > limit:
            return "task", TASK_TIMEOUT_MESSAGE.format(age=age, limit=limit)
    return None


def _leaf_paths(doc: dict, prefix: str = "") -> list[str]:
    """Dotted paths of the non-dict leaves of ``doc`` (an empty dict counts as a leaf)."""
    out: list[str] = []
    for key, value in doc.items():
        path = prefix + str(key)
        if isinstance(value, dict) and value:
            out.extend(_leaf_paths(value, path + "."))
        else:
            out.append(path)
    return out
