"""Compile MongoDB-syntax filters into SQL expressions (server side).

``compile_filter(filt, fields, dialect)`` returns a SQLAlchemy boolean expression; the database
does all the filtering (no per-row Python; on SQLite a registered ``labtasker_regexp`` function
evaluates ``$regex`` inside the database). Every path segment and every value the user sends is
a bound parameter, never SQL text. Operators are allow-listed; anything else is refused with
``FilterError`` (HTTP 400 naming the operator).

Supported operators
    query:  ``$and $or $nor`` and ``$expr``;
    field:  ``$eq $ne $gt $gte $lt $lte $in $nin $exists $not $regex`` (``$options`` i/m/s/x)
            ``$size $all $elemMatch $type``;
    ``$expr``: field references ``"$path"``, literals, ``$literal``, ``$add $subtract $multiply
            $divide $mod``, ``$eq $ne $gt $gte $lt $lte``, ``$and $or $not``.

MongoDB semantics (the model the SQL implements)
    *Candidates.* A dotted path names a set of candidate values. Walking segment ``s`` from a
    value ``v``: an object gives ``v[s]`` (or *missing*); an array gives ``v[int(s)]`` when ``s``
    is an index (``"0"``, ``"12"``; nothing when out of range), otherwise ``e[s]`` (or missing)
    for every element ``e`` that is an object (other elements, nested arrays included, give
    nothing); any other value, and missing, gives missing.
    *Leaf arrays.* ``$eq $gt ... $in $regex $type`` match a candidate or any element of a
    candidate that is an array (``{"metadata.tags": "x"}`` matches ``["x", "y"]``; ``{"a": [1]}``
    matches ``[1]`` and ``[[1], 2]``). ``$size`` and ``$elemMatch`` look at the array itself.
    *Type brackets.* Comparisons only happen within one bracket (numbers, strings, booleans with
    false < true, null): ``{"a": {"$gt": 1}}`` never matches a string. Strings compare by code
    point (``COLLATE "C"`` on PostgreSQL). Range operators on objects/arrays are refused.
    *Null.* ``{"a": null}`` (and ``$in: [null]``, ``$gte/$lte: null``) matches null and missing;
    ``$exists: true`` means at least one candidate is present.
    *Negation.* ``$ne $nin $not $nor`` are exact negations of the positive forms (every
    predicate is two-valued, see ``_safe``); several operators on one field are independent
    conditions (``{"a": {"$gt": 1, "$lt": 5}}`` matches ``[0, 9]``), while inside
    ``$elemMatch`` they all apply to the same element.
    *Datetimes.* ``{"_dt": iso}`` (and ISO strings) compare with the datetime columns
    (``created_at`` ...); against JSON paths they compare as ISO text.
    *Columns.* ``task_id status priority retries created_at ...`` are plain columns and compile
    to plain, index-friendly comparisons; ``args.* metadata.* summary.* cmd`` are JSON paths.

Known differences from MongoDB
    * ``a.0`` on an array is the element at index 0 only; MongoDB also looks for a key "0"
      in objects inside the array.
    * ``$elemMatch`` with a query document matches object elements only (MongoDB also treats
      nested arrays as objects with keys "0", "1" ...).
    * ``$expr``: field paths do not traverse arrays (an array on the way gives missing);
      ``$lt/$gt...`` between two arrays or two objects, arithmetic on non-numbers and division
      by zero never match (MongoDB fails the whole query); missing < null < numbers < strings
      < objects < arrays < booleans < dates.
    * Sorting on a JSON path: MongoDB's type order, but an array sorts as a whole value
      (MongoDB uses its smallest/largest element).
    * PostgreSQL: jsonb forgets key order, so ``{"a": {"x": 1, "y": 2}}`` also matches
      ``{"y": 2, "x": 1}``; ``2.0`` equals ``2`` inside arrays/objects (on SQLite containers
      compare as normalised JSON text, so it does not); ``$type: "double"`` is judged from the
      number's text (``1e20`` counts as an integer). Regexes run on PostgreSQL's ARE engine:
      the options are mapped (i, x; m/s to newline modes), ``\\b`` becomes ``\\y``, constructs
      it lacks (named groups, atomic groups, scoped flags) are refused with 400; without ``s``,
      ``[^x]`` does not match a newline there.
    * Datetimes (``{"_dt": ...}``) compared with JSON values compare as ISO text.

Cost: column conditions are plain comparisons (indexes apply). A JSON path becomes one
``EXISTS`` over a chain of ``json_each``/``jsonb_array_elements`` (one per path segment), so the
SQL grows linearly with the filter; ``$expr`` values are materialised as one-row FROM items
for the same reason. Limits: ``MAX_DEPTH``, ``MAX_NODES``, ``MAX_PATH_SEGMENTS``,
``MAX_PATTERN``.

JSON access is a small backend class per database: SQLite JSON1 (``json_type``, ``->``,
``->>``, ``json_each``) and PostgreSQL jsonb (``->``, ``jsonb_typeof``,
``jsonb_array_elements``); SQLite JSON paths are bound strings, PostgreSQL keys bound text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    Boolean,
    ColumnElement,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    Numeric,
    Text,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    not_,
    null,
    or_,
    select,
    true,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import Grouping

MAX_DEPTH = 32  # nesting of objects/lists in a filter
MAX_NODES = 2000  # operators, conditions and list members in one filter
MAX_PATH_SEGMENTS = 16  # dots in one field path
MAX_PATTERN = 1000  # characters in one $regex
SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")
INDEX = re.compile(r"^(0|[1-9][0-9]{0,8})$")  # canonical array index

_COMPARE = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
_FIELD_OPS = frozenset(
    _COMPARE
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
_LOGICAL = frozenset({"$and", "$or", "$nor"})
_UNSAFE = frozenset({"$where", "$function", "$accumulator"})
_EXPR_ARITH = frozenset({"$add", "$subtract", "$multiply", "$divide", "$mod"})
_EXPR_BOOL = frozenset({"$and", "$or", "$not"})
_NULLISH_OPS = ("$eq", "$gte", "$lte")  # with a null value these also match missing

# $type aliases (BSON type names and numbers) that can occur in JSON documents.
_TYPE_ALIASES = {
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
_TYPE_NEVER = {
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
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
INF = float("inf")

# BSON comparison order of the types ($expr comparisons and sorting).
_ORDER = {
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

    columns: Mapping[str, Any]
    json_columns: Mapping[str, Any]
    datetime_columns: frozenset[str] = frozenset()
    non_object_json: frozenset[str] = field(default_factory=lambda: frozenset({"cmd"}))


def decode_datetimes(value: Any) -> Any:
    """Replace every ``{"_dt": "<iso>"}`` object by a ``datetime`` (recursively)."""
    if isinstance(value, dict):
        if len(value) == 1 and "_dt" in value and isinstance(value["_dt"], str):
            return _parse_datetime(value["_dt"])
        return {k: decode_datetimes(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_datetimes(v) for v in value]
    return value


def _parse_datetime(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise FilterError(f"Invalid datetime {text!r} in filter") from exc


def _json_path(segments: list[str]) -> str:
    return "$" + "".join(f'."{s}"' for s in segments)


def _dumps(value: Any) -> str:
    return json.dumps(
        value,
        separators=(",", ":"),
        ensure_ascii=False,
        default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v),
    )


def _kind(value: Any) -> str:
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


def _cmp(lhs, op: str, rhs):
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


def _safe(expr) -> ColumnElement:
    """Make a predicate two-valued (NULL -> false) so that NOT works as Mongo's negation."""
    return func.coalesce(type_coerce(expr, Boolean), false())


