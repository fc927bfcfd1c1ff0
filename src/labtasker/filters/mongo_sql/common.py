"""What every layer of the filter compiler shares: limits, the error type, the field map,
the operator tables and small helpers on filter values and SQL conditions."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Boolean, ColumnElement, and_, false, func, or_, true, type_coerce

from labtasker.timeutil import utc_now

SqlExpr = ColumnElement[Any]
"""A SQL expression (a condition, a JSON value or a scalar)."""

MAX_DEPTH = 32  # nesting of objects/lists in a filter
MAX_NODES = 2000  # operators, conditions and list members in one filter
MAX_PATH_SEGMENTS = 16  # dots in one field path
MAX_PATTERN = 1000  # characters in one $regex
# The cost budget of one filter, checked while it is built (before any SQL is compiled or
# run): the work a database does per task row grows with the JSON path steps (each one a
# json_each/jsonb_array_elements FROM item) and the SQL text with the bound values.
MAX_PATH_STEPS = 128  # FROM items over JSON arrays in the whole filter
MAX_PARAMETERS = 5000  # bound values (path keys, compared values, $in members)
SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")
INDEX = re.compile(r"^(0|[1-9][0-9]{0,8})$")  # canonical array index

COMPARE_OPS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
FIELD_OPS = frozenset(
    COMPARE_OPS
    + (
        "$in",
        "$nin",
        "$exists",
        "$not",
        "$regex",
        "$options",
        "$size",
        "$all",
        "$elemMatch",
        "$type",
    )
)
LOGICAL_OPS = frozenset({"$and", "$or", "$nor"})
UNSAFE_OPS = frozenset({"$where", "$function", "$accumulator"})
EXPR_ARITHMETIC = frozenset({"$add", "$subtract", "$multiply", "$divide", "$mod"})
EXPR_BOOLEAN = frozenset({"$and", "$or", "$not"})
NULLISH_OPS = ("$eq", "$gte", "$lte")  # with a null value these also match missing

# $type aliases (BSON type names and numbers) that can occur in JSON documents.
TYPE_ALIASES: dict[int | str, str] = {
    1: "double",
    2: "string",
    3: "object",
    4: "array",
    8: "bool",
    10: "null",
    16: "int",
    18: "long",
    9: "date",
    "date": "date",
    "double": "double",
    "string": "string",
    "object": "object",
    "array": "array",
    "bool": "bool",
    "null": "null",
    "int": "int",
    "long": "long",
    "number": "number",
}
# Valid BSON types that a JSON value never has: accepted, never match.
TYPE_NEVER: frozenset[int | str] = frozenset(
    {
        5,
        6,
        7,
        11,
        12,
        13,
        14,
        15,
        17,
        19,
        -1,
        127,
        "binData",
        "undefined",
        "objectId",
        "regex",
        "dbPointer",
        "javascript",
        "symbol",
        "javascriptWithScope",
        "timestamp",
        "decimal",
        "minKey",
        "maxKey",
    }
)
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
INF = float("inf")

# BSON comparison order of the types ($expr comparisons and sorting).
BSON_ORDER = {
    "missing": 0,
    "null": 5,
    "number": 10,
    "string": 15,
    "object": 20,
    "array": 25,
    "bool": 40,
    "datetime": 45,
}


class FilterError(ValueError):
    """An invalid or unsupported filter; the message names the operator or path."""


@dataclass(frozen=True)
class FieldMap:
    """How top-level filter names map onto a table.

    ``columns``: name -> scalar column (``status``, ``priority``, ``task_id`` ...);
    ``json_columns``: name -> JSON column holding a document (``args``, ``metadata`` ...);
    ``datetime_columns``: names whose values are datetimes (values are parsed from ISO text
    or ``{"_dt": iso}``); ``non_object_json``: JSON columns that may hold something other than
    an object (``cmd`` is a string or a list).
    """

    columns: Mapping[str, SqlExpr]
    json_columns: Mapping[str, SqlExpr]
    datetime_columns: frozenset[str] = frozenset()
    non_object_json: frozenset[str] = field(default_factory=lambda: frozenset({"cmd"}))

    def column_kind(self, name: str, column: Any) -> str:
        """The type bracket of column ``name``: ``datetime``, ``number`` or ``string``."""
        if name in self.datetime_columns:
            return "datetime"
        try:
            python_type = column.type.python_type
        except NotImplementedError:
            return "string"
        if python_type in (int, float):
            return "number"
        if python_type is datetime:
            return "datetime"
        return "string"

    def datetime_type(self) -> Any:
        """The SQL type of this table's datetime columns (for datetime literals)."""
        for name in sorted(self.datetime_columns):
            if name in self.columns:
                return self.columns[name].type
        raise FilterError("This table has no datetime fields")


