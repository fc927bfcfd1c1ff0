"""Python-syntax task filters, transpiled to MongoDB filter documents.

Anywhere labtasker accepts a filter (``labtasker task ls -f ...``, ``task update``, ``worker ls``,
``loop``, ``ls_tasks(extra_filter=...)``, ``@labtasker.loop(extra_filter=...)``) you can write a
Python expression instead of a MongoDB dict::

    labtasker task ls -f 'args.lr < 0.01 and status in ["failed", "cancelled"]' -v

The text is parsed with Python's ``ast`` module -- it is **never evaluated** -- and only the
subset below is accepted. ``-v/--verbose`` prints the MongoDB filter it turned into.

Fields
    The first name of a path must be a task field: ``task_id``, ``queue_id``, ``status``,
    ``task_name``, ``created_at``, ``start_time``, ``last_heartbeat``, ``last_modified``,
    ``heartbeat_timeout``, ``task_timeout``, ``max_retries``, ``retries``, ``priority``,
    ``metadata``, ``args``, ``cmd``, ``summary``, ``worker_id``, ``worker_name``. Attribute and
    subscript syntax mix freely::

        args.model.lr        -> "args.model.lr"
        args['model']['lr']  -> "args.model.lr"
        summary.losses[0].v  -> "summary.losses.0.v"     (non-negative integer indices only)

Comparisons (one operator, field against a literal, either side)::

        args.a == 1                   -> {"args.a": 1}
        priority >= 10                -> {"priority": {"$gte": 10}}
        3 < args.x                    -> {"args.x": {"$gt": 3}}         (mirrored)
        args.x > -1                   -> {"args.x": {"$gt": -1}}        (negative literals folded)
        created_at > date("3 hours ago")
                                      -> {"created_at": {"$gt": <datetime, UTC>}}

    ``date("<text>")`` understands whatever ``dateparser`` does ("3 hours ago", "yesterday",
    "2025-01-31 14:00"); a time without a zone is the local time of this machine. The result
    is a timezone-aware UTC ``datetime``.

Field against field, and arithmetic (``+ - * / %``, unary minus) inside a comparison, become
an ``$expr``; every referenced field must exist, so a missing field never matches::

        foo > bar           -> {"$and": [{"foo": {"$exists": true}}, {"bar": {"$exists": true}},
                                         {"$expr": {"$gt": ["$foo", "$bar"]}}]}
        args.a + args.b <= 10
                            -> {"$and": [{"args.a": {"$exists": true}},
                                         {"args.b": {"$exists": true}},
                                         {"$expr": {"$lte": [{"$add": ["$args.a", "$args.b"]},
                                                             10]}}]}

    ``+ - * / %`` map to ``$add $subtract $multiply $divide $mod``; ``-x`` becomes
    ``{"$multiply": [-1, x]}``. (MongoDB's ``$mod`` takes the sign of the dividend, unlike
    Python's ``%``.)

Boolean logic: ``and`` -> ``$and``, ``or`` -> ``$or``, grouped as Python groups them::

        a == 1 and b == 2 and c == 3  -> {"$and": [{"a": 1}, {"b": 2}, {"c": 3}]}
        a == 1 and (b == 2 or c == 3) -> {"$and": [{"a": 1}, {"$or": [{"b": 2}, {"c": 3}]}]}

Membership::

        status in ["failed", "cancelled"]  -> {"status": {"$in": ["failed", "cancelled"]}}
        "exp" in list(metadata.tags)       -> {"metadata.tags": "exp"}     (array contains)
        "lr" in dict(args)                 -> {"args.lr": {"$exists": true}}  (dict has key)

Functions::

        regex(task_name, "^resnet")        -> {"task_name": {"$regex": "^resnet"}}
        regex(cmd, "(?i)python")           (inline flags work; no options argument)
        exists(summary.acc)                -> {"summary.acc": {"$exists": true}}
        exists(summary.acc, False)         -> {"summary.acc": {"$exists": false}}

A filter that is only a constant (``True``, ``1``, ``-1``, a float, a string, ``None``) is not a
condition and is refused: it would match every task or none. Inside ``and``/``or`` a bare
``True``/``False``/integer becomes ``{"$expr": <value>}`` (``a == 1 and True`` ->
``{"$and": [{"a": 1}, {"$expr": true}]}``).
A string that is a dict literal (``{"status": "pending"}``, JSON or Python spelling) is taken as
a MongoDB filter as it is.

Not supported, each with an error explaining why: ``!=``, ``not`` and ``not in`` (with missing
fields the negation is ambiguous -- three-valued logic -- so write the condition positively, e.g.
``status in [...]`` or ``exists(x, False)``); chained comparisons (``1 < x < 3``: use ``and``);
``is``/``is not`` (use ``==``); ``**``, ``//`` and bitwise operators; arithmetic outside a
comparison; calls to anything but the functions above; assignments (did you mean ``==``?).
Errors point at the offending column::

    Operator '!=' is not supported: ...
        args.a != 1
               ^~

A long filter may span several lines without extra parentheses; ``#`` comments are ignored.

Public API: ``transpile(text, allowed_fields=ALLOWED_FIELDS) -> dict`` (``allowed_fields=None``
accepts any first name), ``parse_filter_text(text_or_dict) -> dict`` and
``format_filter(filter) -> str`` (indented JSON, datetimes as ISO ``...Z``). Errors are
``labtasker.exceptions.QueryTranspilerSyntaxError`` (not Python), ``QueryTranspilerValueError``
(outside the subset) and ``QueryTranspilerError`` (e.g. an unparseable ``date()`` text).
"""