def _any(parts: list) -> ColumnElement:
    """OR of many parts as a balanced tree (SQLite limits expression depth to 1000)."""
    if not parts:
        return false()
    while len(parts) > 1:
        parts = [
            or_(*parts[i : i + 2]).self_group() if i + 1 < len(parts) else parts[i]
            for i in range(0, len(parts), 2)
        ]
    return parts[0]


def _all(parts: list) -> ColumnElement:
    """AND of many parts as a balanced tree."""
    if not parts:
        return true()
    while len(parts) > 1:
        parts = [
            and_(*parts[i : i + 2]).self_group() if i + 1 < len(parts) else parts[i]
            for i in range(0, len(parts), 2)
        ]
    return parts[0]


def _bool_sets(op: str, value: bool) -> set[bool]:
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


# --------------------------------------------------------------------------- JSON backends


class JV:
    """A present JSON value with cheaper spellings of its type and scalar value (an array
    element from ``json_each``); backends accept a ``JV`` wherever they take a JSON value.
    ``j`` (the value as JSON) may be given as a function, built on first use."""

    def __init__(self, j: Any, typ: Any = None, scalar: Any = None):
        self._j, self.typ, self.scalar = j, typ, scalar

    @property
    def j(self):
        if callable(self._j):
            self._j = self._j()
        return self._j


def _raw(j):
    return j.j if isinstance(j, JV) else j


@dataclass
class _Each:
    """A FROM item over the elements of an array: the element's type, the element as a JSON
    value (``jv``), its index, and ``obj`` (the element, valid when it is an object)."""

    table: Any
    typ: Any
    jv: Any
    idx: Any
    obj: Any


class _JsonBackend:
    """What both JSON backends share; subclasses supply ``num`` and ``is_kind``."""

    def type_test(self, j, name: str):
        """``$type`` on a JSON value: Mongo type names mapped onto JSON kinds."""
        if name == "date":
            return false()
        if name in ("int", "long"):
            inside = self.num(j).between(*INT32)
            return and_(self.is_kind(j, "integer"), inside if name == "int" else not_(inside))
        if name == "double":
            return self.is_kind(j, "real")
        return self.is_kind(j, name)


class _SqliteJson(_JsonBackend):
    """JSON access for SQLite (JSON1). A JSON value ``J`` is JSON text (``NULL`` = missing);
    paths are bound parameters."""

    dialect = "sqlite"
    _KINDS = {
        "null": ("null",),
        "true": ("true",),
        "false": ("false",),
        "bool": ("true", "false"),
        "number": ("integer", "real"),
        "string": ("text",),
        "array": ("array",),
        "object": ("object",),
        "integer": ("integer",),
        "real": ("real",),
    }

    def root(self, col):
        return type_coerce(col, Text)

    def missing(self):
        return type_coerce(null(), Text)

    def typ(self, j):
        if isinstance(j, JV) and j.typ is not None:
            return j.typ
        return func.json_type(_raw(j))

    def is_kind(self, j, kind: str):
        names = self._KINDS[kind]
        return self.typ(j).in_(names) if len(names) > 1 else self.typ(j) == names[0]

    def not_array(self, j):
        return self.typ(j).is_distinct_from("array")

    def scalar(self, j):
        if isinstance(j, JV) and j.scalar is not None:
            return j.scalar
        return _raw(j).op("->>")(literal("$", Text))

    def num(self, j):
        return self.scalar(j)

    def text(self, j):
        return self.scalar(j)

    def num_literal(self, value):
        return literal(value, Integer if isinstance(value, int) else Float)

    def text_literal(self, value: str):
        return literal(value, Text)

    def json_eq(self, j, value):
        return func.json(_raw(j)) == func.json(literal(_dumps(value), Text))

    def array_length(self, j):
        return func.json_array_length(_raw(j))

    def key(self, j, seg: str):
        return _raw(j).op("->", return_type=Text)(literal(_json_path([seg]), Text))

    def path(self, j, segs: list[str]):
        return _raw(j).op("->", return_type=Text)(literal(_json_path(segs), Text))

    def wrap(self, j):
        """``j`` when it is an array, else a one-element array holding ``j``."""
        return case((self.typ(j) == "array", j), else_=self.one(j))

    def one(self, j):
        return func.json_array(func.json(_raw(j)))

    def each(self, x) -> _Each:
        """FROM item over the elements of the array ``x``."""
        t = func.json_each(x).table_valued("key", "value", "type", "atom").alias()
        c = t.c

        def value():
            return case(
                (c.type.is_(None), null()),
                (c.type.in_(("object", "array")), c.value),
                (c.type == "true", literal("true", Text)),
                (c.type == "false", literal("false", Text)),
                else_=func.json_quote(c.value),
            )

        return _Each(t, c.type, JV(value, c.type, c.atom), c.key, c.value)

    def elements(self, j) -> _Each:
        return self.each(case((self.typ(j) == "array", _raw(j)), else_=literal("[]", Text)))

    def regex(self, text, pattern: str, flags: str):
        full = f"(?{flags}){pattern}" if flags else pattern
        return func.labtasker_regexp(literal(full, Text), text) == 1

    def collate(self, expr):
        return expr

    def expr_number(self, expr):
        return expr

    def expr_divide(self, a, b):
        return cast(a, Float) / b

    def expr_mod(self, a, b):
        return case(
            (and_(func.typeof(a) == "integer", func.typeof(b) == "integer"), a % b),
            else_=a - b * cast(cast(a, Float) / b, Integer),
        )

    def pack(self, v):
        """A one-element array holding the slots of an ``$expr`` value as an object."""
        slots = []
        for key, value in (("k", v.kind), ("n", v.num), ("t", v.text), ("d", v.dt)):
            slots += [literal(key, Text), null() if value is None else value]
        slots += [literal("j", Text), null() if v.json is None else func.json(v.json)]
        return func.json_array(func.json_object(*slots))

    def unpack(self, obj) -> _ExprVal:
        get = lambda key: obj.op("->>")(literal(f"$.{key}", Text))  # noqa: E731
        return _ExprVal(
            kind=get("k"),
            num=get("n"),
            text=get("t"),
            dt=get("d"),
            json=obj.op("->", return_type=Text)(literal("$.j", Text)),
        )

    def sort_key(self, j):
        typ = self.typ(j)
        blob = lambda tag, v: cast(func.char(tag).concat(v), LargeBinary)  # noqa: E731
        return case(
            (typ.in_(("integer", "real", "text")), self.scalar(j)),
            (typ == "object", blob(1, func.json(j))),
            (typ == "array", blob(2, func.json(j))),
            (typ == "false", blob(3, literal("0", Text))),
            (typ == "true", blob(3, literal("1", Text))),
            else_=null(),
        )


