"""Compile MongoDB-syntax filters into SQL expressions (server side).

``compile_filter(filt, fields, dialect)`` returns a SQLAlchemy boolean expression; the database
does all the filtering (no per-row Python). Every path and value the user sends becomes a
bound parameter, never SQL text. Operators are allow-listed; anything else is refused with
``FilterError`` (HTTP 400 naming the operator).

Supported now: ``$and $or $nor $not $eq $ne $gt $gte $lt $lte $in $nin $exists $regex``
(``$options`` with i/m/s/x), dotted paths into ``args``/``metadata``/``summary``/``cmd`` and
the plain task/worker columns, implicit matching of array elements (``{"metadata.tags": "x"}``
matches a list containing ``"x"``), comparisons within a type bracket (a number never equals or
compares with a string), Mongo's null rule (``{"a": null}`` matches null or missing), and the
``{"_dt": iso}`` datetime convention (spec §2.3(11)).

JSON access is a small backend class per database: SQLite's JSON1 functions (``json_type``,
``json_extract``, ``json_each``) and PostgreSQL's jsonb operators (``#>``, ``jsonb_typeof``,
``jsonb_array_elements``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    Boolean,
    ColumnElement,
    Numeric,
    Text,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB

MAX_DEPTH = 32
MAX_NODES = 2000
SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")
_COMPARE = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte"}
_FIELD_OPS = _COMPARE | {"$in", "$nin", "$exists", "$regex", "$options", "$not"}
_LOGICAL = {"$and", "$or", "$nor"}
_UNSAFE = {"$where", "$function", "$accumulator"}


class FilterError(ValueError):
    """An invalid or unsupported filter; the message names the operator or path."""


@dataclass(frozen=True)
class FieldMap:
    """How top-level filter names map onto a table.

    ``columns``: name -> scalar column (``status``, ``priority``, ``task_id`` ...);
    ``json_columns``: name -> JSON column holding a document (``args``, ``metadata`` ...);
    ``datetime_columns``: names whose values are datetimes (values are parsed from ISO text
    or ``{"_dt": iso}``).
    """

    columns: Mapping[str, Any]
    json_columns: Mapping[str, Any]
    datetime_columns: frozenset[str] = frozenset()


def decode_datetimes(value: Any) -> Any:
    """Replace every ``{"_dt": "<iso>"}`` object by a ``datetime`` (recursively)."""
    if isinstance(value, dict):
        if len(value) == 1 and "_dt" in value and isinstance(value["_dt"], str):
            try:
                return datetime.fromisoformat(value["_dt"].replace("Z", "+00:00"))
            except ValueError as exc:
                raise FilterError(f"Invalid datetime {value['_dt']!r} in filter") from exc
        return {k: decode_datetimes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_datetimes(v) for v in value]
    return value


def _json_path(segments: list[str]) -> str:
    return "$" + "".join(f'."{s}"' for s in segments)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
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


class _SqliteJson:
    """JSON access for SQLite (JSON1). Paths are bound parameters."""

    NUMBER_TYPES = ("integer", "real")

    def jtype(self, col, path: str):
        return func.json_type(col, path)

    def jvalue(self, col, path: str):
        return func.json_extract(col, path)

    def scalar_pred(self, typ, val, op: str, value: Any):
        """Predicate on one JSON value given its type expression and value expression."""
        kind = _kind(value)
        if kind == "bool":
            allowed = {  # Mongo orders false < true inside the boolean bracket
                "$eq": {value},
                "$gt": {True} if value is False else set(),
                "$lt": {False} if value is True else set(),
                "$gte": {True} if value else {False, True},
                "$lte": {False} if not value else {False, True},
            }[op]
            if not allowed:
                return false()
            return typ.in_(sorted("true" if b else "false" for b in allowed))
        if kind == "null":
            if op in ("$eq", "$gte", "$lte"):
                return typ == "null"
            return false()
        if kind == "number":
            return and_(typ.in_(self.NUMBER_TYPES), _cmp(val, op, literal(value)))
        if kind in ("string", "datetime"):
            v = value.isoformat() if kind == "datetime" else value
            return and_(typ == "text", _cmp(val, op, literal(v)))
        if kind in ("array", "object"):
            if op != "$eq":
                raise FilterError(f"{op} with an object or array value is not supported")
            return and_(typ == kind, val == func.json(json.dumps(value, separators=(",", ":"))))
        raise FilterError(f"Unsupported value {value!r}")

    def field_pred(self, col, segments: list[str], op: str, value: Any):
        """Value at path compared with ``value``, or any element of an array at path."""
        path = _json_path(segments)
        typ, val = self.jtype(col, path), self.jvalue(col, path)
        direct = self.scalar_pred(typ, val, op, value)
        if _kind(value) in ("array", "object") or value is None:
            if value is None and op in ("$eq", "$gte", "$lte"):
                direct = or_(direct, typ.is_(None))
            return direct
        each_fn = func.json_each(col, path).table_valued("type", "value")
        elem = self.scalar_pred(each_fn.c.type, each_fn.c.value, op, value)
        any_elem = select(literal(1)).select_from(each_fn).where(elem).exists()
        return or_(direct, and_(typ == "array", any_elem))

    def exists(self, col, segments: list[str]):
        return self.jtype(col, _json_path(segments)).is_not(None)

    def regex(self, col, segments: list[str], pattern: str):
        path = _json_path(segments)
        return and_(self.jtype(col, path) == "text",
                    func.labtasker_regexp(pattern, self.jvalue(col, path)) == 1)

    def sort_key(self, col, segments: list[str]):
        return self.jvalue(col, _json_path(segments))

    def whole_eq(self, col, value: dict):
        return func.json(col) == func.json(json.dumps(value, separators=(",", ":")))


class _PostgresJson:
    """JSON access for PostgreSQL (jsonb). Paths are bound ``text[]`` parameters; casts are
    guarded by ``CASE`` on ``jsonb_typeof`` so a value of another type never raises."""

    def _at(self, col, segments: list[str]):
        return col.op("#>", return_type=JSONB)(literal(list(segments), ARRAY(Text)))

    def _typed(self, doc, kind: str, value: Any):
        typ = func.jsonb_typeof(doc)
        if kind == "number":
            return case((typ == "number", cast(doc.op("#>>", return_type=Text)(
                literal([], ARRAY(Text))), Numeric)), else_=None), literal(value, Numeric)
        text = case((typ == "string", doc.op("#>>", return_type=Text)(
            literal([], ARRAY(Text)))), else_=None)
        return text, literal(value, Text)

    def scalar_pred(self, doc, op: str, value: Any):
        kind = _kind(value)
        typ = func.jsonb_typeof(doc)
        if kind == "bool":
            allowed = {
                "$eq": {value},
                "$gt": {True} if value is False else set(),
                "$lt": {False} if value is True else set(),
                "$gte": {True} if value else {False, True},
                "$lte": {False} if not value else {False, True},
            }[op]
            if not allowed:
                return false()
            return and_(typ == "boolean",
                        doc.in_([cast(literal(json.dumps(b)), JSONB) for b in sorted(allowed)]))
        if kind == "null":
            return typ == "null" if op in ("$eq", "$gte", "$lte") else false()
        if kind == "number":
            lhs, rhs = self._typed(doc, "number", value)
            return _cmp(lhs, op, rhs)
        if kind in ("string", "datetime"):
            v = value.isoformat() if kind == "datetime" else value
            lhs, rhs = self._typed(doc, "string", v)
            return _cmp(lhs, op, rhs)
        if op != "$eq":
            raise FilterError(f"{op} with an object or array value is not supported")
        return doc == cast(literal(json.dumps(value)), JSONB)

    def field_pred(self, col, segments: list[str], op: str, value: Any):
        doc = self._at(col, segments)
        direct = self.scalar_pred(doc, op, value)
        if value is None:
            return or_(direct, doc.is_(None)) if op in ("$eq", "$gte", "$lte") else direct
        if _kind(value) in ("array", "object"):
            return direct
        arr = case((func.jsonb_typeof(doc) == "array", doc),
                   else_=cast(literal("[]"), JSONB))
        elems = func.jsonb_array_elements(arr).table_valued("value")
        any_elem = select(literal(1)).select_from(elems).where(
            self.scalar_pred(elems.c.value, op, value)).exists()
        return or_(direct, any_elem)

    def exists(self, col, segments: list[str]):
        return self._at(col, segments).is_not(None)

    def regex(self, col, segments: list[str], pattern: str):
        doc = self._at(col, segments)
        text = case((func.jsonb_typeof(doc) == "string",
                     doc.op("#>>", return_type=Text)(literal([], ARRAY(Text)))), else_=None)
        return text.op("~")(literal(pattern, Text))

    def sort_key(self, col, segments: list[str]):
        return self._at(col, segments)

    def whole_eq(self, col, value: dict):
        return col == cast(literal(json.dumps(value)), JSONB)


def _cmp(lhs, op: str, rhs):
    return {
        "$eq": lambda: lhs == rhs,
        "$ne": lambda: lhs != rhs,
        "$gt": lambda: lhs > rhs,
        "$gte": lambda: lhs >= rhs,
        "$lt": lambda: lhs < rhs,
        "$lte": lambda: lhs <= rhs,
    }[op]()


def _safe(expr) -> ColumnElement:
    """Make a predicate two-valued (NULL -> false) so that NOT works as Mongo's negation."""
    return func.coalesce(type_coerce(expr, Boolean), false())


