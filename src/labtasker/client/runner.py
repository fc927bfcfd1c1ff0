"""The loop runner shared by ``labtasker loop`` and ``@labtasker.loop``.

Compatible with labtasker 1.0.1 (same fetch arguments, run-directory layout, environment
variables, ``finish()`` semantics, failure summary shape), with its known bugs fixed:

* nothing happens at import or decoration time; the queue check and worker creation run when
  the loop starts (1.0.1 did both at decoration time);
* a given ``worker_id`` is checked once at start-up: an unknown id is a clear error instead of
  five minutes of back-off; the internal-error counter is per loop and reset after every
  successful iteration (1.0.1 kept one global counter that never reset);
* ``finish()`` reports to the server first and writes ``summary.json``/``status.json`` only
  after the server accepted the report; a failed report leaves no local "completed" marker and
  does not block a later ``finish()`` (1.0.1 wrote the files first, so a failed report
  looked finished);
* every claim carries its ``run_id`` (fencing token) on heartbeats and reports; when the
  server says the task is no longer ours, the job is stopped and the loop goes on (1.0.1's
  heartbeat thread died on the first error and the job kept running);
* the job gets ``/dev/null`` as stdin and its output is always captured in ``run.log``
  (a 1.0.1 job reading stdin hung);
* "Ignore" on the failure prompt restores the task's previous ``retries`` instead of 0
  (as 1.0.1 did).

Run directory (times in UTC)::

    <root>/logs/run/run_t<YYYY-MM-DD-HH-MM-SS>_n<task_name>_id<task_id>_rd<8 hex>/
        task_info.json   the fetched Task (JSON, indent 4; includes run_id)
        run.log          runner log lines + the job's stdout/stderr (ANSI stripped)
        heartbeat.lock   exists while the heartbeat runs
        summary.json     the summary reported to the server (after the report)
        status.json      {"status": "success" | "failed"} (after the report)

Job summaries: a job reports metrics either by calling ``labtasker.finish("success",
summary={...})`` (Python, in-process or in a child process of ``labtasker loop``: the child
uses ``LABTASKER_TASK_ID``/``LABTASKER_WORKER_ID``/``LABTASKER_LOG_DIR`` and the ``run_id`` in
``task_info.json``), or -- any language -- by writing a JSON object to
``$LABTASKER_LOG_DIR/summary.json`` before exiting; the runner merges that object into the
summary it reports (its own keys ``labtasker_exception``/``exit_code``/``output_tail`` win on
failure). Keys must be valid labtasker keys (``[a-zA-Z0-9_-]``); an invalid file is ignored
with a ``labtasker_warning`` entry in the reported summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import secrets
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labtasker.exceptions import (
    LabtaskerError,
    LabtaskerHTTPStatusError,
    LabtaskerRuntimeError,
    LabtaskerTypeError,
    LabtaskerValueError,
    LoopStopped,
    TaskNotOwned,
    WorkerSuspended,
)
from labtasker.keys import validate_keys
from labtasker.timeutil import parse_duration
from labtasker.wire import Task

logger = logging.getLogger("labtasker.loop")

STOP_GRACE_SECONDS = 10.0  # default SIGTERM -> SIGKILL delay when a job has to be stopped
PROMPT_SECONDS = 10.0
IDLE_POLL_MAX_SECONDS = 5.0  # --idle-timeout: longest pause between two fetches
TASK_INFO = "task_info.json"
SUMMARY = "summary.json"
STATUS = "status.json"
RUN_LOG = "run.log"
HEARTBEAT_LOCK = "heartbeat.lock"
FINISH_CLAIM = ".finish.claim"
_LOG_FORMAT = "[%(asctime)s.%(msecs)03d][%(levelname)-7s][%(name)s] - %(message)s"
_LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"

# ---------------------------------------------------------------------------------- settings
_prompt_on_failure = True


def set_prompt_on_task_failure(enabled: bool) -> None:
    """Enable/disable the Report/Ignore prompt after a failed task (default enabled).

    The prompt only appears when stdin is a terminal; otherwise failures are reported at once.
    """
    global _prompt_on_failure
    _prompt_on_failure = bool(enabled)


# Fetch answers that retrying cannot change: bad request/filter, credentials refused (queue
# deleted, password changed), worker deleted, validation error. The loop stops at once.
PERMANENT_HTTP_ERRORS = frozenset({400, 401, 404, 422})


def default_internal_error_handler(exc: Exception, failure_count: int) -> None:
    """Back off ``min(60, 2**(n-1))`` seconds after the n-th consecutive internal error;
    re-raise ``exc`` after more than 10 in a row."""
    if failure_count > 10:
        raise exc
    time.sleep(min(60.0, 2.0 ** (failure_count - 1)))


_internal_error_handler: Callable[[Exception, int], None] = default_internal_error_handler


def set_loop_internal_error_handler(handler: Callable[[Exception, int], None]) -> None:
    """Install ``handler(exception, consecutive_failure_count)`` for errors of the loop
    machinery itself (network, server errors). It may sleep, or raise to end the loop."""
    global _internal_error_handler
    if not callable(handler):
        raise LabtaskerTypeError("handler must be callable(exception, failure_count)")
    _internal_error_handler = handler


# ---------------------------------------------------------------------------------- context
_current: TaskRun | None = None  # the task run by this process's loop (in-process jobs)
_current_worker_id: str | None = None


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


# ---------------------------------------------------------------------------------- finish
def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=4, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _finish_in_dir(
    run_dir: Path,
    task_id: str,
    worker_id: str | None,
    run_id: str | None,
    status: str,
    summary: Mapping[str, Any] | None,
) -> bool:
    """First-finish-wins report of one task; returns False if already finished.

    Protocol (safe across the runner and its child processes): exclusively create
    ``.finish.claim``; report to the server; only then write ``summary.json`` and
    ``status.json``. If the report raises, the claim is removed (a later ``finish`` may retry)
    and the exception propagates.
    """
    claim = run_dir / FINISH_CLAIM
    try:
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    from labtasker.client.api import report_task_status

    summary = dict(summary or {})
    try:
        report_task_status(task_id, status, summary=summary, worker_id=worker_id, run_id=run_id)
    except BaseException:
        with contextlib.suppress(OSError):
            claim.unlink()
        raise
    _write_json(run_dir / SUMMARY, summary)
    _write_json(run_dir / STATUS, {"status": status})
    return True


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
    _finish_in_dir(run_dir, task_id, os.environ.get("LABTASKER_WORKER_ID"), run_id, status, summary)


# ---------------------------------------------------------------------------------- task run
def _safe_name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "-", text)


def make_run_dir(root: Path, task: Task) -> Path:
    """Create ``<root>/logs/run/run_t<UTC time>_n<name>_id<id>_rd<8 hex>`` and return it."""
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime())
    name = f"run_t{stamp}_n{task.task_name}_id{task.task_id}_rd{secrets.token_hex(4)}"
    path = root / "logs" / "run" / name
    path.mkdir(parents=True, exist_ok=False)
    return path.absolute()


@dataclass
class TaskRun:
    """State of one claimed task inside the runner."""

    task: Task
    worker_id: str | None
    run_dir: Path
    heartbeat: Any = None
    lost: threading.Event = field(default_factory=threading.Event)
    lost_reason: Exception | None = None

    @property
    def run_id(self) -> str | None:
        return self.task.run_id

    def finished(self) -> bool:
        """Whether a finish already went through (here or in a child process)."""
        return (self.run_dir / STATUS).exists()

    def finish(self, status: str, summary: Mapping[str, Any] | None) -> bool:
        """Report once (see :func:`_finish_in_dir`); stops the heartbeat after the report."""
        done = _finish_in_dir(
            self.run_dir, self.task.task_id, self.worker_id, self.run_id, status, summary
        )
        if done and self.heartbeat is not None:
            self.heartbeat.stop()
        return done

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment of the job: ``base`` plus the ``LABTASKER_*`` variables."""
        from labtasker.client.config import get_labtasker_root

        env = dict(os.environ if base is None else base)
        env.update(
            LABTASKER_TASK_ID=self.task.task_id,
            LABTASKER_WORKER_ID=self.worker_id or "",
            LABTASKER_LOG_DIR=str(self.run_dir),
            LABTASKER_ROOT=str(get_labtasker_root()),
        )
        if not self.worker_id:
            env.pop("LABTASKER_WORKER_ID")
        return env


