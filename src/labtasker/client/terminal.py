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
