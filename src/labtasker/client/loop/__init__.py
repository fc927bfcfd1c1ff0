"""The task loop: ``labtasker loop`` and ``@labtasker.loop``.

Modules, one concept each:

* :mod:`~labtasker.client.loop.context` -- the job-side API (``finish``, ``task_info``...);
  cheap to import (no httpx), used inside jobs;
* :mod:`~labtasker.client.loop.rundir` -- a run's directory and its first-finish-wins files;
* :mod:`~labtasker.client.loop.options` -- ``LoopOptions``, validated once;
* :mod:`~labtasker.client.loop.runner` -- ``LoopRunner``: fetch -> dispatch -> report;
* :mod:`~labtasker.client.loop.outcome` -- ``Outcome``, what an executor returns;
* :mod:`~labtasker.client.loop.executors` -- how a task is run (command, Python function);
* :mod:`~labtasker.client.loop.interrupts` -- signal handling as a context manager;
* :mod:`~labtasker.client.loop.prompt` -- the countdown question after a failure;
* :mod:`~labtasker.client.loop.decorator` -- ``@labtasker.loop``;
* :mod:`~labtasker.client.loop.slots` -- slots of ``--gpus``/``--parallel`` (device discovery);
* :mod:`~labtasker.client.loop.supervisor` -- one supervisor for several slots.

Names are resolved on first access, so ``import labtasker.client.loop`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_P = "labtasker.client.loop."
_LAZY: dict[str, str] = {
    "finish": _P + "context",
    "task_info": _P + "context",
    "current_task_id": _P + "context",
    "current_worker_id": _P + "context",
    "is_enabled": _P + "context",
    "get_labtasker_log_dir": _P + "context",
    "TaskRun": _P + "rundir",
    "make_run_dir": _P + "rundir",
    "read_job_summary": _P + "rundir",
    "exception_summary": _P + "rundir",
    "LoopOptions": _P + "options",
    "STOP_GRACE_SECONDS": _P + "options",
    "Outcome": _P + "outcome",
    "LoopRunner": _P + "runner",
    "LoopSession": _P + "runner",
    "ensure_logging": _P + "runner",
    "default_worker_name": _P + "runner",
    "set_loop_internal_error_handler": _P + "runner",
    "default_internal_error_handler": _P + "runner",
    "PERMANENT_HTTP_ERRORS": _P + "runner",
    "IDLE_POLL_MAX_SECONDS": _P + "runner",
    "CommandExecutor": _P + "executors",
    "PythonExecutor": _P + "executors",
    "Interrupts": _P + "interrupts",
    "set_prompt_on_task_failure": _P + "prompt",
    "PROMPT_SECONDS": _P + "prompt",
    "TerminalCountdown": _P + "prompt",
    "loop": _P + "decorator",
    "Slot": _P + "slots",
    "plan_slots": _P + "slots",
    "Supervisor": _P + "supervisor",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first access."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
