"""The rows of the leaf index: every value of a task's ``args``/``metadata``/``summary`` reachable by object
keys, one row each, kept by the database itself (triggers), so that equality, ``$in`` and
range filters and sorts on such a path read an index instead of every task's JSON.

Tables (``schema.py``): ``leaf_paths`` numbers the paths of each queue (``queue_id``, ``path``
-> ``path_id``); ``task_leaves`` holds ``(path_id, kind, num, txt, task_id)``, all five the
primary key (SQLite: a ``WITHOUT ROWID`` table, so the key is the only copy of the row).

What a row says, for the node at ``path`` in task ``task_id``:

* ``path`` is the column name followed by the node's keys in SQLite's JSON-path spelling
  (``args.lr``, ``summary."val-acc"``, ``args.model.depth``: a key is written bare when it is
  an ASCII letter followed by ASCII letters and digits, else in double quotes), see
  ``labtasker.filters.mongo_sql.leaf_filter.leaf_path``;
* ``kind``: 0 null, 1 number, 2 string, 3 object, 4 array, 5 boolean (MongoDB's sort order of
  the types); ``num``: the number, or 0/1 for false/true, else 0; ``txt``: the string, else
  ``''``. So ``(kind, num, txt)`` sorts in the order of the filter language's sort.
* Only nodes reached through objects are stored: an array is one row of kind 4 and nothing
  below it (a filter on a path through an array is answered from the JSON, see the compiler).
  On PostgreSQL keys outside ``[A-Za-z0-9_-]`` (which no filter path can name) are skipped
  with everything below them; on SQLite they are stored and never asked for.

Maintenance: ``AFTER INSERT``, ``AFTER UPDATE OF <column>`` and ``AFTER DELETE`` triggers on
``tasks`` (PostgreSQL: statement-level for insert and delete, reading the transition tables,
so a batch of 5,000 tasks is one statement per table; row-level for updates of the three
columns). Rows are removed by recomputing the old document's keys, not through an index on
``task_id`` (which would double the index's size). Every writer of ``tasks`` keeps the index
in step, raw SQL included; ``copy-db`` copies ``tasks`` and the triggers refill it.

**Submits** (``insert_rows``): the insert triggers cost about as much again as the rest of
an insert (SQLite: ``json_tree`` per document and a path lookup per node; PostgreSQL: the
recursive function per task), so the submit route computes the rows in Python -- the same
rows, by the same rules (``build_rows``: one builder for both backends) -- and writes them
with one statement (SQLite ``executemany``, PostgreSQL ``COPY``), while the insert
triggers stand aside: SQLite's one-row table ``leaf_writer`` says ``app_writes = 1`` (same
transaction; SQLite writers are serialised), PostgreSQL's transaction-local setting
``labtasker.app_writes`` is ``'1'`` (no lock: concurrent submits stay concurrent). Any other
writer leaves the flag alone and the triggers do the work. A batch holding a value whose SQL
form Python cannot promise to match (an integer beyond 64 bits, a non-finite float) goes
through the triggers. Documents that are not valid JSON to SQLite are not indexed (every
filter on them fails on the JSON path anyway).

**Migrations.** On SQLite, ``op.batch_alter_table("tasks")`` rebuilds the table and drops its
triggers: a migration that does so must call ``create_triggers`` again afterwards.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from labtasker.server.schema import leaf_paths

FIELDS = ("args", "metadata", "summary")

# ------------------------------------------------------------------ SQLite
# json_tree() walks every node; ``fullkey`` has no "[" outside arrays (keys holding "[" are
# quoted and unreachable by filters anyway).
_SQLITE_NODE = """'{field}' || substr(j.fullkey, 2) AS path,
    CASE j.type WHEN 'null' THEN 0 WHEN 'integer' THEN 1 WHEN 'real' THEN 1
        WHEN 'text' THEN 2 WHEN 'object' THEN 3 WHEN 'array' THEN 4 ELSE 5 END AS kind,
    CASE WHEN j.type IN ('integer', 'real') THEN j.atom WHEN j.type = 'true' THEN 1
        ELSE 0 END AS num,
    CASE WHEN j.type = 'text' THEN j.atom ELSE '' END AS txt"""
_SQLITE_WHERE = "j.fullkey <> '$' AND instr(j.fullkey, '[') = 0"


def _valid(column: str) -> str:
    """The document, or ``{}`` when SQLite cannot read it as JSON (``json_tree`` would fail
    the whole statement)."""
    return f"CASE WHEN json_valid({column}) THEN {column} ELSE '{{}}' END"


def _sqlite_nodes(row: str, fields=FIELDS) -> str:
    """The nodes of one row's documents (``row``: ``NEW`` or ``OLD`` in a trigger)."""
    return " UNION ALL ".join(
        f"SELECT {_SQLITE_NODE.format(field=f)} FROM json_tree({_valid(row + '.' + f)}) AS j "
        f"WHERE {_SQLITE_WHERE}"
        for f in fields
    )


