"""The query compiler: a MongoDB filter document (``$and $or $nor``, field conditions and
their operators) as one two-valued SQL condition. ``$expr`` is delegated to ``expr.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, Text, and_, case, false, literal, not_, null, or_, select, true

from labtasker.filters.mongo_sql.backends import (
    ArrayElements,
    Json,
    JsonBackend,
    as_json,
    backend_for,
)
from labtasker.filters.mongo_sql.common import (
    FIELD_OPS,
    INDEX,
    INT32,
    LOGICAL_OPS,
    MAX_PATH_SEGMENTS,
    NULLISH_OPS,
    SEGMENT,
    TYPE_ALIASES,
    TYPE_NEVER,
    UNSAFE_OPS,
    Budget,
    FieldMap,
    FilterError,
    SqlExpr,
    all_of,
    any_of,
    booleans_where,
    compare,
    decode_datetimes,
    parse_datetime,
    split_path,
    two_valued,
    value_kind,
)
from labtasker.filters.mongo_sql.expr import ExprCompiler
from labtasker.filters.mongo_sql.leaf_filter import LeafIndex
from labtasker.filters.mongo_sql.regex import parse_regex

Predicate = Callable[[Json], SqlExpr]
"""A condition on one candidate value."""


@dataclass
class Target:
    """What a field path refers to: a JSON value under ``root`` (``segments`` below it), or a
    plain column (``segments`` empty). ``name`` is the column the path starts in (what the
    leaf index and the column kinds are looked up by); ``path`` is the whole path as the
    filter wrote it, for error messages."""

    kind: str  # "json" | "column"
    root: SqlExpr
    segments: list[str]
    name: str = ""
    root_is_object: bool = False
    path: str = ""


class Compiler:
    """One compilation of one filter document. ``element``: set inside ``$elemMatch``, where
    paths are relative to this array element (an object). ``index``: the leaf index of the
    queue being filtered, used for the conditions it can answer exactly (``leaf_filter.py``)."""

    def __init__(
        self,
        fields: FieldMap,
        backend: JsonBackend,
        budget: Budget | None = None,
        element: SqlExpr | None = None,
        index: LeafIndex | None = None,
    ) -> None:
        self.fields = fields
        self.backend = backend
        self.budget = budget or Budget()
        self.element = element
        self.index = index
        # Whether the condition being compiled is required by the whole filter (a conjunct
        # of the top-level document): false inside $or, $nor, $not, $ne and $nin.
        self.conjunct = element is None

    @contextmanager
    def _not_conjunct(self) -> Iterator[None]:
        saved, self.conjunct = self.conjunct, False
        try:
            yield
        finally:
            self.conjunct = saved

    def _each(self, array: SqlExpr) -> ArrayElements:
        self.budget.step()
        return self.backend.each(array)

    def _elements(self, value: Json) -> ArrayElements:
        self.budget.step()
        return self.backend.elements(value)

    # ------------------------------------------------------------------ structure
    def document(self, filt: Any, depth: int = 0) -> SqlExpr:
        """A filter document: all its keys must hold."""
        if not isinstance(filt, Mapping):
            raise FilterError(f"A filter must be an object, got {type(filt).__name__}")
        self.budget.tick(depth)
        parts = []
        for key, value in filt.items():
            if not isinstance(key, str):
                raise FilterError(f"Invalid filter key {key!r}")
            if key.startswith("$"):
                parts.append(self.top_operator(key, value, depth + 1))
            else:
                parts.append(self.field(key, value, depth + 1))
        return all_of(parts)

    def top_operator(self, op: str, value: Any, depth: int) -> SqlExpr:
        """``$and $or $nor $expr`` at the top of a document."""
        if op in UNSAFE_OPS:
            raise FilterError(f"Operator {op} is not allowed")
        if op == "$expr":
            if self.element is not None:
                raise FilterError("$expr is not supported inside $elemMatch")
            return ExprCompiler(self.fields, self.backend, self.budget).condition(value, depth + 1)
        if op not in LOGICAL_OPS:
            raise FilterError(f"Unknown or unsupported top-level operator {op}")
        if not isinstance(value, list) or not value:
            raise FilterError(f"{op} needs a non-empty list of filters")
        if op == "$and":
            return all_of([self.document(v, depth + 1) for v in value])
        with self._not_conjunct():
            subs = [self.document(v, depth + 1) for v in value]
        if op == "$or":
            return any_of(subs)
        return not_(any_of(subs))

    def target(self, path: str) -> Target:
        """What ``path`` names: a JSON path, a plain column, or (unknown) missing."""
        segments = split_path(path)
        self.budget.bind(len(segments))
        if self.element is not None:
            return Target("json", self.element, segments, path, root_is_object=True, path=path)
        head = segments[0]
        if head in self.fields.json_columns:
            return Target(
                "json",
                self.backend.root(self.fields.json_columns[head]),
                segments[1:],
                head,
                root_is_object=head not in self.fields.non_object_json,
                path=path,
            )
        if head in self.fields.columns and len(segments) == 1:
            return Target("column", self.fields.columns[head], [], head, path=path)
        # Unknown fields and paths below a scalar column are missing in every document.
        return Target("json", self.backend.missing(), [], path, path=path)

    def field(self, path: str, condition: Any, depth: int) -> SqlExpr:
        """``{path: condition}``: an operator object, or a value to equal."""
        target = self.target(path)
        if (
            isinstance(condition, Mapping)
            and condition
            and all(isinstance(k, str) and k.startswith("$") for k in condition)
        ):
            return self.conditions(target, condition, depth)
        if isinstance(condition, Mapping) and any(
            isinstance(k, str) and k.startswith("$") for k in condition
        ):
            raise FilterError(f"Cannot mix operators and fields in the condition on {path!r}")
        return self.operator(target, "$eq", condition, depth)

    def conditions(self, target: Target, condition: Mapping[str, Any], depth: int) -> SqlExpr:
        """Several operators on one field: independent conditions, all required."""
        self.budget.tick(depth)
        parts = []
        for op, value in _field_operators(condition, target.path):
            parts.append(self.operator(target, op, value, depth + 1))
        return all_of(parts)

    # ------------------------------------------------------------------ one operator
    def operator(self, target: Target, op: str, value: Any, depth: int) -> SqlExpr:
        """One operator on a field; the result is two-valued."""
        self.budget.tick(depth)
        if op == "$not":
            if not isinstance(value, Mapping) or not value:
                raise FilterError(f"$not on {target.path!r} needs an operator object")
            if not all(isinstance(k, str) and k.startswith("$") for k in value):
                raise FilterError(f"$not on {target.path!r} needs operators, not fields")
            with self._not_conjunct():
                return not_(self.conditions(target, value, depth + 1))
        if op == "$ne":
            with self._not_conjunct():
                return not_(self.operator(target, "$eq", value, depth + 1))
        if op == "$nin":
            with self._not_conjunct():
                return not_(self.operator(target, "$in", value, depth + 1))
        if op == "$all":
            if not isinstance(value, list):
                raise FilterError(f"$all on {target.path!r} needs a list")
            self.budget.tick(depth, len(value))
            if not value:
                return false()
            parts = []
            for item in value:
                if isinstance(item, Mapping) and "$elemMatch" in item:
                    if len(item) != 1:
                        raise FilterError("$all members with $elemMatch take nothing else")
                    parts.append(self.operator(target, "$elemMatch", item["$elemMatch"], depth + 1))
                else:
                    parts.append(self.operator(target, "$eq", item, depth + 1))
            return all_of(parts)
        if op == "$exists":
            if target.kind == "column":
                return true() if value else false()
            present = self.exists(target, lambda candidate: as_json(candidate).is_not(None))
            return present if value else not_(present)
        column = target if target.kind == "column" else None
        predicate = self.predicate(op, value, depth, expand=True, column=column)
        if column is not None:
            return predicate(column.root)
        return self.indexed(target, op, value, self.exists(target, predicate))

    def indexed(self, target: Target, op: str, value: Any, json_condition: SqlExpr) -> SqlExpr:
        """``json_condition`` (``target <op> value`` judged from the JSON), answered from the
        leaf index when it can be: ``hit OR (array on the way AND json_condition)`` -- the
        same tasks (see ``leaf_filter.py``), found through an index. Otherwise unchanged."""
        index = self.index
        if (
            index is None
            or self.element is not None
            or not target.segments
            or not target.root_is_object
            or target.name not in index.columns
            or op not in ("$eq", "$gt", "$gte", "$lt", "$lte", "$in")
        ):
            return json_condition
        value = decode_datetimes(value)
        leaf = index.in_condition(value) if op == "$in" else index.scalar_condition(op, value)
        if leaf is None:
            return json_condition
        return index.condition(
            target.name, target.segments, leaf, op in ("$eq", "$in"), json_condition, self.conjunct
        )

    def predicate(
        self, op: str, value: Any, depth: int, expand: bool, column: Target | None = None
    ) -> Predicate:
        """A function from one candidate value to a condition for ``op``/``value``.

        ``expand``: leaf semantics (the candidate may be missing; elements of an array
        candidate also count), else element semantics inside ``$elemMatch`` (present value,
        no expansion). ``column``: the candidate is a plain column."""
        backend = self.backend
        if op in ("$eq", "$gt", "$gte", "$lt", "$lte"):
            self.budget.bind(2 if expand else 1)
            value = decode_datetimes(value)
            kind = value_kind(value)
            if op != "$eq" and kind in ("array", "object"):
                raise FilterError(f"{op} with an object or array value is not supported")
            if column is not None:
                return lambda _: self.column_compare(column, op, value)
            return self._expanding(
                lambda candidate: self.scalar_compare(candidate, op, value),
                expand,
                value is None and op in NULLISH_OPS,
            )
        if op == "$in":
            if not isinstance(value, list):
                raise FilterError("$in and $nin need a list")
            self.budget.tick(depth, len(value))
            self.budget.bind(len(value) * (2 if expand else 1))
            values = [decode_datetimes(v) for v in value]
            for member in values:
                if isinstance(member, Mapping) and any(str(k).startswith("$") for k in member):
                    raise FilterError("$in members cannot be operator objects")
            if column is not None:
                return lambda _: self.column_in(column, values)
            return self._expanding(
                lambda candidate: self.scalar_in(candidate, values),
                expand,
                any(v is None for v in values),
            )
        if op == "$regex":
            pattern, options = value if isinstance(value, tuple) else (value, "")
            regex = parse_regex(pattern, options)
            if column is not None:
                if self.fields.column_kind(column.name, column.root) != "string":
                    return lambda _: false()
                return lambda text: and_(
                    as_json(text).is_not(None), backend.regex(as_json(text), regex)
                )
            return self._expanding(
                lambda candidate: and_(
                    backend.is_kind(candidate, "string"),
                    backend.regex(backend.text(candidate), regex),
                ),
                expand,
                False,
            )
        if op == "$size":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise FilterError("$size needs a non-negative integer")
            if column is not None:
                return lambda _: false()
            return lambda candidate: and_(
                backend.is_kind(candidate, "array"),
                backend.array_length(candidate) == literal(value, Integer),
            )
        if op == "$type":
            names = _type_names(value)
            if column is not None:
                return lambda _: self.column_type(column, names)
            return self._expanding(
                lambda candidate: any_of([backend.type_test(candidate, n) for n in names]),
                expand,
                False,
            )
        if op == "$elemMatch":
            if not isinstance(value, Mapping) or not value:
                raise FilterError("$elemMatch needs a non-empty object")
            if column is not None:
                return lambda _: false()
            return lambda candidate: self.elem_match(candidate, value, depth + 1)
        if op in ("$ne", "$nin", "$not", "$all", "$exists"):
            # Only reached inside $elemMatch (element semantics).
            return self.element_predicate(op, value, depth)
        raise FilterError(f"Unknown or unsupported operator {op}")

    def _expanding(self, predicate: Predicate, expand: bool, missing_matches: bool) -> Predicate:
        """Leaf semantics: the candidate itself or any of its elements when it is an array
        (and, for null-matching conditions, a missing candidate)."""
        if not expand:
            return predicate
        backend = self.backend

        def leaf(candidate: Json) -> SqlExpr:
            elements = self._elements(candidate)
            in_array = and_(
                backend.is_kind(candidate, "array"),
                select(literal(1))
                .select_from(elements.table)
                .where(predicate(elements.value))
                .exists(),
            )
            parts = [predicate(candidate), in_array]
            if missing_matches:
                parts.append(as_json(candidate).is_(None))
            return or_(*parts)

        return leaf

    def element_predicate(self, op: str, value: Any, depth: int) -> Predicate:
        """Negations and ``$all``/``$exists`` applied to one array element (no expansion)."""
        if op == "$exists":
            return lambda _: true() if value else false()
        if op == "$not":
            if not isinstance(value, Mapping) or not value:
                raise FilterError("$not needs an operator object")
            inner = self.element_conditions(value, depth + 1)
            return lambda element: not_(two_valued(inner(element)))
        if op in ("$ne", "$nin"):
            inner = self.predicate("$eq" if op == "$ne" else "$in", value, depth, expand=False)
            return lambda element: not_(two_valued(inner(element)))
        if not isinstance(value, list):
            raise FilterError("$all needs a list")
        if not value:
            return lambda _: false()
        predicates = [
            self.predicate("$elemMatch", v["$elemMatch"], depth, expand=False)
            if isinstance(v, Mapping) and "$elemMatch" in v
            else self.predicate("$eq", v, depth, expand=False)
            for v in value
        ]
        return lambda element: all_of([p(element) for p in predicates])

    def element_conditions(self, condition: Mapping[str, Any], depth: int) -> Predicate:
        """Operators applied together to one array element (``$elemMatch`` value form)."""
        self.budget.tick(depth)
        predicates = []
        for op, value in _field_operators(condition, "$elemMatch"):
            self.budget.tick(depth + 1)
            predicates.append(self.predicate(op, value, depth + 1, expand=False))
        return lambda element: all_of([p(element) for p in predicates])

    def elem_match(self, array: Json, query: Mapping[str, Any], depth: int) -> SqlExpr:
        """``$elemMatch``: some element of ``array`` satisfies ``query`` — operators on the
        element itself, or a query document on an element that is an object."""
        backend = self.backend
        elements = self._elements(array)
        keys = list(query)
        value_form = all(isinstance(k, str) and k.startswith("$") for k in keys) and not (
            set(keys) & LOGICAL_OPS
        )
        if value_form:
            condition = self.element_conditions(query, depth)(elements.value)
        else:
            sub = Compiler(self.fields, backend, self.budget, element=elements.element)
            condition = and_(elements.type_of == "object", sub.document(query, depth))
        return and_(
            backend.is_kind(array, "array"),
            select(literal(1)).select_from(elements.table).where(condition).exists(),
        )

    # ------------------------------------------------------------------ JSON values
    def exists(self, target: Target, predicate: Predicate) -> SqlExpr:
        """Whether some candidate value of ``target`` satisfies ``predicate`` (two-valued)."""
        froms, conditions, candidate = self.candidates(target)
        where = all_of(conditions + [predicate(candidate)])
        if not froms:
            return two_valued(where)
        statement = select(literal(1)).select_from(froms[0][0])
        for extra, outer in froms[1:]:
            statement = statement.join(extra, true(), isouter=outer)
        return statement.where(where).exists()

    def candidates(self, target: Target) -> tuple[list[tuple[Any, bool]], list[Any], SqlExpr]:
        """The candidate values of a JSON path: FROM items (each a row per candidate, with
        whether it is an outer join), their conditions, and the candidate expression (SQL
        NULL = missing)."""
        backend = self.backend
        value, segments = target.root, list(target.segments)
        froms: list[tuple[Any, bool]] = []
        conditions: list[Any] = []
        if segments and target.root_is_object:
            value = backend.key(value, segments.pop(0))
        for segment in segments:
            elements = self._each(backend.as_array(value))
            froms.append((elements.table, False))
            field_of_element = case(
                (elements.type_of == "object", backend.key(elements.element, segment)),
                else_=backend.missing(),
            )
            if INDEX.match(segment):
                # an array: its element at the index (no row when out of range);
                # an object: its key; anything else: missing
                conditions.append(or_(backend.not_array(value), elements.index == int(segment)))
                value = case(
                    (backend.type_of(value) == "array", as_json(elements.value)),
                    else_=field_of_element,
                )
                # Materialise the value as a column (a one-row LEFT JOIN; no row = missing)
                # so that the next level refers to it instead of repeating this expression.
                one = self._each(case((value.is_(None), null()), else_=backend.singleton(value)))
                froms.append((one.table, True))
                value = as_json(one.value)
            else:
                # an array: the field of each element that is an object
                conditions.append(or_(elements.type_of == "object", backend.not_array(value)))
                value = field_of_element
        return froms, conditions, value

    def scalar_compare(self, candidate: Json, op: str, value: Any) -> SqlExpr:
        """``candidate <op> value`` for one present JSON value, within the value's type
        bracket."""
        backend = self.backend
        kind = value_kind(value)
        if kind == "bool":
            allowed = booleans_where(op, value)
            return any_of(
                [backend.is_kind(candidate, "true" if b else "false") for b in sorted(allowed)]
            )
        if kind == "null":
            return backend.is_kind(candidate, "null") if op in NULLISH_OPS else false()
        if kind == "number":
            return and_(
                backend.is_kind(candidate, "number"),
                compare(backend.number(candidate), op, backend.number_literal(value)),
            )
        if kind in ("string", "datetime"):
            text = value.isoformat() if kind == "datetime" else value
            return and_(
                backend.is_kind(candidate, "string"),
                compare(backend.collate(backend.text(candidate)), op, backend.text_literal(text)),
            )
        return and_(backend.is_kind(candidate, kind), backend.json_equals(candidate, value))

    def scalar_in(self, candidate: Json, values: list[Any]) -> SqlExpr:
        """``$in`` on one present JSON value."""
        backend = self.backend
        numbers = [v for v in values if value_kind(v) == "number"]
        texts = [
            v.isoformat() if isinstance(v, datetime) else v
            for v in values
            if value_kind(v) in ("string", "datetime")
        ]
        parts = []
        if numbers:
            parts.append(
                and_(
                    backend.is_kind(candidate, "number"),
                    backend.number(candidate).in_([backend.number_literal(v) for v in numbers]),
                )
            )
        if texts:
            parts.append(
                and_(
                    backend.is_kind(candidate, "string"),
                    backend.text(candidate).in_([backend.text_literal(v) for v in texts]),
                )
            )
        for v in values:
            if value_kind(v) in ("bool", "null", "array", "object"):
                parts.append(self.scalar_compare(candidate, "$eq", v))
        return any_of(parts)

    # ------------------------------------------------------------------ columns
    def _column_kind(self, target: Target) -> str:
        return self.fields.column_kind(target.name, target.root)

    def _present(self, target: Target, condition: SqlExpr) -> SqlExpr:
        if getattr(target.root, "nullable", True):
            return and_(target.root.is_not(None), condition)
        return condition

    def _column_value(self, target: Target, value: Any) -> tuple[str, Any]:
        """(kind, value) of a filter value as seen by a column of ``target``'s kind."""
        if self._column_kind(target) == "datetime" and isinstance(value, str):
            return "datetime", parse_datetime(value)
        return value_kind(value), value

    def column_compare(self, target: Target, op: str, value: Any) -> SqlExpr:
        """``column <op> value`` on a plain column (index-friendly)."""
        column = target.root
        if value is None:
            if op in NULLISH_OPS and getattr(column, "nullable", True):
                return column.is_(None)
            return false()
        kind, value = self._column_value(target, value)
        if kind != self._column_kind(target):
            return false()  # different type brackets never compare
        if kind == "string" and self.backend.dialect == "postgresql" and op != "$eq":
            return self._present(target, compare(column.collate("C"), op, literal(value, Text)))
        return self._present(target, compare(column, op, value))

    def column_in(self, target: Target, values: list[Any]) -> SqlExpr:
        """``$in`` on a plain column."""
        column, parts, plain = target.root, [], []
        for v in values:
            if v is None:
                parts.append(self.column_compare(target, "$eq", None))
                continue
            kind, v = self._column_value(target, v)
            if kind == self._column_kind(target):
                plain.append(v)
        if plain:
            parts.append(self._present(target, column.in_(plain)))
        return any_of(parts)

    def column_type(self, target: Target, names: list[str]) -> SqlExpr:
        """``$type`` on a plain column."""
        column, column_kind = target.root, self._column_kind(target)
        parts: list[SqlExpr] = []
        nullable = getattr(column, "nullable", True)
        python_type = getattr(column.type, "python_type", None) if column_kind == "number" else None
        for name in names:
            if name == "null":
                parts.append(column.is_(None) if nullable else false())
            elif name == column_kind or (name == "date" and column_kind == "datetime"):
                parts.append(self._present(target, true()))
            elif column_kind == "number" and name in ("int", "long", "double"):
                if name == "double":
                    parts.append(self._present(target, true()) if python_type is float else false())
                elif python_type is int:
                    inside = column.between(*INT32)
                    parts.append(self._present(target, inside if name == "int" else not_(inside)))
        return any_of(parts)


