"""Task listings sorted on one JSON path (``summary.loss``, ``args.lr``), read from the leaf
index (``leaf_rows.py``) in value order instead of sorting every task's JSON.

Today's order of such a sort (``sort_expression``) puts the values in MongoDB's type order --
missing or null, numbers, strings, objects, arrays, booleans -- numbers numerically, strings
by code point, ties broken by ``task_id`` in the sort's direction. The index holds one row per
present value at a path (``kind``, ``num``, ``txt``, ``task_id``), its primary key in that
very order within a kind. So a page is read group by group, in the sort's direction:

* numbers, strings, booleans: a walk of ``task_leaves``' primary key for the path and kind,
  each row joined to its task (the listing's conditions checked there), stopping at the page's
  size;
* objects and arrays (rare as sort values): the tasks the index names, ordered by today's sort
  key computed from their JSON;
* missing or null: the queue's tasks in ``task_id`` order whose JSON has nothing (or null) at
  the path; skipped without reading when the index shows that every task of the queue has a
  value there.

A path holds a value exactly when the index has a row there (the path is reached through
objects only, as in the sort key), so the groups split the tasks as the sort key does, and the
pages equal today's. Groups are read one statement each inside the caller's read transaction
(one snapshot).

Cursors (``encode``/``decode``): ``[[kind, value], task_id]`` of the page's last task, the value
being the JSON value at the path (``None`` for missing or null).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Text, and_, cast, func, literal, or_, select, tuple_
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection

from labtasker.filters.mongo_sql import backend_for, sort_expression
from labtasker.filters.mongo_sql.common import MAX_PATH_SEGMENTS, SEGMENT
from labtasker.filters.mongo_sql.leaf_filter import KIND, leaf_path
from labtasker.server.errors import Invalid
from labtasker.server.schema import leaf_paths, task_leaves, tasks

if TYPE_CHECKING:
    from labtasker.server.listing import ListingQuery

INDEXED = ("args", "metadata", "summary")
ASCENDING = (0, 1, 2, 3, 4, 5)  # missing/null, number, string, object, array, boolean


@dataclass(frozen=True)
class JsonSort:
    """A sort on one JSON path: ``field`` (``summary.loss``), its column and keys, ±1."""

    field: str
    column: str
    segments: list[str]
    direction: int


# Longest cursor that carries its sort value (the routes take cursors of up to 2,000
# characters); a longer value, or text longer than ``MAX_CURSOR_TEXT``, is carried by
# reference instead: the cursor names the task only (``encode``).
MAX_CURSOR = 1_900
MAX_CURSOR_TEXT = 1_000


@dataclass(frozen=True)
class After:
    """A decoded cursor: the last task's group (``kind``), value and id. ``by_reference``:
    the cursor did not carry the value; it is that task's value at the sort's path when the
    next page is read (``search``)."""

    kind: int
    value: Any
    task_id: str
    by_reference: bool = False


def json_sort(sort: Sequence[Sequence[Any]] | None) -> JsonSort | None:
    """The sort as a ``JsonSort`` if it is exactly one key on a path below an indexed JSON
    column, else ``None`` (the sort is then compiled as before)."""
    if not sort or len(sort) != 1:
        return None
    field, direction = sort[0]
    if not isinstance(field, str) or direction not in (1, -1) or isinstance(direction, bool):
        return None
    segments = field.split(".")
    if (
        len(segments) < 2
        or len(segments) > MAX_PATH_SEGMENTS
        or segments[0] not in INDEXED
        or not all(SEGMENT.match(s) for s in segments)
    ):
        return None
    return JsonSort(field, segments[0], segments[1:], direction)


def kind_of(value: Any) -> int:
    """The group of a decoded JSON value (``None``: missing or null)."""
    if value is None:
        return KIND["null"]
    if isinstance(value, bool):
        return KIND["bool"]
    if isinstance(value, (int, float)):
        return KIND["number"]
    if isinstance(value, str):
        return KIND["string"]
    return KIND["object"] if isinstance(value, dict) else KIND["array"]


def _b64(parts: list[Any]) -> str:
    raw = json.dumps(parts, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def encode(value: Any, task_id: str) -> str:
    """Cursor after the task ``task_id`` whose value at the sort's path is ``value``: at most
    ``MAX_CURSOR`` characters. It carries the value (``[[kind, value], task_id]``) unless
    that would be longer, or the value is text of more than ``MAX_CURSOR_TEXT`` characters;
    then it carries only the task (``[[kind], task_id]``), whose value is read again for the
    next page (a large object or list of args, a long string)."""
    kind = kind_of(value)
    long_text = isinstance(value, str) and len(value) > MAX_CURSOR_TEXT
    cursor = "" if long_text else _b64([[kind, value], task_id])
    if long_text or len(cursor) > MAX_CURSOR:
        cursor = _b64([[kind], task_id])
    return cursor


def decode(cursor: str) -> After:
    """The cursor of ``encode``; ``Invalid`` naming ``cursor`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        head, last_id = json.loads(raw)
        if not isinstance(head, list) or len(head) not in (1, 2):
            raise ValueError("no sort value")
        by_reference = len(head) == 1
        kind, value = (head[0], None) if by_reference else head
        if not isinstance(kind, int) or isinstance(kind, bool) or kind not in ASCENDING:
            raise ValueError("no such kind")
        if by_reference and kind == KIND["null"]:
            raise ValueError("a missing value is never carried by reference")
        if not by_reference and kind_of(value) != kind:
            raise ValueError("the value does not fit its kind")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("not a finite number")
        if isinstance(value, str) and ("\x00" in value or len(value) > MAX_CURSOR_TEXT):
            raise ValueError("bad text")
        if not isinstance(last_id, str) or len(last_id) > 1000 or "\x00" in last_id:
            raise ValueError("bad task id")
        json.dumps(value).encode()  # lone surrogates cannot be bound
    except (ValueError, TypeError, OverflowError, UnicodeError) as exc:
        raise Invalid(f"cursor: not a cursor of this listing ({exc})") from exc
    return After(kind, value, last_id, by_reference)


def _value_at(task_value: Any, segments: Sequence[str]) -> Any:
    for segment in segments:
        task_value = task_value.get(segment) if isinstance(task_value, dict) else None
    return task_value


def _resolve(conn: Connection, queue_id: str, sort: JsonSort, after: After) -> After:
    """A cursor by reference with its value: the task's current value at the sort's path
    (one primary-key read, scoped to the queue). ``Invalid`` naming ``cursor`` when the task
    is gone or its value is no longer of the cursor's kind (the listing changed under it)."""
    column = conn.execute(
        select(tasks.c[sort.column]).where(
            tasks.c.queue_id == queue_id, tasks.c.task_id == after.task_id
        )
    ).first()
    value = _value_at(column[0], sort.segments) if column is not None else None
    if column is None or kind_of(value) != after.kind:
        raise Invalid(
            "cursor: the task the previous page ended with was deleted or its "
            f"{sort.field} changed; start again from the first page"
        )
    return After(after.kind, value, after.task_id)


def search(
    conn: Connection, dialect: str, query: ListingQuery, cond: list[Any], columns: list[Any]
) -> list[Any]:
    """The rows (``columns``) of one page (``query.limit``) of the tasks meeting ``cond`` (the
    listing's conditions, compiled), in the order of ``query.sort`` (one JSON path:
    ``query.json_sort`` is not ``None``), strictly after ``query.cursor`` when given, else
    after skipping ``query.offset`` rows: a group of the type order that the offset skips
    whole is counted (its index rows, or the JSON of the tasks missing the key), the group
    where it ends is walked with ``OFFSET``. Raises ``Invalid`` for a cursor that is not one
    of this listing."""
    sort = query.json_sort
    if sort is None:
        raise ValueError("leaf_sort.search: the sort is not on one JSON path")
    after = decode(query.cursor) if query.cursor is not None else None
    queue_id, limit = query.queue_id, query.limit
    if limit <= 0:
        return []
    if after is not None and after.by_reference:
        after = _resolve(conn, queue_id, sort, after)
    path_id = conn.execute(
        select(leaf_paths.c.path_id).where(
            leaf_paths.c.queue_id == queue_id,
            leaf_paths.c.path == leaf_path(sort.column, sort.segments),
        )
    ).scalar()
    groups = list(ASCENDING if sort.direction == 1 else reversed(ASCENDING))
    if after is not None:
        groups = groups[groups.index(after.kind) :]
    rows: list[Any] = []
    skip = 0 if after is not None else max(query.offset, 0)
    for kind in groups:
        need = limit - len(rows)
        if need <= 0:
            break
        start = after if after is not None and after.kind == kind else None
        if kind == KIND["null"]:
            if path_id is not None and _all_present(conn, queue_id, path_id):
                continue
            stmt = _missing(dialect, cond, sort, start)
        elif path_id is None:
            continue
        elif kind in (KIND["object"], KIND["array"]):
            stmt = _composite(dialect, cond, sort, path_id, kind, start)
        else:
            stmt = _scalar(dialect, cond, sort, path_id, kind, start)
        if not skip:
            rows += conn.execute(stmt.with_only_columns(*columns).limit(need)).all()
            continue
        got = conn.execute(stmt.with_only_columns(*columns).offset(skip).limit(need)).all()
        if got:
            rows += got
            skip = 0
        else:  # the offset passes this whole group
            group = stmt.order_by(None).subquery()
            skip -= conn.execute(select(func.count()).select_from(group)).scalar_one()
            skip = max(skip, 0)
    return rows


def _all_present(conn: Connection, queue_id: str, path_id: int) -> bool:
    """Whether every task of the queue has a non-null value at the path (two index counts)."""
    present = conn.execute(
        select(func.count())
        .select_from(task_leaves)
        .where(task_leaves.c.path_id == path_id, task_leaves.c.kind > KIND["null"])
    ).scalar_one()
    total = conn.execute(
        select(func.count()).select_from(tasks).where(tasks.c.queue_id == queue_id)
    ).scalar_one()
    return present >= total


def _scalar(dialect, cond, sort: JsonSort, path_id: int, kind: int, start: After | None):
    """Numbers, strings or booleans: the index's primary key walked in the sort's order."""
    c = task_leaves.c
    where = [c.path_id == path_id, c.kind == kind, *cond]
    if start is not None:
        backend = backend_for(dialect)
        value = start.value
        num = backend.number_literal(int(value) if isinstance(value, bool) else value)
        if kind == KIND["string"]:
            num, txt = backend.number_literal(0), literal(value, Text)
        else:
            txt = literal("", Text)
        key, bound = tuple_(c.num, c.txt, c.task_id), tuple_(num, txt, literal(start.task_id))
        where.append(key > bound if sort.direction == 1 else key < bound)
    order = [c.num, c.txt, c.task_id]
    return (
        select(tasks.c.task_id)
        .select_from(task_leaves.join(tasks, tasks.c.task_id == c.task_id))
        .where(*where)
        .order_by(*(o.asc() if sort.direction == 1 else o.desc() for o in order))
    )


def _composite(dialect, cond, sort: JsonSort, path_id: int, kind: int, start: After | None):
    """Objects or arrays: the tasks the index names, ordered by today's sort key."""
    from labtasker.server.sql_storage import TASK_FIELDS  # noqa: PLC0415 (import cycle)

    c = task_leaves.c
    key = sort_expression(sort.field, TASK_FIELDS, dialect)
    where = [c.path_id == path_id, c.kind == kind, *cond]
    if start is not None:
        backend = backend_for(dialect)
        text = literal(json.dumps(start.value, separators=(",", ":")), Text)
        bound = backend.sort_key(cast(text, JSONB) if dialect == "postgresql" else text)
        if sort.direction == 1:
            beyond = or_(key > bound, and_(key == bound, tasks.c.task_id > start.task_id))
        else:
            beyond = or_(key < bound, and_(key == bound, tasks.c.task_id < start.task_id))
        where.append(beyond)
    order = [key, tasks.c.task_id]
    return (
        select(tasks.c.task_id)
        .select_from(task_leaves.join(tasks, tasks.c.task_id == c.task_id))
        .where(*where)
        .order_by(*(o.asc() if sort.direction == 1 else o.desc() for o in order))
    )


def _missing(dialect, cond, sort: JsonSort, start: After | None):
    """Missing or null: the tasks in ``task_id`` order with nothing (or null) at the path."""
    backend = backend_for(dialect)
    value = backend.path(backend.root(tasks.c[sort.column]), sort.segments)
    type_name = backend.type_of(value)
    where = [*cond, or_(type_name.is_(None), type_name == "null")]
    if start is not None:
        beyond = tasks.c.task_id > start.task_id
        where.append(beyond if sort.direction == 1 else tasks.c.task_id < start.task_id)
    order = tasks.c.task_id.asc() if sort.direction == 1 else tasks.c.task_id.desc()
    return select(tasks.c.task_id).where(*where).order_by(order)


def next_cursor(sort: JsonSort, last: dict[str, Any]) -> str:
    """Cursor after ``last``: a whole task, or a projection holding ``sort.field``."""
    if sort.field in last:
        value = last[sort.field]
    else:
        value = _value_at(last.get(sort.column), sort.segments)
    return encode(value, last["task_id"])
