"""Turning user text into query filters, shared by the CLI (``-f``) and the Python API.

* :func:`parse_filter` turns a filter string into a Mongo-style dict: a dict literal (JSON or
  Python spelling, read by :mod:`labtasker.literals`) is used as-is, anything else is a
  Python-syntax expression handed to the transpiler
  (``labtasker.filters.pyquery.transpile``), e.g. ``args.lr < 0.1 and status == "failed"``.
* :func:`encode_filter` prepares a filter dict for JSON transport: datetimes become
  ``{"_dt": "<ISO 8601 UTC>"}`` (the encoding 1.0.1 uses).
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

from labtasker.exceptions import LabtaskerValueError, QueryTranspilerError
from labtasker.literals import dict_literal
from labtasker.timeutil import RelativeTime


def parse_filter(text: str) -> dict[str, Any]:
    """Parse a filter string into a query dict.

    * ``'{"args.lr": {"$lt": 0.1}}'`` / ``"{'status': 'failed', 'x': True}"`` (JSON or Python
      dict literal) -> that dict, unchanged.
    * any other text -> a Python-syntax expression transpiled by
      :func:`labtasker.filters.pyquery.transpile`, e.g. ``args.lr < 0.1 and priority >= 10``.
    * empty/blank text -> ``{}`` (no filter).
    * a constant (``1``, ``True``) is no condition: refused (it would select every task).

    Raises :class:`~labtasker.exceptions.QueryTranspilerError` (or a subclass) when the text is
    neither a dict literal nor a valid filter expression.
    """
    if text is None or not str(text).strip():
        return {}
    text = str(text)
    value = dict_literal(text)
    if value is not None:
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
