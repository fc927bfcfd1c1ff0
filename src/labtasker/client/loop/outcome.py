"""``Outcome``: what happened to one task run, as an executor tells the runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """What happened to one task run.

    ``status`` is ``"success"``/``"failed"``; ``"interrupted"`` when the loop was stopped by a
    signal (the runner hands the task back: pending, ``retries`` unchanged, worker not
    charged, ``summary`` recorded); or ``None`` when nothing should be reported (task lost,
    already finished by the job, handed back). ``summary`` is reported with it;
    ``error`` is the exception behind a failure; ``stop_loop`` ends the loop after this task
    (interrupted, "Exit" chosen). Frozen: derive a changed copy with ``dataclasses.replace``.
    """

    status: str | None
    summary: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    stop_loop: bool = False
    exit_signal: int | None = None
