"""``$regex``: one pattern language on both databases.

The language is RE2's (linear-time: no back-references, look-around, atomic groups or
possessive quantifiers), restricted to what PostgreSQL's engine can run with the same meaning.
``parse_regex`` checks a pattern once, before any SQL is built, and refuses a construct outside
the language with ``FilterError`` naming it (HTTP 400 on both backends). SQLite runs the
pattern with google-re2 in a registered ``labtasker_regexp`` function (linear time, so no
pattern stalls the server); PostgreSQL gets an equivalent ARE (``Regex.postgres``).

Accepted: literals and escaped punctuation; ``.``, ``^``, ``$``, ``|``, ``( )``, ``(?: )``,
named groups ``(?P<name> )``/``(?<name> )``; ``* + ? {n} {n,} {n,m}`` (counts up to
``MAX_REPEAT``) and their lazy forms; bracket classes with ranges and POSIX names
(``[[:alpha:]]``); ``\\d \\D \\w \\W \\s \\S`` (ASCII, as in RE2), ``\\b \\B \\A \\z``,
``\\n \\t \\r \\f \\v \\a``, ``\\xhh`` and ``\\x{h...}``; leading inline flags ``(?imsx)``.
Options: ``i`` (case-insensitive), ``m`` (``^``/``$`` at line breaks), ``s`` (``.`` matches a
newline), ``x`` (whitespace and ``#`` comments ignored outside classes; applied by us).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Any

import re2

from labtasker.filters.mongo_sql.common import MAX_PATTERN, FilterError

MAX_REPEAT = 255  # largest {n,m} count (PostgreSQL's limit; RE2's is 1000)
_OPTIONS = frozenset("imsx")
_LEADING_FLAGS = re.compile(r"^\(\?([A-Za-z]+)\)")
_REPEAT = re.compile(r"\{(\d+)(,(\d*))?\}")
# RE2's ASCII classes, spelled out for PostgreSQL (whose classes follow the locale).
_CLASS_BODIES = {"d": "0-9", "w": "0-9A-Za-z_", "s": "\\t\\n\\f\\r "}
_POSIX_BODIES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_ESCAPE_NAMES = {
    "1": "a back-reference",
    "k": "a named back-reference",
    "p": "a Unicode class",
    "P": "a Unicode class",
    "Q": "\\Q...\\E quoting",
    "E": "\\Q...\\E quoting",
    "Z": "\\Z (use \\z)",
    "G": "\\G",
    "C": "\\C",
    "N": "\\N",
    "X": "\\X",
    "R": "\\R",
    "K": "\\K",
}
_GROUP_NAMES = {
    "(?=": "look-ahead",
    "(?!": "negative look-ahead",
    "(?<=": "look-behind",
    "(?<!": "negative look-behind",
    "(?>": "an atomic group",
    "(?P=": "a named back-reference",
    "(?P>": "a recursion",
    "(?R": "a recursion",
    "(?(": "a conditional",
    "(?#": "a comment group",
    "(?|": "a branch reset",
}


@dataclass(frozen=True)
class Regex:
    """A checked ``$regex``: ``pattern`` for RE2 (flags folded in as a leading ``(?ims)``)
    and the equivalent PostgreSQL ARE ``postgres``."""

    pattern: str
    postgres: str


def _refuse(construct: str, what: str) -> FilterError:
    return FilterError(f"Unsupported construct {construct!r} in $regex: {what} is not supported")


def _strip_extended(pattern: str) -> str:
    """The ``x`` option: drop unescaped whitespace and ``#`` comments outside classes."""
    out, position, in_class = [], 0, False
    while position < len(pattern):
        char = pattern[position]
        if char == "\\" and position + 1 < len(pattern):
            out.append(pattern[position : position + 2])
            position += 2
            continue
        if in_class:
            in_class = char != "]" or (bool(out) and out[-1] == "[")
            out.append(char)
        elif char == "[":
            in_class = True
            out.append(char)
            if pattern.startswith("^", position + 1):
                out.append("^")
                position += 1
        elif char == "#":
            end = pattern.find("\n", position)
            position = len(pattern) if end < 0 else end
            continue
        elif not char.isspace():
            out.append(char)
        position += 1
    return "".join(out)