from __future__ import annotations

import ast
import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import date as _date
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from labtasker.exceptions import (
    QueryTranspilerError,
    QueryTranspilerSyntaxError,
    QueryTranspilerValueError,
)
from labtasker.fields import TASK_FIELDS as TASK_FIELD_REGISTRY
from labtasker.literals import NotALiteral, literal_value
from labtasker.timeutil import RelativeTime, utc_now

__all__ = [
    "ALLOWED_FIELDS",
    "SUPPORTED_FUNCTIONS",
    "QueryTranspilerError",
    "QueryTranspilerSyntaxError",
    "QueryTranspilerValueError",
    "format_filter",
    "parse_filter_text",
    "transpile",
]

# The names a filter may start with: 1.0.1's task fields (``run_id`` is ours and not
# filterable by name here), plus ``worker_name`` as 1.0.1 allowed it.
ALLOWED_FIELDS: tuple[str, ...] = (*(f.name for f in TASK_FIELD_REGISTRY if f.v1), "worker_name")

SUPPORTED_FUNCTIONS: dict[str, str] = {
    "regex": "regex(field, pattern)",
    "exists": "exists(field[, True|False])",
    "date": 'date("3 hours ago")',
    "list": "list(field)",
    "dict": "dict(field)",
}

_COMPARE = {ast.Eq: "$eq", ast.Gt: "$gt", ast.GtE: "$gte", ast.Lt: "$lt", ast.LtE: "$lte"}
_MIRROR = {ast.Eq: ast.Eq, ast.Gt: ast.Lt, ast.GtE: ast.LtE, ast.Lt: ast.Gt, ast.LtE: ast.GtE}
_ARITHMETIC = {
    ast.Add: "$add",
    ast.Sub: "$subtract",
    ast.Mult: "$multiply",
    ast.Div: "$divide",
    ast.Mod: "$mod",
}
_OPERATOR_TEXT = {
    ast.Pow: "**",
    ast.FloorDiv: "//",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.MatMult: "@",
    ast.Invert: "~",
}
_OPERATOR_HINTS = {
    ast.Pow: "write the product out with '*' instead",
    ast.FloorDiv: "use '/' (true division) instead",
    ast.BitAnd: "to combine conditions use 'and'",
    ast.BitOr: "to combine conditions use 'or'",
    ast.BitXor: "bitwise operators are not supported",
    ast.LShift: "bitwise operators are not supported",
    ast.RShift: "bitwise operators are not supported",
    ast.MatMult: "matrix multiplication is not supported",
    ast.Invert: "to negate a condition, write its positive form (see 'not')",
}
_NODE_NAMES = {
    ast.Lambda: "a lambda",
    ast.IfExp: "a conditional expression (x if c else y)",
    ast.ListComp: "a list comprehension",
    ast.SetComp: "a set comprehension",
    ast.DictComp: "a dict comprehension",
    ast.GeneratorExp: "a generator expression",
    ast.Set: "a set literal (use a list [...] instead)",
    ast.JoinedStr: "an f-string",
    ast.FormattedValue: "an f-string",
    ast.Starred: "a starred expression",
    ast.Slice: "a slice",
    ast.Await: "'await'",
    ast.Yield: "'yield'",
    ast.YieldFrom: "'yield from'",
    ast.Compare: "a comparison",
    ast.BoolOp: "a boolean expression",
    ast.BinOp: "arithmetic",
    ast.Call: "a function call",
    ast.Dict: "a dict",
    ast.List: "a list",
    ast.Tuple: "a tuple",
    ast.Name: "a field",
    ast.Attribute: "a field",
    ast.Subscript: "a field",
}
_STATEMENT_NAMES = {
    ast.Import: "an import",
    ast.ImportFrom: "an import",
    ast.FunctionDef: "a function definition",
    ast.AsyncFunctionDef: "a function definition",
    ast.ClassDef: "a class definition",
    ast.For: "a for loop",
    ast.While: "a while loop",
    ast.If: "an if statement",
    ast.With: "a with statement",
    ast.Delete: "a del statement",
    ast.Pass: "'pass'",
    ast.Return: "'return'",
    ast.Raise: "'raise'",
    ast.Assert: "an assert statement",
    ast.Global: "a global statement",
    ast.Try: "a try statement",
}
_JSON_NAMES = {"true": True, "false": False, "null": None}
_SHIFT = timedelta(days=1)  # how far the base is moved to tell relative date() phrases
_FIELD_NODES = (ast.Name, ast.Attribute, ast.Subscript)
_NOT_A_NUMBER = object()


# --------------------------------------------------------------------------------------------
# public API


def transpile(
    text: str, *, allowed_fields: Iterable[str] | None = ALLOWED_FIELDS
) -> dict[str, Any]:
    """Turn a Python-syntax filter expression into a MongoDB filter dict.

    ``allowed_fields`` lists the names a field path may start with (default: the task fields,
    ``ALLOWED_FIELDS``); ``None`` allows any name.

    Raises ``QueryTranspilerSyntaxError`` for text that is not Python, ``QueryTranspilerValueError``
    for Python outside the supported subset (see the module docstring), and
    ``QueryTranspilerError`` when a ``date()`` text cannot be understood. Every error message
    ends with the expression and a ``^`` marker under the offending column. The exception also
    carries ``reason`` (the message without the pointer), ``expression`` (the stripped text),
    ``line`` (1-based) and ``column`` (0-based, in characters) of the offending token -- both
    ``None`` when there is no position -- and ``pointer`` (the marker lines).
    """
    if not isinstance(text, str):
        raise TypeError(f"filter text must be a str, got {type(text).__name__}")
    allowed = None if allowed_fields is None else tuple(allowed_fields)
    return _Transpiler(text, allowed).run()


