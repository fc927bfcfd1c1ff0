"""Dotted keys, argument shapes and the "no more, no less" rule.

Shared by client and server. Task ``args`` are nested dicts; users address them with dotted
paths (``a.b``). A *required-fields* list (e.g. the ``%(a.b)`` fields of a ``labtasker loop``
template) selects the tasks whose args have exactly those fields (1.0.1's rule):

* **no less**: every required path exists in ``args``;
* **no more**: at every level the keys of ``args`` equal the keys of the required tree, where a
  required path that ends at a key covers the whole subtree below it;
* ``"*"`` in the list switches "no more" off (extra args allowed);
* ``None`` or ``[]`` means no constraint at all.

Both halves depend only on the *key structure* of ``args`` (its "shape"), never on values, so
the server evaluates the rule once per distinct shape instead of once per task.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

# The one name rule: queue, task and worker names and every segment of a dotted key use
# letters, digits, ``_`` and ``-`` only.
NAME_CHARS = r"a-zA-Z0-9_-"  # as a regex character class body
NAME_CHARSET: frozenset[str] = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
)
NAME_PATTERN = rf"^[{NAME_CHARS}]+$"
NAME_RE = re.compile(NAME_PATTERN)
MAX_NAME_LENGTH = 100  # characters of a queue/task/worker name
KEY_SEGMENT = rf"[{NAME_CHARS}]+"
KEY_PATTERN = re.compile(rf"^{KEY_SEGMENT}(\.{KEY_SEGMENT})*$")
_NOT_NAME_CHAR = re.compile(rf"[^{NAME_CHARS}]")


def is_name(text: str) -> bool:
    """Whether ``text`` is a valid name: 1..``MAX_NAME_LENGTH`` characters of the name rule."""
    return isinstance(text, str) and len(text) <= MAX_NAME_LENGTH and bool(NAME_RE.fullmatch(text))


def sanitize_name(text: str, replacement: str = "-") -> str:
    """``text`` with every character outside the name rule replaced by ``replacement``."""
    return _NOT_NAME_CHAR.sub(replacement, text)


Shape = dict[str, Any]  # nested dict; a leaf (any non-dict value) is None


class KeyConflictError(ValueError):
    """Raised when dotted keys collide, e.g. ``{"a": 1, "a.b": 2}``."""


def validate_key(key: str) -> None:
    """Raise ``ValueError`` unless ``key`` is a dotted key of ``[a-zA-Z0-9_-]`` segments."""
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise ValueError(
            f"Invalid key {key!r}: use letters, digits, '_' or '-', dot-separated (like 'a.b_1')"
        )


def unflatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """Turn dotted keys into nested dicts, recursively: ``{"a.b": 1}`` -> ``{"a": {"b": 1}}``.

    Raises ``KeyConflictError`` when two keys claim the same place with different kinds of
    value (``{"a": 1, "a.b": 2}``).
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        if isinstance(value, Mapping):
            value = unflatten(value)
        parts = key.split(".") if "." in key else [key]
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None and part not in node:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise KeyConflictError(f"Conflict at key {'.'.join(parts[: i + 1])!r}")
            node = child
        last = parts[-1]
        if last in node:
            existing = node[last]
            if isinstance(existing, dict) and isinstance(value, dict):
                node[last] = _merge_disjoint(existing, value, ".".join(parts))
                continue
            raise KeyConflictError(f"Conflict at key {'.'.join(parts)!r}")
        node[last] = value
    return out


def _merge_disjoint(a: dict[str, Any], b: dict[str, Any], where: str) -> dict[str, Any]:
    merged = dict(a)
    for k, v in b.items():
        if k in merged:
            if isinstance(merged[k], dict) and isinstance(v, dict):
                merged[k] = _merge_disjoint(merged[k], v, f"{where}.{k}")
            else:
                raise KeyConflictError(f"Conflict at key {where + '.' + k!r}")
        else:
            merged[k] = v
    return merged


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into dotted keys; empty dicts are kept as leaves."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def validate_keys(data: Mapping[str, Any], what: str) -> None:
    """Raise ``ValueError`` naming ``what`` when any flattened key breaks the key pattern."""
    for key in flatten(data):
        if not KEY_PATTERN.match(key):
            raise ValueError(
                f"{what}: invalid key {key!r} (use letters, digits, '_' or '-', dot-separated)"
            )


def shape_of(args: Mapping[str, Any]) -> Shape:
    """Return the key structure of ``args``: nested dicts kept, every other value -> None."""
    return {k: (shape_of(v) if isinstance(v, Mapping) else None) for k, v in args.items()}


def shape_key(shape: Shape) -> str:
    """Canonical text of a shape (sorted keys, compact): equal shapes give equal text."""
    return json.dumps(shape, sort_keys=True, separators=(",", ":"))


def parse_required_fields(fields: Iterable[str] | None) -> tuple[list[list[str]], bool]:
    """Validate a required-fields list and split it into paths and the star flag.

    Returns ``(paths, star)`` where ``paths`` are lists of segments. ``None``/``[]`` -> no
    paths. Raises ``ValueError`` naming the bad entry (empty, ``.x``, illegal characters, or a
    non-string).
    """
    if fields is None:
        return [], False
    if isinstance(fields, (str, bytes)) or not isinstance(fields, Iterable):
        raise ValueError("required_fields must be a list of strings")
    paths: list[list[str]] = []
    star = False
    for field in fields:
        if not isinstance(field, str):
            raise ValueError(f"required_fields: {field!r} is not a string")
        if field == "*":
            star = True
            continue
        if not KEY_PATTERN.match(field):
            raise ValueError(
                f"required_fields: invalid field {field!r} (dot-separated letters, digits, _ or -)"
            )
        paths.append(field.split("."))
    return paths, star


def topmost_tree(paths: list[list[str]]) -> Shape:
    """Tree where a shorter path subsumes longer ones: ``a`` + ``a.x`` -> ``{a: None}``."""
    tree: Shape = {}
    for path in sorted(paths, key=len):
        node = tree
        for i, seg in enumerate(path):
            if seg in node and node[seg] is None:
                break  # covered by a shorter path
            if i == len(path) - 1:
                node[seg] = None
            else:
                node = node.setdefault(seg, {})
    return tree


def _has_path(shape: Shape, path: list[str]) -> bool:
    node: Any = shape
    for seg in path:
        if not isinstance(node, dict) or seg not in node:
            return False
        node = node[seg]
    return True


def _covers(tree: Shape, shape: Any) -> bool:
    """ "No more": key sets equal at each level; a None leaf in ``tree`` covers any subtree."""
    if not isinstance(shape, dict):
        return False
    if set(tree) != set(shape):
        return False
    return all(sub is None or _covers(sub, shape[key]) for key, sub in tree.items())


def shape_matches(required: Iterable[str] | None, shape: Shape) -> bool:
    """Whether a task whose args have key structure ``shape`` satisfies ``required``.

    Implements the "no more, no less" rule; see the module docstring.
    Raises ``ValueError`` on a malformed required-fields list.
    """
    paths, star = parse_required_fields(required)
    if not paths:
        return True  # None, [] and ["*"] impose no constraint
    if not all(_has_path(shape, p) for p in paths):
        return False
    return star or _covers(topmost_tree(paths), shape)


def args_match(required: Iterable[str] | None, args: Mapping[str, Any]) -> bool:
    """``shape_matches`` applied to concrete ``args``."""
    return shape_matches(required, shape_of(args))
