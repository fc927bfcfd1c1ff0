"""Turning user text into query filters, shared by the CLI (``-f``) and the Python API.

* :func:`parse_literal` evaluates a JSON *or* Python literal (``true``/``True``,
  ``null``/``None`` ...) without executing code.
* :func:`parse_filter` turns a filter string into a Mongo-style dict: a dict literal is used
  as-is, anything else is a Python-syntax expression handed to the transpiler
  (``labtasker.filters.pyquery.transpile``), e.g. ``args.lr < 0.1 and status == "failed"``.
* :func:`encode_filter` prepares a filter dict for JSON transport: datetimes become
  ``{"_dt": "<ISO 8601 UTC>"}`` (the encoding 1.0.1 uses).
"""

from __future__ import annotations

import ast
from datetime import date, datetime, timezone
from typing import Any

from labtasker.exceptions import LabtaskerValueError, QueryTranspilerError
from labtasker.timeutil import RelativeTime

_NAMED_CONSTANTS = {
    "true": True,
    "false": False,
    "null": None,
    "True": True,
    "False": False,
    "None": None,
}


class _NotLiteral(ValueError):
    pass


def _eval_node(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (str, int, float, bool, type(None))):
            return node.value
        raise _NotLiteral(f"unsupported constant {node.value!r}")
    if isinstance(node, ast.Name):
        if node.id in _NAMED_CONSTANTS:
            return _NAMED_CONSTANTS[node.id]
        raise _NotLiteral(f"name {node.id!r} is not a literal")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval_node(node.operand)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _NotLiteral("sign applied to a non-number")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_eval_node(elt) for elt in node.elts]
    if isinstance(node, ast.Dict):
        out: dict[str, Any] = {}
        for key_node, value_node in zip(node.keys, node.values, strict=True):
            if key_node is None:
                raise _NotLiteral("'**' unpacking is not a literal")
            key = _eval_node(key_node)
            if isinstance(key, (dict, list)):
                raise _NotLiteral("dict keys must be strings or numbers")
            out[key if isinstance(key, str) else str(key)] = _eval_node(value_node)
        return out
    raise _NotLiteral(f"{type(node).__name__} is not a literal")


def parse_literal(text: str) -> Any:
    """Evaluate ``text`` as a JSON or Python literal and return the value.

    Accepts strings, numbers, ``true/false/null`` and ``True/False/None``, lists, tuples
    (returned as lists) and dicts (non-string keys become strings, as after JSON transport).
    Raises ``ValueError`` if ``text`` is anything else (names, calls, operators, syntax errors).
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not a literal: {exc.msg}") from None
    try:
        return _eval_node(tree.body)
    except _NotLiteral as exc:
        raise ValueError(f"not a literal: {exc}") from None
    except RecursionError:
        raise ValueError("not a literal: nested too deeply") from None


def parse_filter(text: str) -> dict[str, Any]:
    """Parse a filter string into a query dict.

    * ``'{"args.lr": {"$lt": 0.1}}'`` / ``"{'status': 'failed', 'x': True}"`` (JSON or Python
      dict literal) -> that dict, unchanged.
    * any other text -> a Python-syntax expression transpiled by
      :func:`labtasker.filters.pyquery.transpile`, e.g. ``args.lr < 0.1 and priority >= 10``.
    * empty/blank text -> ``{}`` (no filter).

    Raises :class:`~labtasker.exceptions.QueryTranspilerError` (or a subclass) when the text is
    neither a dict literal nor a valid filter expression.
    """
    if text is None or not str(text).strip():
        return {}
    text = str(text)
    try:
        value = parse_literal(text)
    except ValueError:
        value = None
    else:
        if isinstance(value, dict):
            return value
    try:
        from labtasker.filters.pyquery import transpile
    except ImportError as exc:  # pragma: no cover - only while the transpiler is missing
        raise QueryTranspilerError(
            f"Python-syntax filters are unavailable ({exc}); use a dict literal instead"
        ) from exc
    try:
        result = transpile(text)
    except QueryTranspilerError:
        raise
    except (SyntaxError, ValueError, TypeError) as exc:
        raise QueryTranspilerError(f"Invalid filter {text!r}: {exc}") from exc
    if not isinstance(result, dict):
        raise QueryTranspilerError(f"Invalid filter {text!r}: it does not evaluate to a query")
    return result


def _encode_datetime(value: datetime | date) -> dict[str, Any]:
    if isinstance(value, RelativeTime):  # "30 minutes ago": resolved by the server's clock
        return {"_dt": value.astimezone(timezone.utc).isoformat(), "_rel": value.offset}
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    # Naive datetimes are taken as the client's local time, like ``datetime.now()``.
    return {"_dt": value.astimezone(timezone.utc).isoformat()}


def encode_filter(value: Any) -> Any:
    """Return a JSON-ready copy of a filter: datetimes/dates become ``{"_dt": iso_utc}``;
    relative ones (``date("1 hour ago")``) also carry ``"_rel": <seconds from now>``.

    Naive datetimes are interpreted as local time and converted to UTC; tuples become lists.
    Raises :class:`LabtaskerValueError` for keys that are not strings.
    """
    if isinstance(value, (datetime, date)):
        return _encode_datetime(value)
    if isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            if not isinstance(key, str):
                raise LabtaskerValueError(f"filter keys must be strings, got {key!r}")
            out[key] = encode_filter(sub)
        return out
    if isinstance(value, (list, tuple)):
        return [encode_filter(v) for v in value]
    return value


def coerce_filter(extra_filter: str | dict | None) -> dict[str, Any] | None:
    """``None`` -> ``None``; str -> :func:`parse_filter`; dict -> as is. Then :func:`encode_filter`.

    Raises :class:`LabtaskerTypeError` for other types.
    """
    from labtasker.exceptions import LabtaskerTypeError

    if extra_filter is None:
        return None
    if isinstance(extra_filter, str):
        extra_filter = parse_filter(extra_filter)
    if not isinstance(extra_filter, dict):
        raise LabtaskerTypeError(
            f"extra_filter must be a dict or a string, got {type(extra_filter).__name__}"
        )
    return encode_filter(extra_filter)