def _sqlite_add(row: str, fields=FIELDS) -> list[str]:
    nodes = _sqlite_nodes(row, fields)
    return [
        f"INSERT OR IGNORE INTO leaf_paths (queue_id, path) "
        f"SELECT {row}.queue_id, n.path FROM ({nodes}) AS n",
        f"INSERT OR IGNORE INTO task_leaves (path_id, kind, num, txt, task_id) "
        f"SELECT p.path_id, n.kind, n.num, n.txt, {row}.task_id FROM ({nodes}) AS n "
        f"JOIN leaf_paths AS p ON p.queue_id = {row}.queue_id AND p.path = n.path",
    ]


def _sqlite_remove(row: str, fields=FIELDS) -> str:
    nodes = _sqlite_nodes(row, fields)
    return (
        f"DELETE FROM task_leaves WHERE (path_id, kind, num, txt, task_id) IN ("
        f"SELECT p.path_id, n.kind, n.num, n.txt, {row}.task_id FROM ({nodes}) AS n "
        f"JOIN leaf_paths AS p ON p.queue_id = {row}.queue_id AND p.path = n.path)"
    )


def _sqlite_backfill() -> list[str]:
    out = []
    for f in FIELDS:
        nodes = (
            f"SELECT t.queue_id, t.task_id, {_SQLITE_NODE.format(field=f)} "
            f"FROM tasks AS t, json_tree({_valid('t.' + f)}) AS j WHERE {_SQLITE_WHERE}"
        )
        out.append(
            "INSERT OR IGNORE INTO leaf_paths (queue_id, path) "
            f"SELECT n.queue_id, n.path FROM ({nodes}) AS n"
        )
        out.append(
            "INSERT OR IGNORE INTO task_leaves (path_id, kind, num, txt, task_id) "
            f"SELECT p.path_id, n.kind, n.num, n.txt, n.task_id FROM ({nodes}) AS n "
            "JOIN leaf_paths AS p ON p.queue_id = n.queue_id AND p.path = n.path"
        )
    return out


def _sqlite_triggers() -> list[str]:
    out = []
    for field in FIELDS:  # empty documents (most summaries and metadata) cost nothing
        out.append(
            f"CREATE TRIGGER tasks_leaves_insert_{field} AFTER INSERT ON tasks "
            f"WHEN NEW.{field} <> '{{}}' AND NOT EXISTS "
            f"(SELECT 1 FROM leaf_writer WHERE app_writes = 1) BEGIN "
            + "; ".join(_sqlite_add("NEW", (field,)))
            + "; END"
        )
        out.append(
            f"CREATE TRIGGER tasks_leaves_delete_{field} AFTER DELETE ON tasks "
            f"WHEN OLD.{field} <> '{{}}' BEGIN " + _sqlite_remove("OLD", (field,)) + "; END"
        )
        out.append(
            f"CREATE TRIGGER tasks_leaves_update_{field} AFTER UPDATE OF {field} ON tasks "
            f"WHEN OLD.{field} IS NOT NEW.{field} BEGIN "
            + _sqlite_remove("OLD", (field,))
            + "; "
            + "; ".join(_sqlite_add("NEW", (field,)))
            + "; END"
        )
    return out


_SQLITE_DROP = [
    f"DROP TRIGGER IF EXISTS tasks_leaves_{event}_{f}"
    for event in ("insert", "delete", "update")
    for f in FIELDS
]