@dataclass
class Budget:
    """The size and cost limits of one filter, shared by every compiler working on it;
    counted as the filter is built, so a refusal costs at most the budget."""

    nodes: int = 0
    path_steps: int = 0
    parameters: int = 0

    def tick(self, depth: int, count: int = 1) -> None:
        """Count ``count`` more nodes at nesting ``depth``; ``FilterError`` past the limits."""
        self.nodes += count
        if self.nodes > MAX_NODES:
            raise FilterError(f"Filter too large (more than {MAX_NODES} conditions)")
        if depth > MAX_DEPTH:
            raise FilterError(f"Filter nested too deeply (more than {MAX_DEPTH} levels)")

    def step(self, count: int = 1) -> None:
        """Count JSON path steps (FROM items over arrays)."""
        self.path_steps += count
        if self.path_steps > MAX_PATH_STEPS:
            raise FilterError(
                f"filter too expensive: more than {MAX_PATH_STEPS} JSON path steps "
                f"(limit {MAX_PATH_STEPS}; each path segment below args/metadata/summary and "
                "each array test is one; use fewer or shorter paths, or $in)"
            )

    def bind(self, count: int = 1) -> None:
        """Count bound values."""
        self.parameters += count
        if self.parameters > MAX_PARAMETERS:
            raise FilterError(
                f"filter too expensive: more than {MAX_PARAMETERS} bound values "
                f"(limit {MAX_PARAMETERS})"
            )


@dataclass
class ExprValue:
    """A typed ``$expr`` value: ``kind`` is the BSON order code (``BSON_ORDER``) as SQL, NULL
    for an evaluation error; ``num`` (numbers and booleans as 0/1), ``text``, ``dt`` and
    ``json`` hold the value in the slot of its kind."""

    kind: Any
    num: Any = None
    text: Any = None
    dt: Any = None
    json: Any = None


def split_path(path: Any) -> list[str]:
    """The segments of a dotted field path; ``FilterError`` when it is empty, has more than
    ``MAX_PATH_SEGMENTS`` parts or a part outside ``[A-Za-z0-9_-]``."""
    if not isinstance(path, str) or not path:
        raise FilterError(f"Invalid field path {path!r} in filter")
    segments = path.split(".")
    if len(segments) > MAX_PATH_SEGMENTS:
        raise FilterError(f"Field path {path!r} has more than {MAX_PATH_SEGMENTS} parts")
    if not all(SEGMENT.match(s) for s in segments):
        raise FilterError(f"Invalid field path {path!r} in filter")
    return segments


def decode_datetimes(value: Any) -> Any:
    """Replace every ``{"_dt": "<iso>"}`` object by a ``datetime`` (recursively). One that
    also holds ``"_rel": <seconds>`` (``date("1 hour ago")``) is resolved with this process's
    clock instead: now + seconds."""
    if isinstance(value, dict):
        if "_dt" in value and isinstance(value["_dt"], str) and set(value) <= {"_dt", "_rel"}:
            if "_rel" in value:
                return _relative(value["_rel"])
            return parse_datetime(value["_dt"])
        return {k: decode_datetimes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_datetimes(v) for v in value]
    return value


