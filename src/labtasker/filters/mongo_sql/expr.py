"""``$expr``: aggregation expressions (field references, literals, arithmetic, comparisons,
boolean operators) compiled into typed SQL values (``ExprValue``).

Every computed value is materialised as a one-row FROM item (a JSON object holding its
slots), so that a parent refers to its children's columns instead of repeating their SQL: the
statement grows linearly with the expression."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    Integer,
    Text,
    and_,
    case,
    cast,
    false,
    literal,
    not_,
    null,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import Grouping

from labtasker.filters.mongo_sql.backends import JsonBackend
from labtasker.filters.mongo_sql.common import (
    BSON_ORDER,
    COMPARE_OPS,
    EXPR_ARITHMETIC,
    EXPR_BOOLEAN,
    UNSAFE_OPS,
    Budget,
    ExprValue,
    FieldMap,
    FilterError,
    SqlExpr,
    all_of,
    any_of,
    compare,
    contains_field_reference,
    decode_datetimes,
    dumps,
    split_path,
    two_valued,
    value_kind,
)

_MISSING_OR_NULL = (BSON_ORDER["missing"], BSON_ORDER["null"])


class ExprCompiler:
    """One ``{"$expr": ...}`` condition; collects the FROM items of its computed values."""

    def __init__(self, fields: FieldMap, backend: JsonBackend, budget: Budget) -> None:
        self.fields = fields
        self.backend = backend
        self.budget = budget
        self.froms: list[Any] = []

    def condition(self, node: Any, depth: int) -> SqlExpr:
        """``{"$expr": node}`` as a two-valued condition (an evaluation error is false)."""
        truth = self.truthy(self.value(node, depth))
        if not self.froms:
            return two_valued(truth)
        statement = select(literal(1)).select_from(self.froms[0])
        for extra in self.froms[1:]:
            statement = statement.join(extra, true())
        return statement.where(truth).exists()

    def _materialise(self, value: ExprValue) -> ExprValue:
        self.budget.step()
        elements = self.backend.each(self.backend.pack(value))
        self.froms.append(elements.table)
        return self.backend.unpack(elements.element)

    def value(self, node: Any, depth: int) -> ExprValue:
        """Compile an aggregation expression into a typed value."""
        self.budget.tick(depth)
        if isinstance(node, str) and node.startswith("$"):
            if node.startswith("$$"):
                raise FilterError(f"Variables are not supported in $expr: {node!r}")
            return self._materialise(self.field(node[1:]))
        if isinstance(node, Mapping) and len(node) == 1 and next(iter(node)).startswith("$"):
            op, args = next(iter(node.items()))
            if op in UNSAFE_OPS:
                raise FilterError(f"Operator {op} is not allowed")
            if op == "$literal":
                return self.literal(decode_datetimes(args))
            if op in EXPR_ARITHMETIC:
                return self._materialise(self.arithmetic(op, args, depth))
            if op in COMPARE_OPS:
                if not isinstance(args, list) or len(args) != 2:
                    raise FilterError(f"{op} in $expr needs a list of two expressions")
                left = self.value(args[0], depth + 1)
                right = self.value(args[1], depth + 1)
                return self._boolean(self.compare(op, left, right))
            if op in EXPR_BOOLEAN:
                items = args if isinstance(args, list) else [args]
                if op == "$not" and len(items) != 1:
                    raise FilterError("$not in $expr takes one expression")
                truths = [self.truthy(self.value(a, depth + 1)) for a in items]
                if op == "$not":
                    result = not_(truths[0])
                elif op == "$and":
                    result = all_of(truths)
                else:
                    result = any_of(truths)
                return self._boolean(result)
            raise FilterError(f"Unknown or unsupported $expr operator {op}")
        if isinstance(node, Mapping) and any(str(k).startswith("$") for k in node):
            raise FilterError("An $expr object must have exactly one operator")
        constant = decode_datetimes(node)
        if contains_field_reference(constant):
            raise FilterError("Arrays and objects in $expr must be constants (use $literal)")
        return self.literal(constant)

    def _boolean(self, condition: Any) -> ExprValue:
        """A SQL condition (NULL = error) as a boolean $expr value."""
        return self._materialise(
            ExprValue(
                kind=case((Grouping(condition).is_(None), null()), else_=BSON_ORDER["bool"]),
                num=case((condition, 1), else_=0),
            )
        )

    def literal(self, constant: Any) -> ExprValue:
        """A constant as a typed value."""
        self.budget.bind()
        kind = value_kind(constant)
        code = literal(BSON_ORDER[kind], Integer)
        if kind == "number":
            return ExprValue(code, num=self.backend.expr_number(literal(constant)))
        if kind == "bool":
            return ExprValue(code, num=literal(int(constant), Integer))
        if kind == "string":
            return ExprValue(code, text=literal(constant, Text))
        if kind == "datetime":
            return ExprValue(code, dt=literal(constant, self.fields.datetime_type()))
        if kind in ("array", "object"):
            text = literal(dumps(constant), Text)
            return ExprValue(
                code, json=cast(text, JSONB) if self.backend.dialect == "postgresql" else text
            )
        return ExprValue(code)

    def field(self, path: str) -> ExprValue:
        """A field reference: objects are walked key by key (no array traversal)."""
        segments = split_path(path)
        self.budget.bind(len(segments))
        head = segments[0]
        backend = self.backend
        if head in self.fields.columns and len(segments) == 1:
            column = self.fields.columns[head]
            column_kind = self.fields.column_kind(head, column)
            code = case((column.is_(None), BSON_ORDER["null"]), else_=BSON_ORDER[column_kind])
            if column_kind == "number":
                return ExprValue(code, num=backend.expr_number(column))
            if column_kind == "datetime":
                return ExprValue(code, dt=column)
            return ExprValue(code, text=column)
        if head not in self.fields.json_columns:
            return ExprValue(literal(BSON_ORDER["missing"], Integer))
        root = backend.root(self.fields.json_columns[head])
        value = backend.path(root, segments[1:]) if len(segments) > 1 else root
        type_code = case(
            (value.is_(None), BSON_ORDER["missing"]),
            (backend.is_kind(value, "null"), BSON_ORDER["null"]),
            (backend.is_kind(value, "number"), BSON_ORDER["number"]),
            (backend.is_kind(value, "string"), BSON_ORDER["string"]),
            (backend.is_kind(value, "object"), BSON_ORDER["object"]),
            (backend.is_kind(value, "array"), BSON_ORDER["array"]),
            else_=BSON_ORDER["bool"],
        )
        return ExprValue(
            type_code,
            num=case(
                (backend.is_kind(value, "true"), 1),
                (backend.is_kind(value, "false"), 0),
                else_=backend.expr_number(backend.number(value)),
            ),
            text=backend.text(value),
            json=value,
        )

    def arithmetic(self, op: str, args: Any, depth: int) -> ExprValue:
        """``$add $subtract $multiply $divide $mod``: null when an operand is null or missing,
        an error when one is not a number (or on division by zero)."""
        if not isinstance(args, list) or not args:
            raise FilterError(f"{op} needs a non-empty list of expressions")
        if op in ("$subtract", "$divide", "$mod") and len(args) != 2:
            raise FilterError(f"{op} needs exactly two expressions")
        operands = [self.value(a, depth + 1) for a in args]
        backend = self.backend
        numbers = [backend.expr_number(null()) if v.num is None else v.num for v in operands]
        if op == "$add":
            result = numbers[0]
            for number in numbers[1:]:
                result = result + number
        elif op == "$multiply":
            result = numbers[0]
            for number in numbers[1:]:
                result = result * number
        elif op == "$subtract":
            result = numbers[0] - numbers[1]
        elif op == "$divide":
            result = case(
                (numbers[1] == 0, null()), else_=backend.expr_divide(numbers[0], numbers[1])
            )
        else:
            result = case((numbers[1] == 0, null()), else_=backend.expr_mod(numbers[0], numbers[1]))
        nullish = any_of([v.kind.in_(_MISSING_OR_NULL) for v in operands])
        error = any_of([v.kind.is_(None) for v in operands])
        numeric = all_of([v.kind == BSON_ORDER["number"] for v in operands])
        kind = case(
            (error, null()),
            (nullish, BSON_ORDER["null"]),
            (and_(numeric, result.is_not(None)), BSON_ORDER["number"]),
            else_=null(),
        )
        return ExprValue(kind, num=result)

    def compare(self, op: str, left: ExprValue, right: ExprValue) -> SqlExpr:
        """BSON comparison of two typed values; NULL when either is an error."""
        same = left.kind == right.kind

        def slot(name: str) -> Any:
            x, y = getattr(left, name), getattr(right, name)
            if x is None or y is None:
                return null()
            if name == "text" and self.backend.dialect == "postgresql":
                x = x.collate("C")
            return compare(x, op, y)

        if op in ("$eq", "$ne") and left.json is not None and right.json is not None:
            json_comparison = slot("json")
        else:
            json_comparison = null()
        return case(
            (or_(left.kind.is_(None), right.kind.is_(None)), null()),
            (not_(same), compare(left.kind, op, right.kind)),
            (left.kind.in_((BSON_ORDER["number"], BSON_ORDER["bool"])), slot("num")),
            (left.kind == BSON_ORDER["string"], slot("text")),
            (left.kind == BSON_ORDER["datetime"], slot("dt")),
            (left.kind.in_(_MISSING_OR_NULL), compare(literal(0), op, literal(0))),
            else_=json_comparison,
        )

    def truthy(self, value: ExprValue) -> SqlExpr:
        """Mongo truthiness: false, null, missing and 0 are false; NULL on an error."""
        return case(
            (value.kind.is_(None), null()),
            (value.kind.in_(_MISSING_OR_NULL), false()),
            (value.kind.in_((BSON_ORDER["number"], BSON_ORDER["bool"])), value.num != 0),
            else_=true(),
        )