# ------------------------------------------------------------------ PostgreSQL
# labtasker_leaves(doc, prefix): the nodes of a document reached through objects, with keys
# in [A-Za-z0-9_-], spelt as SQLite spells them (see the module docstring). PL/pgSQL keeps
# the plan of the recursive query for the session (a SQL function is planned again on
# every call: 0.7 ms, most of an update's cost). ``ROWS 8``: a
# task has a few nodes, so that the planner looks each one up by the primary key when
# removing a task's rows (the default estimate of 1,000 rows makes it scan the table once
# per updated task).
_PG_FUNCTIONS = [
    r"""CREATE FUNCTION labtasker_leaves(doc jsonb, prefix text)
RETURNS TABLE (path text, kind smallint, num numeric, txt text)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE ROWS 8 AS $$
BEGIN
RETURN QUERY WITH RECURSIVE node(node_path, node_value) AS (
    SELECT prefix || '.' || CASE WHEN e.key ~ '^[A-Za-z][A-Za-z0-9]*$' THEN e.key
                                 ELSE '"' || e.key || '"' END, e.value
    FROM jsonb_each(CASE WHEN jsonb_typeof(doc) = 'object' THEN doc
                         ELSE '{}'::jsonb END) AS e
    WHERE e.key ~ '^[A-Za-z0-9_-]+$'
  UNION ALL
    SELECT node.node_path || '.' || CASE WHEN e.key ~ '^[A-Za-z][A-Za-z0-9]*$' THEN e.key
                                         ELSE '"' || e.key || '"' END, e.value
    FROM node, jsonb_each(CASE WHEN jsonb_typeof(node.node_value) = 'object'
                               THEN node.node_value ELSE '{}'::jsonb END) AS e
    WHERE e.key ~ '^[A-Za-z0-9_-]+$'
)
SELECT node.node_path,
    (CASE jsonb_typeof(node.node_value) WHEN 'null' THEN 0 WHEN 'number' THEN 1
        WHEN 'string' THEN 2 WHEN 'object' THEN 3 WHEN 'array' THEN 4 ELSE 5 END)::smallint,
    CASE jsonb_typeof(node.node_value) WHEN 'number' THEN node.node_value::numeric
        WHEN 'boolean' THEN (CASE WHEN node.node_value = 'true'::jsonb THEN 1 ELSE 0 END)::numeric
        ELSE 0::numeric END,
    CASE WHEN jsonb_typeof(node.node_value) = 'string' THEN node.node_value #>> '{}'
        ELSE '' END
FROM node;
END $$""",
    """CREATE FUNCTION labtasker_task_leaves(doc_args jsonb, doc_metadata jsonb,
                                           doc_summary jsonb)
RETURNS TABLE (path text, kind smallint, num numeric, txt text)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE ROWS 8 AS $$
BEGIN
IF doc_args IS NOT NULL THEN RETURN QUERY SELECT * FROM labtasker_leaves(doc_args, 'args');
END IF;
IF doc_metadata IS NOT NULL THEN
    RETURN QUERY SELECT * FROM labtasker_leaves(doc_metadata, 'metadata');
END IF;
IF doc_summary IS NOT NULL THEN
    RETURN QUERY SELECT * FROM labtasker_leaves(doc_summary, 'summary');
END IF;
END $$""",
    """CREATE FUNCTION labtasker_leaves_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('labtasker.app_writes', true) = '1' THEN
        RETURN NULL;  -- the submit route writes the rows itself (``insert_rows``)
    END IF;
    INSERT INTO leaf_paths (queue_id, path)
        SELECT DISTINCT t.queue_id, l.path FROM new_tasks AS t,
            labtasker_task_leaves(t.args, t.metadata, t.summary) AS l
        ON CONFLICT DO NOTHING;
    INSERT INTO task_leaves (path_id, kind, num, txt, task_id)
        SELECT p.path_id, l.kind, l.num, l.txt, t.task_id FROM new_tasks AS t
        CROSS JOIN LATERAL labtasker_task_leaves(t.args, t.metadata, t.summary) AS l
        JOIN leaf_paths AS p ON p.queue_id = t.queue_id AND p.path = l.path
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$""",
    """CREATE FUNCTION labtasker_leaves_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM task_leaves AS x USING old_tasks AS t
        CROSS JOIN LATERAL labtasker_task_leaves(t.args, t.metadata, t.summary) AS l
        JOIN leaf_paths AS p ON p.queue_id = t.queue_id AND p.path = l.path
        WHERE x.path_id = p.path_id AND x.kind = l.kind AND x.num = l.num
          AND x.txt = l.txt AND x.task_id = t.task_id;
    RETURN NULL;
END $$""",
    # One row changed: remove the old nodes of the changed columns, add the new ones.
    """CREATE FUNCTION labtasker_leaves_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_args jsonb := NULL; old_metadata jsonb := NULL; old_summary jsonb := NULL;
    new_args jsonb := NULL; new_metadata jsonb := NULL; new_summary jsonb := NULL;
BEGIN
    IF OLD.args IS DISTINCT FROM NEW.args THEN
        old_args := OLD.args; new_args := NEW.args; END IF;
    IF OLD.metadata IS DISTINCT FROM NEW.metadata THEN
        old_metadata := OLD.metadata; new_metadata := NEW.metadata; END IF;
    IF OLD.summary IS DISTINCT FROM NEW.summary THEN
        old_summary := OLD.summary; new_summary := NEW.summary; END IF;
    DELETE FROM task_leaves AS x
        USING labtasker_task_leaves(old_args, old_metadata, old_summary) AS l
        JOIN leaf_paths AS p ON p.queue_id = OLD.queue_id AND p.path = l.path
        WHERE x.path_id = p.path_id AND x.kind = l.kind AND x.num = l.num
          AND x.txt = l.txt AND x.task_id = OLD.task_id;
    INSERT INTO leaf_paths (queue_id, path)
        SELECT DISTINCT NEW.queue_id, l.path
        FROM labtasker_task_leaves(new_args, new_metadata, new_summary) AS l
        ON CONFLICT DO NOTHING;
    INSERT INTO task_leaves (path_id, kind, num, txt, task_id)
        SELECT p.path_id, l.kind, l.num, l.txt, NEW.task_id
        FROM labtasker_task_leaves(new_args, new_metadata, new_summary) AS l
        JOIN leaf_paths AS p ON p.queue_id = NEW.queue_id AND p.path = l.path
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$""",
]
_PG_TRIGGERS = [
    "CREATE TRIGGER tasks_leaves_insert AFTER INSERT ON tasks REFERENCING NEW TABLE AS "
    "new_tasks FOR EACH STATEMENT EXECUTE FUNCTION labtasker_leaves_insert()",
    "CREATE TRIGGER tasks_leaves_delete AFTER DELETE ON tasks REFERENCING OLD TABLE AS "
    "old_tasks FOR EACH STATEMENT EXECUTE FUNCTION labtasker_leaves_delete()",
    "CREATE TRIGGER tasks_leaves_update AFTER UPDATE OF args, metadata, summary ON tasks "
    "FOR EACH ROW WHEN (OLD.args IS DISTINCT FROM NEW.args OR OLD.metadata IS DISTINCT FROM "
    "NEW.metadata OR OLD.summary IS DISTINCT FROM NEW.summary) "
    "EXECUTE FUNCTION labtasker_leaves_update()",
]
_PG_DROP = [
    "DROP TRIGGER IF EXISTS tasks_leaves_insert ON tasks",
    "DROP TRIGGER IF EXISTS tasks_leaves_delete ON tasks",
    "DROP TRIGGER IF EXISTS tasks_leaves_update ON tasks",
    "DROP FUNCTION IF EXISTS labtasker_leaves_insert()",
    "DROP FUNCTION IF EXISTS labtasker_leaves_delete()",
    "DROP FUNCTION IF EXISTS labtasker_leaves_update()",
    "DROP FUNCTION IF EXISTS labtasker_task_leaves(jsonb, jsonb, jsonb)",
    "DROP FUNCTION IF EXISTS labtasker_leaves(jsonb, text)",
]


