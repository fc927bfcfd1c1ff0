"""JSON access per database, behind one ``JsonBackend`` protocol: SQLite JSON1
(``json_type``, ``->``, ``->>``, ``json_each``; paths are bound strings) and PostgreSQL jsonb
(``->``, ``jsonb_typeof``, ``jsonb_array_elements``; keys are bound text).

A *JSON value* is a SQL expression holding JSON (text on SQLite, jsonb on PostgreSQL) where SQL
NULL means *missing*; every method taking one also accepts a ``JsonValue`` (an array element
with cheaper spellings of its type and scalar)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import (
    ARRAY,
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
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB

from labtasker.filters.mongo_sql.common import (
    INT32,
    ExprValue,
    FilterError,
    SqlExpr,
    dumps,
    json_path,
)
from labtasker.filters.mongo_sql.regex import Regex

MAX_DOUBLE = 1.7976931348623157e308


class JsonValue:
    """A present JSON value with cheaper spellings of its type and scalar value (an array
    element from ``json_each``). ``json`` (the value as JSON) may be given as a function,
    built on first use."""

    def __init__(
        self,
        json: SqlExpr | Callable[[], SqlExpr],
        type_of: SqlExpr | None = None,
        scalar: SqlExpr | None = None,
    ) -> None:
        self._json = json
        self.type_of = type_of
        self.scalar = scalar

    @property
    def json(self) -> SqlExpr:
        if callable(self._json):
            self._json = self._json()
        return self._json


Json = SqlExpr | JsonValue
"""A JSON value as a SQL expression, or a ``JsonValue``."""


def as_json(value: Json) -> SqlExpr:
    """The JSON expression of ``value``."""
    return value.json if isinstance(value, JsonValue) else value


@dataclass
class ArrayElements:
    """A FROM item over the elements of an array: each element's type, the element as a JSON
    value (``value``), its index, and ``element`` (the element, valid when it is an object)."""

    table: Any
    type_of: SqlExpr
    value: Json
    index: SqlExpr
    element: SqlExpr


class JsonBackend(Protocol):
    """How the compiler reads JSON on one database."""

    dialect: str

    def root(self, column: SqlExpr) -> SqlExpr:
        """The JSON value held by a JSON column."""
        ...

    def missing(self) -> SqlExpr:
        """The missing value (SQL NULL of the JSON type)."""
        ...

    def type_of(self, value: Json) -> SqlExpr:
        """The database's type name of a JSON value."""
        ...

    def is_kind(self, value: Json, kind: str) -> SqlExpr:
        """Whether a JSON value is of ``kind`` (null true false bool number string array
        object integer real)."""
        ...

    def not_array(self, value: Json) -> SqlExpr:
        """Whether a JSON value is not an array (missing counts as not an array)."""
        ...

    def number(self, value: Json) -> SqlExpr:
        """A JSON number as a SQL number (NULL for other types)."""
        ...

    def text(self, value: Json) -> SqlExpr:
        """A JSON string as SQL text (NULL for other types)."""
        ...

    def number_literal(self, value: int | float) -> SqlExpr:
        """A bound number comparable with ``number()``."""
        ...

    def text_literal(self, value: str) -> SqlExpr:
        """A bound string comparable with ``text()``."""
        ...

    def json_equals(self, value: Json, constant: Any) -> SqlExpr:
        """Whether a JSON value equals a constant array or object."""
        ...

    def array_length(self, value: Json) -> SqlExpr:
        """The length of a JSON array (NULL for other types)."""
        ...

    def key(self, value: Json, segment: str) -> SqlExpr:
        """The member ``segment`` of a JSON object (missing for other types)."""
        ...

    def path(self, value: Json, segments: list[str]) -> SqlExpr:
        """The value under the keys ``segments`` (objects only, no array traversal)."""
        ...

    def as_array(self, value: Json) -> SqlExpr:
        """``value`` when it is an array, else a one-element array holding it."""
        ...

    def singleton(self, value: Json) -> SqlExpr:
        """A one-element array holding ``value``."""
        ...

    def each(self, array: SqlExpr) -> ArrayElements:
        """FROM item over the elements of the array ``array``."""
        ...

    def elements(self, value: Json) -> ArrayElements:
        """FROM item over the elements of ``value`` (no rows when it is not an array)."""
        ...

    def regex(self, text: SqlExpr, regex: Regex) -> SqlExpr:
        """Whether ``text`` contains a match of a checked ``$regex``."""
        ...

    def collate(self, expression: SqlExpr) -> SqlExpr:
        """Text compared by code point."""
        ...

    def expr_number(self, expression: SqlExpr) -> SqlExpr:
        """A number as the ``$expr`` number type."""
        ...

    def expr_divide(self, dividend: SqlExpr, divisor: SqlExpr) -> SqlExpr: ...

    def expr_mod(self, dividend: SqlExpr, divisor: SqlExpr) -> SqlExpr: ...

    def pack(self, value: ExprValue) -> SqlExpr:
        """A one-element array holding the slots of an ``$expr`` value as an object."""
        ...

    def unpack(self, element: SqlExpr) -> ExprValue:
        """The ``$expr`` value stored by ``pack`` in an array element."""
        ...

    def sort_key(self, value: Json) -> Any:
        """An ORDER BY key putting JSON values in MongoDB's type order."""
        ...

    def type_test(self, value: Json, name: str) -> SqlExpr:
        """``$type: name`` on a present JSON value."""
        ...


