"""The loop runner shared by ``labtasker loop`` and ``@labtasker.loop``: fetch -> dispatch ->
report, until no pending task matches.

* Nothing happens at import or decoration time; the queue check and worker creation run when
  the loop starts (:meth:`LoopRunner.setup`). A given ``worker_id`` is checked once there:
  an unknown id is a clear error instead of minutes of back-off.
* Every claim carries its ``run_id`` (fencing token) on heartbeats and reports; when the
  server says the task is no longer ours, the job is stopped and the loop goes on.
* ``finish()`` reports to the server first and writes ``summary.json``/``status.json`` only
  after the server accepted the report (:mod:`labtasker.client.loop.rundir`).
* Errors of the loop machinery (network, server errors) go to the internal-error handler
  (back-off, :func:`set_loop_internal_error_handler`); its counter is per loop and reset after
  every successful fetch. Answers that retrying cannot change stop the loop at once
  (``LoopStopped``).
* After a failure, on a terminal, the injected prompt asks Report/Ignore ("Ignore" hands the
  task back with its previous ``retries``) and then Continue/Exit.

How a task is run is the executor's business (:mod:`labtasker.client.loop.executors`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labtasker.client import api
from labtasker.client.config import get_client_config, get_labtasker_root
from labtasker.client.heartbeat import Heartbeat
from labtasker.client.job import shutdown_watchdog
from labtasker.client.loop import context
from labtasker.client.loop.executors import CommandExecutor, PythonExecutor
from labtasker.client.loop.interrupts import Interrupts
from labtasker.client.loop.options import LoopOptions
from labtasker.client.loop.outcome import Outcome
from labtasker.client.loop.prompt import Prompt, TerminalCountdown
from labtasker.client.loop.rundir import (
    FINISH_CLAIM,
    HEARTBEAT_LOCK,
    RUN_LOG,
    TASK_INFO,
    TaskRun,
    make_run_dir,
    safe_name,
)
from labtasker.client.loop.slots import Slot
from labtasker.client.template import CommandTemplate
from labtasker.exceptions import (
    LabtaskerError,
    LabtaskerHTTPStatusError,
    LabtaskerNetworkError,
    LabtaskerRuntimeError,
    LabtaskerTypeError,
    LabtaskerValueError,
    LoopStopped,
    TaskNotOwned,
    WorkerSuspended,
)
from labtasker.timeutil import heartbeat_timeout_problem
from labtasker.wire import Task, TaskFetchResponse, TaskUpdateRequest

logger = logging.getLogger("labtasker.loop")

Executor = Callable[[TaskRun], Outcome]

_SERVER_UNAVAILABLE = frozenset({502, 503, 504})  # a report is sent again after these
STREAK_TASKS_KEPT = 20  # newest failed tasks watched while a crashed worker waits
IDLE_POLL_MAX_SECONDS = 5.0  # --idle-timeout: longest pause between two fetches
LOG_FORMAT = "[%(asctime)s.%(msecs)03d][%(levelname)-7s][%(name)s] - %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"

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


def default_worker_name() -> str:
    """``<host>-<pid>`` with characters outside ``[a-zA-Z0-9_-]`` replaced by ``-``."""
    return safe_name(f"{socket.gethostname()}-{os.getpid()}")[:100]


def ensure_logging(verbose: bool = False) -> None:
    """Give the ``labtasker`` logger a stderr handler if nobody configured one."""
    root = logging.getLogger("labtasker")
    if not any(getattr(h, "_labtasker_console", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
        handler._labtasker_console = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


@dataclass(frozen=True)
class LoopSession:
    """What :meth:`LoopRunner.setup` settled: the worker (``auto_worker``: created for this
    loop) and the heartbeat interval/timeout in seconds."""

    worker_id: str
    heartbeat_interval: float
    heartbeat_timeout: float
    auto_worker: bool


class LoopRunner:
    """Fetch-run-report loop. ``execute(run)`` runs one task and returns an :class:`Outcome`.

    Construct it from a :class:`LoopOptions` (``LoopRunner(options)``) or from the same
    fields as keyword arguments (``LoopRunner(eta_max="2h", grace_period=5)``), not both.
    ``prompt`` asks the questions after a failure (default: :class:`TerminalCountdown`).
    ``slot`` makes this loop one slot of several (:mod:`labtasker.client.loop.slots`): its
    own worker named after the slot with the slot's devices in its metadata, the slot's
    variables in every job's environment; it may run in any thread.
    Raises what :class:`LoopOptions` raises for invalid options, ``LabtaskerTypeError`` when
    both forms are given.
    """

    def __init__(
        self,
        options: LoopOptions | None = None,
        *,
        prompt: Prompt | None = None,
        slot: Slot | None = None,
        **kwargs: Any,
    ):
        if options is None:
            options = LoopOptions(**kwargs)
        elif kwargs:
            raise LabtaskerTypeError("LoopRunner: give LoopOptions or keyword arguments, not both")
        elif not isinstance(options, LoopOptions):
            raise LabtaskerTypeError("LoopRunner: options must be a LoopOptions")
        if slot is not None and options.worker_id is not None:
            raise LabtaskerValueError(
                "worker_id cannot be used with several slots (each slot is a worker of its own)"
            )
        self.options = options
        self.slot = slot
        self.prompt: Prompt = prompt if prompt is not None else TerminalCountdown()
        self.current: tuple[Task, float] | None = None  # running task, since (monotonic)
        self.session: LoopSession | None = None
        self.interrupts = Interrupts()
        self.tasks_run = 0
        self.tasks_succeeded = 0
        self.tasks_failed = 0
        self.tasks_interrupted = 0  # handed back because the loop was stopped by a signal
        self.ignored: set[str] = set()  # tasks the user chose to Ignore after a failure
        self.exit_requested = False  # "Exit" chosen after a failure
        # Tasks that failed here since this loop's last success (its worker's streak, as far
        # as this loop saw it): while one of them may still fail elsewhere, a crash of the
        # worker may be taken back (``_wait_for_blame``).
        self.streak_tasks: list[str] = []
        # The answer of the claim made with the last success report (one request for both,
        # ``api.report_task_and_claim_next``), used by the next turn of the loop instead of
        # a fetch; a claimed task left here when the loop ends is handed back.
        self.prefetched: TaskFetchResponse | None = None

    # ------------------------------------------------------------------ options, read
    @property
    def required_fields(self) -> list[str] | None:
        """The fields a task's args must have exactly (``None``: any task)."""
        fields = self.options.required_fields
        return list(fields) if fields is not None else None

    @property
    def extra_filter(self) -> dict[str, Any] | None:
        return self.options.extra_filter

    @property
    def cmd(self) -> str | list[str]:
        """The command recorded on fetched tasks (default ``sys.argv``)."""
        cmd = self.options.cmd if self.options.cmd is not None else sys.argv
        return cmd if isinstance(cmd, str) else list(cmd)

    @property
    def eta_max(self) -> str | None:
        return self.options.eta_max

    @property
    def grace_period(self) -> float:
        return self.options.grace_period

    @property
    def idle_timeout(self) -> float:
        return self.options.idle_timeout

    @property
    def create_worker_kwargs(self) -> dict[str, Any]:
        return dict(self.options.create_worker_kwargs)

    @property
    def worker_id(self) -> str | None:
        """The loop's worker (after :meth:`setup`; before: the one given, if any)."""
        return self.session.worker_id if self.session else self.options.worker_id

    @property
    def auto_worker(self) -> bool:
        return bool(self.session and self.session.auto_worker)

    @property
    def heartbeat_interval(self) -> float:
        return self.session.heartbeat_interval if self.session else 30.0

    @property
    def heartbeat_timeout(self) -> float | None:
        return self.session.heartbeat_timeout if self.session else self.options.heartbeat_timeout

    # ------------------------------------------------------------------ set-up
    def setup(self) -> LoopSession:
        """Read the config, check the queue credentials and resolve the worker.

        Returns (and keeps as ``self.session``) the settled :class:`LoopSession`. Raises
        ``LabtaskerRuntimeError`` (bad credentials), ``LabtaskerValueError`` (unknown
        worker; heartbeat timeout below 2 x the interval) or the config errors of
        ``get_client_config``.
        """
        cfg = get_client_config()
        interval = float(cfg.task.heartbeat_interval)
        timeout = self.options.heartbeat_timeout
        if timeout is None:
            timeout = 3 * interval
        else:
            problem = heartbeat_timeout_problem(
                timeout,
                interval,
                interval_name="the heartbeat interval",
                source="task.heartbeat_interval in client.toml",
            )
            if problem:
                raise LabtaskerValueError(problem)
        try:
            api.get_queue()
        except LabtaskerHTTPStatusError as exc:
            if exc.status_code == 401:
                from labtasker.client.config import invalid_credentials_advice

                raise LabtaskerRuntimeError(invalid_credentials_advice()) from None
            raise
        worker_id = self.options.worker_id
        if self.slot is None:
            worker_id = worker_id or os.environ.get("LABTASKER_WORKER_ID") or None
        auto = False
        if worker_id:
            if not api.ls_workers(worker_id=worker_id).found:
                # a bad --worker-id value: a usage error (exit 2), not a runtime one
                raise LabtaskerValueError(f"Worker {worker_id!r} not found in this queue.")
        else:
            kwargs = {"worker_name": default_worker_name(), **self.options.create_worker_kwargs}
            # the machine, so that the server can tell a failure on this machine from one
            # elsewhere when a loop is restarted here (a new worker each time)
            kwargs["metadata"] = {"host": socket.gethostname(), **(kwargs.get("metadata") or {})}
            if self.slot is not None:
                given = self.options.create_worker_kwargs.get("worker_name")
                label = self.slot.label
                kwargs["worker_name"] = (
                    f"{given}-{label}"[:100] if given else self.slot.worker_name()
                )
                kwargs["metadata"] = {**self.slot.metadata(), **(kwargs.get("metadata") or {})}
            worker_id = api.create_worker(**kwargs)
            auto = True
            logger.info("Created worker %s (%s).", worker_id, kwargs["worker_name"])
        self.session = LoopSession(worker_id, interval, timeout, auto)
        if self.slot is None:
            context.set_current_worker(worker_id)
        return self.session

    # ------------------------------------------------------------------ executors
    def command_executor(
        self, template: CommandTemplate, executable: str | None = None, **kwargs: Any
    ) -> CommandExecutor:
        """A :class:`CommandExecutor` for ``template`` bound to this loop's signals and grace
        period (``kwargs``: further :class:`CommandExecutor` arguments, e.g. ``echo``)."""
        return CommandExecutor(
            template,
            executable=executable,
            interrupts=self.interrupts,
            grace_period=self.options.grace_period,
            **kwargs,
        )

    def python_executor(
        self,
        func: Callable[..., Any],
        params: list,
        call_args: tuple,
        call_kwargs: dict[str, Any],
        pass_args_dict: bool,
    ) -> PythonExecutor:
        """A :class:`PythonExecutor` calling ``func`` in-process, bound to this loop."""
        return PythonExecutor(
            func,
            params,
            call_args,
            call_kwargs,
            pass_args_dict,
            interrupts=self.interrupts,
            grace_period=self.options.grace_period,
        )

    # ------------------------------------------------------------------ crashed worker
    def _wait_for_blame(self, worker_id: str) -> bool:
        """The server refused a fetch because this loop's worker is crashed or suspended.
        If it is crashed and the crash may still be taken back -- a task that failed here is
        pending or running again and another live worker of the queue may fail it too, which
        moves the blame to the task -- wait for that (polling every 2 s, doubling to 30 s).
        Returns True once the worker is active again (the loop goes on), False when it cannot
        come back (or on an interrupt or a server error): the loop stops as before."""
        intr = self.interrupts
        delay = 2.0
        announced = False
        while not intr.requested and self.streak_tasks:
            try:
                status = api.get_worker(worker_id).status
                if status == "active":
                    logger.info(
                        "Worker %s is active again: the blame for its failures moved "
                        "to the tasks. Going on.",
                        worker_id,
                    )
                    return True
                if status != "crashed":
                    return False
                # one search for the streak's tasks that may still fail elsewhere
                found = api.ls_tasks(
                    extra_filter={
                        "task_id": {"$in": self.streak_tasks},
                        "status": {"$in": ["pending", "running"]},
                    },
                    limit=STREAK_TASKS_KEPT,
                ).content
                suspects = [t.task_id for t in found]
                others = [
                    w
                    for w in api.ls_workers(status="active", gone=False, limit=2).content
                    if w.worker_id != worker_id
                ]
            except (LabtaskerError, OSError) as exc:
                logger.debug("Could not check worker %s: %s", worker_id, exc)
                return False
            if not suspects or not others:
                return False
            if not announced:
                logger.warning(
                    "Worker %s is crashed (%d task(s) in a row failed on it). Waiting: if "
                    "%s also fail%s on another worker, the task is to blame and this worker "
                    "is active again. Ctrl+C stops the loop.",
                    worker_id,
                    len(self.streak_tasks),
                    ", ".join(suspects),
                    "s" if len(suspects) == 1 else "",
                )
                announced = True
            intr.event.wait(delay)
            delay = min(30.0, delay * 2)
        return False

    # ------------------------------------------------------------------ main loop
    def run(self, execute: Executor, *, python_job: bool | None = None) -> int:
        """Run tasks until none match, the worker is suspended or the user interrupts.

        ``python_job`` (default: ``execute.in_process``) says the job runs in this thread.
        Returns the signal number that stopped the loop (0 if none). Raises ``LoopStopped``
        when going on cannot help (worker suspended/crashed; a fetch refused with HTTP
        400/401/404/422), at once instead of after the back-off of transient errors.
        """
        if self.session is None:
            raise LabtaskerRuntimeError("LoopRunner.run() before setup()")
        in_process = bool(
            getattr(execute, "in_process", False) if python_job is None else python_job
        )
        intr = self.interrupts
        stopped: LoopStopped | None = None  # set when going on cannot help
        try:
            with intr:
                stopped = self._loop(execute, in_process)
        finally:
            shutdown_watchdog()  # reap the job watchdog (kept if another job still runs)
        if self.exit_requested and self.auto_worker and self.worker_id:
            with contextlib.suppress(LabtaskerError):
                api.delete_worker(self.worker_id)
                logger.info("Deleted auto-created worker %s.", self.worker_id)
        elif self.auto_worker and self.worker_id:
            self._mark_worker_gone()
        logger.info(
            "Loop ended: %d task(s) run, %d succeeded, %d failed%s.",
            self.tasks_run,
            self.tasks_succeeded,
            self.tasks_failed,
            f", {self.tasks_interrupted} interrupted" if self.tasks_interrupted else "",
        )
        if stopped is not None and not intr.signum:
            raise stopped
        return intr.signum or 0

    def _loop(self, execute: Executor, in_process: bool) -> LoopStopped | None:
        """The fetch -> dispatch -> report cycle; returns why going on cannot help, if so."""
        try:
            return self._cycle(execute, in_process)
        finally:
            left, self.prefetched = self.prefetched, None
            if left is not None and left.task is not None:
                self._hand_back(left.task)  # claimed with the last report, not run

    def _claim_options(self) -> dict[str, Any]:
        """The keyword arguments of this loop's claims (``api.fetch_task``)."""
        session = self.session
        assert session is not None
        return {
            "worker_id": session.worker_id,
            "eta_max": self.options.eta_max,
            "heartbeat_timeout": session.heartbeat_timeout,
            "heartbeat_interval": session.heartbeat_interval,
            "start_heartbeat": True,
            "required_fields": self.required_fields,
            "extra_filter": self.options.extra_filter,
            "cmd": self.cmd,
        }

    def _cycle(self, execute: Executor, in_process: bool) -> LoopStopped | None:
        """The body of :meth:`_loop`."""
        session = self.session
        assert session is not None
        intr = self.interrupts
        failures = 0
        idle_since: float | None = None  # when fetches started to come back empty
        idle_delay = 0.5
        while not intr.requested:
            try:
                resp, self.prefetched = self.prefetched, None
                if resp is None:
                    resp = api.fetch_task(**self._claim_options())
                failures = 0
                if not resp.found or resp.task is None:
                    now = time.monotonic()
                    if idle_since is None:
                        idle_since = now
                        idle_delay = 0.5
                        if self.options.idle_timeout > 0:
                            logger.info(
                                "No pending task matches; waiting up to %gs for one.",
                                self.options.idle_timeout,
                            )
                    left = idle_since + self.options.idle_timeout - now
                    if left > 0:
                        intr.event.wait(min(idle_delay, left))
                        idle_delay = min(IDLE_POLL_MAX_SECONDS, idle_delay * 2)
                        continue
                    return self._log_nothing_left()
                idle_since = None
                if intr.requested:
                    self._hand_back(resp.task)  # interrupted while claiming: hand it back
                    return None
                if resp.task.task_id in self.ignored:
                    self._hand_back(resp.task)
                    logger.info("Only tasks ignored in this session are left; stopping.")
                    return None
                outcome = self._run_task(resp.task, execute, in_process)
                failures = 0  # the back-off of internal errors restarts after a task
                if outcome.stop_loop:
                    return None
            except WorkerSuspended as exc:
                if self._wait_for_blame(session.worker_id):
                    continue
                again = (
                    "A new `labtasker loop` starts with a new worker; to go on with this one, "
                    f"`labtasker worker report {session.worker_id} active` and run the loop "
                    f"with `--worker-id {session.worker_id}`."
                    if self.auto_worker
                    else f"Re-activate it with `labtasker worker report {session.worker_id} "
                    "active`."
                )
                stopped = LoopStopped(
                    f"The server refused to give worker {session.worker_id} work: {exc}. " + again
                )
                logger.debug("%s", stopped)  # raised by run(); the caller prints it once
                return stopped
            except LabtaskerHTTPStatusError as exc:
                if intr.requested:
                    return None
                if exc.status_code in PERMANENT_HTTP_ERRORS:
                    stopped = LoopStopped(f"Loop stopped: {exc}")
                    logger.debug("%s", stopped)  # raised by run(); the caller prints it once
                    return stopped
                failures += 1
                logger.error("Loop internal error (%d in a row): %s", failures, exc)
                _internal_error_handler(exc, failures)
            except (LabtaskerError, OSError) as exc:
                if intr.requested:
                    return None
                failures += 1
                logger.error("Loop internal error (%d in a row): %s", failures, exc)
                _internal_error_handler(exc, failures)
        return None

    def _log_nothing_left(self) -> LoopStopped | None:
        """ "All done", or why pending tasks do not match (a typo in a placeholder, a
        filter that excludes them; ``labtasker.client.mismatch``). Returns why the loop
        must stop with exit 1 instead of 0: it ran no task and a placeholder looks like a
        typo of the pending tasks' fields (a batch job that did nothing must not succeed)."""
        from labtasker.client.mismatch import explain_no_match

        why = None
        with contextlib.suppress(LabtaskerError):
            why = explain_no_match(self.required_fields, self.options.extra_filter)
        if why is None:
            logger.info(
                "Tasks with required fields %s are all done.",
                self.required_fields if self.required_fields else "(any)",
            )
        elif self.tasks_run:
            logger.info("No matching task is left. %s", why.text)
        elif why.likely_typo:
            return LoopStopped(f"Loop stopped without running a task: {why.text}")
        else:
            logger.warning("%s", why.text)
        return None

    def _mark_worker_gone(self) -> None:
        """The loop ends: mark its auto-created worker as gone (quick, best effort: a
        server that is down does not hold the exit up)."""
        if self.worker_id is None:
            return
        from labtasker.client.transport import LabtaskerClient, RetryPolicy

        try:
            quick = LabtaskerClient(
                api.get_httpx_client(),
                retry_policy=RetryPolicy(
                    attempts=2, initial=0.2, max_wait=0.5, jitter=0.1, budget=2.0
                ),
            )
            api.mark_worker_gone(self.worker_id, client=quick)
            logger.info("Worker %s marked as gone.", self.worker_id)
        except LabtaskerError as exc:
            logger.info("Could not mark worker %s as gone: %s", self.worker_id, exc)

    def _run_task(self, task: Task, execute: Executor, in_process: bool) -> Outcome:
        """Run one claimed task: run directory, heartbeat, executor, report, prompts."""
        intr = self.interrupts
        run_dir = make_run_dir(get_labtasker_root(), task)
        (run_dir / TASK_INFO).write_text(task.model_dump_json(indent=4), encoding="utf-8")
        run = TaskRun(
            task=task, worker_id=self.worker_id, run_dir=run_dir, extra_env=self.job_env()
        )
        self.tasks_run += 1
        self.current = (task, time.monotonic())
        file_handler = logging.FileHandler(run_dir / RUN_LOG, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
        file_handler.addFilter(self._log_filter())
        root_logger = logging.getLogger("labtasker")
        root_logger.addHandler(file_handler)

        def on_lost(exc: Exception) -> None:
            run.lost_reason = exc
            run.lost.set()
            if in_process and intr.installed and intr.in_python_job:
                import _thread

                intr.lost_callback_pending = True
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
        logger.info(
            "Task %s%s started; run dir %s",
            task.task_id,
            f" ({task.task_name})" if task.task_name else "",
            run_dir,
        )
        if in_process:
            context.set_current_run(run)
        try:
            heartbeat.start()
            outcome = execute(run)
            if run.lost.is_set() and outcome.status is not None and not run.finished():
                logger.warning(
                    "Task %s is no longer ours (%s); its result is not reported.",
                    task.task_id,
                    run.lost_reason,
                )
                outcome = dataclasses.replace(outcome, status=None)
            if outcome.status == "interrupted":
                heartbeat.stop()
                if not run.finished():
                    self._hand_back(task, outcome.summary)
                    self.tasks_interrupted += 1
                outcome = dataclasses.replace(outcome, status=None)
            failed = outcome.status == "failed" and not run.finished()
            if failed and self._ask_ignore(task):
                heartbeat.stop()
                if self._hand_back(task):
                    self.ignored.add(task.task_id)
                    outcome = dataclasses.replace(outcome, status=None)
            if outcome.status is not None:
                # a success is reported with the claim of the next task (one request), unless
                # the loop is about to stop; a failure alone (the worker's failure count and
                # the questions after it come first)
                claim_next = outcome.status == "success" and not (
                    outcome.stop_loop or intr.requested
                )
                try:
                    if self._deliver_report(
                        run, task, outcome.status, outcome.summary, claim_next=claim_next
                    ):
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
                outcome = dataclasses.replace(outcome, stop_loop=True)
            final = run.final_status()
            if final == "success":
                self.tasks_succeeded += 1
                self.streak_tasks.clear()
            elif final == "failed":
                self.tasks_failed += 1
                if task.task_id not in self.streak_tasks:
                    self.streak_tasks = [*self.streak_tasks, task.task_id][-STREAK_TASKS_KEPT:]
            logger.info("Task %s ended.", task.task_id)
            return outcome
        finally:
            heartbeat.stop()
            if in_process:
                context.set_current_run(None)
            self.current = None
            root_logger.removeHandler(file_handler)
            file_handler.close()

    def job_env(self) -> dict[str, str]:
        """Variables added to every job's environment by this loop (a slot's devices; none
        for a plain loop)."""
        return self.slot.env() if self.slot is not None else {}

    def _log_filter(self) -> Callable[[logging.LogRecord], bool]:
        """Which log records go to a run's ``run.log``: all of them for a plain loop; for a
        slot, those of its thread and of its task's heartbeat thread."""
        if self.slot is None:
            return lambda record: True
        mine = threading.current_thread().name
        task_id = self.current[0].task_id if self.current else "\0"
        return lambda record: (
            record.threadName == mine or (record.threadName or "").endswith(task_id)
        )

    def _deliver_report(
        self,
        run: TaskRun,
        task: Task,
        status: str,
        summary: dict[str, Any] | None,
        *,
        claim_next: bool = False,
    ) -> bool:
        """``run.finish(status, summary)``, repeated while the server cannot be reached or
        answers 502/503/504 once the transport's own retries are spent: a finished result
        is kept until the server is back (a restart, a long outage), however long that takes,
        unless a signal stops the loop. Waits 5 s, doubling up to 60 s, between tries, with
        a warning naming the task each time. Returns what ``run.finish`` returns; raises
        what it raises for any other error (``TaskNotOwned``, a 4xx). ``claim_next``: the
        report also claims the next task (``self.prefetched``)."""
        report = self._report_and_claim if claim_next else None
        delay = 5.0
        started = time.monotonic()
        while True:
            try:
                return run.finish(status, summary, report)
            except LabtaskerNetworkError as exc:
                if (
                    isinstance(exc, LabtaskerHTTPStatusError)
                    and exc.status_code not in _SERVER_UNAVAILABLE
                ):
                    raise
                if self.interrupts.requested:
                    logger.error(
                        "Task %s: its %s report was not delivered (%s) and the loop "
                        "is stopping; the job's output stays in %s.",
                        task.task_id,
                        status,
                        exc,
                        run.run_dir,
                    )
                    raise
                logger.warning(
                    "Task %s: its %s report cannot be delivered yet (%s); the "
                    "result is kept and sent again in %.0f s (waiting %.0f s so "
                    "far).",
                    task.task_id,
                    status,
                    exc,
                    delay,
                    time.monotonic() - started,
                )
                until = time.monotonic() + delay
                while time.monotonic() < until and not self.interrupts.requested:
                    time.sleep(0.2)
                delay = min(2 * delay, 60.0)

    def _report_and_claim(self, task_id: str, status: str, **report: Any) -> None:
        """A report that claims the next task in the same request; its answer is kept in
        ``self.prefetched`` (``None``: no claim was made, the next turn fetches)."""
        self.prefetched = api.report_task_and_claim_next(
            task_id, status, **report, claim=self._claim_options()
        )

    # ------------------------------------------------------------------ failure handling
    def _ask_ignore(self, task: Task) -> bool:
        """Decision 1 after a failure: 10 s countdown, Report (default, Enter, timeout) or
        Ignore (``i`` or Ctrl+C). True = Ignore. Without a terminal: Report at once. Not asked
        when the loop is being stopped by a signal."""
        if self.interrupts.signum not in (None, signal.SIGINT):
            return False
        choice = self.prompt(
            f"Task {task.task_id} failed. [R]eport (default) / [I]gnore = back to pending, "
            f"retries stay {task.retries}, worker not charged",
            {"r": "report", "i": "ignore"},
            default="report",
            on_ctrl_c="ignore",
            interrupts=self.interrupts,
        )
        return choice == "ignore"

    def _ask_exit(self) -> bool:
        """Decision 2 after a failure: 10 s countdown, Continue (default) or Exit (``e`` or
        Ctrl+C). True = Exit. Without a terminal: Continue at once."""
        if self.interrupts.requested:
            return False
        choice = self.prompt(
            "[C]ontinue with the next task (default) / [E]xit the loop",
            {"c": "continue", "e": "exit"},
            default="continue",
            on_ctrl_c="exit",
            interrupts=self.interrupts,
        )
        return choice == "exit"

    def _hand_back(self, task: Task, summary: dict[str, Any] | None = None) -> bool:
        """Hand ``task`` back: pending, ``retries`` as before this run, worker not charged,
        ``summary`` (if any) merged into the task's (the event log records it too). Used for
        "Ignore" after a failure and for runs stopped by a signal. Fenced by the run id, so it
        never touches a task that is no longer this run's. Returns whether the server
        accepted it (or the task was no longer ours)."""
        why = "ignored" if not summary else summary.get("labtasker_interrupted", "handed back")
        try:
            extra = {"summary": summary} if summary else {}
            api.update_tasks(
                [
                    TaskUpdateRequest(
                        task_id=task.task_id,
                        status="pending",
                        retries=task.retries,
                        run_id=task.run_id,
                        **extra,
                    )
                ]
            )
            logger.info(
                "Task %s %s: back to pending (retries %d).", task.task_id, why, task.retries
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
