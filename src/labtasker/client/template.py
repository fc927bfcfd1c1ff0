"""The ``%(a.b)`` command template of ``labtasker loop``.

Grammar (compatible with labtasker 1.0.1)::

    template := (text | variable)*
    variable := "%(" ws* segment (ws* "." ws* segment)* ws* ")"
    segment  := [a-zA-Z0-9_-]+          (1.0.1: identifier or integer, no "-")
    ws       := space | tab | CR | LF   (ignored inside a variable)

Every character outside a variable is literal text; a lone ``%`` or ``)`` is plain text.
Differences from 1.0.1 (each lifts a limitation of 1.0.1):

* ``%%(`` is an escape and renders as a literal ``%(`` (1.0.1 had no way to write ``%(``).
* Segments may contain ``-`` (task keys may, so templates can now reach them).
* A segment made of digits indexes a list (``%(seeds.0)``); on a dict it is the string key
  ``"0"``, as in 1.0.1.
* A ``None`` value renders as ``None`` instead of being reported as a missing key.

Rendering of a value (one function, :func:`render_value`):

* ``str`` -> the string itself, untouched;
* ``dict`` / ``list`` / ``tuple`` -> JSON (``json.dumps``, non-ASCII kept, default separators:
  ``{"x": 1, "y": [1, 2]}``). 1.0.1 used a Python ``repr`` with quotes swapped, which gives
  the same text for simple dicts but breaks on ``True``/``None``/quotes inside values;
* ``bool`` / ``None`` / ``int`` / ``float`` -> ``str(value)`` (``True``, ``None``, ``0.001``),
  as 1.0.1 did, so ``argparse`` ``type=float`` and ``%(flag)`` comparisons keep working;
* anything else -> ``str(value)``.

Two modes:

* **argv mode** (:meth:`CommandTemplate.from_argv`): a list of templates; each element renders
  to exactly ONE argv entry, whatever the values contain (spaces, quotes, newlines, ``;``...):
  no quoting, no re-splitting, no shell.
* **shell mode** (:meth:`CommandTemplate.from_shell`): one string for ``/bin/sh -c``; each
  substituted value is quoted for the place where it stands, so the shell sees it as literal
  text: bare, ``shlex.quote`` (one word); inside the user's ``"..."`` or ``'...'``, escaped for
  those quotes (``--name "%(name)"`` works; 1.0.1 put ``shlex.quote``'s quotes inside them,
  and a value ``$(cmd)`` was run). The literal text of the template is the user's shell code
  and is left alone.

Errors: syntax errors raise ``CmdSyntaxError`` at parse time, with a caret under the offending
column; at render time a missing key raises ``CmdKeyError`` and walking into a non-container
raises ``CmdTypeError``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labtasker.exceptions import CmdKeyError, CmdSyntaxError, CmdTypeError
from labtasker.keys import NAME_CHARSET

_SEGMENT_CHARS = NAME_CHARSET  # a variable's path segments follow the name rule
_WS = frozenset(" \t\r\n")


@dataclass(frozen=True)
class Field:
    """One ``%(...)`` occurrence: its path segments and its column (0-based) in the text."""

    path: tuple[str, ...]
    column: int

    @property
    def dotted(self) -> str:
        """The path as a dotted string, whitespace removed (``a.b``)."""
        return ".".join(self.path)


def _syntax_error(text: str, column: int, message: str) -> CmdSyntaxError:
    """Build a ``CmdSyntaxError`` showing ``text`` with a caret under ``column``."""
    # Show the line containing the column, so multi-line shell scripts stay readable.
    line_start = text.rfind("\n", 0, column) + 1
    line_end = text.find("\n", column)
    line = text[line_start : len(text) if line_end < 0 else line_end]
    line_no = text.count("\n", 0, column) + 1
    col = column - line_start
    where = f"line {line_no}, column {col + 1}" if "\n" in text else f"column {col + 1}"
    pointer = " " * col + "^"
    return CmdSyntaxError(f"Template syntax error at {where}: {message}\n  {line}\n  {pointer}")


class Template:
    """A parsed template string: literal text pieces interleaved with :class:`Field` s."""

    def __init__(self, text: str):
        """Parse ``text``; raises ``CmdSyntaxError`` (with a column pointer) on bad syntax."""
        if not isinstance(text, str):
            raise CmdSyntaxError(f"Template must be a string, got {type(text).__name__}")
        self.text = text
        self.parts: list[str | Field] = self._parse(text)

    @staticmethod
    def _parse(text: str) -> list[str | Field]:
        parts: list[str | Field] = []
        buf: list[str] = []
        i, n = 0, len(text)
        while i < n:
            if text.startswith("%%(", i):  # escape: literal "%("
                buf.append("%(")
                i += 3
                continue
            if not text.startswith("%(", i):
                buf.append(text[i])
                i += 1
                continue
            start = i
            i += 2
            segments: list[str] = []
            expect_segment = True
            while True:
                while i < n and text[i] in _WS:
                    i += 1
                if i >= n:
                    raise _syntax_error(text, start, "unterminated '%(' (missing ')')")
                ch = text[i]
                if expect_segment:
                    if ch not in _SEGMENT_CHARS:
                        what = "empty variable '%()'" if ch == ")" and not segments else None
                        if what is None:
                            what = (
                                f"expected a key name, found {ch!r}"
                                if ch != ")"
                                else "key name missing after '.'"
                            )
                        raise _syntax_error(text, i, what)
                    j = i
                    while j < n and text[j] in _SEGMENT_CHARS:
                        j += 1
                    segments.append(text[i:j])
                    i = j
                    expect_segment = False
                elif ch == ".":
                    expect_segment = True
                    i += 1
                elif ch == ")":
                    i += 1
                    break
                else:
                    raise _syntax_error(
                        text, i, f"unexpected {ch!r} in variable (use letters, digits, _, - and .)"
                    )
            if buf:
                parts.append("".join(buf))
                buf = []
            parts.append(Field(tuple(segments), start))
        if buf:
            parts.append("".join(buf))
        return parts

    @property
    def fields(self) -> list[Field]:
        """The variables of this template, in order of appearance (duplicates kept)."""
        return [p for p in self.parts if isinstance(p, Field)]

    def render(self, args: Mapping[str, Any], quote: Callable[[str], str] | None = None) -> str:
        """Substitute ``args`` into the template.

        ``quote`` (e.g. ``shlex.quote``) is applied to each rendered value, never to the
        literal text. Raises ``CmdKeyError`` / ``CmdTypeError`` (see :func:`resolve`).
        """
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                value = render_value(resolve(args, part.path))
                out.append(quote(value) if quote else value)
        return "".join(out)


def resolve(args: Mapping[str, Any], path: Sequence[str]) -> Any:
    """Walk ``args`` along ``path``; return the value found (which may be ``None``).

    A dict is indexed by the segment text; a list/tuple by a digits-only segment.
    Raises ``CmdKeyError`` when a key (or list index) is absent and ``CmdTypeError`` when a
    segment would have to walk into a scalar.
    """
    node: Any = args
    for depth, seg in enumerate(path):
        where = ".".join(path[: depth + 1])
        if isinstance(node, Mapping):
            if seg not in node:
                raise CmdKeyError(
                    f"Key {where!r} not found in the task args (available here: "
                    f"{', '.join(map(repr, node)) or 'none'})"
                )
            node = node[seg]
        elif isinstance(node, (list, tuple)):
            if not seg.isdigit():
                raise CmdTypeError(
                    f"{'.'.join(path[:depth]) or 'args'!r} is a list; "
                    f"{where!r} needs a numeric index"
                )
            idx = int(seg)
            if idx >= len(node):
                raise CmdKeyError(f"Index {where!r} out of range (list has {len(node)} items)")
            node = node[idx]
        else:
            parent = ".".join(path[:depth])
            raise CmdTypeError(
                f"Cannot look up {seg!r} in {parent!r}: it is a {type(node).__name__}, "
                "not a dict or list"
            )
    return node


def render_value(value: Any) -> str:
    """Render one substituted value as text (rules in the module docstring)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        try:
            return json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