class _Translator:
    """One pass over a pattern: refuses what is outside the language, builds the ARE."""

    def __init__(self, pattern: str, dot_all: bool) -> None:
        self.pattern = pattern
        self.dot_all = dot_all
        self.position = 0
        self.out: list[str] = []

    def run(self) -> str:
        pattern = self.pattern
        while self.position < len(pattern):
            char = pattern[self.position]
            if char == "\\":
                self.out.append(self.escape(in_class=False))
            elif char == "[":
                self.bracket()
            elif char == "(":
                self.group()
            elif char == "{":
                self.repeat()
            elif char == "." and not self.dot_all:
                self.out.append("[^\\n]")  # RE2's "." without s; PostgreSQL's matches \n
                self.position += 1
            elif char in "*+?":
                self.out.append(char)
                self.position += 1
                self.check_possessive()
            else:
                self.out.append(char)
                self.position += 1
        return "".join(self.out)

    def check_possessive(self) -> None:
        if self.pattern.startswith("+", self.position):
            raise _refuse(
                self.pattern[self.position - 1 : self.position + 1], "a possessive quantifier"
            )

    def repeat(self) -> None:
        found = _REPEAT.match(self.pattern, self.position)
        if not found:  # a literal brace, as in RE2
            self.out.append("\\{")
            self.position += 1
            return
        for count in (found.group(1), found.group(3)):
            if count and int(count) > MAX_REPEAT:
                raise FilterError(
                    f"Repetition count {int(count)} in $regex is above the limit ({MAX_REPEAT})"
                )
        self.out.append(found.group())
        self.position = found.end()
        if self.pattern.startswith("?", self.position):
            self.out.append("?")
            self.position += 1
        self.check_possessive()

    def group(self) -> None:
        pattern, start = self.pattern, self.position
        if not pattern.startswith("(?", start):
            self.out.append("(")
            self.position += 1
            return
        if pattern.startswith("(?:", start):
            self.out.append("(?:")
            self.position += 3
            return
        named = re.compile(r"\(\?P?<([A-Za-z_][A-Za-z0-9_]*)>").match(pattern, start)
        if named:
            self.out.append("(")
            self.position = named.end()
            return
        for prefix, what in sorted(_GROUP_NAMES.items(), key=lambda item: -len(item[0])):
            if pattern.startswith(prefix, start):
                raise _refuse(prefix, what)
        flags = re.compile(r"\(\?[A-Za-z-]*[:)]").match(pattern, start)
        if flags:
            raise _refuse(flags.group(), "a scoped or non-leading inline flag")
        raise _refuse(pattern[start : start + 3], "this group")

    def escape(self, in_class: bool) -> str:
        pattern, start = self.pattern, self.position
        if start + 1 >= len(pattern):
            raise FilterError("Invalid $regex: a trailing backslash")
        letter = pattern[start + 1]
        self.position += 2
        if letter in "dws":
            body = _CLASS_BODIES[letter]
            return body if in_class else f"[{body}]"
        if letter in "DWS":
            if in_class:
                raise _refuse("\\" + letter, "a negated class escape inside [...]")
            return f"[^{_CLASS_BODIES[letter.lower()]}]"
        if letter in "ntrfva":
            return "\\" + letter
        if letter == "x":
            braced = re.compile(r"\{([0-9A-Fa-f]{1,6})\}").match(pattern, self.position)
            plain = re.compile(r"[0-9A-Fa-f]{2}").match(pattern, self.position)
            found = braced or plain
            if not found:
                raise _refuse(pattern[start : start + 4], "a malformed \\x escape")
            code = int(found.group(1) if braced else found.group(), 16)
            if code > 0x10FFFF:
                raise _refuse(found.group(), "a code point above U+10FFFF")
            self.position = found.end()
            return f"\\U{code:08x}"
        if not in_class and letter in "bBAz":
            return {"b": "\\y", "B": "\\Y", "A": "\\A", "z": "\\Z"}[letter]
        if letter.isdigit():
            raise _refuse("\\" + letter, "a back-reference or octal escape (use \\x..)")
        if letter.isalnum() or letter == "_":
            what = _ESCAPE_NAMES.get(letter, "this escape")
            raise _refuse("\\" + letter, what)
        if letter.isspace() or not letter.isascii():
            return letter
        return "\\" + letter  # escaped punctuation

    def bracket(self) -> None:
        pattern = self.pattern
        self.position += 1
        parts = ["["]
        if pattern.startswith("^", self.position):
            parts.append("^")
            self.position += 1
        first = True
        while True:
            if self.position >= len(pattern):
                raise FilterError("Invalid $regex: missing ]")
            char = pattern[self.position]
            if char == "]" and not first:
                self.position += 1
                break
            if char == "\\":
                parts.append(self.escape(in_class=True))
            elif pattern.startswith("[:", self.position):
                end = pattern.find(":]", self.position + 2)
                name = pattern[self.position + 2 : end] if end > 0 else ""
                negated = name.startswith("^")
                if end < 0 or name.lstrip("^") not in _POSIX_BODIES:
                    raise _refuse(pattern[self.position : end + 2], "this character class")
                if negated:
                    raise _refuse(pattern[self.position : end + 2], "a negated POSIX class")
                parts.append(_POSIX_BODIES[name])
                self.position = end + 2
            elif char == "[":
                parts.append("\\[")
                self.position += 1
            else:
                parts.append(char)
                self.position += 1
            first = False
        self.out.append("".join(parts) + "]")