class _KindsAndNumbers(Protocol):
    """What ``_TypeTests`` needs of the backend it is mixed into."""

    def is_kind(self, value: Json, kind: str) -> SqlExpr: ...

    def number(self, value: Json) -> SqlExpr: ...


class _TypeTests:
    """``$type`` on a JSON value, shared by both backends (needs ``number`` and ``is_kind``)."""

    def type_test(self: _KindsAndNumbers, value: Json, name: str) -> SqlExpr:
        if name == "date":
            return false()
        if name in ("int", "long"):
            inside = self.number(value).between(*INT32)
            return and_(self.is_kind(value, "integer"), inside if name == "int" else not_(inside))
        if name == "double":
            return self.is_kind(value, "real")
        return self.is_kind(value, name)


class SqliteJson(_TypeTests):
    """JSON access for SQLite (JSON1). A JSON value is JSON text (``NULL`` = missing); paths
    are bound parameters."""

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

    def root(self, column: SqlExpr) -> SqlExpr:
        return type_coerce(column, Text)

    def missing(self) -> SqlExpr:
        return type_coerce(null(), Text)

    def type_of(self, value: Json) -> SqlExpr:
        if isinstance(value, JsonValue) and value.type_of is not None:
            return value.type_of
        return func.json_type(as_json(value))

    def is_kind(self, value: Json, kind: str) -> SqlExpr:
        names = self._KINDS[kind]
        type_name = self.type_of(value)
        return type_name.in_(names) if len(names) > 1 else type_name == names[0]

    def not_array(self, value: Json) -> SqlExpr:
        return self.type_of(value).is_distinct_from("array")

    def scalar(self, value: Json) -> SqlExpr:
        """The SQL scalar of a JSON scalar (``->> '$'``)."""
        if isinstance(value, JsonValue) and value.scalar is not None:
            return value.scalar
        return as_json(value).op("->>")(literal("$", Text))

    def number(self, value: Json) -> SqlExpr:
        return self.scalar(value)

    def text(self, value: Json) -> SqlExpr:
        return self.scalar(value)

    def number_literal(self, value: int | float) -> SqlExpr:
        return literal(value, Integer if isinstance(value, int) else Float)

    def text_literal(self, value: str) -> SqlExpr:
        return literal(value, Text)

    def json_equals(self, value: Json, constant: Any) -> SqlExpr:
        return func.json(as_json(value)) == func.json(literal(dumps(constant), Text))

    def array_length(self, value: Json) -> SqlExpr:
        return func.json_array_length(as_json(value))

    def key(self, value: Json, segment: str) -> SqlExpr:
        return as_json(value).op("->", return_type=Text)(literal(json_path([segment]), Text))

    def path(self, value: Json, segments: list[str]) -> SqlExpr:
        return as_json(value).op("->", return_type=Text)(literal(json_path(segments), Text))

    def as_array(self, value: Json) -> SqlExpr:
        return case((self.type_of(value) == "array", as_json(value)), else_=self.singleton(value))

    def singleton(self, value: Json) -> SqlExpr:
        return func.json_array(func.json(as_json(value)))

    def each(self, array: SqlExpr) -> ArrayElements:
        table = func.json_each(array).table_valued("key", "value", "type", "atom").alias()
        columns = table.c

        def element_json() -> SqlExpr:
            return case(
                (columns.type.is_(None), null()),
                (columns.type.in_(("object", "array")), columns.value),
                (columns.type == "true", literal("true", Text)),
                (columns.type == "false", literal("false", Text)),
                else_=func.json_quote(columns.value),
            )

        return ArrayElements(
            table,
            columns.type,
            JsonValue(element_json, columns.type, columns.atom),
            columns.key,
            columns.value,
        )

    def elements(self, value: Json) -> ArrayElements:
        return self.each(
            case((self.type_of(value) == "array", as_json(value)), else_=literal("[]", Text))
        )

    def regex(self, text: SqlExpr, regex: Regex) -> SqlExpr:
        return func.labtasker_regexp(literal(regex.pattern, Text), text) == 1

    def collate(self, expression: SqlExpr) -> SqlExpr:
        return expression

    def expr_number(self, expression: SqlExpr) -> SqlExpr:
        return expression

    def expr_divide(self, dividend: SqlExpr, divisor: SqlExpr) -> SqlExpr:
        return cast(dividend, Float) / divisor

    def expr_mod(self, dividend: SqlExpr, divisor: SqlExpr) -> SqlExpr:
        return case(
            (
                and_(func.typeof(dividend) == "integer", func.typeof(divisor) == "integer"),
                dividend % divisor,
            ),
            else_=dividend - divisor * cast(cast(dividend, Float) / divisor, Integer),
        )

    def pack(self, value: ExprValue) -> SqlExpr:
        slots: list[Any] = []
        number = value.num
        if number is not None:
            # an overflow to infinity (1e308 * 10) has no JSON spelling: an evaluation error
            number = case((func.abs(number) > MAX_DOUBLE, null()), else_=number)
        for key, slot in (("k", value.kind), ("n", number), ("t", value.text), ("d", value.dt)):
            slots += [literal(key, Text), null() if slot is None else slot]
        slots += [literal("j", Text), null() if value.json is None else func.json(value.json)]
        return func.json_array(func.json_object(*slots))

    def unpack(self, element: SqlExpr) -> ExprValue:
        def get(key: str) -> SqlExpr:
            return element.op("->>")(literal(f"$.{key}", Text))

        return ExprValue(
            kind=get("k"),
            num=get("n"),
            text=get("t"),
            dt=get("d"),
            json=element.op("->", return_type=Text)(literal("$.j", Text)),
        )

    def sort_key(self, value: Json) -> Any:
        type_name = self.type_of(value)

        def tagged(tag: int, payload: Any) -> SqlExpr:
            return cast(func.char(tag).concat(payload), LargeBinary)

        return case(
            (type_name.in_(("integer", "real", "text")), self.scalar(value)),
            (type_name == "object", tagged(1, func.json(value))),
            (type_name == "array", tagged(2, func.json(value))),
            (type_name == "false", tagged(3, literal("0", Text))),
            (type_name == "true", tagged(3, literal("1", Text))),
            else_=null(),
        )