def exception_summary(exc: BaseException, message: str | None = None) -> dict[str, Any]:
    """``{"labtasker_exception": {"type", "message", "traceback"}}`` for ``exc``."""
    return {
        "labtasker_exception": {
            "type": type(exc).__name__,
            "message": message if message is not None else str(exc),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        }
    }


def read_job_summary(run_dir: Path) -> dict[str, Any]:
    """The JSON object a job left in ``summary.json`` (empty if none).

    An unreadable or invalid file gives ``{"labtasker_warning": "<why>"}`` instead.
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


# ---------------------------------------------------------------------------------- outcome
@dataclass
class Outcome:
    """What happened to one task: ``status`` is success/failed, or ``None`` when nothing
    should be reported (task lost, already finished by the job)."""

    status: str | None
    summary: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    stop_loop: bool = False
    exit_signal: int | None = None


class _Interrupt:
    """SIGINT/SIGTERM bookkeeping while the loop runs in the main thread."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self.event = threading.Event()
        self.in_python_job = False
        self._old: dict[int, Any] = {}
        self.lost_callback_pending = False
        self.prompting = False  # a failure prompt is on screen: Ctrl+C picks its choice
        self.prompt_interrupted = False

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        return True

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handler(self, signum: int, frame: Any) -> None:
        if self.lost_callback_pending:
            # raised by the heartbeat thread via interrupt_main: the task was taken from us
            self.lost_callback_pending = False
            if self.in_python_job:
                raise _TaskLost()
            return
        if self.prompting and signum == signal.SIGINT:
            self.prompt_interrupted = True  # Ctrl+C answers the prompt; the loop goes on
            return
        self.signum = signum
        self.count += 1
        self.event.set()
        if self.in_python_job:
            raise KeyboardInterrupt


