"""Old import path of the loop runner, kept for code written against labtasker 1.0.1 and
earlier versions of this package. The loop lives in :mod:`labtasker.client.loop`; every
name importable from here before is still importable (resolved on first access)."""

from __future__ import annotations

from typing import Any

from labtasker.client import loop as _loop

_RUNDIR = ("TASK_INFO", "SUMMARY", "STATUS", "RUN_LOG", "HEARTBEAT_LOCK", "FINISH_CLAIM")

__all__ = [*_loop.__all__, *_RUNDIR]


def __getattr__(name: str) -> Any:
    if name in _RUNDIR:
        from labtasker.client.loop import rundir

        return getattr(rundir, name)
    return getattr(_loop, name)
