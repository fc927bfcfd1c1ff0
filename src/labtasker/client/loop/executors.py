"""Executors: how one claimed task is run. Each is a callable ``executor(run) -> Outcome``.

* :class:`CommandExecutor` renders the loop's command template with the task's args and
  runs it as a :class:`~labtasker.client.job.JobProcess` (own process group, output tee,
  watchdog). Stopping it (loop interrupted, task taken away) uses the job's one escalation
  policy: the signal, then SIGKILL after the grace period (at once on a second signal).
* A job stopped because the loop was interrupted (SIGINT, SIGTERM, SIGHUP) is not a failure
  of its task: the outcome is ``"interrupted"`` and the runner hands the task back.
* :class:`PythonExecutor` calls an ``@labtasker.loop`` function in the runner's thread,
  with ``Required`` values bound from the task's args; a signal reaches it as
  ``KeyboardInterrupt``, a lost task as :class:`~labtasker.client.loop.interrupts.TaskLost`.

``in_process`` tells the runner whether the job runs in its thread (then the heartbeat may
interrupt the main thread when the task is taken away).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from labtasker.client.job import JobProcess, default_grace_period, describe_exit
from labtasker.client.loop.interrupts import Interrupts, TaskLost
from labtasker.client.loop.outcome import Outcome
from labtasker.client.loop.rundir import (
    FINISH_CLAIM,
    RUN_LOG,
    TaskRun,
    exception_summary,
    read_job_summary,
)
from labtasker.client.template import CommandTemplate
from labtasker.client.terminal import escape_control
from labtasker.exceptions import LabtaskerError, LabtaskerRuntimeError

logger = logging.getLogger("labtasker.loop")


def interrupted_by(signum: int) -> str:
    """``"interrupted by SIGTERM"`` for ``signum`` (what the summary and the log say)."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return f"interrupted by {name}"


def interrupted_summary(signum: int) -> dict[str, str]:
    """The summary recorded on a task handed back because its loop was interrupted."""
    return {"labtasker_interrupted": interrupted_by(signum)}


class CommandExecutor:
    """Run ``template`` (a :class:`~labtasker.client.template.CommandTemplate`) per task.

    ``executable`` is the shell of shell-mode templates (default ``/bin/sh``);
    ``grace_period`` (seconds) the SIGTERM -> SIGKILL delay; ``interrupts`` the loop's
    signal state; ``echo`` where the job's output is mirrored (default the runner's stdout,
    ``None``: nowhere; a slot passes its prefixing writer).
    """

    in_process = False

    def __init__(
        self,
        template: CommandTemplate,
        *,
        interrupts: Interrupts,
        grace_period: float,
        executable: str | None = None,
        echo: BinaryIO | None | bool = True,
    ) -> None:
        self.template = template
        self.executable = executable
        self.grace_period = grace_period
        self.interrupts = interrupts
        self.echo = echo

    def __call__(self, run: TaskRun) -> Outcome:
        intr = self.interrupts
        try:
            command = self.template.render(run.task.args)
        except LabtaskerError as exc:
            logger.error("Cannot build the command for task %s: %s", run.task.task_id, exc)
            return Outcome("failed", exception_summary(exc))
        shown = command if isinstance(command, str) else " ".join(map(repr, command))
        logger.info("Prepared to run interpolated command: %s", escape_control(shown))
        job = JobProcess(
            command,
            env=run.child_env(),
            log_path=run.run_dir / RUN_LOG,
            executable=self.executable if self.template.shell else None,
            grace_period=self.grace_period,
            echo=self.echo,
        )
        try:
            job.start()
        except LabtaskerError as exc:
            logger.error("%s", exc)
            return Outcome("failed", {**exception_summary(exc), "exit_code": None})
        code = self._supervise(job, run)
        end_of_job = getattr(self.echo, "end_of_job", None)
        if end_of_job is not None:
            end_of_job()
        tail = job.output_tail()
        if run.lost.is_set() and code != 0:
            logger.warning("Job of task %s stopped: task no longer ours.", run.task.task_id)
            return Outcome(None, stop_loop=intr.requested)
        if run.finished():
            return Outcome(None, stop_loop=intr.requested)
        (run.run_dir / FINISH_CLAIM).unlink(missing_ok=True)  # stale claim of a dead child
        job_summary = read_job_summary(run.run_dir)
        if intr.signum is not None:
            interrupt = KeyboardInterrupt(
                f"{interrupted_by(intr.signum)}; job {describe_exit(code)}"
            )
            return Outcome(
                "interrupted", interrupted_summary(intr.signum), interrupt, stop_loop=True
            )
        if code == 0:
            return Outcome("success", job_summary)
        message = f"Job process finished with non-zero exit code: {code}"
        if code is not None and code < 0:
            message = f"Job process {describe_exit(code)}"
        logger.error("Task %s failed: %s", run.task.task_id, message)
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
        return Outcome("failed", summary, LabtaskerRuntimeError(message))

    def _supervise(self, job: JobProcess, run: TaskRun) -> int:
        """Wait for the job; when the loop is interrupted or the task is lost, stop it (the
        loop's signal, or SIGTERM, then SIGKILL after the grace period or on a second
        signal: :meth:`JobProcess.terminate`)."""
        intr = self.interrupts
        while True:
            code = job.wait(timeout=0.1)
            if code is not None:
                return code
            if not (intr.requested or run.lost.is_set()):
                continue
            if job.terminate(intr.signum or signal.SIGTERM):
                logger.warning(
                    "Stopping job of task %s (%s); SIGKILL in %.0fs.",
                    run.task.task_id,
                    "interrupted" if intr.requested else "task no longer ours",
                    job.grace_period,
                )
            elif intr.count > 1:
                job.kill()


