"""``$regex``: validating a pattern and its options, running it on SQLite (a registered
``labtasker_regexp`` function) and translating it for PostgreSQL's ARE engine."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from labtasker.filters.mongo_sql.common import MAX_PATTERN, FilterError


def regex_flags(pattern: Any, options: Any, dialect: str) -> str:
    """Check a ``$regex`` pattern and its ``$options`` letters; return the sorted flags.

    Raises ``FilterError`` for a non-string pattern or options, a pattern longer than
    ``MAX_PATTERN`` characters, options outside ``imsx``, an invalid pattern, or (on
    PostgreSQL) a construct its engine lacks."""
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
    if dialect == "postgresql":
        postgres_pattern(pattern, flags)  # raises FilterError on constructs PostgreSQL lacks
    return flags


def postgres_pattern(pattern: str, flags: str) -> str:
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
    out, position, in_class = [], 0, False
    while position < len(pattern):
        char = pattern[position]
        if char == "\\" and position + 1 < len(pattern):
            escaped = pattern[position + 1]
            out.append(
                {"b": "\\y", "B": "\\Y"}.get(escaped, "\\" + escaped)
                if not in_class
                else "\\" + escaped
            )
            position += 2
            continue
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        out.append(char)
        position += 1
    newline = {(False, False): "p", (True, False): "n", (False, True): "s", (True, True): "w"}[
        ("m" in flags, "s" in flags)
    ]
    options = newline + ("i" if "i" in flags else "") + ("x" if "x" in flags else "")
    return f"(?{options})" + "".join(out)


def register_sqlite_functions(dbapi_connection: sqlite3.Connection) -> None:
    """Register ``labtasker_regexp(pattern, value)`` on a sqlite3 connection: 1 when the text
    ``value`` contains a match of ``pattern``, else 0 (also for non-text values)."""
    cache: dict[str, re.Pattern[str]] = {}

    def regexp(pattern: str, value: Any) -> int:
        if value is None or not isinstance(value, str):
            return 0
        compiled = cache.get(pattern)
        if compiled is None:
            if len(cache) > 256:
                cache.clear()
            compiled = cache[pattern] = re.compile(pattern)
        return 1 if compiled.search(value) else 0

    dbapi_connection.create_function("labtasker_regexp", 2, regexp, deterministic=True)