class CommandTemplate:
    """A ``labtasker loop`` command: argv mode (list of templates) or shell mode (one string).

    Parse once with :meth:`from_argv` / :meth:`from_shell`, then call :meth:`render` per task.
    """

    def __init__(self, templates: list[Template], shell: bool):
        self.templates = templates
        self.shell = shell
        # shell mode: how to quote each variable, by its column (``_shell_quoting``)
        self._quotes: dict[int, Callable[[str], str]] = {}

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> CommandTemplate:
        """Argv mode; raises ``CmdSyntaxError`` naming the bad element (1-based)."""
        if not argv:
            raise CmdSyntaxError("Command cannot be empty")
        templates = []
        for pos, element in enumerate(argv, 1):
            try:
                templates.append(Template(element))
            except CmdSyntaxError as exc:
                raise CmdSyntaxError(f"In command element {pos}: {exc}") from None
        return cls(templates, shell=False)

    @classmethod
    def from_shell(cls, text: str) -> CommandTemplate:
        """Shell mode; raises ``CmdSyntaxError`` with a column pointer (also for a variable
        inside ``$'...'``, where no quoting keeps a value literal)."""
        if not text or not text.strip():
            raise CmdSyntaxError("Command cannot be empty")
        made = cls([Template(text)], shell=True)
        made._quotes = _shell_quoting(made.templates[0])
        return made

    def required_fields(self) -> list[str]:
        """Dotted paths used by the template, deduplicated, in order of first appearance.

        These are sent to ``fetch_task`` as ``required_fields`` ("no more, no less"). A path
        is cut before its first digits-only segment (``%(seeds.0)`` requires ``seeds``), so
        that list elements can be addressed while the task's ``args.seeds`` is a list.
        """
        seen: dict[str, None] = {}
        for template in self.templates:
            for field in template.fields:
                path = list(field.path)
                for k, seg in enumerate(path):
                    if seg.isdigit() and k > 0:
                        path = path[:k]
                        break
                seen.setdefault(".".join(path), None)
        return list(seen)

    def render(self, args: Mapping[str, Any]) -> list[str] | str:
        """Render for one task: ``list[str]`` in argv mode, ``str`` in shell mode."""
        if self.shell:
            out: list[str] = []
            for part in self.templates[0].parts:
                if isinstance(part, str):
                    out.append(part)
                else:
                    quote = self._quotes.get(part.column, shlex.quote)
                    out.append(quote(render_value(resolve(args, part.path))))
            return "".join(out)
        return [t.render(args) for t in self.templates]

    def __str__(self) -> str:
        if self.shell:
            return self.templates[0].text
        return shlex.join(t.text for t in self.templates)