def parse_regex(pattern: Any, options: Any) -> Regex:
    """Check a ``$regex`` pattern and its ``$options`` letters.

    Raises ``FilterError`` for a non-string pattern or options, a pattern longer than
    ``MAX_PATTERN`` characters, options outside ``imsx``, an invalid pattern, or a construct
    outside the language (named in the message)."""
    if not isinstance(pattern, str) or not isinstance(options, str):
        raise FilterError("$regex needs a string pattern and string $options")
    if len(pattern) > MAX_PATTERN:
        raise FilterError(f"$regex longer than {MAX_PATTERN} characters")
    bad = set(options) - _OPTIONS
    if bad:
        raise FilterError(f"Unsupported $options {''.join(sorted(bad))!r}")
    if "\x00" in pattern:
        raise FilterError("$regex must not contain NUL characters")
    if any(0xD800 <= ord(char) <= 0xDFFF for char in pattern):
        raise FilterError("$regex must not contain lone surrogates")
    flags = set(options)
    lead = _LEADING_FLAGS.match(pattern)
    if lead:
        letters = set(lead.group(1))
        if letters - _OPTIONS:
            raise _refuse(lead.group(), "an inline flag other than i, m, s, x")
        flags |= letters
        pattern = pattern[lead.end() :]
    if "x" in flags:
        pattern = _strip_extended(pattern)
    translated = _Translator(pattern, "s" in flags).run()
    engine_flags = "".join(sorted(flags - {"x"}))
    full = f"(?{engine_flags}){pattern}" if engine_flags else pattern
    try:
        re2.compile(full, _RE2_OPTIONS)
    except re2.error as exc:
        raise FilterError(f"Invalid $regex {pattern!r}: {_re2_message(exc)}") from exc
    # PostgreSQL: "w" makes ^ and $ match at line breaks (like RE2's m) while "." and
    # bracket classes keep matching a newline ("." is translated above, as RE2 has it).
    embedded = ("w" if "m" in flags else "") + ("i" if "i" in flags else "")
    postgres = f"(?{embedded}){translated}" if embedded else translated
    return Regex(full, postgres)


def _re2_message(exc: Exception) -> str:
    text = exc.args[0] if exc.args else str(exc)
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text)


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False
    options.max_mem = 8 << 20
    return options


_RE2_OPTIONS = _re2_options()


def register_sqlite_functions(dbapi_connection: sqlite3.Connection) -> None:
    """Register ``labtasker_regexp(pattern, value)`` on a sqlite3 connection: 1 when the text
    ``value`` contains a match of the RE2 ``pattern``, else 0 (also for non-text values).
    Linear in the length of ``value``; compiled patterns are cached per connection."""
    cache: dict[str, Any] = {}

    def regexp(pattern: str, value: Any) -> int:
        if value is None or not isinstance(value, str):
            return 0
        compiled = cache.get(pattern)
        if compiled is None:
            if len(cache) > 256:
                cache.clear()
            compiled = cache[pattern] = re2.compile(pattern, _RE2_OPTIONS)
        return 1 if compiled.search(value) else 0

    dbapi_connection.create_function("labtasker_regexp", 2, regexp, deterministic=True)
