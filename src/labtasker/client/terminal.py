"""Is a standard stream a terminal? One answer for the CLI and the loop runner.

Each function is ``False`` when the stream is missing (``None``, e.g. under ``pythonw``),
closed or replaced by an object without ``isatty`` (a test capture), never an exception.
"""

from __future__ import annotations

import sys
from typing import Any


def is_tty(stream: Any) -> bool:
    """Whether ``stream`` is an open terminal."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def stdin_is_tty() -> bool:
    return is_tty(sys.stdin)


def stdout_is_tty() -> bool:
    return is_tty(sys.stdout)


def stderr_is_tty() -> bool:
    return is_tty(sys.stderr)


# C0 controls but tab and newline, DEL, C1 controls, bidirectional overrides and isolates,
# and the line/paragraph separators: each shown as a visible escape, never sent raw.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F)}
_CONTROL.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})
_CONTROL.update(
    {
        c: f"\\u{c:04x}"
        for c in (
            0x061C,
            0x200E,
            0x200F,
            *range(0x202A, 0x202F),
            *range(0x2066, 0x206A),
            0x2028,
            0x2029,
        )
    }
)


def escape_control(text: str) -> str:
    """``text`` with terminal control characters (ESC, C1 such as U+009B, bidi overrides
    such as U+202E...) replaced by visible ``\\xNN``/``\\uNNNN`` escapes, so that data from
    the server cannot drive the terminal or reorder what is shown. Tab and newline stay."""
    return text.translate(_CONTROL)