def _in_single_quotes(value: str) -> str:
    """``value`` for a place inside ``'...'``: each ``'`` closes the quotes, adds an escaped
    quote and opens them again (``'\\''``); nothing else is special there."""
    return value.replace("'", "'\\''")


def _in_double_quotes(value: str) -> str:
    """``value`` for a place inside ``"..."``: a backslash before each of the four characters
    that stay special there (``\\ $ ` "``); a newline needs none."""
    return "".join("\\" + ch if ch in '\\$`"' else ch for ch in value)


def _in_backticks(value: str) -> str:
    """``value`` for a place inside a backtick command: ``shlex.quote`` for the nested shell,
    then a backslash before each ``\\``, backtick and ``$``, which the backticks themselves
    would otherwise take (a backtick in the value would end the command)."""
    return "".join("\\" + ch if ch in "\\`$" else ch for ch in shlex.quote(value))


def _in_here_document(delimiter: str, quoted: bool, strip_tabs: bool) -> Callable[[str], str]:
    """The quoting of a value inside a here-document body (``<<EOF ... EOF``). Unquoted
    delimiter: the body expands ``$``, backticks and backslashes, so those get a backslash;
    quoted (``<<'EOF'``): the body is literal, the value goes in as it is. Either way a value
    holding a line equal to the delimiter would end the document early (the rest would run as
    shell code): such a value raises ``CmdTypeError``."""

    def quote(value: str) -> str:
        for line in value.split("\n"):
            if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                raise CmdTypeError(
                    f"a value holding the line {delimiter!r} cannot go inside the "
                    f"here-document ending with {delimiter!r}: it would end it early"
                )
        if quoted:
            return value
        return "".join("\\" + ch if ch in "\\`$" else ch for ch in value)

    return quote


_WORD_END = frozenset(" \t\n;|&<>()")  # characters that end a shell word


def _here_document_word(text: str, i: int) -> tuple[int, tuple[str, bool, bool]] | None:
    """``text[i:]`` starts right after ``<<``: the index after the delimiter word and
    ``(delimiter, quoted, strip_tabs)``, or ``None`` when the word is not all in ``text``."""
    strip = i < len(text) and text[i] == "-"
    i += strip
    while i < len(text) and text[i] in " \t":
        i += 1
    start = i
    while i < len(text) and text[i] not in _WORD_END:
        if text[i] in "'\"":
            close = text.find(text[i], i + 1)
            if close < 0:
                return None
            i = close
        i += 1
    word = text[start:i]
    if not word or i >= len(text):
        return None  # no word, or a variable right after it: not a document we can follow
    quoted = any(c in word for c in "'\"\\")
    return i, (word.replace("'", "").replace('"', "").replace("\\", ""), quoted, strip)