def create_triggers(conn: Connection) -> None:
    """Create the functions and triggers that keep ``task_leaves`` in step with ``tasks``
    (drops older copies first)."""
    drop_triggers(conn)
    statements = (
        _sqlite_triggers() if conn.dialect.name == "sqlite" else _PG_FUNCTIONS + _PG_TRIGGERS
    )
    for statement in statements:
        conn.exec_driver_sql(statement)


def drop_triggers(conn: Connection) -> None:
    """Drop the triggers and functions of ``create_triggers`` (if present)."""
    for statement in _SQLITE_DROP if conn.dialect.name == "sqlite" else _PG_DROP:
        conn.exec_driver_sql(statement)


def backfill(conn: Connection) -> None:
    """Fill ``leaf_paths``/``task_leaves`` from the tasks already stored (one statement per
    table, inside the caller's transaction). Idempotent."""
    if conn.dialect.name == "sqlite":
        for statement in _sqlite_backfill():
            conn.exec_driver_sql(statement)
        return
    conn.exec_driver_sql(
        "INSERT INTO leaf_paths (queue_id, path) SELECT DISTINCT t.queue_id, l.path "
        "FROM tasks AS t, labtasker_task_leaves(t.args, t.metadata, t.summary) AS l "
        "ON CONFLICT DO NOTHING"
    )
    conn.exec_driver_sql(
        "INSERT INTO task_leaves (path_id, kind, num, txt, task_id) "
        "SELECT p.path_id, l.kind, l.num, l.txt, t.task_id FROM tasks AS t "
        "CROSS JOIN LATERAL labtasker_task_leaves(t.args, t.metadata, t.summary) AS l "
        "JOIN leaf_paths AS p ON p.queue_id = t.queue_id AND p.path = l.path "
        "ON CONFLICT DO NOTHING"
    )


