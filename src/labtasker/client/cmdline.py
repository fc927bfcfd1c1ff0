"""Parsing of command-line values: extra options, dict options and update expressions.

* :func:`parse_extra_opt` -- ``labtasker task submit -- --lr=0.1 --model.depth 3 -k v`` ->
  ``{"lr": 0.1, "model": {"depth": 3}, "k": "v"}`` (1.0.1's rules).
* :func:`parse_dict_option` -- ``--args``/``--metadata``/``--metadata`` values: a JSON or Python
  dict literal.
* :func:`parse_updates` -- ``labtasker task update -u args.lr=0.2 -u status=pending``.

Every error is a :class:`~labtasker.exceptions.LabtaskerValueError` with a one-line message
naming the offending token or option.
"""

from __future__ import annotations

import re
from typing import Any

from labtasker.exceptions import LabtaskerValueError
from labtasker.fields import DICT_TASK_FIELDS, UPDATABLE_TASK_FIELDS
from labtasker.fsm import TaskState
from labtasker.keys import KEY_PATTERN, KeyConflictError, unflatten
from labtasker.literals import non_finite, parse_literal, python_literal_or_text

_TASK_STATUSES = tuple(state.value for state in TaskState)

_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def check_json_number(value: Any, where: str, raw: str, sep: str = " ") -> Any:
    """Refuse a value JSON cannot store (it would silently become ``null``): a number
    beyond the float range (``1e400``), infinity or NaN. Raises
    :class:`LabtaskerValueError` naming ``where`` (``--x``, ``args.x``) and saying how to
    keep the text."""
    if non_finite(value):
        raise LabtaskerValueError(
            f"{where}{sep}{raw}: not a number JSON can store (beyond the float range, "
            f"infinite or NaN; it would be stored as null); to keep it as text, quote it: "
            f"{where}{sep}\"'{raw}'\""
        )
    return value


def _is_value(token: str) -> bool:
    """A token that can be an option's value: not option-like, or a negative number."""
    return not token.startswith("-") or bool(_NEGATIVE_NUMBER.match(token))


def _norm_key(raw: str, token: str) -> str:
    key = raw.replace("-", "_")
    if not KEY_PATTERN.match(key):
        raise LabtaskerValueError(
            f"Invalid option name in {token!r}: use letters, digits, '_' or '-', "
            f"dot-separated (like --model.depth)"
        )
    return key


def parse_extra_opt(
    tokens: list[str] | tuple[str, ...], dropped: list[str] | None = None
) -> dict[str, Any]:
    """Parse ``--key value`` style tokens into a nested args dict.

    Rules (those of labtasker 1.0.1):

    * ``--key value`` and ``--key=value``: long-option values are cast with
      :func:`~labtasker.literals.python_literal_or_text` (``0.1`` -> float, ``[1,2]`` ->
      list, ``30,60`` -> the list ``[30, 60]``, ``True`` -> bool, other text stays a
      string); a Python string literal keeps the text: ``--key "'30,60'"`` -> ``"30,60"``.
      A number JSON cannot store (``1e400``) is refused;
    * dots nest: ``--a.b 1`` -> ``{"a": {"b": 1}}``; dashes in names become ``_``
      (``--learning-rate`` -> ``learning_rate``);
    * ``-k value`` (one letter) keeps the value as a string;
    * an option followed by another option (or by nothing) is a flag and is dropped, as are
      grouped short flags like ``-abc``; a negative number (``--x -3``) counts as a value;
    * a bare ``--`` is ignored; any other bare token raises
      ``LabtaskerValueError("Unexpected token: <tok>")``.

    Conflicting keys (``--a 1 --a.b 2``) raise :class:`LabtaskerValueError`. The flags that
    were dropped are appended to ``dropped`` when a list is given (for a warning).
    """
    flat: dict[str, Any] = {}
    tokens = list(tokens)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok == "--":
            i += 1
            continue
        if tok.startswith("--"):
            body = tok[2:]
            if "=" in body:
                name, _, raw = body.partition("=")
                value = python_literal_or_text(raw)
                flat[_norm_key(name, tok)] = check_json_number(value, "--" + name, raw, "=")
                i += 1
            elif nxt is not None and _is_value(nxt):
                value = python_literal_or_text(nxt)
                flat[_norm_key(body, tok)] = check_json_number(value, tok, nxt)
                i += 2
            else:
                _norm_key(body, tok)  # still reject malformed flag names
                if dropped is not None:
                    dropped.append(tok)
                i += 1
            continue
        if tok.startswith("-") and len(tok) > 1 and not _NEGATIVE_NUMBER.match(tok):
            body = tok[1:]
            if "=" in body and len(body.partition("=")[0]) == 1:
                name, _, raw = body.partition("=")
                flat[_norm_key(name, tok)] = raw
                i += 1
            elif len(body) == 1 and nxt is not None and _is_value(nxt):
                flat[_norm_key(body, tok)] = nxt
                i += 2
            else:
                if dropped is not None:
                    dropped.append(tok)
                i += 1  # flag or grouped flags: dropped
            continue
        raise LabtaskerValueError(f"Unexpected token: {tok}")
    try:
        return unflatten(flat)
    except KeyConflictError as exc:
        raise LabtaskerValueError(f"Conflicting options: {exc}") from None


