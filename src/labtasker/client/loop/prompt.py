"""The countdown question asked on a terminal after a failed task.

A prompt is any callable ``prompt(question, keys, *, default, on_ctrl_c, interrupts) -> str``
(:class:`Prompt`); the runner is given one (:class:`TerminalCountdown` by default, :func:`
no_prompt` for loops that must never ask, such as the slots of ``--gpus``/``--parallel``).
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from typing import Protocol

from labtasker.client.loop.interrupts import Interrupts
from labtasker.client.terminal import is_tty

PROMPT_SECONDS = 10.0

_prompt_on_failure = True


def set_prompt_on_task_failure(enabled: bool) -> None:
    """Enable/disable the Report/Ignore prompt after a failed task (default enabled).

    The prompt only appears when stdin is a terminal; otherwise failures are reported at once.
    """
    global _prompt_on_failure
    _prompt_on_failure = bool(enabled)


class Prompt(Protocol):
    """Ask ``question``; return one of ``keys.values()``, ``default`` or ``on_ctrl_c``."""

    def __call__(
        self,
        question: str,
        keys: dict[str, str],
        *,
        default: str,
        on_ctrl_c: str,
        interrupts: Interrupts,
    ) -> str: ...


def no_prompt(
    question: str, keys: dict[str, str], *, default: str, on_ctrl_c: str, interrupts: Interrupts
) -> str:
    """A prompt that never asks: always ``default``."""
    return default


class TerminalCountdown:
    """Ask on the terminal with a ``seconds`` countdown (default :data:`PROMPT_SECONDS`): one
    key press (no Enter needed) picks ``keys[key]``; Enter or the timeout picks ``default``;
    Ctrl+C picks ``on_ctrl_c``. Returns ``default`` at once when prompting is disabled
    (:func:`set_prompt_on_task_failure`) or stdin is not a terminal, and when a SIGTERM
    arrives meanwhile. The question is written to stderr."""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = seconds

    def __call__(
        self,
        question: str,
        keys: dict[str, str],
        *,
        default: str,
        on_ctrl_c: str,
        interrupts: Interrupts,
    ) -> str:
        if not _prompt_on_failure:
            return default
        try:
            stdin = sys.stdin
            if not is_tty(stdin):
                return default
            fd = stdin.fileno()
            import termios
            import tty

            saved = termios.tcgetattr(fd)
        except (OSError, ValueError, ImportError, AttributeError):
            return default
        out = sys.stderr
        intr = interrupts
        signals_before = intr.count
        intr.prompt_interrupted = False
        intr.prompting = True
        choice: str | None = None
        shown = -1
        try:
            tty.setcbreak(fd, termios.TCSANOW)
            seconds = PROMPT_SECONDS if self.seconds is None else self.seconds
            deadline = time.monotonic() + seconds
            while choice is None:
                if intr.prompt_interrupted:
                    choice = on_ctrl_c
                    break
                if intr.count != signals_before:  # SIGTERM meanwhile: no more questions
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if int(left + 0.999) != shown:
                    shown = int(left + 0.999)
                    out.write(f"\r{question} -- {default} in {shown:2d}s: ")
                    out.flush()
                ready, _, _ = select.select([fd], [], [], min(0.2, left))
                if not ready:
                    continue
                key = os.read(fd, 1).decode("utf-8", errors="ignore").lower()
                if key == "":
                    break  # EOF
                if key in ("\r", "\n"):
                    choice = default
                elif key in keys:
                    choice = keys[key]
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            intr.prompting = False
            choice = choice or default
            with contextlib.suppress(Exception):
                out.write(f"\n-> {choice}\n")
                out.flush()
        return choice