# ------------------------------------------------------------------ rows made in Python
_BARE = re.compile(r"[A-Za-z][A-Za-z0-9]*")  # fullmatch: ``$`` would allow a final "\n"
_PG_KEY = re.compile(r"[A-Za-z0-9_-]+")  # the keys PostgreSQL's triggers index (fullmatch)
_INT64 = (-(2**63), 2**63 - 1)
_PG_ZERO, _PG_ONE = Decimal(0), Decimal(1)
# key -> (its spelling in a path, or None when SQLite's rule skips it; PostgreSQL indexes it)
_NAMES: dict[str, tuple[str | None, bool]] = {}
_NAMES_MAX = 4096  # distinct keys remembered (then forgotten all at once)


class _Unsure(Exception):
    """A value whose row Python cannot promise to spell as the triggers would."""


def _name(key: str) -> tuple[str | None, bool]:
    """``(name, pg)`` of an object key: ``name`` as SQLite's ``fullkey`` spells it (bare, or
    the JSON text of the key: SQLite prints the source, which ``compact_json`` wrote with
    ``\\u`` escapes), ``None`` when it holds ``[`` (as ``instr(fullkey, '[') = 0``);
    ``pg``: the key is in ``[A-Za-z0-9_-]``, so PostgreSQL's triggers index it."""
    hit = _NAMES.get(key)
    if hit is None:
        name = key if _BARE.fullmatch(key) else json.dumps(key)
        hit = (None if "[" in name else name, _PG_KEY.fullmatch(key) is not None)
        if len(_NAMES) >= _NAMES_MAX:
            _NAMES.clear()
        _NAMES[key] = hit
    return hit


def _walk(doc: dict, prefix: str, pg: bool, out: list[tuple[str, int, Any, str]]) -> None:
    """Append ``(path, kind, num, txt)`` of every node below the object ``doc`` (whose path
    is ``prefix``), as the triggers make them (see the module docstring)."""
    zero: Any = _PG_ZERO if pg else 0
    for key, value in doc.items():
        name, pg_key = _name(key if type(key) is str else str(key))
        if name is None or (pg and not pg_key):
            continue  # skipped with everything below it
        path = prefix + "." + name
        kind = type(value)
        if kind is str:
            out.append((path, 2, zero, value))
        elif kind is int:
            if not _INT64[0] <= value <= _INT64[1]:
                raise _Unsure(path)
            out.append((path, 1, Decimal(value) if pg else value, ""))
        elif kind is float:
            if not math.isfinite(value):
                raise _Unsure(path)
            # jsonb::numeric reads the JSON text, which is float.__repr__
            out.append((path, 1, Decimal(repr(value)) if pg else value, ""))
        elif kind is bool:
            out.append((path, 5, (_PG_ONE if value else zero) if pg else int(value), ""))
        elif value is None:
            out.append((path, 0, zero, ""))
        elif kind is dict:
            out.append((path, 3, zero, ""))
            _walk(value, path, pg, out)
        elif kind is list:
            out.append((path, 4, zero, ""))
        else:  # a subclass of a JSON type (not from JSON text): as that type, else unsure
            _walk({key: _plain(value, path)}, prefix, pg, out)


def _plain(value: Any, path: str) -> Any:
    """``value`` as the JSON type it is an instance of; raises ``_Unsure`` for others."""
    plain: Any
    for plain in (dict, list, bool, int, float, str):
        if isinstance(value, plain):
            return plain(value)
    raise _Unsure(path)


def task_nodes(task: dict[str, Any], dialect: str) -> list[tuple[str, int, Any, str]]:
    """``(path, kind, num, txt)`` of every node of a task's documents, as the triggers of
    ``dialect`` make them (PostgreSQL: keys outside ``[A-Za-z0-9_-]`` skipped with everything
    below them, numbers as ``Decimal`` of the JSON text). Raises ``_Unsure`` for a value
    only the triggers may index."""
    out: list[tuple[str, int, Any, str]] = []
    pg = dialect == "postgresql"
    for field in FIELDS:
        doc = task.get(field)
        if isinstance(doc, dict) and doc:
            _walk(doc, field, pg, out)
    return out