def parse_filter_text(
    text: str | Mapping[str, Any], *, allowed_fields: Iterable[str] | None = ALLOWED_FIELDS
) -> dict[str, Any]:
    """Turn a user-supplied filter into a MongoDB filter dict.

    A mapping is returned as a plain dict, unchanged. A string holding a dict literal -- JSON
    (``true/false/null``) or Python (``True/False/None``) spelling -- is returned verbatim as a
    MongoDB filter; any other string is transpiled (``transpile``, which see for
    ``allowed_fields``).
    """
    if isinstance(text, Mapping):
        return dict(text)
    return transpile(text, allowed_fields=allowed_fields)


def format_filter(query: Mapping[str, Any]) -> str:
    """Render a filter as JSON (indent 4) for ``-v/--verbose`` output; datetimes as ``...Z``."""
    return json.dumps(query, indent=4, ensure_ascii=False, default=_json_default)


# --------------------------------------------------------------------------------------------
# helpers


class _Located(Protocol):
    """An AST node with a place in the source: an expression, a statement, a keyword."""

    lineno: int
    col_offset: int
    end_lineno: int | None
    end_col_offset: int | None


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.isoformat() + "Z"
    if isinstance(value, _date):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return str(value)


def _leaf_paths(paths: list[str]) -> list[str]:
    """Unique paths in first-seen order, dropping any that is a prefix of another path."""
    unique = list(dict.fromkeys(paths))
    return [p for p in unique if not any(q.startswith(p + ".") for q in unique)]


def _needs_literal(value: Any) -> bool:
    """True if ``value`` would be misread inside ``$expr`` (``"$x"`` strings are field refs)."""
    if isinstance(value, str):
        return value.startswith("$")
    if isinstance(value, list):
        return any(_needs_literal(v) for v in value)
    if isinstance(value, dict):
        return any(_needs_literal(v) for v in value.values())
    return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fold_number(node: ast.AST) -> Any:
    """Value of a numeric constant with any number of unary signs, else ``_NOT_A_NUMBER``."""
    if isinstance(node, ast.Constant) and _is_number(node.value):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _fold_number(node.operand)
        if inner is _NOT_A_NUMBER:
            return inner
        return -inner if isinstance(node.op, ast.USub) else inner
    return _NOT_A_NUMBER


def _is_constant(node: ast.AST) -> bool:
    """Whether ``node`` is a bool or an integer (signs folded): what ``_query`` would turn
    into ``{"$expr": <value>}``, a filter matching every task or none."""
    if isinstance(node, ast.Constant) and type(node.value) in (bool, int):
        return True
    return isinstance(_fold_number(node), int)


def _not_a_condition_message(text: str) -> str:
    """The error for a whole filter that is a constant (``1``, ``True``): it would match every
    task (or none) instead of selecting some, so it is refused. ``text``: the filter as the
    user wrote it (shortened when long)."""
    shown = " ".join(text.split())
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return (
        f"the filter `{shown}` is not a condition (e.g. 'args.lr > 0.1' or "
        """'{"args.lr": {"$gt": 0.1}}')."""
    )


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    try:
        return ast.unparse(func)
    except Exception:  # pragma: no cover - unparse handles every expression node
        return type(func).__name__


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, str):
            return "a string"
        if value is None:
            return "None"
        return f"a {type(value).__name__}"
    for cls in type(node).__mro__:
        if cls in _NODE_NAMES:
            return _NODE_NAMES[cls]
    return f"'{type(node).__name__}'"