class _PostgresJson(_JsonBackend):
    """JSON access for PostgreSQL (jsonb). A JSON value ``J`` is jsonb (``NULL`` = missing).
    Every function that could raise on a value of the wrong type is guarded by ``CASE``."""

    dialect = "postgresql"

    def root(self, col):
        return col

    def missing(self):
        return cast(null(), JSONB)

    def typ(self, j):
        return func.jsonb_typeof(_raw(j))

    def _json(self, text: str):
        return cast(literal(text, Text), JSONB)

    def is_kind(self, j, kind: str):
        if kind in ("true", "false"):
            return _raw(j) == self._json(kind)
        if kind in ("integer", "real"):
            return and_(self.typ(j) == "number", self._is_real(j) == (kind == "real"))
        name = {
            "bool": "boolean",
            "string": "string",
            "number": "number",
            "null": "null",
            "array": "array",
            "object": "object",
        }[kind]
        return self.typ(j) == name

    def _is_real(self, j):
        return func.strpos(self._raw(j), ".") > 0

    def not_array(self, j):
        return self.typ(j).is_distinct_from("array")

    def _raw(self, j):
        return _raw(j).op("#>>", return_type=Text)(literal([], ARRAY(Text)))

    def num(self, j):
        return case((self.typ(j) == "number", cast(_raw(j), Numeric)), else_=null())

    def text(self, j):
        return case((self.typ(j) == "string", self._raw(j)), else_=null())

    def num_literal(self, value):
        return cast(literal(repr(value) if isinstance(value, float) else str(value), Text), Numeric)

    def text_literal(self, value: str):
        return literal(value, Text)

    def json_eq(self, j, value):
        return _raw(j) == self._json(_dumps(value))

    def array_length(self, j):
        return case((self.typ(j) == "array", func.jsonb_array_length(_raw(j))), else_=null())

    def key(self, j, seg: str):
        return _raw(j).op("->", return_type=JSONB)(literal(seg, Text))

    def path(self, j, segs: list[str]):
        for seg in segs:
            j = self.key(j, seg)
        return _raw(j)

    def wrap(self, j):
        return case((self.typ(j) == "array", _raw(j)), else_=self.one(j))

    def one(self, j):
        return func.jsonb_build_array(_raw(j), type_=JSONB)

    def each(self, x) -> _Each:
        t = (
            func.jsonb_array_elements(x, type_=JSONB)
            .table_valued("value", with_ordinality="ord")
            .render_derived()
        )
        return _Each(t, self.typ(t.c.value), t.c.value, t.c.ord - 1, t.c.value)

    def elements(self, j) -> _Each:
        return self.each(case((self.typ(j) == "array", _raw(j)), else_=self._json("[]")))

    def regex(self, text, pattern: str, flags: str):
        return text.op("~")(literal(_pg_regex(pattern, flags), Text))

    def collate(self, expr):
        return expr.collate("C")

    def expr_number(self, expr):
        return cast(expr, Float)

    def expr_divide(self, a, b):
        return a / b

    def expr_mod(self, a, b):
        return a - b * func.trunc(a / b)

    def pack(self, v):
        slots = []
        for key, value in (("k", v.kind), ("n", v.num), ("t", v.text), ("d", v.dt), ("j", v.json)):
            slots += [literal(key, Text), cast(null(), Text) if value is None else value]
        return func.jsonb_build_array(func.jsonb_build_object(*slots, type_=JSONB), type_=JSONB)

    def unpack(self, obj) -> _ExprVal:
        get = lambda key: obj.op("->>", return_type=Text)(literal(key, Text))  # noqa: E731
        return _ExprVal(
            kind=cast(get("k"), Integer),
            num=cast(get("n"), Float),
            text=get("t"),
            dt=cast(get("d"), DateTime(timezone=True)),
            json=obj.op("->", return_type=JSONB)(literal("j", Text)),
        )

    def sort_key(self, j):
        typ = self.typ(j)
        code = case(
            (typ == "number", 1),
            (typ == "string", 2),
            (typ == "object", 3),
            (typ == "array", 4),
            (typ == "boolean", 5),
            else_=0,
        )
        return tuple_(
            code,
            func.coalesce(self.num(j), 0),
            func.coalesce(self.text(j), "").collate("C"),
            func.coalesce(j, self._json("null")),
        )