def _check_field_operator(op: Any, where: str) -> None:
    if op in UNSAFE_OPS:
        raise FilterError(f"Operator {op} is not allowed")
    if op not in FIELD_OPS:
        raise FilterError(f"Unknown or unsupported operator {op} (on {where!r})")


def _field_operators(condition: Mapping[str, Any], where: str) -> Iterator[tuple[str, Any]]:
    """The ``(operator, value)`` pairs of an operator document on ``where`` (a field or
    ``$elemMatch``), each checked as it comes; ``$options`` is folded into its ``$regex``
    (``value`` then ``(pattern, options)``) and raises ``FilterError`` without one."""
    for op, value in condition.items():
        _check_field_operator(op, where)
        if op == "$options":
            if "$regex" not in condition:
                raise FilterError("$options needs $regex")
            continue
        yield op, ((value, condition.get("$options", "")) if op == "$regex" else value)


def _type_names(value: Any) -> list[str]:
    """The ``$type`` argument (a name, a number or a list of them) as type names."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise FilterError("$type needs at least one type")
    names = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise FilterError(f"Invalid $type {v!r}")
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if v in TYPE_ALIASES:
            names.append(TYPE_ALIASES[v])
        elif v not in TYPE_NEVER:
            raise FilterError(f"Unknown $type {v!r}")
    return names


def is_constant_filter(filt: Any) -> bool:
    """Whether ``filt`` is a constant rather than a condition: the whole filter is
    ``{"$expr": <bool, number, null or a string that is no $field path>}``, what a bare ``1``
    or ``True`` turns into (1.0.1's transpiler makes ``{"$expr": 1}`` of ``-f 1``). It
    matches every task or none, whatever the tasks hold. ``{}`` (no condition: every task)
    is not one; a constant inside ``$and``/``$or`` is not judged."""
    if not isinstance(filt, Mapping) or len(filt) != 1 or "$expr" not in filt:
        return False
    value = filt["$expr"]
    if isinstance(value, str):
        return not value.startswith("$")
    return value is None or isinstance(value, (bool, int, float))


def compile_filter(
    filt: Mapping[str, Any] | None,
    fields: FieldMap,
    dialect: str,
    index: LeafIndex | None = None,
) -> SqlExpr:
    """Compile a Mongo filter document into a SQL boolean expression (two-valued).

    ``filt``: a JSON object (``None``/``{}`` = match everything). ``fields``: the table's
    field map. ``dialect``: ``"sqlite"`` or ``"postgresql"``. ``index``: the leaf index of
    the one queue the expression will be used on (equality, ``$in`` and range conditions on
    its columns then read the index; the matches are the same). Raises ``FilterError`` with
    a message naming the offending operator, path or value.
    """
    if not filt:
        if filt is not None and not isinstance(filt, Mapping):
            raise FilterError(f"A filter must be an object, got {type(filt).__name__}")
        return true()
    return Compiler(fields, backend_for(dialect), index=index).document(filt)


def sort_expression(field: Any, fields: FieldMap, dialect: str) -> Any:
    """SQL expression to order by ``field`` (a column name or a dotted JSON path).

    JSON paths sort in MongoDB's type order (missing/null, numbers, strings, objects,
    arrays, booleans), numbers numerically and strings by code point. Raises ``FilterError``
    for a path that is not a dotted name."""
    if not isinstance(field, str):
        raise FilterError(f"Invalid sort field {field!r}")
    segments = field.split(".")
    if len(segments) > MAX_PATH_SEGMENTS or not all(SEGMENT.match(s) for s in segments):
        raise FilterError(f"Invalid sort field {field!r}")
    head = segments[0]
    if head in fields.columns and len(segments) == 1:
        column = fields.columns[head]
        if dialect == "postgresql" and getattr(column.type, "python_type", None) is str:
            return column.collate("C")
        return column
    if head in fields.json_columns:
        backend = backend_for(dialect)
        root = backend.root(fields.json_columns[head])
        return backend.sort_key(backend.path(root, segments[1:]) if len(segments) > 1 else root)
    return literal(None)


def value_expression(field: Any, fields: FieldMap, dialect: str) -> tuple[Any, bool]:
    """``(expression, is_json)`` giving the value of ``field`` per row, for grouping.

    A column name gives the column (``is_json`` False). A JSON column, or a dotted path into
    one (``args.lr``), gives its JSON value (SQLite: JSON text; PostgreSQL: jsonb), SQL NULL
    where the path is missing (``is_json`` True). Raises ``FilterError`` naming the field
    for anything else."""
    if not isinstance(field, str):
        raise FilterError(f"Invalid field {field!r}")
    segments = field.split(".")
    if len(segments) > MAX_PATH_SEGMENTS or not all(SEGMENT.match(s) for s in segments):
        raise FilterError(
            f"Invalid field {field!r}: use letters, digits, '_' or '-', "
            "dot-separated (like 'args.lr')"
        )
    head = segments[0]
    if head in fields.columns and len(segments) == 1:
        return fields.columns[head], False
    if head in fields.json_columns:
        backend = backend_for(dialect)
        root = backend.root(fields.json_columns[head])
        return (backend.path(root, segments[1:]) if len(segments) > 1 else root), True
    known = ", ".join(
        sorted(set(fields.columns) - {"_id"})
        + [f"{name}.*" for name in sorted(fields.json_columns)]
    )
    raise FilterError(f"Unknown field {field!r}; use one of {known}")
