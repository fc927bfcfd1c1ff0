"""Literal values written as text, read without executing anything: the one reader behind
dict options (``--args``, ``--metadata``), dict filters (``-f '{"status": "failed"}'``), the
dict filters inside a Python-syntax filter, ``-- --lr=0.1`` task args and sweep values.

Two grammars, both on Python's ``ast`` (the text is parsed, never evaluated):

* a *JSON or Python literal* (:func:`parse_literal`, :func:`literal_value` on a parsed node,
  :func:`dict_literal`): strings, numbers with any signs, ``true/false/null`` and
  ``True/False/None``, lists and tuples (both read as lists) and dicts; what JSON transport
  would keep;
* a *Python literal* (:func:`python_literal`, :func:`python_literal_or_text`): what
  ``ast.literal_eval`` reads (tuples, sets, bytes and complex numbers too; ``true`` is not
  one), used where 1.0.1 cast command-line values that way.

Shared by the client and the filters; imports nothing of either."""

from __future__ import annotations

import ast
import math
from typing import Any

__all__ = [
    "NotALiteral",
    "dict_literal",
    "literal_value",
    "parse_literal",
    "python_literal",
    "python_literal_or_text",
]

_NAMED_CONSTANTS: dict[str, Any] = {
    "true": True,
    "false": False,
    "null": None,
    "True": True,
    "False": False,
    "None": None,
}

# what ``ast.literal_eval`` raises on text that is not a Python literal (deep nesting and huge
# inputs included)
_LITERAL_EVAL_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)


class NotALiteral(ValueError):
    """A node is not a JSON or Python literal. ``reason``: why, in words; ``node``: the
    outermost node that is not a literal (a signed operand counts as one node);
    ``key``: whether the node stands where a dict key is read."""

    def __init__(self, reason: str, node: ast.expr, *, key: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.node = node
        self.key = key


def literal_value(node: ast.expr, *, string_keys: bool = False) -> Any:
    """The JSON or Python literal written as ``node`` (see the module docstring): tuples
    become lists; dict keys that are numbers or booleans become their ``str()`` (as after
    JSON transport), or, with ``string_keys``, are refused like any key that is not a string.

    Raises :class:`NotALiteral` naming the offending node, and ``RecursionError`` when the
    value is nested deeper than the interpreter's recursion limit."""
    if isinstance(node, ast.Constant):
        if node.value is None or isinstance(node.value, (str, int, float, bool)):
            return node.value
        raise NotALiteral(f"unsupported constant {node.value!r}", node)
    if isinstance(node, ast.Name):
        if node.id in _NAMED_CONSTANTS:
            return _NAMED_CONSTANTS[node.id]
        raise NotALiteral(f"name {node.id!r} is not a literal", node)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        try:
            value = literal_value(node.operand, string_keys=string_keys)
        except NotALiteral as exc:
            raise NotALiteral(exc.reason, node) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NotALiteral("sign applied to a non-number", node)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [literal_value(element, string_keys=string_keys) for element in node.elts]
    if isinstance(node, ast.Dict):
        out: dict[str, Any] = {}
        for key_node, value_node in zip(node.keys, node.values, strict=True):
            key = _dict_key(key_node, value_node, string_keys)  # the key is read first
            out[key] = literal_value(value_node, string_keys=string_keys)
        return out
    raise NotALiteral(f"{type(node).__name__} is not a literal", node)


def _dict_key(key_node: ast.expr | None, value_node: ast.expr, string_keys: bool) -> str:
    """The key of one dict item (``key_node`` is ``None`` for ``**value``)."""
    if key_node is None:
        raise NotALiteral("'**' unpacking is not a literal", value_node, key=True)
    if string_keys:
        if isinstance(key_node, ast.Constant) and isinstance(key_node.value, str):
            return key_node.value
        raise NotALiteral("dict keys must be strings", key_node, key=True)
    key = literal_value(key_node)
    if isinstance(key, (dict, list)):
        raise NotALiteral("dict keys must be strings or numbers", key_node, key=True)
    return key if isinstance(key, str) else str(key)


def parse_literal(text: str) -> Any:
    """Evaluate ``text`` as a JSON or Python literal and return the value.

    Accepts strings, numbers, ``true/false/null`` and ``True/False/None``, lists, tuples
    (returned as lists) and dicts (non-string keys become strings, as after JSON transport).
    Raises ``ValueError`` (``"not a literal: ..."``) if ``text`` is anything else (names,
    calls, operators, syntax errors, nesting deeper than the recursion limit).
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not a literal: {exc.msg}") from None
    except (RecursionError, MemoryError):  # deeper than Python's parser goes
        raise ValueError("not a literal: nested too deeply") from None
    try:
        return literal_value(tree.body)
    except NotALiteral as exc:
        raise ValueError(f"not a literal: {exc}") from None
    except RecursionError:
        raise ValueError("not a literal: nested too deeply") from None


def dict_literal(text: str) -> dict[str, Any] | None:
    """The dict ``text`` spells as a JSON or Python literal (:func:`parse_literal`), or
    ``None`` when ``text`` is not a dict literal (another literal, or no literal at all)."""
    try:
        value = parse_literal(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def python_literal(text: str) -> Any:
    """``ast.literal_eval(text)``: the Python literal ``text`` spells (``"0.1"`` -> 0.1,
    ``"(1, 2)"`` -> a tuple, ``"'x'"`` -> ``"x"``). Raises ``ValueError`` for anything else,
    including syntax errors and nesting too deep to read."""
    try:
        return ast.literal_eval(text)
    except _LITERAL_EVAL_ERRORS as exc:
        raise ValueError(f"not a Python literal: {text!r}") from exc


def python_literal_or_text(text: str) -> Any:
    """:func:`python_literal` of ``text`` if it is one (``"0.1"`` -> 0.1, ``"[1,2]"`` -> a
    list, ``"'x'"`` -> ``"x"``), else the text unchanged (``"resnet"`` -> ``"resnet"``): how
    command-line values are cast."""
    try:
        return python_literal(text)
    except ValueError:
        return text


def non_finite(value: Any) -> bool:
    """Whether ``value`` holds a float JSON cannot carry (``1e400`` is inf; NaN), at any
    depth of lists, tuples, sets and dict values."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple, set)):
        return any(non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(non_finite(v) for v in value.values())
    return False


def non_finite_path(value: Any, path: str) -> tuple[str, float] | None:
    """Where ``value`` holds a float JSON cannot carry (infinite or NaN): ``(path, number)``
    for the first one in order, its path starting at ``path`` (``args.lr``,
    ``args.layers[1]``, ``metadata.a.b``); ``None`` when there is none. Looks at any depth of lists, tuples, sets and dict values
    (without recursion, so that deep nesting cannot overflow the stack)."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, float):
            if not math.isfinite(node):
                return where, node
        elif isinstance(node, dict):
            items = [(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()]
            stack.extend(reversed(items))
        elif isinstance(node, (list, tuple, set)):
            stack.extend(reversed([(v, f"{where}[{i}]") for i, v in enumerate(node)]))
    return None
