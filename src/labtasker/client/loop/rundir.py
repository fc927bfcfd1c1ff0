"""The run directory of one task run and its first-finish-wins files.

Layout (times in UTC)::

    <root>/logs/run/run_t<YYYY-MM-DD-HH-MM-SS>[_n<task_name>]_id<task_id>_rd<8 hex>/
        task_info.json   the fetched Task (JSON, indent 4; includes run_id)
        run.log          runner log lines + the job's stdout/stderr (ANSI stripped)
        heartbeat.lock   exists while the heartbeat runs
        summary.json     the summary reported to the server (after the report)
        status.json      {"status": "success" | "failed"} (after the report)

A job may also leave a JSON object in ``summary.json`` before it exits (any language): the
runner merges it into the summary it reports (:func:`read_job_summary`).

Cheap to import (no httpx): a job's child process uses it through
:mod:`labtasker.client.loop.context`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labtasker.keys import sanitize_name, validate_keys
from labtasker.wire import Task

if TYPE_CHECKING:
    from labtasker.client.heartbeat import Heartbeat

logger = logging.getLogger("labtasker.loop")

TASK_INFO = "task_info.json"
SUMMARY = "summary.json"
STATUS = "status.json"
RUN_LOG = "run.log"
HEARTBEAT_LOCK = "heartbeat.lock"
FINISH_CLAIM = ".finish.claim"

# Sends one report: ``report(task_id, status, *, summary, worker_id, run_id)``; raises as
# :func:`labtasker.client.api.report_task_status` does.
Reporter = Callable[..., Any]


def safe_name(text: str) -> str:
    """``text`` with every character outside the name rule (``[a-zA-Z0-9_-]``) replaced by
    ``-`` (``keys.sanitize_name``)."""
    return sanitize_name(text)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (temporary file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=4, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def make_run_dir(root: Path, task: Task) -> Path:
    """Create ``<root>/logs/run/run_t<UTC time>_n<name>_id<id>_rd<8 hex>`` and return it
    (absolute). Raises ``OSError`` if it cannot be created."""
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime())
    named = f"_n{_safe_part(task.task_name)}" if task.task_name else ""  # unnamed: no "_nNone"
    name = f"run_t{stamp}{named}_id{_safe_part(task.task_id)}_rd{secrets.token_hex(4)}"
    base = (root / "logs" / "run").absolute()
    path = base / name
    if path.resolve().parent != base.resolve():  # never outside the log root
        raise OSError(f"run directory {name!r} would leave {base}")
    path.mkdir(parents=True, exist_ok=False)
    return path.absolute()


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def _safe_part(value: object, limit: int = 64) -> str:
    """A piece of a directory name from server data: characters outside ``[A-Za-z0-9_.-]``
    (slashes, ``..`` runs, control characters) become ``_``, at most ``limit`` characters."""
    text = _UNSAFE_NAME.sub("_", str(value))[:limit]
    return text.replace("..", "__")


def finish_in_dir(
    run_dir: Path,
    task_id: str,
    worker_id: str | None,
    run_id: str | None,
    status: str,
    summary: Mapping[str, Any] | None,
    report: Reporter | None = None,
) -> bool:
    """First-finish-wins report of one task; returns False if already finished.

    Protocol (safe across the runner and its child processes): exclusively create
    ``.finish.claim``; report to the server; only then write ``summary.json`` and
    ``status.json``. If the report raises, the claim is removed (a later ``finish`` may retry)
    and the exception propagates (``TaskNotOwned``, ``LabtaskerHTTPStatusError``...).
    ``report`` sends the report (default :func:`labtasker.client.api.report_task_status`;
    the runner passes one that also claims the next task).
    """
    claim = run_dir / FINISH_CLAIM
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    if report is None:
        from labtasker.client.api import report_task_status  # httpx only when reporting

        report = report_task_status
    summary = reportable_summary(summary or {})
    try:
        try:
            report(task_id, status, summary=summary, worker_id=worker_id, run_id=run_id)
        except Exception as exc:
            if getattr(exc, "status_code", None) != 413:
                raise
            # the summary is over the server's size limit: report the outcome without it
            # (the run's result must not be lost with it), keeping it whole in the run dir
            write_json(run_dir / SUMMARY, summary)
            detail = getattr(exc, "detail", None) or exc
            logger.warning("The summary was too large for the server and was not sent: %s", detail)
            summary = {
                "labtasker_warning": f"the summary was too large for the server ({detail}); it "
                f"is kept in {run_dir / SUMMARY} on the worker's machine"
            }
            report(task_id, status, summary=summary, worker_id=worker_id, run_id=run_id)
            write_json(run_dir / STATUS, {"status": status})
            return True
    except BaseException:
        with contextlib.suppress(OSError):
            claim.unlink()
        raise
    write_json(run_dir / SUMMARY, summary)
    write_json(run_dir / STATUS, {"status": status})
    return True


# How a number JSON cannot hold is stored in a summary: as this text.
NON_FINITE_TEXT = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def reportable_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``summary`` with every float JSON cannot hold (NaN, +-inf: a diverged run's loss),
    at any depth, replaced by the text ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``, and a
    warning logged naming the keys. Such a number would make the whole report fail, and the
    run's result be lost; as text it stays visible (and ``summary.loss == "NaN"`` finds it)."""
    found: list[str] = []

    def clean(value: Any, where: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            found.append(where)
            return NON_FINITE_TEXT[repr(value)]
        if isinstance(value, Mapping):
            return {k: clean(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{where}.{i}") for i, v in enumerate(value)]
        return value

    out = {k: clean(v, str(k)) for k, v in summary.items()}
    if found:
        logger.warning(
            "summary.%s: a number JSON cannot hold (NaN or infinity), stored as text",
            ", summary.".join(found[:5]) + (" ..." if len(found) > 5 else ""),
        )
    return out


def read_job_summary(run_dir: Path) -> dict[str, Any]:
    """The JSON object a job left in ``summary.json`` (empty if none).

    Keys must be valid labtasker keys (``[a-zA-Z0-9_-]``); an unreadable or invalid file gives
    ``{"labtasker_warning": "<why>"}`` instead.
    """
    path = run_dir / SUMMARY
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        validate_keys(data, "summary.json")
    except (OSError, ValueError) as exc:
        logger.warning("Ignoring %s written by the job: %s", path, exc)
        return {"labtasker_warning": f"summary.json written by the job was ignored: {exc}"}
    return data


def exception_summary(exc: BaseException, message: str | None = None) -> dict[str, Any]:
    """``{"labtasker_exception": {"type", "message", "traceback"}}`` for ``exc``."""
    return {
        "labtasker_exception": {
            "type": type(exc).__name__,
            "message": message if message is not None else str(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        }
    }


@dataclass
class TaskRun:
    """One claimed task inside the runner: the task as fetched, its run directory, its
    heartbeat, and whether the server took the task away (``lost``)."""

    task: Task
    worker_id: str | None
    run_dir: Path
    heartbeat: Heartbeat | None = None
    lost: threading.Event = field(default_factory=threading.Event)
    lost_reason: Exception | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def run_id(self) -> str | None:
        """The claim's fencing token (sent with heartbeats and reports)."""
        return self.task.run_id

    def finished(self) -> bool:
        """Whether a finish already went through (here or in a child process)."""
        return (self.run_dir / STATUS).exists()

    def final_status(self) -> str | None:
        """The status recorded in ``status.json`` (``success``/``failed``), or None."""
        with contextlib.suppress(OSError, ValueError):
            return json.loads((self.run_dir / STATUS).read_text()).get("status")
        return None

    def finish(
        self, status: str, summary: Mapping[str, Any] | None, report: Reporter | None = None
    ) -> bool:
        """Report once (see :func:`finish_in_dir`); stops the heartbeat after the report."""
        done = finish_in_dir(
            self.run_dir, self.task.task_id, self.worker_id, self.run_id, status, summary, report
        )
        if done and self.heartbeat is not None:
            self.heartbeat.stop()
        return done

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment of the job: ``base`` (default ``os.environ``) plus ``extra_env`` (a
        slot's devices) and the ``LABTASKER_*`` variables."""
        from labtasker.client.config import get_labtasker_root

        env = dict(os.environ if base is None else base)
        env.update(self.extra_env)
        env.update(
            LABTASKER_TASK_ID=self.task.task_id,
            LABTASKER_WORKER_ID=self.worker_id or "",
            LABTASKER_LOG_DIR=str(self.run_dir),
            LABTASKER_ROOT=str(get_labtasker_root()),
        )
        if not self.worker_id:
            env.pop("LABTASKER_WORKER_ID")
        return env