def _relative(seconds: Any) -> datetime:
    """Now (this process's clock) + ``seconds``; ``FilterError`` for a bad value."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds != seconds:
        raise FilterError(f"Invalid relative time {seconds!r} in filter")
    try:
        return utc_now() + timedelta(seconds=float(seconds))
    except OverflowError as exc:
        raise FilterError(f"Invalid relative time {seconds!r} in filter") from exc


def parse_datetime(text: str) -> datetime:
    """An ISO 8601 datetime (``Z`` accepted); ``FilterError`` when it is not one."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if value.tzinfo is not None:
            value.astimezone(timezone.utc)  # the database compares in UTC
    except ValueError as exc:
        raise FilterError(f"Invalid datetime {text!r} in filter") from exc
    except OverflowError as exc:
        raise FilterError(f"Datetime {text!r} in filter is out of range in UTC") from exc
    return value


def json_path(segments: list[str]) -> str:
    """A SQLite JSON path (``$."a"."b"``) for the given keys."""
    return "$" + "".join(f'."{s}"' for s in segments)


def dumps(value: Any) -> str:
    """Compact JSON text of a filter value (datetimes as ISO text)."""
    return json.dumps(
        value,
        separators=(",", ":"),
        ensure_ascii=False,
        default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v),
    )


def value_kind(value: Any) -> str:
    """The type bracket of a filter value: null, bool, number, string, datetime, array or
    object. ``FilterError`` for NaN/infinity, integers outside 64 bits and other types."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and (value != value or value in (INF, -INF)):
            raise FilterError("NaN and infinity are not supported in filters")
        if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
            raise FilterError(f"Integer {value} does not fit in 64 bits")
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, datetime):
        return "datetime"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise FilterError(f"Unsupported value in filter: {value!r}")


def compare(lhs: Any, op: str, rhs: Any) -> Any:
    """``lhs <op> rhs`` for one of ``$eq $ne $gt $gte $lt $lte``."""
    if op == "$eq":
        return lhs == rhs
    if op == "$ne":
        return lhs != rhs
    if op == "$gt":
        return lhs > rhs
    if op == "$gte":
        return lhs >= rhs
    if op == "$lt":
        return lhs < rhs
    return lhs <= rhs


def two_valued(condition: Any) -> SqlExpr:
    """Make a predicate two-valued (NULL -> false) so that NOT works as Mongo's negation."""
    return func.coalesce(type_coerce(condition, Boolean), false())


def any_of(parts: list[SqlExpr]) -> SqlExpr:
    """OR of many parts as a balanced tree (SQLite limits expression depth to 1000)."""
    if not parts:
        return false()
    while len(parts) > 1:
        parts = [
            or_(*parts[i : i + 2]).self_group() if i + 1 < len(parts) else parts[i]
            for i in range(0, len(parts), 2)
        ]
    return parts[0]


def all_of(parts: list[SqlExpr]) -> SqlExpr:
    """AND of many parts as a balanced tree."""
    if not parts:
        return true()
    while len(parts) > 1:
        parts = [
            and_(*parts[i : i + 2]).self_group() if i + 1 < len(parts) else parts[i]
            for i in range(0, len(parts), 2)
        ]
    return parts[0]


def booleans_where(op: str, value: bool) -> set[bool]:
    """Booleans ``b`` with ``b <op> value`` (Mongo orders false < true)."""
    return {
        b
        for b in (False, True)
        if {
            "$eq": b == value,
            "$gt": b > value,
            "$gte": b >= value,
            "$lt": b < value,
            "$lte": b <= value,
        }[op]
    }


def contains_field_reference(value: Any) -> bool:
    """Whether a constant in ``$expr`` holds a ``"$path"`` string or an operator key."""
    if isinstance(value, str):
        return value.startswith("$")
    if isinstance(value, list):
        return any(contains_field_reference(v) for v in value)
    if isinstance(value, dict):
        return any(str(k).startswith("$") or contains_field_reference(v) for k, v in value.items())
    return False