def _pg_regex(pattern: str, flags: str) -> str:
    """A Python/PCRE-style pattern as a PostgreSQL ARE with embedded options: ``i`` as is,
    ``x`` expanded syntax, newline handling from ``m``/``s`` (p, n, s or w); ``\\b``/``\\B``
    become ``\\y``/``\\Y``."""
    lead = re.match(r"^\(\?([aiLmsux]+)\)", pattern)
    if lead:
        flags += lead.group(1)
        pattern = pattern[lead.end() :]
    for bad in (r"\(\?P", r"\(\?<(?![=!])", r"\(\?>"):
        found = re.search(bad, pattern)
        if found:
            raise FilterError(
                f"Unsupported regular expression construct {found.group()!r} in $regex"
            )
    if re.search(r"\(\?[a-zA-Z-]+[:)]", pattern):
        raise FilterError("Scoped or inline regular expression flags must lead the $regex")
    out, i, in_class = [], 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            out.append(
                {"b": "\\y", "B": "\\Y"}.get(nxt, "\\" + nxt) if not in_class else "\\" + nxt
            )
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
        elif ch == "]" and in_class:
            in_class = False
        out.append(ch)
        i += 1
    newline = {(False, False): "p", (True, False): "n", (False, True): "s", (True, True): "w"}[
        ("m" in flags, "s" in flags)
    ]
    opts = newline + ("i" if "i" in flags else "") + ("x" if "x" in flags else "")
    return f"(?{opts})" + "".join(out)


Backend = _SqliteJson | _PostgresJson


# --------------------------------------------------------------------------- compiler


@dataclass
class _Target:
    """What a field path refers to: a JSON value under ``root`` (``segs`` below it), or a
    plain column (``segs`` empty)."""

    kind: str  # "json" | "column"
    root: Any
    segs: list[str]
    name: str = ""
    root_is_object: bool = False


@dataclass
class _Counter:
    nodes: int = 0


@dataclass
class _ExprVal:
    """A typed ``$expr`` value: ``kind`` is the BSON order code (``_ORDER``) as SQL, NULL for
    an evaluation error; ``num`` (numbers and booleans as 0/1), ``text``, ``dt`` and ``json``
    hold the value in the slot of its kind."""

    kind: Any
    num: Any = None
    text: Any = None
    dt: Any = None
    json: Any = None


