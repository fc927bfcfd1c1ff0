"""Progress reports from inside a job: ``labtasker.report_progress`` and ``labtasker
progress``.

A report stores the run's latest snapshot on its task (``{"step", "total", "metrics",
"updated_at"}``, replacing the previous one; a new run starts without one) and counts as a
heartbeat. ``labtasker task ls``, ``labtasker status`` and the task's detail show it.

Reports are rate-limited on the client: at most one per ``LABTASKER_PROGRESS_INTERVAL``
seconds (default 2) per task; a report in between is skipped, except the final one (``step >=
total``). Shell jobs (one process per ``labtasker progress``) share the limit through the
file ``progress.stamp`` in the run directory.

A report never stops the job: when the server cannot be reached, or the run no longer owns
the task (cancelled, timed out -- the loop stops the job on its next heartbeat anyway), it is
logged and ``False`` is returned.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

_log = logging.getLogger("labtasker.client")
DEFAULT_INTERVAL = 2.0
STAMP = "progress.stamp"

_last_sent: dict[str, float] = {}  # task id -> time.time() of the last report sent
_identity: dict[str, tuple[str | None, str | None]] = {}  # task id -> (worker_id, run_id)


def _interval() -> float:
    try:
        return max(float(os.environ.get("LABTASKER_PROGRESS_INTERVAL", DEFAULT_INTERVAL)), 0.0)
    except ValueError:
        return DEFAULT_INTERVAL


def _run_identity(task_id: str) -> tuple[str | None, str | None]:
    """``(worker_id, run_id)`` of the current run (runner context or the run directory)."""
    if task_id not in _identity:
        import labtasker

        run_id = None
        try:
            info = labtasker.task_info()
            if info.task_id == task_id:
                run_id = info.run_id
        except Exception:  # no task_info.json: report without the run fence
            run_id = None
        _identity.clear()
        _identity[task_id] = (labtasker.current_worker_id(), run_id)
    return _identity[task_id]


def _stamp_path() -> Path | None:
    log_dir = os.environ.get("LABTASKER_LOG_DIR")
    return Path(log_dir) / STAMP if log_dir else None


def _last(task_id: str) -> float:
    last = _last_sent.get(task_id, 0.0)
    path = _stamp_path()
    if path is not None:
        try:
            stamp_task, _, when = path.read_text().partition(" ")
            if stamp_task == task_id:
                last = max(last, float(when))
        except (OSError, ValueError):
            pass
    return last


def _mark(task_id: str, when: float) -> None:
    _last_sent[task_id] = when
    path = _stamp_path()
    if path is not None:
        try:
            path.write_text(f"{task_id} {when}")
        except OSError:
            pass


def report_progress(step: float, total: float | None = None, **metrics: Any) -> bool | None:
    """Report the current task's progress: ``step`` of ``total`` (e.g. epochs) plus metrics
    (numbers, strings, booleans; up to 32, valid labtasker keys).

    Returns ``True`` when sent, ``False`` when skipped by the rate limit or refused (the run
    no longer owns the task; the server is unreachable), ``None`` outside a labtasker job.
    Raises ``pydantic.ValidationError`` (a ``ValueError``) for a negative step, a total <= 0
    or bad metrics.
    """
    return send(step, total, metrics)


def send(
    step: float, total: float | None, metrics: dict[str, Any], force: bool = False
) -> bool | None:
    """:func:`report_progress` with ``force`` (ignore the rate limit)."""
    import labtasker
    from labtasker.wire import TaskProgressRequest

    task_id = labtasker.current_task_id()
    if not task_id:
        return None
    TaskProgressRequest(step=step, total=total, metrics=metrics)  # validate before the limit
    final = total is not None and step >= total
    now = time.time()
    if not (force or final) and now - _last(task_id) < _interval():
        return False
    from labtasker.client import api
    from labtasker.exceptions import LabtaskerNetworkError, TaskNotOwned

    worker_id, run_id = _run_identity(task_id)
    try:
        api.report_task_progress(task_id, step, total, metrics, worker_id=worker_id, run_id=run_id)
    except TaskNotOwned as exc:
        _log.warning("Progress not stored: %s", exc)
        return False
    except LabtaskerNetworkError as exc:
        _log.warning("Progress not sent: %s", exc)
        return False
    _mark(task_id, now)
    return True
