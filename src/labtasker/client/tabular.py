"""Tasks as flat rows: what ``task ls --fmt csv|json -c ...`` prints and what
``labtasker.tasks_dataframe`` returns.

A task becomes one flat dict whose keys are dotted paths: ``task_id``, ``status``,
``args.lr``, ``args.model.depth``, ``summary.accuracy`` ... (nested objects are flattened;
lists stay values), plus the computed ``duration`` (seconds from the run's start to its end,
or to now while it runs; empty before the first start). Datetimes are ISO-8601 UTC strings.

Columns (``-c/--columns``) pick keys: ``args`` takes every ``args.*`` key, ``args.lr`` that
one, and shell-style patterns such as ``summary.*`` or ``*loss*`` match flattened keys.
Without columns every key that occurs in any row is a column, in order of first appearance.
A requested column that no row has and that is no field (``unknown_columns``) gets a warning
from ``task ls``.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

COMPUTED = ("duration",)
ENDED = ("success", "failed", "cancelled")


def parse_columns(values: Iterable[str] | None) -> list[str] | None:
    """``-c a -c b,c`` -> ``["a", "b", "c"]`` (blanks dropped); ``None`` when none given."""
    if not values:
        return None
    out = [part.strip() for value in values for part in value.split(",")]
    out = [c for c in out if c]
    return out or None


def _flatten(value: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, sub in value.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(sub, Mapping):
            if sub:
                _flatten(sub, path, out)
        else:
            out[path] = sub


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat()
    return value


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return None


def duration(task: Mapping[str, Any], now: datetime | None = None) -> float | None:
    """Seconds of the task's latest run: start to end (``last_modified``) once it ended, start
    to ``now`` while it runs; ``None`` for a task that never started (or pending again)."""
    start = _as_datetime(task.get("start_time"))
    if start is None:
        return None
    status = task.get("status")
    end: datetime | None
    if status == "running":
        end = now or datetime.now(timezone.utc)
    elif status in ENDED:
        end = _as_datetime(task.get("last_modified"))
    else:
        return None
    if end is None:
        return None
    return round(max((end - start).total_seconds(), 0.0), 3)


def flat_row(data: Mapping[str, Any]) -> dict[str, Any]:
    """A nested dict as a flat dict: dotted keys, ISO datetimes."""
    row: dict[str, Any] = {}
    _flatten(data, "", row)
    return {k: _iso(v) for k, v in row.items()}


def task_row(task: Any, now: datetime | None = None) -> dict[str, Any]:
    """One task (a ``Task`` model or its dict) as a flat dict: dotted keys, ISO datetimes,
    plus ``duration``."""
    data = task.model_dump(mode="python") if hasattr(task, "model_dump") else dict(task)
    row = flat_row(data)
    row["duration"] = duration(data, now)
    return row


def _matches(column: str, key: str) -> bool:
    if any(ch in column for ch in "*?["):
        return fnmatch.fnmatchcase(key, column)
    return key == column or key.startswith(column + ".")


def resolve_columns(columns: list[str] | None, keys: Iterable[str]) -> list[str]:
    """The output columns for the requested ``columns`` given the keys seen in the rows (in
    order of first appearance). A requested name that matches no key is kept as is (an
    empty column), so that every requested column is always there."""
    seen = list(dict.fromkeys(keys))
    if not columns:
        return seen
    out: list[str] = []
    for column in columns:
        matched = [k for k in seen if _matches(column, k)]
        if not matched and not any(ch in column for ch in "*?["):
            matched = [column]
        out.extend(k for k in matched if k not in out)
    return out


def unknown_columns(
    columns: list[str] | None, keys: Iterable[str], fields: Iterable[str]
) -> list[str]:
    """The requested ``columns`` that match none of ``keys`` (every key of every row printed)
    and are none of the record's ``fields`` either: a typo (``-c nosuchcol``,
    ``-c args.lrr``) that would print an empty column, or a pattern that adds none. A field
    name (``metadata``, ``worker_id``) is never one: its column is empty when no row holds a
    value, which is what it says."""
    if not columns:
        return []
    seen = set(keys)
    known = set(fields) | set(COMPUTED)
    return [
        column
        for column in dict.fromkeys(columns)
        if column not in known and not any(_matches(column, k) for k in seen)
    ]


def unknown_column_warning(column: str, fields: Iterable[str], kind: str = "task") -> str:
    """The warning line for ``column`` of :func:`unknown_columns` (in the style of ``-S``'s
    warning for a field that orders nothing)."""
    what = (
        "matches no field of any listed {kind}, so it adds no column"
        if any(ch in column for ch in "*?[")
        else "no listed {kind} has this field, so its column is empty"
    ).format(kind=kind)
    return (
        f"Warning: -c {column}: {what} (fields: {', '.join([*fields, *COMPUTED])}; dotted "
        "paths into args, metadata or summary)."
    )


def project(row: Mapping[str, Any], columns: list[str]) -> dict[str, Any]:
    """``row`` restricted to ``columns`` (missing ones as ``None``), in that order."""
    return {c: row.get(c) for c in columns}


def csv_cell(value: Any) -> Any:
    """A CSV cell: empty for None, JSON text for lists/objects, ``true``/``false`` for
    booleans (as JSON writes them; pandas reads both spellings), the value otherwise."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


def tasks_dataframe(
    extra_filter: str | dict[str, Any] | None = None,
    status: str | None = None,
    columns: list[str] | str | None = None,
    sort: list[tuple[str, int]] | list[str] | None = None,
    limit: int | None = None,
    client: Any = None,
):
    """The matching tasks as a ``pandas.DataFrame``, one row per task, flattened like
    ``labtasker task ls --fmt csv``: columns ``task_id``, ``status``, ``args.lr``,
    ``summary.accuracy`` ..., ``duration`` (seconds); datetimes as UTC ``Timestamp``.

    ``columns``: the fields to keep (names, dotted paths, ``args`` for every args field,
    patterns like ``summary.*``; a comma-separated string works too); default: every field
    that occurs. ``sort``: ``["summary.accuracy:desc"]`` or ``[("priority", -1)]``;
    ``limit``: at most this many rows. Raises ``ImportError`` saying how to install pandas
    when it is missing (``pip install 'labtasker[pandas]'``).
    """
    try:
        import pandas as pd  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError(
            "labtasker.tasks_dataframe needs pandas, which is not installed: "
            "pip install 'labtasker[pandas]' (or pip install pandas)"
        ) from exc
    import itertools

    from labtasker.client import api

    if isinstance(columns, str):
        columns = [columns]
    cols = parse_columns(columns)
    page_size = min(1000, limit) if limit else 1000
    tasks = api.iter_tasks(
        status=status, extra_filter=extra_filter, sort=sort, page_size=page_size, client=client
    )
    if limit is not None:
        tasks = itertools.islice(tasks, limit)
    now = datetime.now(timezone.utc)
    rows = [task_row(t, now) for t in tasks]
    keys = resolve_columns(cols, (k for r in rows for k in r))
    frame = pd.DataFrame([project(r, keys) for r in rows], columns=keys)
    for name in (
        "created_at",
        "start_time",
        "last_heartbeat",
        "last_modified",
        "progress.updated_at",
    ):
        if name in frame.columns:
            frame[name] = pd.to_datetime(frame[name], utc=True, format="ISO8601")
    return frame