class _TaskLost(BaseException):
    """Raised inside an in-process job whose task was taken away (heartbeat refused)."""


# ---------------------------------------------------------------------------------- runner
def default_worker_name() -> str:
    """``<host>-<pid>`` with characters outside ``[a-zA-Z0-9_-]`` replaced by ``-``."""
    return _safe_name(f"{socket.gethostname()}-{os.getpid()}")[:100]


def ensure_logging(verbose: bool = False) -> None:
    """Give the ``labtasker`` logger a stderr handler if nobody configured one."""
    root = logging.getLogger("labtasker")
    if not any(getattr(h, "_labtasker_console", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT, _LOG_DATEFMT))
        handler._labtasker_console = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def _seconds(
    name: str,
    value: Any,
    *,
    allow_none: bool = False,
    positive: bool = False,
    allow_inf: bool = False,
) -> float | None:
    """``value`` as float seconds; ``LabtaskerTypeError`` if it is not a number (bools are
    not), ``LabtaskerValueError`` if negative (or 0 when ``positive``), NaN or infinite
    (unless ``allow_inf``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LabtaskerTypeError(f"{name} must be a number of seconds, got {value!r}")
    value = float(value)
    ok = value > 0 if positive else value >= 0  # False for NaN
    if not ok or (value == float("inf") and not allow_inf):
        bound = "> 0" if positive else ">= 0"
        raise LabtaskerValueError(
            f"{name} must be a finite number of seconds {bound}, got {value!r}"
        )
    return value


@dataclass(frozen=True)
class LoopOptions:
    """Everything that configures one task loop, validated once.

    Used by ``labtasker loop``, ``@labtasker.loop`` and :class:`LoopRunner`. Fields:

    * ``required_fields``: list/tuple of dotted arg keys (``"*"`` allowed) a task's args must
      have exactly ("no more, no less"); ``None`` = any task. Stored as a tuple.
    * ``extra_filter``: a Mongo-style ``dict`` or a filter string (Python expression or
      JSON), transpiled here; stored as a dict (``None`` when empty).
    * ``cmd``: command recorded on fetched tasks (``str`` or list of ``str``); ``None`` =
      ``sys.argv`` of the runner process.
    * ``worker_id``: an existing worker (else env ``LABTASKER_WORKER_ID``, else a worker
      named ``<host>-<pid>`` is created for the loop with ``create_worker_kwargs``: any of
      ``worker_name``, ``metadata``, ``max_retries``).
    * ``eta_max``: longest run time of each task run, a duration (``"2h"``, ``"1h30m"``,
      ``90``); stored as a string.
    * ``heartbeat_timeout``: seconds (> 0) without heartbeat before the server fails a run;
      ``None`` = 3 x ``heartbeat_interval`` of the config (checked against the interval when
      the loop starts).
    * ``grace_period``: seconds (>= 0, finite) between the SIGTERM/SIGINT sent to a job's
      process group (loop interrupted, task taken away, loop killed) and SIGKILL; default
      10. For ``@labtasker.loop``: the groups of ``labtasker.run_with_subprocess`` calls.
    * ``idle_timeout``: seconds (>= 0, ``math.inf`` allowed) to keep polling when no pending
      task matches; default 0 = stop at once.

    Raises ``LabtaskerTypeError`` for a value of the wrong type, ``LabtaskerValueError`` for
    an out-of-range value or an invalid duration, ``QueryTranspilerError`` for an invalid
    filter string. Frozen: derive variants with ``dataclasses.replace`` (validated again).
    """

    required_fields: tuple[str, ...] | None = None
    extra_filter: dict[str, Any] | None = None
    cmd: str | tuple[str, ...] | None = None
    worker_id: str | None = None
    create_worker_kwargs: Mapping[str, Any] = field(default_factory=dict)
    eta_max: str | None = None
    heartbeat_timeout: float | None = None
    grace_period: float = STOP_GRACE_SECONDS
    idle_timeout: float = 0.0

    _WORKER_KWARGS = frozenset({"worker_name", "metadata", "max_retries"})

    def __post_init__(self) -> None:
        put = functools.partial(object.__setattr__, self)
        fields = self.required_fields
        if fields is not None:
            if isinstance(fields, (str, bytes)) or not isinstance(fields, (list, tuple)):
                raise LabtaskerTypeError(
                    f"required_fields must be a list of strings, got {type(fields).__name__}"
                )
            for f in fields:
                if not isinstance(f, str):
                    raise LabtaskerTypeError(f"required_fields: {f!r} is not a string")
            put("required_fields", tuple(fields))
        flt = self.extra_filter
        if isinstance(flt, str):
            from labtasker.client.filtering import parse_filter

            flt = parse_filter(flt) if flt.strip() else None
        elif flt is not None and not isinstance(flt, Mapping):
            raise LabtaskerTypeError(
                f"extra_filter must be a dict or a filter string, got {type(flt).__name__}"
            )
        put("extra_filter", dict(flt) if flt else None)
        cmd = self.cmd
        if cmd is not None and not isinstance(cmd, str):
            if not isinstance(cmd, (list, tuple)) or not all(isinstance(c, str) for c in cmd):
                raise LabtaskerTypeError("cmd must be a string or a list of strings")
            put("cmd", tuple(cmd))
        if self.worker_id is not None and not isinstance(self.worker_id, str):
            raise LabtaskerTypeError(f"worker_id must be a string, got {self.worker_id!r}")
        kwargs = self.create_worker_kwargs if self.create_worker_kwargs is not None else {}
        if not isinstance(kwargs, Mapping):
            raise LabtaskerTypeError("create_worker_kwargs must be a dict")
        unknown = sorted(set(kwargs) - self._WORKER_KWARGS)
        if unknown:
            raise LabtaskerValueError(
                f"create_worker_kwargs: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(sorted(self._WORKER_KWARGS))}"
            )
        put("create_worker_kwargs", dict(kwargs))
        if self.eta_max is not None:
            try:
                parse_duration(self.eta_max)
            except ValueError as exc:
                raise LabtaskerValueError(f"Invalid eta_max: {exc}") from None
            put("eta_max", str(self.eta_max))
        put(
            "heartbeat_timeout",
            _seconds("heartbeat_timeout", self.heartbeat_timeout, allow_none=True, positive=True),
        )
        put("grace_period", _seconds("grace_period", self.grace_period))
        put("idle_timeout", _seconds("idle_timeout", self.idle_timeout, allow_inf=True))


class LoopRunner:
    """Fetch-run-report loop. ``execute(run)`` runs one task and returns an :class:`Outcome`.

    Construct it from a :class:`LoopOptions` (``LoopRunner(options)``) or from the same
    fields as keyword arguments (``LoopRunner(eta_max="2h", grace_period=5)``), not both.
    Raises what :class:`LoopOptions` raises for invalid options, ``LabtaskerTypeError`` when
    both forms are given.
    """

    def __init__(self, options: LoopOptions | None = None, **kwargs: Any):
        if options is None:
            options = LoopOptions(**kwargs)
        elif kwargs:
            raise LabtaskerTypeError("LoopRunner: give LoopOptions or keyword arguments, not both")
        elif not isinstance(options, LoopOptions):
            raise LabtaskerTypeError("LoopRunner: options must be a LoopOptions")
        self.options = options
        self.required_fields = (
            list(options.required_fields) if options.required_fields is not None else None
        )
        self.extra_filter = options.extra_filter
        cmd = options.cmd if options.cmd is not None else sys.argv
        self.cmd = cmd if isinstance(cmd, str) else list(cmd)
        self.worker_id = options.worker_id
        self.create_worker_kwargs = dict(options.create_worker_kwargs)
        self.eta_max = options.eta_max
        self.heartbeat_timeout = options.heartbeat_timeout  # resolved by setup()
        self.heartbeat_interval = 30.0
        self.grace_period = options.grace_period
        self.idle_timeout = options.idle_timeout
        self.auto_worker = False
        self.interrupt = _Interrupt()
        self.tasks_run = 0
        self.ignored: set[str] = set()  # tasks the user chose to Ignore after a failure
        self.tasks_succeeded = 0
        self.tasks_failed = 0
        self.exit_requested = False  # "Exit" chosen after a failure

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Read the config, check the queue credentials and resolve the worker.

        Raises ``LabtaskerRuntimeError`` (bad credentials / unknown worker) or the config
        errors of ``get_client_config``.
        """
        global _current_worker_id
        from labtasker.client import api
        from labtasker.client.config import get_client_config

        cfg = get_client_config()
        self.heartbeat_interval = float(cfg.task.heartbeat_interval)
        if self.heartbeat_timeout is None:
            self.heartbeat_timeout = 3 * self.heartbeat_interval
        elif self.heartbeat_timeout < self.heartbeat_interval:
            raise LabtaskerValueError(
                f"heartbeat_timeout ({self.heartbeat_timeout:g}s) must not be shorter than "
                f"the heartbeat interval ({self.heartbeat_interval:g}s, task.heartbeat_interval "
                "in client.toml); use at least 3 x the interval"
            )
        try:
            api.get_queue()
        except LabtaskerHTTPStatusError as exc:
            if exc.status_code == 401:
                raise LabtaskerRuntimeError(
                    "Either invalid credentials or queue not created. "
                    "Check client.toml or run `labtasker queue create`."
                ) from None
            raise
        worker_id = self.worker_id or os.environ.get("LABTASKER_WORKER_ID") or None
        if worker_id:
            if not api.ls_workers(worker_id=worker_id).found:
                raise LabtaskerRuntimeError(f"Worker {worker_id!r} not found in this queue.")
        else:
            kwargs = {"worker_name": default_worker_name(), **self.create_worker_kwargs}
            worker_id = api.create_worker(**kwargs)
            self.auto_worker = True
            logger.info("Created worker %s (%s).", worker_id, kwargs["worker_name"])
        self.worker_id = worker_id
        _current_worker_id = worker_id

    # ------------------------------------------------------------------ main loop
    def run(self, execute: Callable[[TaskRun], Outcome], *, python_job: bool = False) -> int:
        """Run tasks until none match, the worker is suspended or the user interrupts.

        Returns the signal number that stopped the loop (0 if none). Raises ``LoopStopped``
        when going on cannot help (worker suspended/crashed; a fetch refused with HTTP
        400/401/404/422), at once instead of after the back-off of transient errors.
        """
        from labtasker.client import api

        installed = self.interrupt.install()
        stopped: LoopStopped | None = None  # set when going on cannot help
        failures = 0
        idle_since: float | None = None  # when fetches started to come back empty
        idle_delay = 0.5
        try:
            while True:
                if self.interrupt.signum is not None:
                    break
                try:
                    resp = api.fetch_task(
                        worker_id=self.worker_id,
                        eta_max=self.eta_max,
                        heartbeat_timeout=self.heartbeat_timeout,
                        heartbeat_interval=self.heartbeat_interval,
                        start_heartbeat=True,
                        required_fields=self.required_fields,
                        extra_filter=self.extra_filter,
                        cmd=self.cmd,
                    )
                    failures = 0
                    if not resp.found or resp.task is None:
                        now = time.monotonic()
                        if idle_since is None:
                            idle_since = now
                            idle_delay = 0.5
                            if self.idle_timeout > 0:
                                logger.info(
                                    "No pending task matches; waiting up to %gs for one.",
                                    self.idle_timeout,
                                )
                        left = idle_since + self.idle_timeout - now
                        if left > 0:
                            self.interrupt.event.wait(min(idle_delay, left))
                            idle_delay = min(IDLE_POLL_MAX_SECONDS, idle_delay * 2)
                            continue
                        logger.info(
                            "Tasks with required fields %s are all done.",
                            self.required_fields if self.required_fields else "(any)",
                        )
                        break
                    idle_since = None
                    if self.interrupt.signum is not None:
                        self._ignore(resp.task)  # interrupted while claiming: hand it back
                        break
                    if resp.task.task_id in self.ignored:
                        self._ignore(resp.task)
                        logger.info("Only tasks ignored in this session are left; stopping.")
                        break
                    outcome = self._run_task(resp.task, execute, python_job, installed)
                    failures = 0  # the back-off of internal errors restarts after a task
                    if outcome.stop_loop:
                        break
                except WorkerSuspended as exc:
                    stopped = LoopStopped(
                        f"The server refused to give worker {self.worker_id} work: {exc}. "
                        f"Re-activate it with `labtasker worker report {self.worker_id} "
                        "active`.")
                    logger.error("%s", stopped)
                    break
                except LabtaskerHTTPStatusError as exc:
                    if self.interrupt.signum is not None:
                        break
                    if exc.status_code in PERMANENT_HTTP_ERRORS:
                        stopped = LoopStopped(f"Loop stopped: {exc}")
                        logger.error("%s", stopped)
                        break
                    failures += 1
                    logger.error("Loop internal error (%d in a row): %s", failures, exc)
                    _internal_error_handler(exc, failures)
                except (LabtaskerError, OSError) as exc:
                    if self.interrupt.signum is not None:
                        break
                    failures += 1
                    logger.error("Loop internal error (%d in a row): %s", failures, exc)
                    _internal_error_handler(exc, failures)
        finally:
            if installed:
                self.interrupt.restore()
            from labtasker.client.job import shutdown_watchdog

            shutdown_watchdog()  # reap the job watchdog (kept if another job still runs)
        if self.exit_requested and self.auto_worker and self.worker_id:
            with contextlib.suppress(LabtaskerError):
                api.delete_worker(self.worker_id)
                logger.info("Deleted auto-created worker %s.", self.worker_id)
        logger.info(
            "Loop ended: %d task(s) run, %d succeeded, %d failed.",
            self.tasks_run,
            self.tasks_succeeded,
            self.tasks_failed,
        )
        if stopped is not None and not self.interrupt.signum:
            raise stopped
        return self.interrupt.signum or 0

    def _run_task(
        self, task: Task, execute: Callable[[TaskRun], Outcome], python_job: bool, installed: bool
    ) -> Outcome:
        global _current
        from labtasker.client.config import get_labtasker_root
        from labtasker.client.heartbeat import Heartbeat

        run_dir = make_run_dir(get_labtasker_root(), task)
        (run_dir / TASK_INFO).write_text(task.model_dump_json(indent=4), encoding="utf-8")
        run = TaskRun(task=task, worker_id=self.worker_id, run_dir=run_dir)
        self.tasks_run += 1
        file_handler = logging.FileHandler(run_dir / RUN_LOG, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(_LOG_FORMAT, _LOG_DATEFMT))
        root_logger = logging.getLogger("labtasker")
        root_logger.addHandler(file_handler)

        def on_lost(exc: Exception) -> None:
            run.lost_reason = exc
            run.lost.set()
            if python_job and installed and self.interrupt.in_python_job:
                import _thread

                self.interrupt.lost_callback_pending = True
                _thread.interrupt_main()

        heartbeat = Heartbeat(
            task.task_id,
            worker_id=self.worker_id,
            run_id=task.run_id,
            interval=self.heartbeat_interval,
            on_lost=on_lost,
            lock_file=run_dir / HEARTBEAT_LOCK,
            finishing=(run_dir / FINISH_CLAIM).exists,
        )
        run.heartbeat = heartbeat
        logger.info("Task %s (%s) started; run dir %s", task.task_id, task.task_name, run_dir)
        _current = run
        outcome = Outcome(status=None)
        try:
            heartbeat.start()
            outcome = execute(run)
            if run.lost.is_set() and outcome.status is not None and not run.finished():
                logger.warning(
                    "Task %s is no longer ours (%s); its result is not reported.",
                    task.task_id,
                    run.lost_reason,
                )
                outcome.status = None
            failed = outcome.status == "failed" and not run.finished()
            if failed and self._ask_ignore(task):
                heartbeat.stop()
                if self._ignore(task):
                    self.ignored.add(task.task_id)
                    outcome.status = None
            if outcome.status is not None:
                try:
                    if run.finish(outcome.status, outcome.summary):
                        logger.info("Task %s reported %s.", task.task_id, outcome.status)
                    else:
                        logger.info("Task %s was already finished by the job.", task.task_id)
                except TaskNotOwned as exc:
                    logger.warning(
                        "Task %s is no longer ours; result not recorded: %s", task.task_id, exc
                    )
            if failed and not outcome.stop_loop and self._ask_exit():
                logger.info("Exiting task loop.")
                self.exit_requested = True
                outcome.stop_loop = True
            final = self._final_status(run, outcome)
            if final == "success":
                self.tasks_succeeded += 1
            elif final == "failed":
                self.tasks_failed += 1
            logger.info("Task %s ended.", task.task_id)
            return outcome
        finally:
            heartbeat.stop()
            _current = None
            root_logger.removeHandler(file_handler)
            file_handler.close()

    @staticmethod
    def _final_status(run: TaskRun, outcome: Outcome) -> str | None:
        with contextlib.suppress(OSError, ValueError):
            return json.loads((run.run_dir / STATUS).read_text()).get("status")
        return None

    # ------------------------------------------------------------------ failure prompt
    def _ask_ignore(self, task: Task) -> bool:
        """Decision 1 after a failure: 10 s countdown, Report (default, Enter, timeout) or
        Ignore (``i`` or Ctrl+C). True = Ignore. Without a terminal: Report at once. Not asked
        when the loop is being stopped by SIGTERM."""
        if self.interrupt.signum not in (None, signal.SIGINT):
            return False
        choice = self._countdown_choice(
            f"Task {task.task_id} failed. [R]eport (default) / [I]gnore = back to pending, "
            f"retries stay {task.retries}, worker not charged",
            {"r": "report", "i": "ignore"},
            default="report",
            on_ctrl_c="ignore",
        )
        return choice == "ignore"

    def _ask_exit(self) -> bool:
        """Decision 2 after a failure: 10 s countdown, Continue (default) or Exit (``e`` or
        Ctrl+C). True = Exit. Without a terminal: Continue at once."""
        if self.interrupt.signum is not None:
            return False
        choice = self._countdown_choice(
            "[C]ontinue with the next task (default) / [E]xit the loop",
            {"c": "continue", "e": "exit"},
            default="continue",
            on_ctrl_c="exit",
        )
        return choice == "exit"

    def _countdown_choice(
        self, question: str, keys: dict[str, str], *, default: str, on_ctrl_c: str
    ) -> str:
        """Ask ``question`` on the terminal with a ``PROMPT_SECONDS`` countdown; one key press
        (no Enter needed) picks ``keys[key]``; Enter or the timeout picks ``default``; Ctrl+C
        picks ``on_ctrl_c``. Returns ``default`` at once when prompting is disabled or stdin
        is not a terminal, and on SIGTERM."""
        if not _prompt_on_failure:
            return default
        try:
            stdin = sys.stdin
            if stdin is None or not stdin.isatty():
                return default
            fd = stdin.fileno()
            import termios
            import tty

            saved = termios.tcgetattr(fd)
        except (OSError, ValueError, ImportError, AttributeError):
            return default
        out = sys.stderr
        intr = self.interrupt
        signals_before = intr.count
        intr.prompt_interrupted = False
        intr.prompting = True
        choice: str | None = None
        shown = -1
        try:
            tty.setcbreak(fd, termios.TCSANOW)
            deadline = time.monotonic() + PROMPT_SECONDS
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

    def _ignore(self, task: Task) -> bool:
        """Hand ``task`` back: pending, ``retries`` as before this run, worker not charged.
        Fenced by the run id, so it never touches a task that is no longer this run's.
        Returns whether the server accepted it."""
        from labtasker.client import api
        from labtasker.wire import TaskUpdateRequest

        try:
            api.update_tasks(
                [
                    TaskUpdateRequest(
                        task_id=task.task_id,
                        status="pending",
                        retries=task.retries,
                        run_id=task.run_id,
                    )
                ]
            )
            logger.info(
                "Task %s ignored: back to pending (retries %d).", task.task_id, task.retries
            )
            return True
        except LabtaskerHTTPStatusError as exc:
            if exc.status_code == 409:
                logger.warning("Task %s is no longer ours; not handed back.", task.task_id)
                return True
            logger.error("Could not reset task %s to pending: %s", task.task_id, exc)
        except LabtaskerError as exc:
            logger.error("Could not reset task %s to pending: %s", task.task_id, exc)
        return False

    # ------------------------------------------------------------------ executors
    def command_executor(
        self, template: Any, executable: str | None = None
    ) -> Callable[[TaskRun], Outcome]:
        """Executor running a :class:`~labtasker.client.template.CommandTemplate` per task."""

        def execute(run: TaskRun) -> Outcome:
            return self._execute_command(run, template, executable)

        return execute

    def _execute_command(self, run: TaskRun, template: Any, executable: str | None) -> Outcome:
        from labtasker.client.job import JobProcess, describe_exit

        try:
            command = template.render(run.task.args)
        except LabtaskerError as exc:
            logger.error("Cannot build the command for task %s: %s", run.task.task_id, exc)
            return Outcome("failed", exception_summary(exc))
        shown = command if isinstance(command, str) else " ".join(map(repr, command))
        logger.info("Prepared to run interpolated command: %s", shown)
        job = JobProcess(
            command,
            env=run.child_env(),
            log_path=run.run_dir / RUN_LOG,
            executable=executable if template.shell else None,
            grace_period=self.grace_period,
        )
        try:
            job.start()
        except LabtaskerError as exc:
            logger.error("%s", exc)
            return Outcome("failed", {**exception_summary(exc), "exit_code": None})
        code = self._supervise(job, run)
        tail = job.output_tail()
        if run.lost.is_set() and code != 0:
            logger.warning("Job of task %s stopped: task no longer ours.", run.task.task_id)
            return Outcome(None, stop_loop=self.interrupt.signum is not None)
        if run.finished():
            return Outcome(None, stop_loop=self.interrupt.signum is not None)
        (run.run_dir / FINISH_CLAIM).unlink(missing_ok=True)  # stale claim of a dead child
        job_summary = read_job_summary(run.run_dir)
        if self.interrupt.signum is not None:
            name = signal.Signals(self.interrupt.signum).name
            exc = KeyboardInterrupt(f"Loop interrupted by {name}; job {describe_exit(code)}")
            summary = {
                **job_summary,
                **exception_summary(exc),
                "exit_code": code,
                "output_tail": tail,
            }
            return Outcome("failed", summary, exc, stop_loop=True)
        if code == 0:
            return Outcome("success", job_summary)
        message = f"Job process finished with non-zero exit code: {code}"
        if code is not None and code < 0:
            message = f"Job process {describe_exit(code)}"
        logger.error("Task %s failed: %s", run.task.task_id, message)
        exc = LabtaskerRuntimeError(message)
        summary = {
            **job_summary,
            "labtasker_exception": {
                "type": "LabtaskerJobFailed",
                "message": message,
                "traceback": "",
            },
            "exit_code": code,
            "output_tail": tail,
        }
        return Outcome("failed", summary, exc)

    def _supervise(self, job: Any, run: TaskRun) -> int:
        """Wait for the job; on interrupt or lost task: forward the signal to the job's group,
        SIGKILL after the grace period (or on a second interrupt)."""
        stopping_since: float | None = None
        kills_sent = 0
        while True:
            code = job.wait(timeout=0.1)
            if code is not None:
                return code
            want_stop = self.interrupt.signum is not None or run.lost.is_set()
            if not want_stop:
                continue
            now = time.monotonic()
            if stopping_since is None:
                stopping_since = now
                sig = self.interrupt.signum or signal.SIGTERM
                logger.warning(
                    "Stopping job of task %s (%s); SIGKILL in %.0fs.",
                    run.task.task_id,
                    "interrupted" if self.interrupt.signum else "task no longer ours",
                    self.grace_period,
                )
                job.send_signal(sig)
            elif kills_sent == 0 and (
                now - stopping_since > self.grace_period or self.interrupt.count > 1
            ):
                kills_sent = 1
                job.send_signal(signal.SIGKILL)

    def python_executor(
        self,
        func: Callable,
        params: list,
        call_args: tuple,
        call_kwargs: dict,
        pass_args_dict: bool,
    ) -> Callable[[TaskRun], Outcome]:
        """Executor calling ``func`` in-process with ``Required`` values bound per task."""

        def execute(run: TaskRun) -> Outcome:
            from labtasker.client.required import bind_call

            try:
                pos, kw = bind_call(
                    func, params, run.task.args, call_args, call_kwargs, pass_args_dict
                )
            except LabtaskerError as exc:
                logger.error(
                    "Cannot bind task %s to %s: %s",
                    run.task.task_id,
                    getattr(func, "__name__", func),
                    exc,
                )
                return Outcome("failed", exception_summary(exc), exc)
            from labtasker.client.job import default_grace_period

            with (
                _job_environment(run),
                _tee_std_streams(run.run_dir / RUN_LOG),
                default_grace_period(self.grace_period),
            ):
                self.interrupt.in_python_job = True
                try:
                    func(*pos, **kw)
                except _TaskLost:
                    self.interrupt.in_python_job = False
                    logger.warning(
                        "Job of task %s interrupted: task no longer ours.", run.task.task_id
                    )
                    return Outcome(None)
                except KeyboardInterrupt as exc:
                    self.interrupt.in_python_job = False
                    logger.warning("KeyboardInterrupt detected in task %s.", run.task.task_id)
                    self.interrupt.signum = self.interrupt.signum or signal.SIGINT
                    return Outcome("failed", exception_summary(exc), exc, stop_loop=True)
                except Exception as exc:  # noqa: BLE001 - any job error is a task failure
                    self.interrupt.in_python_job = False
                    logger.error(
                        "Task %s failed: %s: %s", run.task.task_id, type(exc).__name__, exc
                    )
                    traceback.print_exc()
                    return Outcome("failed", exception_summary(exc), exc)
                finally:
                    self.interrupt.in_python_job = False
            if run.finished():
                return Outcome(None)
            return Outcome("success", {})

        return execute


