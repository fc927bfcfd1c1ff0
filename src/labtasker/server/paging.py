"""Keyset paging for task search: opaque cursors that make every page cost the same.

A cursor encodes the sort-key values and ``task_id`` of the last task of a page; the next page
asks for tasks strictly after it in the (sort keys..., task_id) order, which an index walk
answers without skipping ``offset`` rows. Cursors exist only when every sort key is a non-null
column (the default order ``last_modified`` is one); sorts on JSON paths page by ``offset``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, or_

from labtasker.server.errors import Invalid
from labtasker.server.schema import tasks

# Task columns that are never NULL, so that tuple comparison is well defined.
KEYSET_COLUMNS = (
    "last_modified",
    "created_at",
    "priority",
    "retries",
    "max_retries",
    "status",
    "task_id",
)
_DATETIMES = {"last_modified", "created_at"}
DEFAULT_SORT: list[tuple[str, int]] = [("last_modified", 1)]


def keyset_sort(sort: Sequence[Sequence[Any]] | None) -> list[tuple[str, int]] | None:
    """The sort as (column, ±1) pairs if it supports cursors, else ``None``."""
    pairs = [(field, order) for field, order in sort] if sort else DEFAULT_SORT
    if all(field in KEYSET_COLUMNS for field, _ in pairs):
        return pairs
    return None


def encode_cursor(sort: list[tuple[str, int]], last: dict[str, Any]) -> str:
    """Cursor after the task ``last`` (a task dict) for ``sort``."""
    values = [last[f].isoformat() if f in _DATETIMES else last[f] for f, _ in sort]
    raw = json.dumps([values, last["task_id"]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def tie_direction(sort: Sequence[Sequence[Any]] | None) -> int:
    """Direction of the ``task_id`` tie-breaker: that of the last sort key, so that a
    descending listing walks its index backwards instead of sorting each group of equal
    keys (tasks changed in one statement -- a bulk update, requeue -- share one
    ``last_modified``; a submitted batch's tasks are a microsecond apart)."""
    sort = sort or DEFAULT_SORT
    return -1 if sort[-1][1] == -1 else 1


_INTEGERS = {"priority", "retries", "max_retries"}


def _plain_text(text: str) -> bool:
    return (
        len(text) <= 1000
        and "\x00" not in text
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    )


def _cursor_value(field: str, value: Any) -> Any:
    """A cursor's key value checked against its column's type (``ValueError`` otherwise)."""
    if field in _DATETIMES:
        if not isinstance(value, str):
            raise ValueError(f"{field} is not a datetime")
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError(f"{field} has no UTC offset")
        return moment.astimezone(timezone.utc)
    if field in _INTEGERS:
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**31:
            raise ValueError(f"{field} is not a 32-bit integer")
        return value
    if not isinstance(value, str) or not _plain_text(value):
        raise ValueError(f"{field} is not text")
    return value


def after_condition(sort: list[tuple[str, int]], cursor: str):
    """SQL condition "strictly after the cursor" in (sort keys..., task_id) order, the
    tie-breaker running in ``tie_direction(sort)``.

    Raises ``Invalid`` (naming ``cursor``) for a cursor that does not decode or does not fit
    the sort.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values, last_id = json.loads(raw)
        if not isinstance(values, list) or len(values) != len(sort):
            raise ValueError("wrong number of keys")
        values = [_cursor_value(f, v) for (f, _), v in zip(sort, values, strict=True)]
        if not isinstance(last_id, str) or not _plain_text(last_id):
            raise ValueError("bad task id")
    except (ValueError, TypeError, OverflowError) as exc:
        raise Invalid(f"cursor: not a cursor of this listing ({exc})") from exc
    keys = [(tasks.c[f], d, v) for (f, d), v in zip(sort, values, strict=True)]
    keys.append((tasks.c.task_id, tie_direction(sort), last_id))
    clauses = []
    for i, (col, direction, value) in enumerate(keys):
        equal_before = [c == v for c, _, v in keys[:i]]
        beyond = col > value if direction == 1 else col < value
        clauses.append(and_(*equal_before, beyond))
    return or_(*clauses)