class PostgresJson(_TypeTests):
    """JSON access for PostgreSQL (jsonb). A JSON value is jsonb (``NULL`` = missing). Every
    function that could raise on a value of the wrong type is guarded by ``CASE``."""

    dialect = "postgresql"
    _TYPE_NAMES = {
        "bool": "boolean",
        "string": "string",
        "number": "number",
        "null": "null",
        "array": "array",
        "object": "object",
    }

    def root(self, column: SqlExpr) -> SqlExpr:
        return column

    def missing(self) -> SqlExpr:
        return cast(null(), JSONB)

    def type_of(self, value: Json) -> SqlExpr:
        return func.jsonb_typeof(as_json(value))

    def _jsonb(self, text: str) -> SqlExpr:
        return cast(literal(text, Text), JSONB)

    def _as_text(self, value: Json) -> SqlExpr:
        """The value's text (a string unquoted, anything else as JSON text)."""
        return as_json(value).op("#>>", return_type=Text)(literal([], ARRAY(Text)))

    def is_kind(self, value: Json, kind: str) -> SqlExpr:
        if kind in ("true", "false"):
            return as_json(value) == self._jsonb(kind)
        if kind in ("integer", "real"):
            is_real = func.strpos(self._as_text(value), ".") > 0
            return and_(self.type_of(value) == "number", is_real == (kind == "real"))
        return self.type_of(value) == self._TYPE_NAMES[kind]

    def not_array(self, value: Json) -> SqlExpr:
        return self.type_of(value).is_distinct_from("array")

    def number(self, value: Json) -> SqlExpr:
        return case((self.type_of(value) == "number", cast(as_json(value), Numeric)), else_=null())

    def text(self, value: Json) -> SqlExpr:
        return case((self.type_of(value) == "string", self._as_text(value)), else_=null())

    def number_literal(self, value: int | float) -> SqlExpr:
        return cast(literal(repr(value) if isinstance(value, float) else str(value), Text), Numeric)

    def text_literal(self, value: str) -> SqlExpr:
        return literal(value, Text)

    def json_equals(self, value: Json, constant: Any) -> SqlExpr:
        return as_json(value) == self._jsonb(dumps(constant))

    def array_length(self, value: Json) -> SqlExpr:
        return case(
            (self.type_of(value) == "array", func.jsonb_array_length(as_json(value))),
            else_=null(),
        )

    def key(self, value: Json, segment: str) -> SqlExpr:
        return as_json(value).op("->", return_type=JSONB)(literal(segment, Text))

    def path(self, value: Json, segments: list[str]) -> SqlExpr:
        for segment in segments:
            value = self.key(value, segment)
        return as_json(value)

    def as_array(self, value: Json) -> SqlExpr:
        return case((self.type_of(value) == "array", as_json(value)), else_=self.singleton(value))

    def singleton(self, value: Json) -> SqlExpr:
        return func.jsonb_build_array(as_json(value), type_=JSONB)

    def each(self, array: SqlExpr) -> ArrayElements:
        table = (
            func.jsonb_array_elements(array, type_=JSONB)
            .table_valued("value", with_ordinality="ord")
            .render_derived()
        )
        element = table.c.value
        return ArrayElements(table, self.type_of(element), element, table.c.ord - 1, element)

    def elements(self, value: Json) -> ArrayElements:
        return self.each(
            case((self.type_of(value) == "array", as_json(value)), else_=self._jsonb("[]"))
        )

    def regex(self, text: SqlExpr, regex: Regex) -> SqlExpr:
        return text.op("~")(literal(regex.postgres, Text))

    def collate(self, expression: SqlExpr) -> SqlExpr:
        return expression.collate("C")

    def expr_number(self, expression: SqlExpr) -> SqlExpr:
        return cast(expression, Float)

    def expr_divide(self, dividend: SqlExpr, divisor: SqlExpr) -> SqlExpr:
        return dividend / divisor

    def expr_mod(self, dividend: SqlExpr, divisor: SqlExpr) -> SqlExpr:
        return dividend - divisor * func.trunc(dividend / divisor)

    def pack(self, value: ExprValue) -> SqlExpr:
        slots: list[Any] = []
        for key, slot in (
            ("k", value.kind),
            ("n", value.num),
            ("t", value.text),
            ("d", value.dt),
            ("j", value.json),
        ):
            slots += [literal(key, Text), cast(null(), Text) if slot is None else slot]
        return func.jsonb_build_array(func.jsonb_build_object(*slots, type_=JSONB), type_=JSONB)

    def unpack(self, element: SqlExpr) -> ExprValue:
        def get(key: str) -> SqlExpr:
            return element.op("->>", return_type=Text)(literal(key, Text))

        return ExprValue(
            kind=cast(get("k"), Integer),
            num=cast(get("n"), Float),
            text=get("t"),
            dt=cast(get("d"), DateTime(timezone=True)),
            json=element.op("->", return_type=JSONB)(literal("j", Text)),
        )

    def sort_key(self, value: Json) -> Any:
        type_name = self.type_of(value)
        code = case(
            (type_name == "number", 1),
            (type_name == "string", 2),
            (type_name == "object", 3),
            (type_name == "array", 4),
            (type_name == "boolean", 5),
            else_=0,
        )
        return tuple_(
            code,
            func.coalesce(self.number(value), 0),
            func.coalesce(self.text(value), "").collate("C"),
            func.coalesce(value, self._jsonb("null")),
        )


def backend_for(dialect: str) -> JsonBackend:
    """The JSON backend for a SQLAlchemy dialect name (``sqlite`` or ``postgresql``)."""
    if dialect == "sqlite":
        return SqliteJson()
    if dialect == "postgresql":
        return PostgresJson()
    raise FilterError(f"Filters are not supported on the {dialect} backend")