class Compiler:
    """One compilation of one filter; counts nodes and depth to enforce the limits."""

    def __init__(
        self, fields: FieldMap, backend: Backend, counter: _Counter | None = None, root: Any = None
    ):
        self.fields = fields
        self.b = backend
        self.counter = counter or _Counter()
        self.root = root  # set inside $elemMatch: paths are relative to this element

    # ------------------------------------------------------------------ structure
    def _tick(self, depth: int, n: int = 1) -> None:
        self.counter.nodes += n
        if self.counter.nodes > MAX_NODES:
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
                parts.append(self.top_operator(key, value, depth + 1))
            else:
                parts.append(self.field(key, value, depth + 1))
        return _all(parts)

    def top_operator(self, op: str, value: Any, depth: int) -> ColumnElement:
        if op in _UNSAFE:
            raise FilterError(f"Operator {op} is not allowed")
        if op == "$expr":
            if self.root is not None:
                raise FilterError("$expr is not supported inside $elemMatch")
            return self.top_expr(value, depth + 1)
        if op not in _LOGICAL:
            raise FilterError(f"Unknown or unsupported top-level operator {op}")
        if not isinstance(value, list) or not value:
            raise FilterError(f"{op} needs a non-empty list of filters")
        subs = [self.document(v, depth + 1) for v in value]
        if op == "$and":
            return _all(subs)
        if op == "$or":
            return _any(subs)
        return not_(_any(subs))

    def _split(self, path: str) -> list[str]:
        if not isinstance(path, str) or not path:
            raise FilterError(f"Invalid field path {path!r} in filter")
        segments = path.split(".")
        if len(segments) > MAX_PATH_SEGMENTS:
            raise FilterError(f"Field path {path!r} has more than {MAX_PATH_SEGMENTS} parts")
        if not all(SEGMENT.match(s) for s in segments):
            raise FilterError(f"Invalid field path {path!r} in filter")
        return segments

    def target(self, path: str) -> _Target:
        segments = self._split(path)
        if self.root is not None:
            return _Target("json", self.root, segments, path, root_is_object=True)
        head = segments[0]
        if head in self.fields.json_columns:
            return _Target(
                "json",
                self.b.root(self.fields.json_columns[head]),
                segments[1:],
                head,
                root_is_object=head not in self.fields.non_object_json,
            )
        if head in self.fields.columns and len(segments) == 1:
            return _Target("column", self.fields.columns[head], [], head)
        # Unknown fields and paths below a scalar column are missing in every document.
        return _Target("json", self.b.missing(), [], path)

    def field(self, path: str, cond: Any, depth: int) -> ColumnElement:
        tgt = self.target(path)
        if (
            isinstance(cond, Mapping)
            and cond
            and all(isinstance(k, str) and k.startswith("$") for k in cond)
        ):
            return self.conditions(tgt, cond, depth)
        if isinstance(cond, Mapping) and any(
            isinstance(k, str) and k.startswith("$") for k in cond
        ):
            raise FilterError(f"Cannot mix operators and fields in the condition on {path!r}")
        return self.op(tgt, "$eq", cond, depth)

    def conditions(self, tgt: _Target, cond: Mapping, depth: int) -> ColumnElement:
        """Several operators on one field: independent conditions, all required."""
        self._tick(depth)
        parts = []
        for op, value in cond.items():
            self._check_field_op(op, tgt.name)
            if op == "$options":
                if "$regex" not in cond:
                    raise FilterError("$options needs $regex")
                continue
            if op == "$regex":
                parts.append(self.op(tgt, op, (value, cond.get("$options", "")), depth + 1))
            else:
                parts.append(self.op(tgt, op, value, depth + 1))
        return _all(parts)

    @staticmethod
    def _check_field_op(op: Any, where: str) -> None:
        if op in _UNSAFE:
            raise FilterError(f"Operator {op} is not allowed")
        if op not in _FIELD_OPS:
            raise FilterError(f"Unknown or unsupported operator {op} (on {where!r})")

    # ------------------------------------------------------------------ one operator
    def op(self, tgt: _Target, op: str, value: Any, depth: int) -> ColumnElement:
        """One operator on a field; the result is two-valued."""
        self._tick(depth)
        if op == "$not":
            if not isinstance(value, Mapping) or not value:
                raise FilterError(f"$not on {tgt.name!r} needs an operator object")
            if not all(isinstance(k, str) and k.startswith("$") for k in value):
                raise FilterError(f"$not on {tgt.name!r} needs operators, not fields")
            return not_(self.conditions(tgt, value, depth + 1))
        if op == "$ne":
            return not_(self.op(tgt, "$eq", value, depth + 1))
        if op == "$nin":
            return not_(self.op(tgt, "$in", value, depth + 1))
        if op == "$all":
            if not isinstance(value, list):
                raise FilterError(f"$all on {tgt.name!r} needs a list")
            self._tick(depth, len(value))
            if not value:
                return false()
            parts = []
            for item in value:
                if isinstance(item, Mapping) and "$elemMatch" in item:
                    if len(item) != 1:
                        raise FilterError("$all members with $elemMatch take nothing else")
                    parts.append(self.op(tgt, "$elemMatch", item["$elemMatch"], depth + 1))
                else:
                    parts.append(self.op(tgt, "$eq", item, depth + 1))
            return _all(parts)
        if op == "$exists":
            if tgt.kind == "column":
                return true() if value else false()
            present = self.exists(tgt, lambda j: j.is_not(None))
            return present if value else not_(present)
        pred = self.predicate(
            op, value, depth, expand=True, column=tgt if tgt.kind == "column" else None
        )
        if tgt.kind == "column":
            return pred(tgt.root)
        return self.exists(tgt, pred)

    def predicate(
        self, op: str, value: Any, depth: int, expand: bool, column: _Target | None = None
    ) -> Callable[[Any], ColumnElement]:
        """A function from one candidate value to a condition for ``op``/``value``.

        ``expand``: leaf semantics (the candidate may be missing; elements of an array
        candidate also count), else element semantics inside ``$elemMatch`` (present value,
        no expansion). ``column``: the candidate is a plain column."""
        if op in ("$eq", "$gt", "$gte", "$lt", "$lte"):
            value = decode_datetimes(value)
            kind = _kind(value)
            if op != "$eq" and kind in ("array", "object"):
                raise FilterError(f"{op} with an object or array value is not supported")
            if column is not None:
                return lambda c: self.column_compare(column, op, value)
            return self._expanding(
                lambda j: self.scalar_compare(j, op, value),
                expand,
                value is None and op in _NULLISH_OPS,
            )
        if op == "$in":
            if not isinstance(value, list):
                raise FilterError("$in and $nin need a list")
            self._tick(depth, len(value))
            values = [decode_datetimes(v) for v in value]
            for v in values:
                if isinstance(v, Mapping) and any(str(k).startswith("$") for k in v):
                    raise FilterError("$in members cannot be operator objects")
            if column is not None:
                return lambda c: self.column_in(column, values)
            return self._expanding(
                lambda j: self.scalar_in(j, values), expand, any(v is None for v in values)
            )
        if op == "$regex":
            pattern, options = value if isinstance(value, tuple) else (value, "")
            flags = self._regex_flags(pattern, options)
            if column is not None:
                if self._column_kind(column) != "string":
                    return lambda c: false()
                return lambda c: and_(c.is_not(None), self.b.regex(c, pattern, flags))
            return self._expanding(
                lambda j: and_(
                    self.b.is_kind(j, "string"), self.b.regex(self.b.text(j), pattern, flags)
                ),
                expand,
                False,
            )
        if op == "$size":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise FilterError("$size needs a non-negative integer")
            if column is not None:
                return lambda c: false()
            return lambda j: and_(
                self.b.is_kind(j, "array"), self.b.array_length(j) == literal(value, Integer)
            )
        if op == "$type":
            names = self._type_names(value)
            if column is not None:
                return lambda c: self.column_type(column, names)
            return self._expanding(
                lambda j: _any([self.b.type_test(j, n) for n in names]), expand, False
            )
        if op == "$elemMatch":
            if not isinstance(value, Mapping) or not value:
                raise FilterError("$elemMatch needs a non-empty object")
            if column is not None:
                return lambda c: false()
            return lambda j: self.elem_match(j, value, depth + 1)
        if op in ("$ne", "$nin", "$not", "$all", "$exists"):
            # Only reached inside $elemMatch (element semantics).
            return self.element_predicate(op, value, depth)
        raise FilterError(f"Unknown or unsupported operator {op}")

    def _expanding(self, pred: Callable, expand: bool, missing_matches: bool) -> Callable:
        if not expand:
            return pred

        def leaf(j):
            e = self.b.elements(j)
            in_array = and_(
                self.b.is_kind(j, "array"),
                select(literal(1)).select_from(e.table).where(pred(e.jv)).exists(),
            )
            parts = [pred(j), in_array]
            if missing_matches:
                parts.append(j.is_(None))
            return or_(*parts)

        return leaf

    def element_predicate(self, op: str, value: Any, depth: int) -> Callable:
        """Negations and ``$all``/``$exists`` applied to one array element (no expansion)."""
        if op == "$exists":
            return lambda j: true() if value else false()
        if op == "$not":
            if not isinstance(value, Mapping) or not value:
                raise FilterError("$not needs an operator object")
            inner = self.element_conditions(value, depth + 1)
            return lambda j: not_(_safe(inner(j)))
        if op in ("$ne", "$nin"):
            inner = self.predicate("$eq" if op == "$ne" else "$in", value, depth, expand=False)
            return lambda j: not_(_safe(inner(j)))
        if not isinstance(value, list):
            raise FilterError("$all needs a list")
        if not value:
            return lambda j: false()
        preds = [
            self.predicate("$elemMatch", v["$elemMatch"], depth, expand=False)
            if isinstance(v, Mapping) and "$elemMatch" in v
            else self.predicate("$eq", v, depth, expand=False)
            for v in value
        ]
        return lambda j: _all([p(j) for p in preds])

    def element_conditions(self, cond: Mapping, depth: int) -> Callable:
        self._tick(depth)
        preds = []
        for op, value in cond.items():
            self._check_field_op(op, "$elemMatch")
            if op == "$options":
                if "$regex" not in cond:
                    raise FilterError("$options needs $regex")
                continue
            if op == "$regex":
                value = (value, cond.get("$options", ""))
            self._tick(depth + 1)
            preds.append(self.predicate(op, value, depth + 1, expand=False))
        return lambda j: _all([p(j) for p in preds])

    def elem_match(self, j, query: Mapping, depth: int) -> ColumnElement:
        """``$elemMatch``: some element of the array ``j`` satisfies ``query`` — operators on
        the element itself, or a query document on an element that is an object."""
        e = self.b.elements(j)
        keys = list(query)
        value_form = all(isinstance(k, str) and k.startswith("$") for k in keys) and not (
            set(keys) & _LOGICAL
        )
        if value_form:
            cond = self.element_conditions(query, depth)(e.jv)
        else:
            sub = Compiler(self.fields, self.b, self.counter, root=e.obj)
            cond = and_(e.typ == "object", sub.document(query, depth))
        return and_(
            self.b.is_kind(j, "array"), select(literal(1)).select_from(e.table).where(cond).exists()
        )

    # ------------------------------------------------------------------ JSON values
    def exists(self, tgt: _Target, pred: Callable[[Any], Any]) -> ColumnElement:
        """Whether some candidate value of ``tgt`` satisfies ``pred`` (two-valued)."""
        froms, conds, j = self.candidates(tgt)
        if not froms:
            return _safe(_all(conds + [pred(j)]))
        stmt = select(literal(1)).select_from(froms[0][0])
        for extra, outer in froms[1:]:
            stmt = stmt.join(extra, true(), isouter=outer)
        return stmt.where(_all(conds + [pred(j)])).exists()

    def candidates(self, tgt: _Target):
        """The candidate values of a JSON path: FROM items (each a row per candidate), their
        conditions, and the candidate expression ``j`` (SQL NULL = missing)."""
        b = self.b
        j, segs, froms, conds = tgt.root, list(tgt.segs), [], []
        if segs and tgt.root_is_object:
            j = b.key(j, segs.pop(0))
        for seg in segs:
            e = b.each(b.wrap(j))
            froms.append((e.table, False))
            field_of_elem = case((e.typ == "object", b.key(e.obj, seg)), else_=b.missing())
            if INDEX.match(seg):
                # an array: its element at the index (no row when out of range);
                # an object: its key; anything else: missing
                conds.append(or_(b.not_array(j), e.idx == int(seg)))
                j = case((b.typ(j) == "array", _raw(e.jv)), else_=field_of_elem)
                # Materialise the value as a column (a one-row LEFT JOIN; no row = missing)
                # so that the next level refers to it instead of repeating this expression.
                one = b.each(case((j.is_(None), null()), else_=b.one(j)))
                froms.append((one.table, True))
                j = _raw(one.jv)
            else:
                # an array: the field of each element that is an object
                conds.append(or_(e.typ == "object", b.not_array(j)))
                j = field_of_elem
        return froms, conds, j

    def scalar_compare(self, j, op: str, value: Any):
        """``j <op> value`` for one present JSON value, within the value's type bracket."""
        b = self.b
        kind = _kind(value)
        if kind == "bool":
            allowed = _bool_sets(op, value)
            return _any([b.is_kind(j, "true" if v else "false") for v in sorted(allowed)])
        if kind == "null":
            return b.is_kind(j, "null") if op in _NULLISH_OPS else false()
        if kind == "number":
            return and_(b.is_kind(j, "number"), _cmp(b.num(j), op, b.num_literal(value)))
        if kind in ("string", "datetime"):
            text = value.isoformat() if kind == "datetime" else value
            return and_(
                b.is_kind(j, "string"), _cmp(b.collate(b.text(j)), op, b.text_literal(text))
            )
        return and_(b.is_kind(j, kind), b.json_eq(j, value))

    def scalar_in(self, j, values: list):
        b = self.b
        nums = [v for v in values if _kind(v) == "number"]
        texts = [
            v.isoformat() if isinstance(v, datetime) else v
            for v in values
            if _kind(v) in ("string", "datetime")
        ]
        parts = []
        if nums:
            parts.append(
                and_(b.is_kind(j, "number"), b.num(j).in_([b.num_literal(v) for v in nums]))
            )
        if texts:
            parts.append(
                and_(b.is_kind(j, "string"), b.text(j).in_([b.text_literal(v) for v in texts]))
            )
        for v in values:
            if _kind(v) in ("bool", "null", "array", "object"):
                parts.append(self.scalar_compare(j, "$eq", v))
        return _any(parts)

    def _regex_flags(self, pattern: Any, options: Any) -> str:
        if not isinstance(pattern, str) or not isinstance(options, str):
            raise FilterError("$regex needs a string pattern and string $options")
        if len(pattern) > MAX_PATTERN:
            raise FilterError(f"$regex longer than {MAX_PATTERN} characters")
        bad = set(options) - set("imsx")
        if bad:
            raise FilterError(f"Unsupported $options {''.join(sorted(bad))!r}")
        flags = "".join(sorted(set(options)))
        try:
            re.compile(f"(?{flags}){pattern}" if flags else pattern)
        except re.error as exc:
            raise FilterError(f"Invalid $regex {pattern!r}: {exc}") from exc
        if self.b.dialect == "postgresql":
            _pg_regex(pattern, flags)  # raises FilterError on constructs PostgreSQL lacks
        return flags

    @staticmethod
    def _type_names(value: Any) -> list[str]:
        values = value if isinstance(value, list) else [value]
        if not values:
            raise FilterError("$type needs at least one type")
        names = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise FilterError(f"Invalid $type {v!r}")
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if v in _TYPE_ALIASES:
                names.append(_TYPE_ALIASES[v])
            elif v not in _TYPE_NEVER:
                raise FilterError(f"Unknown $type {v!r}")
        return names

    # ------------------------------------------------------------------ columns
    def _column_kind(self, tgt: _Target) -> str:
        if tgt.name in self.fields.datetime_columns:
            return "datetime"
        try:
            python_type = tgt.root.type.python_type
        except NotImplementedError:
            return "string"
        if python_type in (int, float):
            return "number"
        if python_type is datetime:
            return "datetime"
        return "string"

    def _nullable(self, tgt: _Target) -> bool:
        return bool(getattr(tgt.root, "nullable", True))

    def _present(self, tgt: _Target, cond):
        return and_(tgt.root.is_not(None), cond) if self._nullable(tgt) else cond

    def _column_value(self, tgt: _Target, value: Any) -> tuple[str, Any]:
        """(kind, value) of a filter value as seen by a column of ``tgt``'s kind."""
        ckind = self._column_kind(tgt)
        if ckind == "datetime" and isinstance(value, str):
            return "datetime", _parse_datetime(value)
        return _kind(value), value

    def column_compare(self, tgt: _Target, op: str, value: Any):
        col = tgt.root
        if value is None:
            if op in _NULLISH_OPS and self._nullable(tgt):
                return col.is_(None)
            return false()
        kind, value = self._column_value(tgt, value)
        if kind != self._column_kind(tgt):
            return false()  # different type brackets never compare
        if kind == "string" and self.b.dialect == "postgresql" and op != "$eq":
            return self._present(tgt, _cmp(col.collate("C"), op, literal(value, Text)))
        return self._present(tgt, _cmp(col, op, value))

    def column_in(self, tgt: _Target, values: list):
        col, parts, plain = tgt.root, [], []
        for v in values:
            if v is None:
                parts.append(self.column_compare(tgt, "$eq", None))
                continue
            kind, v = self._column_value(tgt, v)
            if kind == self._column_kind(tgt):
                plain.append(v)
        if plain:
            parts.append(self._present(tgt, col.in_(plain)))
        return _any(parts)

    def column_type(self, tgt: _Target, names: list[str]):
        col, ckind, parts = tgt.root, self._column_kind(tgt), []
        python_type = getattr(tgt.root.type, "python_type", None) if ckind == "number" else None
        for name in names:
            if name == "null":
                parts.append(col.is_(None) if self._nullable(tgt) else false())
            elif name == ckind or (name == "date" and ckind == "datetime"):
                parts.append(self._present(tgt, true()))
            elif ckind == "number" and name in ("int", "long", "double"):
                if name == "double":
                    parts.append(self._present(tgt, true()) if python_type is float else false())
                elif python_type is int:
                    inside = col.between(*INT32)
                    parts.append(self._present(tgt, inside if name == "int" else not_(inside)))
        return _any(parts)

    # ------------------------------------------------------------------ $expr
    def top_expr(self, node: Any, depth: int) -> ColumnElement:
        """``{"$expr": node}``. Every computed value is materialised as a one-row FROM item
        (a JSON object holding its slots), so that a parent refers to its children's columns
        instead of repeating their SQL: the statement grows linearly with the expression."""
        self._expr_froms: list = []
        try:
            cond = self.truthy(self.expr(node, depth))
            froms = self._expr_froms
        finally:
            self._expr_froms = None
        if not froms:
            return _safe(cond)
        stmt = select(literal(1)).select_from(froms[0])
        for extra in froms[1:]:
            stmt = stmt.join(extra, true())
        return stmt.where(cond).exists()

    def _materialise(self, v: _ExprVal) -> _ExprVal:
        if getattr(self, "_expr_froms", None) is None:
            return v
        e = self.b.each(self.b.pack(v))
        self._expr_froms.append(e.table)
        return self.b.unpack(e.obj)

    def expr(self, node: Any, depth: int) -> _ExprVal:
        """Compile an aggregation expression into a typed value."""
        self._tick(depth)
        if isinstance(node, str) and node.startswith("$"):
            if node.startswith("$$"):
                raise FilterError(f"Variables are not supported in $expr: {node!r}")
            return self._materialise(self.expr_field(node[1:]))
        if isinstance(node, Mapping) and len(node) == 1 and next(iter(node)).startswith("$"):
            op, args = next(iter(node.items()))
            if op in _UNSAFE:
                raise FilterError(f"Operator {op} is not allowed")
            if op == "$literal":
                return self.expr_literal(decode_datetimes(args))
            if op in _EXPR_ARITH:
                return self._materialise(self.expr_arith(op, args, depth))
            if op in _COMPARE:
                if not isinstance(args, list) or len(args) != 2:
                    raise FilterError(f"{op} in $expr needs a list of two expressions")
                return self._bool_val(
                    self.expr_compare(
                        op, self.expr(args[0], depth + 1), self.expr(args[1], depth + 1)
                    )
                )
            if op in _EXPR_BOOL:
                items = args if isinstance(args, list) else [args]
                if op == "$not" and len(items) != 1:
                    raise FilterError("$not in $expr takes one expression")
                truths = [self.truthy(self.expr(a, depth + 1)) for a in items]
                if op == "$not":
                    result = not_(truths[0])
                elif op == "$and":
                    result = _all(truths)
                else:
                    result = _any(truths)
                return self._bool_val(result)
            raise FilterError(f"Unknown or unsupported $expr operator {op}")
        if isinstance(node, Mapping) and any(str(k).startswith("$") for k in node):
            raise FilterError("An $expr object must have exactly one operator")
        value = decode_datetimes(node)
        if _contains_field_ref(value):
            raise FilterError("Arrays and objects in $expr must be constants (use $literal)")
        return self.expr_literal(value)

    def _bool_val(self, cond) -> _ExprVal:
        """A SQL condition (NULL = error) as a boolean $expr value."""
        return self._materialise(
            _ExprVal(
                kind=case((Grouping(cond).is_(None), null()), else_=_ORDER["bool"]),
                num=case((cond, 1), else_=0),
            )
        )

    def expr_literal(self, value: Any) -> _ExprVal:
        b, kind = self.b, _kind(value)
        code = literal(_ORDER[kind], Integer)
        if kind == "number":
            return _ExprVal(code, num=b.expr_number(literal(value)))
        if kind == "bool":
            return _ExprVal(code, num=literal(int(value), Integer))
        if kind == "string":
            return _ExprVal(code, text=literal(value, Text))
        if kind == "datetime":
            return _ExprVal(code, dt=literal(value, self._datetime_type()))
        if kind in ("array", "object"):
            j = literal(_dumps(value), Text)
            return _ExprVal(code, json=cast(j, JSONB) if b.dialect == "postgresql" else j)
        return _ExprVal(code)

    def _datetime_type(self):
        for name in sorted(self.fields.datetime_columns):
            if name in self.fields.columns:
                return self.fields.columns[name].type
        raise FilterError("This table has no datetime fields")

    def expr_field(self, path: str) -> _ExprVal:
        """A field reference: objects are walked key by key (no array traversal)."""
        segments = self._split(path)
        head = segments[0]
        b = self.b
        if head in self.fields.columns and len(segments) == 1:
            tgt = _Target("column", self.fields.columns[head], [], head)
            col, ckind = tgt.root, self._column_kind(tgt)
            code = case((col.is_(None), _ORDER["null"]), else_=_ORDER[ckind])
            if ckind == "number":
                return _ExprVal(code, num=b.expr_number(col))
            if ckind == "datetime":
                return _ExprVal(code, dt=col)
            return _ExprVal(code, text=col)
        if head in self.fields.json_columns:
            root = b.root(self.fields.json_columns[head])
            j = b.path(root, segments[1:]) if len(segments) > 1 else root
        else:
            return _ExprVal(literal(_ORDER["missing"], Integer))
        typ_code = case(
            (j.is_(None), _ORDER["missing"]),
            (b.is_kind(j, "null"), _ORDER["null"]),
            (b.is_kind(j, "number"), _ORDER["number"]),
            (b.is_kind(j, "string"), _ORDER["string"]),
            (b.is_kind(j, "object"), _ORDER["object"]),
            (b.is_kind(j, "array"), _ORDER["array"]),
            else_=_ORDER["bool"],
        )
        return _ExprVal(
            typ_code,
            num=case(
                (b.is_kind(j, "true"), 1), (b.is_kind(j, "false"), 0), else_=b.expr_number(b.num(j))
            ),
            text=b.text(j),
            json=j,
        )

    def expr_arith(self, op: str, args: Any, depth: int) -> _ExprVal:
        if not isinstance(args, list) or not args:
            raise FilterError(f"{op} needs a non-empty list of expressions")
        if op in ("$subtract", "$divide", "$mod") and len(args) != 2:
            raise FilterError(f"{op} needs exactly two expressions")
        vals = [self.expr(a, depth + 1) for a in args]
        b = self.b
        nums = [b.expr_number(null()) if v.num is None else v.num for v in vals]
        if op == "$add":
            result = nums[0]
            for n in nums[1:]:
                result = result + n
        elif op == "$multiply":
            result = nums[0]
            for n in nums[1:]:
                result = result * n
        elif op == "$subtract":
            result = nums[0] - nums[1]
        elif op == "$divide":
            result = case((nums[1] == 0, null()), else_=b.expr_divide(nums[0], nums[1]))
        else:
            result = case((nums[1] == 0, null()), else_=b.expr_mod(nums[0], nums[1]))
        nullish = _any([v.kind.in_((_ORDER["missing"], _ORDER["null"])) for v in vals])
        error = _any([v.kind.is_(None) for v in vals])
        numeric = _all([v.kind == _ORDER["number"] for v in vals])
        kind = case(
            (error, null()),
            (nullish, _ORDER["null"]),
            (and_(numeric, result.is_not(None)), _ORDER["number"]),
            else_=null(),
        )
        return _ExprVal(kind, num=result)

    def expr_compare(self, op: str, a: _ExprVal, c: _ExprVal):
        """BSON comparison of two typed values; NULL when either is an error."""
        same = a.kind == c.kind

        def slot(name):
            x, y = getattr(a, name), getattr(c, name)
            if x is None or y is None:
                return null()
            if name == "text" and self.b.dialect == "postgresql":
                x = x.collate("C")
            return _cmp(x, op, y)

        if op in ("$eq", "$ne"):
            json_cmp = slot("json") if a.json is not None and c.json is not None else null()
        else:
            json_cmp = null()
        return case(
            (or_(a.kind.is_(None), c.kind.is_(None)), null()),
            (not_(same), _cmp(a.kind, op, c.kind)),
            (a.kind.in_((_ORDER["number"], _ORDER["bool"])), slot("num")),
            (a.kind == _ORDER["string"], slot("text")),
            (a.kind == _ORDER["datetime"], slot("dt")),
            (a.kind.in_((_ORDER["missing"], _ORDER["null"])), _cmp(literal(0), op, literal(0))),
            else_=json_cmp,
        )

    def truthy(self, v: _ExprVal):
        """Mongo truthiness: false, null, missing and 0 are false; NULL on an error."""
        return case(
            (v.kind.is_(None), null()),
            (v.kind.in_((_ORDER["missing"], _ORDER["null"])), false()),
            (v.kind.in_((_ORDER["number"], _ORDER["bool"])), v.num != 0),
            else_=true(),
        )