class PythonExecutor:
    """Call ``func`` in-process per task, with ``Required`` values bound from the task's
    args (``params`` from :func:`~labtasker.client.required.collect_required`), plus the
    positional/keyword arguments of the call; ``pass_args_dict`` passes the whole args dict
    first. ``grace_period`` applies to the processes the job starts with
    ``labtasker.run_with_subprocess``."""

    in_process = True

    def __init__(
        self,
        func: Callable[..., Any],
        params: list,
        call_args: tuple,
        call_kwargs: dict[str, Any],
        pass_args_dict: bool,
        *,
        interrupts: Interrupts,
        grace_period: float,
    ) -> None:
        self.func = func
        self.params = params
        self.call_args = call_args
        self.call_kwargs = call_kwargs
        self.pass_args_dict = pass_args_dict
        self.interrupts = interrupts
        self.grace_period = grace_period

    def __call__(self, run: TaskRun) -> Outcome:
        from labtasker.client.required import bind_call

        intr = self.interrupts
        func = self.func
        try:
            pos, kw = bind_call(
                func,
                self.params,
                run.task.args,
                self.call_args,
                self.call_kwargs,
                self.pass_args_dict,
            )
        except LabtaskerError as exc:
            logger.error(
                "Cannot bind task %s to %s: %s",
                run.task.task_id,
                getattr(func, "__name__", func),
                exc,
            )
            return Outcome("failed", exception_summary(exc), exc)
        with (
            job_environment(run),
            tee_std_streams(run.run_dir / RUN_LOG),
            default_grace_period(self.grace_period),
        ):
            intr.in_python_job = True
            try:
                func(*pos, **kw)
            except TaskLost:
                intr.in_python_job = False
                logger.warning("Job of task %s interrupted: task no longer ours.", run.task.task_id)
                return Outcome(None)
            except KeyboardInterrupt as exc:
                intr.in_python_job = False
                logger.warning("KeyboardInterrupt detected in task %s.", run.task.task_id)
                intr.signum = intr.signum or signal.SIGINT
                return Outcome("interrupted", interrupted_summary(intr.signum), exc, stop_loop=True)
            except Exception as exc:  # noqa: BLE001 - any job error is a task failure
                intr.in_python_job = False
                logger.error("Task %s failed: %s: %s", run.task.task_id, type(exc).__name__, exc)
                traceback.print_exc()
                return Outcome("failed", exception_summary(exc), exc)
            finally:
                intr.in_python_job = False
        if run.finished():
            return Outcome(None)
        return Outcome("success", {})


@contextlib.contextmanager
def job_environment(run: TaskRun) -> Iterator[None]:
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
def tee_std_streams(log_path: Path) -> Iterator[None]:
    """Mirror ``sys.stdout``/``sys.stderr`` of an in-process job into ``run.log``."""
    log = open(log_path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
    old_out, old_err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(old_out, log), _Tee(old_err, log)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = old_out, old_err
        log.close()