@contextlib.contextmanager
def _job_environment(run: TaskRun) -> Iterator[None]:
    """Set the ``LABTASKER_*`` variables in ``os.environ`` for an in-process job (so
    subprocesses it starts see them); restore them afterwards."""
    names = ("LABTASKER_TASK_ID", "LABTASKER_WORKER_ID", "LABTASKER_LOG_DIR")
    saved = {n: os.environ.get(n) for n in names}
    env = run.child_env({})
    try:
        for n in names:
            if n in env:
                os.environ[n] = env[n]
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


class _Tee:
    """Text stream writing to the original stream and to a log file."""

    def __init__(self, original: Any, log: Any):
        self._original = original
        self._log = log

    def write(self, text: str) -> int:
        with contextlib.suppress(Exception):
            self._log.write(text)
            self._log.flush()
        return self._original.write(text)

    def flush(self) -> None:
        self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


@contextlib.contextmanager
def _tee_std_streams(log_path: Path) -> Iterator[None]:
    """Mirror ``sys.stdout``/``sys.stderr`` of an in-process job into ``run.log``."""
    log = open(log_path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
    old_out, old_err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(old_out, log), _Tee(old_err, log)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = old_out, old_err
        log.close()


# ---------------------------------------------------------------------------------- decorator
def loop(
    required_fields: list[str] | None = None,
    extra_filter: str | dict[str, Any] | None = None,
    cmd: str | list[str] | None = None,
    worker_id: str | None = None,
    create_worker_kwargs: dict[str, Any] | None = None,
    eta_max: str | None = None,
    heartbeat_timeout: float | None = None,
    pass_args_dict: bool = False,
    idle_timeout: float = 0.0,
    grace_period: float = STOP_GRACE_SECONDS,
) -> Callable[[Callable], Callable]:
    """Decorator turning a job function into a task loop.

    ``Required`` parameters of the function add their field (alias or name) to
    ``required_fields``. Nothing contacts the server at decoration time: calling the decorated
    function checks the queue, resolves the worker and runs tasks until none match; positional
    and keyword arguments of the call are forwarded to every job invocation. Returns the
    number of tasks run. ``pass_args_dict=True`` passes the task's whole ``args`` dict as
    first positional argument. The other arguments are the fields of :class:`LoopOptions`
    (durations in seconds). ``grace_period`` (default 10) applies to the processes a job
    starts with ``labtasker.run_with_subprocess``/``run_with_pty``: SIGTERM, then SIGKILL
    after that many seconds, when the loop is interrupted or killed or the task is taken
    away (the job function itself runs in-process and gets ``KeyboardInterrupt``). All are
    validated eagerly, at ``loop(...)``: raises
    ``LabtaskerTypeError``/``LabtaskerValueError`` (or ``QueryTranspilerError`` for a bad
    filter string) before any function is decorated.
    """
    from labtasker.client.required import collect_required, required_fields_of

    if callable(required_fields):
        raise LabtaskerTypeError("Use @labtasker.loop(...) with parentheses")
    options = LoopOptions(
        required_fields=required_fields,
        extra_filter=extra_filter,
        cmd=cmd,
        worker_id=worker_id,
        create_worker_kwargs=create_worker_kwargs,
        eta_max=eta_max,
        heartbeat_timeout=heartbeat_timeout,
        grace_period=grace_period,
        idle_timeout=idle_timeout,
    )

    def decorator(func: Callable) -> Callable:
        params = collect_required(func)
        fields: list[str] | None = None
        if required_fields is not None or params:
            fields = list(
                dict.fromkeys([*(options.required_fields or ()), *required_fields_of(params)])
            )
        func_options = dataclasses.replace(options, required_fields=fields)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> int:
            ensure_logging()
            runner = LoopRunner(func_options)
            runner.setup()
            signum = runner.run(
                runner.python_executor(func, params, args, kwargs, pass_args_dict),
                python_job=True,
            )
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            if signum:
                raise SystemExit(128 + signum)
            return runner.tasks_run

        wrapper.required_fields = fields  # type: ignore[attr-defined]
        return wrapper

    return decorator
