"""The job-side API: what a running job asks about its task, and how it reports it.

Works in two places:

* in the runner process, for ``@labtasker.loop`` jobs: the runner publishes the current
  :class:`~labtasker.client.loop.rundir.TaskRun` with :func:`set_current_run`;
* in a job's child process (``labtasker loop -- cmd``): from the environment
  (``LABTASKER_TASK_ID``, ``LABTASKER_WORKER_ID``, ``LABTASKER_LOG_DIR``) and the ``run_id``
  of ``$LABTASKER_LOG_DIR/task_info.json``.

Cheap to import: no httpx (only :func:`finish` loads the HTTP client, when it reports).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from labtasker.client.loop.rundir import TASK_INFO, TaskRun, finish_in_dir
from labtasker.exceptions import LabtaskerRuntimeError, LabtaskerTypeError, LabtaskerValueError
from labtasker.wire import Task

_current: TaskRun | None = None  # the task run by this process's loop (in-process jobs)
_current_worker_id: str | None = None


def set_current_run(run: TaskRun | None) -> None:
    """Publish ``run`` as this process's current task (None: no task). Used by the runner
    around an in-process job."""
    global _current
    _current = run


def set_current_worker(worker_id: str | None) -> None:
    """Publish this process's loop worker id (None: no loop)."""
    global _current_worker_id
    _current_worker_id = worker_id


def current_run() -> TaskRun | None:
    """The :class:`TaskRun` published by this process's runner, or None."""
    return _current


def current_task_id() -> str | None:
    """Id of the task being run (runner context, else env ``LABTASKER_TASK_ID``), or None."""
    if _current is not None:
        return _current.task.task_id
    return os.environ.get("LABTASKER_TASK_ID") or None


def current_worker_id() -> str | None:
    """Id of the current worker (runner context, else env ``LABTASKER_WORKER_ID``), or None."""
    return _current_worker_id or os.environ.get("LABTASKER_WORKER_ID") or None


def is_enabled() -> bool:
    """True when running under a labtasker loop (a worker id is known)."""
    return current_worker_id() is not None


def get_labtasker_log_dir() -> Path:
    """The current task's run directory (context or env ``LABTASKER_LOG_DIR``).

    Raises ``LabtaskerRuntimeError`` outside a labtasker job.
    """
    if _current is not None:
        return _current.run_dir
    env = os.environ.get("LABTASKER_LOG_DIR")
    if not env:
        raise LabtaskerRuntimeError("Not running inside a labtasker job (LABTASKER_LOG_DIR unset)")
    return Path(env).absolute()


def task_info() -> Task:
    """The current task (as fetched, status ``running``).

    In a child process of ``labtasker loop`` it is read from ``$LABTASKER_LOG_DIR/
    task_info.json``. Raises ``LabtaskerRuntimeError`` if there is no current task.
    """
    if _current is not None:
        return _current.task
    run_dir = get_labtasker_log_dir()
    try:
        return Task.model_validate_json((run_dir / TASK_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LabtaskerRuntimeError(
            f"Could not load task info from run dir {run_dir}: {exc}"
        ) from exc


def finish(
    status: str, summary: Mapping[str, Any] | None = None, skip_if_no_labtasker: bool = True
) -> None:
    """Report the current task as ``"success"`` or ``"failed"`` with an optional summary.

    Works in the runner process (``@labtasker.loop`` jobs) and in a job's child process (uses
    ``LABTASKER_TASK_ID``, ``LABTASKER_WORKER_ID``, ``LABTASKER_LOG_DIR`` and the ``run_id`` of
    ``task_info.json``). The first finish of a task wins; later calls do nothing. Outside a
    labtasker job: returns silently, or raises ``LabtaskerRuntimeError`` when
    ``skip_if_no_labtasker`` is False. Raises ``LabtaskerValueError`` for another status,
    ``TaskNotOwned`` if the task is no longer this run's (cancelled, timed out, re-dispatched).
    """
    if status not in ("success", "failed"):
        raise LabtaskerValueError(f"finish(): status must be 'success' or 'failed', got {status!r}")
    if summary is not None and not isinstance(summary, Mapping):
        raise LabtaskerTypeError("finish(): summary must be a dict")
    if _current is not None:
        _current.finish(status, summary)
        return
    task_id = os.environ.get("LABTASKER_TASK_ID")
    log_dir = os.environ.get("LABTASKER_LOG_DIR")
    if not task_id or not log_dir:
        if skip_if_no_labtasker:
            return
        raise LabtaskerRuntimeError("finish() called outside a labtasker job")
    run_dir = Path(log_dir)
    run_id = None
    with contextlib.suppress(OSError, ValueError):
        run_id = json.loads((run_dir / TASK_INFO).read_text(encoding="utf-8")).get("run_id")
    finish_in_dir(run_dir, task_id, os.environ.get("LABTASKER_WORKER_ID"), run_id, status, summary)