def _contains_field_ref(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith("$")
    if isinstance(value, list):
        return any(_contains_field_ref(v) for v in value)
    if isinstance(value, dict):
        return any(str(k).startswith("$") or _contains_field_ref(v) for k, v in value.items())
    return False


def backend_for(dialect: str) -> Backend:
    """The JSON backend for a SQLAlchemy dialect name (``sqlite`` or ``postgresql``)."""
    if dialect == "sqlite":
        return _SqliteJson()
    if dialect == "postgresql":
        return _PostgresJson()
    raise FilterError(f"Filters are not supported on the {dialect} backend")


def compile_filter(filt: Mapping[str, Any] | None, fields: FieldMap, dialect: str) -> ColumnElement:
    """Compile a Mongo filter document into a SQL boolean expression (two-valued).

    ``filt``: a JSON object (``None``/``{}`` = match everything). ``fields``: the table's
    field map. ``dialect``: ``"sqlite"`` or ``"postgresql"``. Raises ``FilterError`` with a
    message naming the offending operator, path or value.
    """
    if not filt:
        if filt is not None and not isinstance(filt, Mapping):
            raise FilterError(f"A filter must be an object, got {type(filt).__name__}")
        return true()
    return Compiler(fields, backend_for(dialect)).document(filt)


def sort_expression(field: str, fields: FieldMap, dialect: str):
    """SQL expression to order by ``field`` (a column name or a dotted JSON path).

    JSON paths sort in MongoDB's type order (missing/null, numbers, strings, objects,
    arrays, booleans), numbers numerically and strings by code point."""
    if not isinstance(field, str):
        raise FilterError(f"Invalid sort field {field!r}")
    segments = field.split(".")
    if len(segments) > MAX_PATH_SEGMENTS or not all(SEGMENT.match(s) for s in segments):
        raise FilterError(f"Invalid sort field {field!r}")
    head = segments[0]
    if head in fields.columns and len(segments) == 1:
        col = fields.columns[head]
        if dialect == "postgresql" and getattr(col.type, "python_type", None) is str:
            return col.collate("C")
        return col
    if head in fields.json_columns:
        b = backend_for(dialect)
        root = b.root(fields.json_columns[head])
        return b.sort_key(b.path(root, segments[1:]) if len(segments) > 1 else root)
    return literal(None)


def register_sqlite_functions(dbapi_conn) -> None:
    """Register ``labtasker_regexp(pattern, value)`` on a sqlite3 connection."""
    cache: dict[str, re.Pattern] = {}

    def regexp(pattern, value):
        if value is None or not isinstance(value, str):
            return 0
        rx = cache.get(pattern)
        if rx is None:
            if len(cache) > 256:
                cache.clear()
            rx = cache[pattern] = re.compile(pattern)
        return 1 if rx.search(value) else 0

    dbapi_conn.create_function("labtasker_regexp", 2, regexp, deterministic=True)