class Compiler:
    """One compilation of one filter; counts nodes and depth to enforce the limits."""

    def __init__(self, fields: FieldMap, backend: _SqliteJson):
        self.fields = fields
        self.backend = backend
        self.nodes = 0

    def _tick(self, depth: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise FilterError(f"Filter too large (more than {MAX_NODES} conditions)")
        if depth > MAX_DEPTH:
            raise FilterError(f"Filter nested too deeply (more than {MAX_DEPTH} levels)")

    def document(self, filt: Any, depth: int = 0) -> ColumnElement:
        if not isinstance(filt, Mapping):
            raise FilterError(f"A filter must be an object, got {type(filt).__name__}")
        self._tick(depth)
        parts = []
        for key, value in filt.items():
            if not isinstance(key, str):
                raise FilterError(f"Invalid filter key {key!r}")
            if key.startswith("$"):
                parts.append(self.logical(key, value, depth + 1))
            else:
                parts.append(self.field(key, value, depth + 1))
        return and_(true(), *parts) if parts else true()

    def logical(self, op: str, value: Any, depth: int) -> ColumnElement:
        if op in _UNSAFE:
            raise FilterError(f"Operator {op} is not allowed")
        if op not in _LOGICAL:
            raise FilterError(f"Unknown or unsupported top-level operator {op}")
        if not isinstance(value, list) or not value:
            raise FilterError(f"{op} needs a non-empty list of filters")
        subs = [self.document(v, depth + 1) for v in value]
        if op == "$and":
            return and_(*subs)
        if op == "$or":
            return or_(*subs)
        return not_(or_(*subs))

    def _resolve(self, path: str) -> tuple[str, Any, list[str]]:
        segments = path.split(".")
        if not all(SEGMENT.match(s) for s in segments):
            raise FilterError(f"Invalid field path {path!r} in filter")
        head = segments[0]
        if head in self.fields.json_columns:
            return "json", self.fields.json_columns[head], segments[1:]
        if head in self.fields.columns:
            if len(segments) > 1:
                return "never", None, segments
            return "column", self.fields.columns[head], []
        return "never", None, segments  # unknown field: missing in every document

    def field(self, path: str, cond: Any, depth: int) -> ColumnElement:
        kind, col, segs = self._resolve(path)
        if isinstance(cond, Mapping) and cond and all(
            isinstance(k, str) and k.startswith("$") for k in cond
        ):
            return self.operators(path, kind, col, segs, cond, depth)
        if isinstance(cond, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in cond):
            raise FilterError(f"Cannot mix operators and fields in the condition on {path!r}")
        return self.op(path, kind, col, segs, "$eq", cond)

    def operators(self, path, kind, col, segs, cond: Mapping, depth: int) -> ColumnElement:
        self._tick(depth)
        parts = []
        options = cond.get("$options", "")
        for op, value in cond.items():
            if op in _UNSAFE:
                raise FilterError(f"Operator {op} is not allowed")
            if op not in _FIELD_OPS:
                raise FilterError(f"Unknown or unsupported operator {op} (on {path!r})")
            if op == "$options":
                if "$regex" not in cond:
                    raise FilterError("$options needs $regex")
                continue
            if op == "$not":
                if not isinstance(value, Mapping) or not value:
                    raise FilterError(f"$not on {path!r} needs an operator object")
                parts.append(not_(self.operators(path, kind, col, segs, value, depth + 1)))
                continue
            if op == "$regex":
                parts.append(self.regex(path, kind, col, segs, value, options))
                continue
            parts.append(self.op(path, kind, col, segs, op, value))
        return and_(true(), *parts)

    def regex(self, path, kind, col, segs, pattern, options) -> ColumnElement:
        if not isinstance(pattern, str) or not isinstance(options, str):
            raise FilterError(f"$regex on {path!r} needs a string pattern")
        bad = set(options) - set("imsx")
        if bad:
            raise FilterError(f"Unsupported $options {''.join(sorted(bad))!r}")
        flags = "".join(sorted(set(options)))
        full = f"(?{flags}){pattern}" if flags else pattern
        try:
            re.compile(full)
        except re.error as exc:
            raise FilterError(f"Invalid $regex on {path!r}: {exc}") from exc
        if kind == "never":
            return false()
        if kind == "column":
            if isinstance(self.backend, _PostgresJson):
                return _safe(col.op("~")(literal(full, Text)))
            return _safe(func.labtasker_regexp(full, col) == 1)
        return _safe(self.backend.regex(col, segs, full))

    def op(self, path, kind, col, segs, op: str, value: Any) -> ColumnElement:
        if op in ("$in", "$nin"):
            if not isinstance(value, list):
                raise FilterError(f"{op} on {path!r} needs a list")
            anyof = or_(false(), *[self.op(path, kind, col, segs, "$eq", v) for v in value])
            return anyof if op == "$in" else not_(anyof)
        if op == "$ne":
            return not_(self.op(path, kind, col, segs, "$eq", value))
        if op == "$exists":
            present = self.exists(kind, col, segs)
            return present if value else not_(present)
        value = decode_datetimes(value)
        if kind == "never":
            return true() if (value is None and op in ("$eq", "$gte", "$lte")) else false()
        if kind == "column":
            return _safe(self.column_pred(path, col, op, value))
        if not segs:
            # the whole document (e.g. {"args": {...}})
            if op != "$eq" or not isinstance(value, dict):
                raise FilterError(f"{path!r} can only be compared with an object")
            return _safe(self.backend.whole_eq(col, value))
        return _safe(self.backend.field_pred(col, segs, op, value))

    def column_pred(self, path: str, col, op: str, value: Any):
        if path in self.fields.datetime_columns and isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError as exc:
                raise FilterError(f"{path!r} needs a datetime, got {value!r}") from exc
        if value is None:
            return col.is_(None) if op in ("$eq", "$gte", "$lte") else false()
        col_is_dt = path in self.fields.datetime_columns
        if col_is_dt != isinstance(value, datetime):
            return false()  # different type brackets never compare
        if isinstance(value, (list, dict)):
            return false()
        return _cmp(col, op, value)

    def exists(self, kind, col, segs) -> ColumnElement:
        if kind == "never":
            return false()
        if kind == "column" or not segs:
            return true()
        return _safe(self.backend.exists(col, segs))


def backend_for(dialect: str) -> _SqliteJson | _PostgresJson:
    """The JSON backend for a SQLAlchemy dialect name (``sqlite`` or ``postgresql``)."""
    if dialect == "sqlite":
        return _SqliteJson()
    if dialect == "postgresql":
        return _PostgresJson()
    raise FilterError(f"Filters are not supported on the {dialect} backend")


def compile_filter(filt: Mapping[str, Any] | None, fields: FieldMap, dialect: str) -> ColumnElement:
    """Compile a Mongo filter document into a SQL boolean expression.

    ``filt``: a JSON object (``None``/``{}`` = match everything). ``fields``: the table's
    field map. ``dialect``: ``"sqlite"`` (``"postgresql"`` later). Raises ``FilterError`` with
    a message naming the offending operator, path or value.
    """
    if not filt:
        return true()
    return Compiler(fields, backend_for(dialect)).document(filt)


def sort_expression(field: str, fields: FieldMap, dialect: str):
    """SQL expression to order by ``field`` (a column name or a dotted JSON path)."""
    segments = field.split(".")
    if not all(SEGMENT.match(s) for s in segments):
        raise FilterError(f"Invalid sort field {field!r}")
    head = segments[0]
    if head in fields.columns and len(segments) == 1:
        return fields.columns[head]
    if head in fields.json_columns and len(segments) > 1:
        return backend_for(dialect).sort_key(fields.json_columns[head], segments[1:])
    return literal(None)


def register_sqlite_functions(dbapi_conn) -> None:
    """Register ``labtasker_regexp(pattern, value)`` on a sqlite3 connection."""
    cache: dict[str, re.Pattern] = {}

    def regexp(pattern, value):
        if value is None or not isinstance(value, str):
            return 0
        rx = cache.get(pattern)
        if rx is None:
            rx = cache[pattern] = re.compile(pattern)
        return 1 if rx.search(value) else 0

    dbapi_conn.create_function("labtasker_regexp", 2, regexp, deterministic=True)