class _Transpiler:
    """One transpilation: holds the source for error pointers."""

    def __init__(self, text: str, allowed: tuple[str, ...] | None) -> None:
        self.allowed = allowed
        self.text = text.strip()
        self.source = self.text
        self.line_shift = 0  # lines added in front of the user's text (parenthesis wrapper)

    # ---------------------------------------------------------------- errors and positions

    @property
    def _lines(self) -> list[str]:
        return self.source.split("\n")

    def _char_col(self, lineno: int, byte_col: int) -> int:
        line = self._lines[lineno - 1]
        return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))

    def _node_span(self, node: _Located) -> tuple[int, int, int]:
        lineno = node.lineno
        col = self._char_col(lineno, node.col_offset)
        if getattr(node, "end_lineno", None) == lineno and node.end_col_offset is not None:
            length = self._char_col(lineno, node.end_col_offset) - col
        else:
            length = len(self._lines[lineno - 1]) - col
        return lineno, col, max(1, length)

    def _absolute(self, lineno: int, col: int) -> int:
        lines = self._lines
        return sum(len(line) + 1 for line in lines[: lineno - 1]) + col

    def _operator_span(self, left: _Located, right: _Located) -> tuple[int, int, int]:
        """Position of the operator token written between ``left`` and ``right``."""
        # a parsed node always has its end; one made by hand ends where it starts
        end_line = left.lineno if left.end_lineno is None else left.end_lineno
        end_col = left.col_offset if left.end_col_offset is None else left.end_col_offset
        start = self._absolute(end_line, self._char_col(end_line, end_col))
        end = self._absolute(right.lineno, self._char_col(right.lineno, right.col_offset))
        source = self.source
        i = start
        while i < end:
            ch = source[i]
            if ch == "#":
                while i < end and source[i] != "\n":
                    i += 1
            elif ch.isspace() or ch in "()\\":
                i += 1
            else:
                break
        else:
            return self._node_span(right)
        j = i
        if source[i].isalpha():
            while j < end and source[j].isalpha():
                j += 1
        else:
            while j < end and source[j] in "=!<>+-*/%&|^@~:":
                j += 1
        lineno = source.count("\n", 0, i) + 1
        col = i - (source.rfind("\n", 0, i) + 1)
        return lineno, col, max(1, j - i)

    def _error(
        self,
        reason: str,
        node: _Located | None = None,
        *,
        span: tuple[int, int, int] | None = None,
        cls: type[QueryTranspilerError] = QueryTranspilerValueError,
    ) -> QueryTranspilerError:
        if span is None and node is not None and hasattr(node, "lineno"):
            span = self._node_span(node)
        line_number = col = None
        pointer = ""
        if span is not None:
            lineno, col, length = span
            line = self._lines[lineno - 1].replace("\t", " ")
            col = min(col, len(line))
            length = max(1, min(length, len(line) - col))
            line_number = lineno - self.line_shift
            header = f"  (line {line_number})\n" if "\n" in self.text else ""
            pointer = f"{header}    {line}\n    {' ' * col}^{'~' * (length - 1)}"
        exc = cls(f"{reason}\n{pointer}" if pointer else reason)
        # Not ``lineno``/``offset``: on SyntaxError subclasses those change str() and tracebacks.
        exc.reason = reason
        exc.expression = self.text
        exc.line = line_number
        exc.column = col
        exc.pointer = pointer
        return exc

    # ---------------------------------------------------------------- entry

    def run(self) -> dict[str, Any]:
        if not self.text:
            raise self._error("Expected an expression in the module, but the filter is empty.")
        if self.text.startswith("{"):
            try:
                value = json.loads(self.text)
            except ValueError:
                pass
            else:
                if isinstance(value, dict):
                    return value
        try:
            node = self._parse()
            if _is_constant(node):
                raise self._error(_not_a_condition_message(self.text), node)
            return self._query(node)
        except RecursionError:
            raise self._error("The filter is nested too deeply to be transpiled.") from None

    def _parse(self) -> ast.expr:
        try:
            module = ast.parse(self.text, mode="exec")
        except SyntaxError as exc:
            wrapped = self._parse_wrapped()
            if wrapped is None:
                raise self._syntax_error(exc) from None
            module = wrapped
        except ValueError as exc:  # e.g. NUL bytes in the text
            raise self._error(
                f"Query syntax error: {exc}", cls=QueryTranspilerSyntaxError
            ) from None
        body = module.body
        if not body:
            raise self._error(
                "Expected an expression in the module, but the filter contains only comments."
            )
        first = body[0]
        if isinstance(first, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            raise self._assignment_error(first)
        if not isinstance(first, ast.Expr):
            kind = _STATEMENT_NAMES.get(type(first), f"a '{type(first).__name__}' statement")
            raise self._error(
                f"Expected an expression in the module, got {kind}. A filter is a single "
                "expression such as: args.a == 1 and status in ['pending']",
                first,
            )
        if len(body) > 1:
            raise self._error(
                "Expected a single expression, but the filter contains several statements; "
                "combine conditions with 'and' / 'or'.",
                body[1],
            )
        return first.value

    def _parse_wrapped(self) -> ast.Module | None:
        """Retry inside parentheses so that line breaks may split a long expression."""
        wrapped = "(\n" + self.text + "\n)"
        try:
            module = ast.parse(wrapped, mode="exec")
        except (SyntaxError, ValueError):
            return None
        last_line = wrapped.count("\n") + 1
        if len(module.body) != 1 or not isinstance(module.body[0], ast.Expr):
            return None
        value = module.body[0].value
        end_line = value.lineno if value.end_lineno is None else value.end_lineno
        if value.lineno < 2 or end_line > last_line - 1:
            return None  # the added parentheses were absorbed by something else
        self.source = wrapped
        self.line_shift = 1
        return module

    def _syntax_error(self, exc: SyntaxError) -> QueryTranspilerError:
        span = None
        if exc.lineno is not None and 1 <= exc.lineno <= len(self._lines):
            col = (exc.offset or 1) - 1
            length = 1
            if (
                exc.offset is not None
                and exc.end_lineno == exc.lineno
                and exc.end_offset
                and exc.end_offset > exc.offset
            ):
                length = exc.end_offset - exc.offset
            span = (exc.lineno, max(0, col), length)
        message = exc.msg
        return self._error(
            f"Query syntax error: {message}", span=span, cls=QueryTranspilerSyntaxError
        )

    def _assignment_error(self, node: ast.stmt | ast.expr) -> QueryTranspilerError:
        if isinstance(node, ast.Assign):
            span = self._operator_span(node.targets[-1], node.value)
        elif isinstance(node, ast.NamedExpr):
            span = self._operator_span(node.target, node.value)
        elif isinstance(node, ast.AugAssign):
            span = self._operator_span(node.target, node.value)
        else:
            span = self._node_span(node)
        return self._error(
            "Assignment is not allowed in a filter. Did you mean '==' (comparison)? "
            "For example: args.a == 1",
            span=span,
        )

    # ---------------------------------------------------------------- conditions

    def _query(self, node: ast.expr) -> dict[str, Any]:
        """Translate a node that must produce a condition (a filter dict)."""
        if isinstance(node, ast.BoolOp):
            key = "$and" if isinstance(node.op, ast.And) else "$or"
            return {key: [self._query(value) for value in node.values]}
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.Call):
            return self._call_condition(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            raise self._not_error(node)
        if isinstance(node, ast.Constant) and type(node.value) in (bool, int):
            return {"$expr": node.value}
        folded = _fold_number(node)
        if isinstance(folded, int):
            return {"$expr": folded}
        if folded is not _NOT_A_NUMBER:
            raise self._error(
                "Query must evaluate to a dictionary, but this is a float, not a condition.", node
            )
        if isinstance(node, ast.NamedExpr):
            raise self._assignment_error(node)
        if isinstance(node, (ast.BinOp, ast.UnaryOp)):
            self._check_operator(node)
            raise self._error(
                "Arithmetic is only allowed inside a comparison, e.g. args.a + args.b > 10. "
                "Query must evaluate to a dictionary.",
                node,
            )
        if isinstance(node, _FIELD_NODES):
            path = self._field_path(node)
            raise self._error(
                f"Query must evaluate to a dictionary, but '{path}' is a bare field, not a "
                f"condition. Did you mean exists({path}) or a comparison such as {path} == ...?",
                node,
            )
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            raise self._error(
                "Query must evaluate to a dictionary, but this is a bare string. Compare a "
                "field with it instead, e.g. task_name == '...' or regex(task_name, '...').",
                node,
            )
        if isinstance(node, ast.Dict):
            return self._plain_dict(node)
        if isinstance(node, (ast.Constant, ast.List, ast.Tuple)):
            raise self._error(
                f"Query must evaluate to a dictionary, but this is {_describe(node)}, not a "
                "condition.",
                node,
            )
        raise self._unsupported(node)

    def _compare(self, node: ast.Compare) -> dict[str, Any]:
        if len(node.ops) > 1:
            span = self._operator_span(node.comparators[0], node.comparators[1])
            raise self._error(
                "Chained comparisons (like 1 < x < 3) are not supported; split them with "
                "'and', e.g. 1 < x and x < 3.",
                span=span,
            )
        op = node.ops[0]
        left, right = node.left, node.comparators[0]
        span = self._operator_span(left, right)
        if isinstance(op, ast.NotEq):
            raise self._error(
                "Operator '!=' is not supported: when the field is missing from a task, "
                "'field != value' is ambiguous (three-valued logic: should a task without the "
                "field match or not?). State what you want positively, e.g. "
                "field in [other, values], field < v or field > v, or exists(field, False).",
                span=span,
            )
        if isinstance(op, ast.NotIn):
            raise self._error(
                "Operator 'not in' is not supported: when the field is missing from a task, "
                "the negation is ambiguous (three-valued logic). List the values you want "
                "instead, e.g. status in ['pending', 'running'], or use exists(field, False).",
                span=span,
            )
        if isinstance(op, (ast.Is, ast.IsNot)):
            word = "is" if isinstance(op, ast.Is) else "is not"
            raise self._error(
                f"Unsupported comparison operator '{word}'; use '==' instead "
                "(e.g. field == None), or exists(field, False) for a missing field.",
                span=span,
            )
        if isinstance(op, ast.In):
            return self._membership(left, right, span)
        return self._comparison(op, left, right)

    def _comparison(self, op: ast.cmpop, left: ast.expr, right: ast.expr) -> dict[str, Any]:
        left_kind, left_value = self._operand(left)
        right_kind, right_value = self._operand(right)
        if left_kind == "field" and right_kind == "literal":
            return self._simple(left_value, type(op), right_value)
        if left_kind == "literal" and right_kind == "field":
            return self._simple(right_value, _MIRROR[type(op)], left_value)
        if left_kind == "literal" and right_kind == "literal":
            raise self._error(
                "This comparison has no field on either side; compare a field with a value, "
                "e.g. args.a == 1.",
                span=self._operator_span(left, right),
            )
        fields: list[str] = []
        lhs = self._expression(left, fields)
        rhs = self._expression(right, fields)
        if not fields:
            raise self._error(
                "This comparison has no field on either side; compare a field with a value, "
                "e.g. args.a + 1 > 2.",
                span=self._operator_span(left, right),
            )
        guards: list[dict[str, Any]] = [{p: {"$exists": True}} for p in _leaf_paths(fields)]
        return {"$and": [*guards, {"$expr": {_COMPARE[type(op)]: [lhs, rhs]}}]}

    @staticmethod
    def _simple(path: str, op: type[ast.cmpop], value: Any) -> dict[str, Any]:
        if op is ast.Eq:
            return {path: value}
        return {path: {_COMPARE[op]: value}}

    def _membership(
        self, left: ast.expr, right: ast.expr, span: tuple[int, int, int]
    ) -> dict[str, Any]:
        if isinstance(right, (ast.List, ast.Tuple)):
            path = self._field_argument(
                left,
                "The left side of 'in [...]' must be a field, e.g. status in ['pending', "
                "'failed'].",
            )
            return {path: {"$in": [self._literal(element) for element in right.elts]}}
        if isinstance(right, ast.Call) and _call_name(right) in ("list", "dict"):
            name = _call_name(right)
            self._check_arguments(right, name, 1, 1)
            path = self._field_argument(
                right.args[0], f"The argument of {name}() in a membership test must be a field."
            )
            if isinstance(left, _FIELD_NODES):
                raise self._error(
                    f"The left side of 'in {name}(...)' must be a literal value; comparing "
                    "two fields with 'in' is not supported.",
                    left,
                )
            if name == "list":
                value = self._literal(left)
                if isinstance(value, list):
                    raise self._error(
                        "The left side of 'in list(...)' must be a single value, not a list.",
                        left,
                    )
                return {path: value}
            if not (isinstance(left, ast.Constant) and isinstance(left.value, str)):
                raise self._error(
                    "The left side of 'in dict(...)' must be a string literal (the key), "
                    "e.g. 'lr' in dict(args).",
                    left,
                )
            key = left.value
            if not key or key.startswith("$"):
                raise self._error("Dict keys must be non-empty and must not start with '$'.", left)
            return {f"{path}.{key}": {"$exists": True}}
        if isinstance(right, _FIELD_NODES):
            path = self._field_path(right)
            raise self._error(
                f"'x in {path}' is ambiguous: write 'x in list({path})' to test whether the "
                f"array contains x, or 'x in dict({path})' to test whether the dict has the "
                f"key x. For substring search use regex({path}, 'x').",
                right,
            )
        if isinstance(right, ast.Set):
            raise self._error("Use a list [...] instead of a set {...} after 'in'.", right)
        if isinstance(right, ast.Constant) and isinstance(right.value, str):
            raise self._error(
                "Substring tests with 'in' are not supported; use regex(field, 'pattern').",
                right,
            )
        raise self._error(
            "Unsupported right-hand side for 'in': expected a list or tuple of values, "
            "list(field) or dict(field).",
            right,
        )

    def _call_condition(self, node: ast.Call) -> dict[str, Any]:
        name = _call_name(node)
        if name == "regex":
            self._check_arguments(node, name, 2, 2)
            path = self._field_argument(
                node.args[0], "The first argument of regex() must be a field."
            )
            pattern_node = node.args[1]
            if not (isinstance(pattern_node, ast.Constant) and isinstance(pattern_node.value, str)):
                raise self._error(
                    "The second argument of regex() must be a string literal (the pattern).",
                    pattern_node,
                )
            try:
                re.compile(pattern_node.value)
            except re.error as exc:
                raise self._error(f"Invalid regular expression: {exc}", pattern_node) from None
            return {path: {"$regex": pattern_node.value}}
        if name == "exists":
            self._check_arguments(node, name, 1, 2)
            path = self._field_argument(
                node.args[0], "The first argument of exists() must be a field."
            )
            flag = True
            if len(node.args) == 2:
                flag_node = node.args[1]
                if not (isinstance(flag_node, ast.Constant) and isinstance(flag_node.value, bool)):
                    raise self._error(
                        "The second argument of exists() must be True or False.", flag_node
                    )
                flag = flag_node.value
            return {path: {"$exists": flag}}
        if name in ("date", "list", "dict"):
            raise self._error(
                f"Query must evaluate to a dictionary, but {name}() gives a value, not a "
                "condition. Use it in a comparison, e.g. created_at > date('1 hour ago').",
                node,
            )
        raise self._unknown_function(node)

    # ---------------------------------------------------------------- values

    def _operand(self, node: ast.expr) -> tuple[str, Any]:
        """Classify one side of a comparison: ("field", path), ("literal", value) or
        ("expression", node) for arithmetic."""
        if isinstance(node, ast.BinOp):
            return "expression", node
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                raise self._not_error(node)
            if isinstance(node.op, ast.Invert):
                self._check_operator(node)
            folded = _fold_number(node)
            if folded is not _NOT_A_NUMBER:
                return "literal", folded
            return "expression", node
        if isinstance(node, ast.Call) and _call_name(node) in ("list", "dict"):
            self._check_arguments(node, _call_name(node), 1, 1)
            return self._operand(node.args[0])
        if isinstance(node, _FIELD_NODES):
            return "field", self._field_path(node)
        return "literal", self._literal(node)

    def _expression(self, node: ast.expr, fields: list[str], arithmetic: bool = False) -> Any:
        """Translate one side of an ``$expr`` comparison, collecting referenced field paths."""
        if isinstance(node, ast.BinOp):
            self._check_operator(node)
            name = _ARITHMETIC[type(node.op)]
            return {
                name: [
                    self._expression(node.left, fields, True),
                    self._expression(node.right, fields, True),
                ]
            }
        if isinstance(node, ast.UnaryOp):
            folded = _fold_number(node)
            if folded is not _NOT_A_NUMBER:
                return folded
            if isinstance(node.op, ast.Not):
                raise self._not_error(node)
            self._check_operator(node)
            inner = self._expression(node.operand, fields, True)
            if isinstance(node.op, ast.USub):
                return {"$multiply": [-1, inner]}
            return inner
        if isinstance(node, ast.Call) and _call_name(node) in ("list", "dict"):
            self._check_arguments(node, _call_name(node), 1, 1)
            return self._expression(node.args[0], fields, arithmetic)
        if isinstance(node, _FIELD_NODES):
            path = self._field_path(node)
            fields.append(path)
            return "$" + path
        value = self._literal(node)
        if arithmetic and not (_is_number(value) or isinstance(value, datetime)):
            raise self._error(
                f"Arithmetic operands must be numbers, dates or fields, got {_describe(node)}.",
                node,
            )
        if _needs_literal(value) or isinstance(value, dict):
            return {"$literal": value}
        return value

    def _literal(self, node: ast.expr) -> Any:
        """Evaluate a literal value: constants, lists, tuples, dicts, negative numbers, date()."""
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, float) and not math.isfinite(value):
                raise self._error("Infinite and NaN numbers are not supported.", node)
            if value is None or isinstance(value, (bool, int, float, str)):
                return value
            raise self._error(f"Unsupported literal {value!r}.", node)
        if isinstance(node, ast.UnaryOp):
            folded = _fold_number(node)
            if folded is not _NOT_A_NUMBER:
                return folded
            if isinstance(node.op, ast.Not):
                raise self._not_error(node)
            raise self._error("A sign can only be applied to numbers or fields here.", node)
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self._literal(element) for element in node.elts]
        if isinstance(node, ast.Dict):
            result: dict[str, Any] = {}
            for key, item in zip(node.keys, node.values, strict=True):
                if key is None:
                    raise self._error("'**' unpacking is not supported in dict literals.", item)
                if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                    raise self._error("Dict literal keys must be strings.", key)
                if key.value.startswith("$"):
                    raise self._error(
                        "Operator keys ('$...') are not allowed inside a Python-syntax filter; "
                        "pass the whole filter as a MongoDB dict instead.",
                        key,
                    )
                result[key.value] = self._literal(item)
            return result
        if isinstance(node, ast.Call):
            name = _call_name(node)
            if name == "date":
                return self._date(node)
            if name in ("list", "dict"):
                self._check_arguments(node, name, 1, 1)
                value = self._literal(node.args[0])
                return value
            raise self._unknown_function(node)
        if isinstance(node, _FIELD_NODES):
            path = self._field_path(node)
            raise self._error(f"Expected a literal value here, got the field '{path}'.", node)
        if isinstance(node, ast.BinOp):
            self._check_operator(node)
            raise self._error(
                "Expected a literal value here; arithmetic is only allowed on the sides of a "
                "comparison.",
                node,
            )
        if isinstance(node, ast.NamedExpr):
            raise self._assignment_error(node)
        raise self._unsupported(node, "Expected a literal value")

    def _date(self, node: ast.Call) -> datetime:
        self._check_arguments(node, "date", 1, 1)
        argument = node.args[0]
        if not (isinstance(argument, ast.Constant) and isinstance(argument.value, str)):
            raise self._error(
                "The argument of date() must be a string literal, e.g. date('3 hours ago').",
                argument,
            )
        import dateparser  # imported lazily: it is slow to import

        text = argument.value
        # Relative phrases are resolved against this process's naive local "now", so naive
        # results are local time as Python sees it (dateparser caches its own idea of the zone).
        base = datetime.fromtimestamp(utc_now().timestamp())
        settings = {"RELATIVE_BASE": base}
        shifted: datetime | None
        try:
            parsed: datetime | None = dateparser.parse(text, settings=settings)
            # A phrase whose result moves with the base ("30 minutes ago", "yesterday") is
            # relative: it is kept as an offset from now, which the server resolves with its
            # own clock (``RelativeTime``).
            shifted = (
                dateparser.parse(text, settings={"RELATIVE_BASE": base - _SHIFT})
                if parsed is not None and parsed.tzinfo is None
                else None
            )
        except Exception as exc:  # dateparser raises assorted errors on odd input
            raise self._error(
                f"Query parsing failed: cannot parse date {text!r}: {exc}",
                argument,
                cls=QueryTranspilerError,
            ) from None
        if parsed is None:
            raise self._error(
                f"Query parsing failed: cannot parse date {text!r}; try e.g. '3 hours ago', "
                "'yesterday' or '2025-01-31 14:00'.",
                argument,
                cls=QueryTranspilerError,
            )
        if (
            shifted is not None
            and shifted.tzinfo is None
            and abs((parsed - shifted) - _SHIFT) < timedelta(seconds=1)
        ):
            return RelativeTime.from_now((parsed - base).total_seconds())
        # A naive result is local time; astimezone() interprets naive datetimes that way.
        return parsed.astimezone(timezone.utc)

    def _plain_dict(self, node: ast.Dict) -> dict[str, Any]:
        """A whole-filter dict literal (Python or JSON spelling), returned verbatim."""
        try:
            value: dict[str, Any] = literal_value(node, string_keys=True)
        except NotALiteral as exc:
            if exc.key:
                raise self._error("Keys of a dict filter must be strings.", exc.node) from None
            raise self._error(
                "A dict filter may contain only literal values (JSON or Python literal "
                f"syntax), got {_describe(exc.node)}. Use the Python expression syntax for "
                "date() and the other functions.",
                exc.node,
            ) from None
        return value

    # ---------------------------------------------------------------- fields

    def _field_argument(self, node: ast.expr, message: str) -> str:
        """A field path given as a function argument (``list(field)`` is accepted too)."""
        if isinstance(node, ast.Call) and _call_name(node) in ("list", "dict"):
            self._check_arguments(node, _call_name(node), 1, 1)
            return self._field_argument(node.args[0], message)
        if not isinstance(node, _FIELD_NODES):
            raise self._error(f"{message} Got {_describe(node)}.", node)
        return self._field_path(node)

    def _field_path(self, node: ast.expr) -> str:
        chain: list[ast.Attribute | ast.Subscript] = []
        current = node
        while isinstance(current, (ast.Attribute, ast.Subscript)):
            chain.append(current)
            current = current.value
        if isinstance(current, ast.Call):
            raise self._error(
                "Attribute access and subscripts on a function call are not supported; "
                "write the field path directly, e.g. args.a.b.",
                chain[-1] if chain else current,
            )
        if not isinstance(current, ast.Name):
            raise self._error(
                f"Invalid field path: {_describe(current)} cannot start a field.", current
            )
        self._check_root(current)
        parts = [current.id]
        for item in reversed(chain):
            if isinstance(item, ast.Attribute):
                parts.append(item.attr)
            else:
                parts.append(self._subscript_key(item))
        return ".".join(parts)

    def _check_root(self, node: ast.Name) -> None:
        name = node.id
        if self.allowed is None or name in self.allowed:
            return
        allowed = ", ".join(self.allowed)
        if name in _JSON_NAMES or name.lower() in ("none", "true", "false"):
            python = {"true": "True", "false": "False", "null": "None", "none": "None"}
            hint = f" Did you mean {python[name.lower()]}?"
        elif name == "_id":
            hint = ' Use task_id, or pass a MongoDB dict filter such as {"_id": "..."}.'
        elif name in SUPPORTED_FUNCTIONS:
            hint = f" {name} is a function: {SUPPORTED_FUNCTIONS[name]}."
        else:
            close = difflib.get_close_matches(name, self.allowed, n=1, cutoff=0.6)
            nested = [
                f"{root}.{name}" for root in ("args", "metadata", "summary") if root in self.allowed
            ]
            if close:
                hint = f" Did you mean '{close[0]}'?"
            elif nested:  # a task's own fields live under args (metadata, summary)
                hint = f" Did you mean '{nested[0]}'? Task arguments are under args."
            else:
                hint = ""
        raise self._error(
            f"Field '{name}' is unknown or not allowed.{hint} Allowed fields: {allowed}.", node
        )

    def _subscript_key(self, node: ast.Subscript) -> str:
        key = node.slice
        if isinstance(key, ast.Constant):
            value = key.value
            if isinstance(value, str):
                if not value or value.startswith("$"):
                    raise self._error(
                        "Subscript keys must be non-empty and must not start with '$'.", key
                    )
                return value
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)
        if isinstance(key, ast.UnaryOp) and isinstance(key.op, ast.USub):
            raise self._error(
                "Negative indices are not supported; array elements can only be addressed "
                "from the start (a[0], a[1], ...).",
                key,
            )
        if isinstance(key, ast.Slice):
            raise self._error("Slices are not supported in field paths.", key)
        raise self._error(
            "Subscripts must be string or non-negative integer constants, e.g. args['a'] or "
            f"args.items[0]; got {_describe(key)}.",
            key,
        )

    # ---------------------------------------------------------------- checks

    def _check_arguments(self, node: ast.Call, name: str, least: int, most: int) -> None:
        if node.keywords:
            keyword = node.keywords[0]
            raise self._error(f"Keyword arguments are not supported in {name}().", keyword)
        for argument in node.args:
            if isinstance(argument, ast.Starred):
                raise self._error(f"'*' unpacking is not supported in {name}().", argument)
        count = len(node.args)
        if least <= count <= most:
            return
        expected = str(least) if least == most else f"{least} to {most}"
        plural = "" if most == 1 else "s"
        usage = SUPPORTED_FUNCTIONS.get(name, f"{name}(...)")
        raise self._error(
            f"{name}() takes {expected} argument{plural} ({usage}), got {count}.", node
        )

    def _check_operator(self, node: ast.BinOp | ast.UnaryOp) -> None:
        op = type(node.op)
        if op in _ARITHMETIC or op in (ast.USub, ast.UAdd):
            return
        if isinstance(node, ast.BinOp):
            span = self._operator_span(node.left, node.right)
        else:
            lineno, col, _ = self._node_span(node)
            span = (lineno, col, 1)
        raise self._error(
            f"Operator '{_OPERATOR_TEXT.get(op, op.__name__)}' is not supported; "
            f"{_OPERATOR_HINTS.get(op, 'only + - * / % are')}. Arithmetic supports + - * / % "
            "and unary minus.",
            span=span,
        )

    def _not_error(self, node: ast.UnaryOp) -> QueryTranspilerError:
        lineno, col, _ = self._node_span(node)
        return self._error(
            "Operator 'not' is not supported: when a field is missing from a task, the "
            "negation is ambiguous (three-valued logic: should the task match?). Write the "
            "condition positively instead, e.g. 'not x > 1' -> 'x <= 1', "
            "'not exists(x)' -> 'exists(x, False)', 'not status == \"failed\"' -> "
            "'status in [...the other statuses...]'.",
            span=(lineno, col, 3),
        )

    def _unknown_function(self, node: ast.Call) -> QueryTranspilerError:
        name = _call_name(node)
        supported = ", ".join(SUPPORTED_FUNCTIONS.values())
        hint = ""
        if isinstance(node.func, ast.Attribute):
            if node.func.attr in ("startswith", "endswith", "contains", "match", "find", "search"):
                hint = " Method calls are not supported; use regex(field, 'pattern')."
            else:
                hint = " Method calls are not supported."
        else:
            close = difflib.get_close_matches(name, list(SUPPORTED_FUNCTIONS), n=1, cutoff=0.6)
            if close:
                hint = f" Did you mean {close[0]}()?"
        return self._error(
            f"Unsupported function call: {name}.{hint} Supported functions: {supported}.",
            node.func,
        )

    def _unsupported(
        self, node: ast.expr, context: str = "Unsupported syntax"
    ) -> QueryTranspilerError:
        return self._error(f"{context}: {_describe(node)} is not supported in a filter.", node)