def _shell_quoting(template: Template) -> dict[int, Callable[[str], str]]:
    """How to quote each variable of a shell-mode template so that its value reaches the
    program as literal text, by the quoting in force where it stands (by its column):

    * bare, or inside ``$(...)``: ``shlex.quote`` (one word); inside backticks:
      ``_in_backticks``;
    * inside ``'...'``: ``_in_single_quotes``; inside ``"..."``: ``_in_double_quotes``. So
      ``--name "%(name)"`` keeps ``my run`` one argument without extra quotes, and a value
      ``$(rm ...)`` stays text instead of being run;
    * inside a here-document body (also one opened inside ``$(...)``): ``_in_here_document``.

    The literal text is read as POSIX ``sh`` reads quotes: ``\\`` escapes the next character
    outside single quotes, ``$(`` and backticks open a nested command whose quotes are its own,
    ``<<WORD`` starts a here-document on the next line. Raises ``CmdSyntaxError`` for a
    variable inside bash's ``$'...'``, where no quoting keeps a value literal."""
    quotes: dict[int, Callable[[str], str]] = {}
    # [context, open parentheses, here-document (delimiter, quoted, strip_tabs), its line]
    stack: list[list] = [["out", 0, None, ""]]
    prev = "\n"  # the character before: a "#" starts a comment only at a word's start
    pending: list[tuple[str, bool, bool]] = []  # here-documents that start on the next line
    for part in template.parts:
        if not isinstance(part, str):
            top = stack[-1]
            if top[0] == "ansi":
                raise _syntax_error(
                    template.text,
                    part.column,
                    "a variable inside $'...' cannot be quoted safely; put it outside",
                )
            if top[0] == "here":
                quotes[part.column] = _in_here_document(*top[2])
                top[3] += "\0"  # this line is no longer the delimiter alone
            elif top[0] == "comment":
                quotes[part.column] = _in_comment
            else:
                quotes[part.column] = _QUOTE_IN.get(top[0], shlex.quote)
            prev = "x"  # a variable is part of a word
            continue
        i, n = 0, len(part)
        while i < n:
            ch, top = part[i], stack[-1]
            nxt = part[i + 1] if i + 1 < n else ""
            if top[0] == "comment":
                if ch == "\n":
                    stack.pop()
                    continue  # the newline itself is read by the context below
            elif top[0] == "here":
                if ch == "\n":
                    doc = top[2]
                    line = top[3].lstrip("\t") if doc[2] else top[3]
                    top[3] = ""
                    if line == doc[0]:
                        stack.pop()
                        if pending:
                            stack.append(["here", 0, pending.pop(0), ""])
                elif top[2][1]:  # a quoted delimiter: a literal body
                    top[3] += ch
                elif ch == "\\":
                    top[3] += part[i : i + 2]
                    i += 1
                elif ch == "$" and nxt == "(":
                    stack.append(["cmd", 0, None, ""])
                    i += 1
                elif ch == "`":
                    stack.append(["tick", 0, None, ""])
                else:
                    top[3] += ch
            elif top[0] == "single":
                if ch == "'":
                    stack.pop()
            elif ch == "\\":
                i += 1  # the next character is escaped (in "...", $'...' and bare text)
            elif top[0] == "ansi":
                if ch == "'":
                    stack.pop()
            elif top[0] == "double":
                if ch == '"':
                    stack.pop()
                elif ch == "$" and nxt == "(":
                    stack.append(["cmd", 0, None, ""])
                    i += 1
                elif ch == "`":
                    stack.append(["tick", 0, None, ""])
            else:  # bare text, or a nested command: $(...) or `...`
                if ch == "'":
                    stack.append(["single", 0, None, ""])
                elif ch == '"':
                    stack.append(["double", 0, None, ""])
                elif ch == "$" and nxt == "'":
                    stack.append(["ansi", 0, None, ""])
                    i += 1
                elif ch == "$" and nxt == "(" and part[i + 2 : i + 3] == "(":
                    stack.append(["arith", 1, None, ""])  # $(( ... )): no here-documents
                    i += 2
                elif ch == "$" and nxt == "(":
                    stack.append(["cmd", 0, None, ""])
                    i += 1
                elif ch == "#" and prev in _WORD_END:
                    stack.append(["comment", 0, None, ""])
                elif ch == "<" and nxt == "<" and top[0] != "arith" and part[i + 2 : i + 3] != "<":
                    found = _here_document_word(part, i + 2)
                    if found is not None:
                        i, doc = found
                        pending.append(doc)
                        continue
                    i += 1
                elif ch == "\n" and pending and top[0] in ("out", "cmd"):
                    # a here-document opened at the top or inside $(...) starts here
                    stack.append(["here", 0, pending.pop(0), ""])
                elif ch == "`":
                    if top[0] == "tick":
                        stack.pop()
                    else:
                        stack.append(["tick", 0, None, ""])
                elif top[0] in ("cmd", "arith") and ch == "(":
                    top[1] += 1
                elif top[0] in ("cmd", "arith") and ch == ")":
                    if top[1]:
                        top[1] -= 1
                    else:
                        stack.pop()
            prev = ch
            i += 1
    return quotes


def _in_comment(value: str) -> str:
    """A value inside a ``#`` comment (where ``labtasker loop`` lets a variable stand only to
    be required): its newlines become spaces, since a newline would end the comment and run
    the rest of the value as shell code; then ``shlex.quote``."""
    return shlex.quote(value.replace("\n", " ").replace("\r", " "))


_QUOTE_IN = {"single": _in_single_quotes, "double": _in_double_quotes, "tick": _in_backticks}