def build_rows(
    conn: Connection, queue_id: str, rows: list[dict[str, Any]]
) -> list[tuple[int, int, Any, str, str]] | None:
    """The ``task_leaves`` rows ``(path_id, kind, num, txt, task_id)`` of new tasks of
    ``queue_id`` (``rows``: their column values), in primary-key order (the index's B-tree
    is then filled page by page); new paths are added to ``leaf_paths`` on ``conn``.
    ``None`` when ``task_nodes`` is unsure of a task (the triggers must index the batch)."""
    dialect = conn.dialect.name
    try:
        nodes = [(row["task_id"], task_nodes(row, dialect)) for row in rows]
    except _Unsure:
        return None
    paths = sorted({n[0] for _, task in nodes for n in task})
    ids = _path_ids(conn, queue_id, paths)
    missing = [p for p in paths if p not in ids]
    if missing:
        upsert = pg_insert if dialect == "postgresql" else sqlite_insert
        conn.execute(
            upsert(leaf_paths).on_conflict_do_nothing(),
            [{"queue_id": queue_id, "path": p} for p in missing],
        )
        ids.update(_path_ids(conn, queue_id, missing))
    out = [
        (ids[path], kind, num, txt, task_id)
        for task_id, task in nodes
        for path, kind, num, txt in task
    ]
    out.sort()
    return out


def _path_ids(conn: Connection, queue_id: str, paths: list[str]) -> dict[str, int]:
    """``{path: path_id}`` of those of ``paths`` that ``leaf_paths`` holds for the queue."""
    found: dict[str, int] = {}
    for start in range(0, len(paths), 500):
        chunk = paths[start : start + 500]
        found.update(
            conn.execute(
                select(leaf_paths.c.path, leaf_paths.c.path_id).where(
                    leaf_paths.c.queue_id == queue_id, leaf_paths.c.path.in_(chunk)
                )
            ).all()
        )
    return found


def _pg_copy_leaves(conn: Connection, rows: list[tuple[int, int, Any, str, str]]) -> None:
    """Write new tasks' leaf rows with one ``COPY`` on the transaction's own connection: an
    ``INSERT`` of them through SQLAlchemy (``ON CONFLICT DO NOTHING``, parameters per row) was
    about 0.06 ms per row, some 15 % of a PostgreSQL bulk submit of one-argument tasks."""
    driver: Any = conn.connection.dbapi_connection  # psycopg 3, inside this transaction
    with driver.cursor() as cur:
        with cur.copy("COPY task_leaves (path_id, kind, num, txt, task_id) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def _sqlite_insert_leaves(conn: Connection, rows: list[tuple[int, int, Any, str, str]]) -> None:
    """Write new tasks' leaf rows with one ``executemany`` (``exec_driver_sql``: SQLAlchemy's
    events and error translation, no per-row handling)."""
    conn.exec_driver_sql(
        "INSERT INTO task_leaves (path_id, kind, num, txt, task_id) VALUES (?, ?, ?, ?, ?)", rows
    )


def _stand_aside(conn: Connection, on: bool) -> None:
    """Tell the insert triggers that the application writes the leaf rows (``on``) or no
    longer does (see the module docstring)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT set_config('labtasker.app_writes', '{int(on)}', true)")
    else:
        conn.exec_driver_sql(f"UPDATE leaf_writer SET app_writes = {int(on)}")


def insert_rows(conn: Connection, queue_id: str, rows: list[dict[str, Any]], insert) -> None:
    """Run ``insert(rows)`` (the INSERT of new tasks of ``queue_id``) and write their leaf
    rows from Python (``build_rows``), the insert triggers standing aside meanwhile (see the
    module docstring); a batch that ``task_nodes`` is unsure of is left to the triggers.
    The rows are plain inserts: the tasks are new and a task has one node per path, so no
    conflict is possible."""
    made = build_rows(conn, queue_id, rows)
    if made is None:
        insert(rows)
        return
    _stand_aside(conn, True)
    insert(rows)
    if made:
        (_pg_copy_leaves if conn.dialect.name == "postgresql" else _sqlite_insert_leaves)(
            conn, made
        )
    _stand_aside(conn, False)