def parse_dict_option(text: str | None, option_name: str) -> dict[str, Any] | None:
    """Parse a dict-valued option such as ``--args '{"lr": 0.1}'`` or ``--metadata "{'a': True}"``.

    Accepts JSON or Python literal syntax (``true/false/null`` and ``True/False/None``).
    ``None`` -> ``None``. Raises :class:`LabtaskerValueError` naming ``option_name`` when the
    text is not a dict literal.
    """
    if text is None:
        return None
    try:
        value = parse_literal(text)
    except ValueError as exc:
        raise LabtaskerValueError(
            f"Invalid value for {option_name}: expected a dict like '{{\"key\": 1}}' "
            f"(JSON or Python literal), got {text!r} ({exc})"
        ) from None
    if not isinstance(value, dict):
        raise LabtaskerValueError(
            f"Invalid value for {option_name}: expected a dict, got {type(value).__name__} {text!r}"
        )
    if non_finite(value):
        raise LabtaskerValueError(
            f"Invalid value for {option_name}: a number JSON cannot store (beyond the float "
            f"range like 1e400, infinite or NaN; it would be stored as null): {text!r}"
        )
    return value


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    node = target
    for seg in path[:-1]:
        child = node.get(seg)
        if not isinstance(child, dict):
            child = node[seg] = {}
        node = child
    node[path[-1]] = value


def parse_updates(
    updates: list[str] | tuple[str, ...], to_primitive: bool = True
) -> dict[str, Any]:
    """Turn ``key=value`` update expressions into the fields of a ``TaskUpdateRequest``.

    * A top-level field (``status=pending``, ``args={'x': 1}``, ``task-name=foo``) replaces
      the field and is listed in ``replace_fields``;
    * a dotted path (``args.lr=0.2``, ``metadata.tags.0=a``) patches one sub-field of a dict
      field (``args``, ``metadata``, ``summary``) and leaves its siblings alone;
    * values are cast with :func:`~labtasker.literals.python_literal_or_text` when
      ``to_primitive`` (default), else strings;
    * dashes in keys become ``_``.

    Returns e.g. ``{"status": "pending", "args": {"lr": 0.2}, "replace_fields": ["status"]}``.
    Raises :class:`LabtaskerValueError` for a missing ``=``, a key starting with ``-``, an
    unknown top-level field, a dotted path into a non-dict field, or a non-dict value for a
    replaced dict field.
    """
    result: dict[str, Any] = {}
    replace: list[str] = []
    patches: list[tuple[str, list[str], Any]] = []
    for expr in updates:
        key, sep, raw = expr.partition("=")
        key = key.strip()
        if not sep or not key:
            raise LabtaskerValueError(f"Invalid update {expr!r}: expected key=value")
        if key.startswith("-"):
            raise LabtaskerValueError(f"Invalid update {expr!r}: key must not start with '-'")
        key = key.replace("-", "_")
        if not KEY_PATTERN.match(key):
            raise LabtaskerValueError(f"Invalid update {expr!r}: malformed key {key!r}")
        top, *rest = key.split(".")
        if top not in UPDATABLE_TASK_FIELDS:
            raise LabtaskerValueError(
                f"Invalid update {expr!r}: unknown field {top!r} "
                f"(updatable: {', '.join(UPDATABLE_TASK_FIELDS)})"
            )
        value = (
            check_json_number(python_literal_or_text(raw), key, raw, "=") if to_primitive else raw
        )
        if top in ("status", "task_name") and not isinstance(value, str):
            value = raw  # names and statuses are text even when they look like numbers
        if top == "status" and value not in _TASK_STATUSES:
            raise LabtaskerValueError(
                f"Invalid update {expr!r}: status must be one of {', '.join(_TASK_STATUSES)}"
            )
        if rest:
            if top not in DICT_TASK_FIELDS:
                raise LabtaskerValueError(f"Invalid update {expr!r}: {top!r} has no sub-fields")
            patches.append((top, rest, value))
        else:
            if top in DICT_TASK_FIELDS and not isinstance(value, dict):
                raise LabtaskerValueError(
                    f"Invalid update {expr!r}: {top} must be a dict, like {top}=\"{{'x': 1}}\""
                )
            result[top] = value
            if top not in replace:
                replace.append(top)
    for top, path, value in patches:
        if top in replace:  # replaced wholesale and patched: patch inside the new value
            _set_path(result[top], path, value)
        else:
            result.setdefault(top, {})[".".join(path)] = value
    if replace:
        result["replace_fields"] = replace
    return result


NOTHING_TO_RUN = "either cmd or args must be specified, as for `task submit`"
"""Why an update that leaves a task with neither args nor a cmd is refused."""


def leaves_nothing_to_run(args: Any, cmd: Any, fields: dict[str, Any]) -> bool:
    """Whether a task holding ``args`` and ``cmd`` would have neither after the update
    ``fields`` (as :func:`parse_updates` returns them, or a ``TaskUpdateRequest``'s set
    fields): ``task submit`` refuses such a task, so ``task update`` refuses to make one
    (``args={}`` on a task without a cmd). An update touching neither field never does; a
    ``None`` value of a dict field leaves it as it is (as the server does)."""
    if "args" not in fields and "cmd" not in fields:
        return False
    new_args = fields.get("args")
    if new_args is None:
        args_after = args
    elif "args" in (fields.get("replace_fields") or ()):
        args_after = new_args
    else:  # a patch only sets sub-fields
        args_after = {**(args or {}), **new_args}
    cmd_after = fields["cmd"] if "cmd" in fields else cmd
    return not args_after and not cmd_after
