"""Run one job as a child process that labtasker owns completely (spec §5.8, lesson 3).

* The child starts in its **own session and process group** (``start_new_session=True``), so
  a Ctrl+C in the terminal reaches only the runner, which then decides what to do, and
  :meth:`JobProcess.stop` can signal the whole tree the job created (data-loader workers...).
* argv mode runs the list directly (no shell); shell mode runs ``<executable> -c <string>``
  with ``/bin/sh`` as default executable.
* stdin is ``/dev/null`` (a job that reads stdin gets EOF instead of hanging; bug 26).
* stdout and stderr are merged into one pipe; a reader thread copies every chunk to the
  terminal (``echo``) and to ``run.log`` (ANSI colour codes stripped there) and keeps the last
  ``tail_bytes`` for the failure summary. ``PYTHONUNBUFFERED=1`` is set in the child so Python
  jobs stream their output line by line.
* After the job's main process exits, any process it left behind in its group gets SIGTERM,
  then SIGKILL after a short grace period, so nothing keeps GPU memory or the pipe alive.
* On Linux the job's main process also gets SIGKILL if the runner itself dies without
  cleaning up (``kill -9`` of the loop): ``prctl(PR_SET_PDEATHSIG)``. Processes the job
  started itself are not covered by that signal.

Exit codes follow ``subprocess``: ``0`` success, ``n > 0`` the job's code, ``-N`` killed by
signal ``N``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO

from labtasker.exceptions import LabtaskerRuntimeError


def _kill_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """``preexec_fn``: ask Linux to SIGKILL this child when the runner thread dies."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # resolved before any fork
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


def describe_exit(code: int | None) -> str:
    """Human-readable exit status: ``exit code 3`` / ``killed by signal SIGTERM (-15)``."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by signal {name} (exit code {code})"
    return f"exit code {code}"


def _stdout_buffer() -> BinaryIO | None:
    stream = sys.stdout
    return getattr(stream, "buffer", None)


class JobProcess:
    """A job child process with output tee and group-wide stop.

    ``command`` is a ``list[str]`` (argv mode) or a ``str`` (shell mode, run by
    ``executable -c``). ``env`` is the complete child environment. ``log_path`` receives the
    merged output (appended). ``echo`` is where output is mirrored (default: the runner's
    stdout; ``None`` disables mirroring).
    """

    def __init__(
        self,
        command: list[str] | str,
        *,
        env: dict[str, str],
        log_path: Path | None = None,
        executable: str | None = None,
        cwd: str | os.PathLike | None = None,
        echo: BinaryIO | None | bool = True,
        tail_bytes: int = 2048,
    ):
        if isinstance(command, str):
            self.argv = [executable or "/bin/sh", "-c", command]
        else:
            if not command:
                raise LabtaskerRuntimeError("Command cannot be empty")
            self.argv = list(command)
        self.env = {**env, "PYTHONUNBUFFERED": "1"}
        self.log_path = Path(log_path) if log_path else None
        self.cwd = cwd
        self.echo = _stdout_buffer() if echo is True else (echo or None)
        self.tail_bytes = tail_bytes
        self.proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._tail = bytearray()
        self._lock = threading.Lock()
        self.returncode: int | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> JobProcess:
        """Launch the child. Raises ``LabtaskerRuntimeError`` if it cannot be started
        (program not found, not executable...)."""
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                close_fds=True,
                preexec_fn=_kill_with_parent if _PRCTL is not None else None,
            )
        except OSError as exc:
            raise LabtaskerRuntimeError(f"Could not start job {self.argv[0]!r}: {exc}") from exc
        self._reader = threading.Thread(target=self._pump, name="labtasker-job-output", daemon=True)
        self._reader.start()
        return self

    @property
    def pid(self) -> int | None:
        """Process id (= process group id) of the job, or ``None`` before :meth:`start`."""
        return self.proc.pid if self.proc else None

    def poll(self) -> int | None:
        """Exit code if the job's main process has ended (then the group is cleaned up)."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is not None:
            self._finish(code)
        return self.returncode if code is not None else None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to ``timeout`` seconds (``None``: forever) for the job; exit code or
        ``None`` if still running."""
        assert self.proc is not None, "job not started"
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._finish(code)
        return self.returncode

    def stop(self, grace_seconds: float = 10.0) -> int:
        """Stop the job: SIGTERM to its whole process group, SIGKILL after ``grace_seconds``,
        reap it. Returns the exit code (negative = killed by that signal). Idempotent."""
        assert self.proc is not None, "job not started"
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=max(0.0, grace_seconds))
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait()
        self._finish(self.proc.returncode)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> bool:
        """Send ``sig`` to the job's whole process group; False if it is already gone."""
        assert self.proc is not None, "job not started"
        if self.proc.poll() is not None:
            return False
        return self._signal_group(sig)

    # ------------------------------------------------------------------ output
    def output_tail(self) -> str:
        """The last ``tail_bytes`` of merged output, decoded (invalid UTF-8 replaced)."""
        with self._lock:
            data = bytes(self._tail[-self.tail_bytes :])
        text = _ANSI.sub(b"", data).decode("utf-8", errors="replace")
        return text.lstrip("\ufffd")

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        try:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                with self._lock:
                    self._tail += chunk
                    if len(self._tail) > 4 * self.tail_bytes:
                        del self._tail[: -self.tail_bytes]
                if self.echo is not None:
                    try:
                        self.echo.write(chunk)
                        self.echo.flush()
                    except (OSError, ValueError):
                        self.echo = None  # terminal gone: keep logging to the file
                if log is not None:
                    log.write(_ANSI.sub(b"", chunk))
                    log.flush()
        finally:
            if log is not None:
                log.close()

    # ------------------------------------------------------------------ internals
    def _signal_group(self, sig: int) -> bool:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _group_alive(self) -> bool:
        return self._signal_group(0)

    def _finish(self, code: int) -> None:
        """After the main process ended: clean up leftovers in its group, drain output."""
        if self.returncode is not None:
            return
        self.returncode = code
        if self._group_alive():
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + 2.0
            while self._group_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._group_alive():
                self._signal_group(signal.SIGKILL)
        if self._reader is not None:
            # a process that left the group (setsid) may still hold the pipe: do not hang
            self._reader.join(timeout=5.0)
        if (
            self.proc is not None
            and self.proc.stdout is not None
            and not (self._reader and self._reader.is_alive())
        ):
            self.proc.stdout.close()


def run_with_subprocess(
    cmd: list[str] | str, shell_exec: str | None = None, use_shell: bool = False
) -> int:
    """Run ``cmd`` to completion with output mirrored to stdout; returns the exit code.

    Compatibility helper of labtasker 1.0.1's Python API. A ``str`` command (or
    ``use_shell=True``) runs through ``shell_exec`` (default ``/bin/sh``) ``-c``.
    """
    if use_shell and not isinstance(cmd, str):
        import shlex

        cmd = shlex.join(cmd)
    job = JobProcess(cmd, env=dict(os.environ), executable=shell_exec).start()
    code = job.wait()
    assert code is not None
    return code


def run_with_pty(
    cmd: list[str] | str, shell_exec: str | None = None, use_shell: bool = False
) -> int:
    """Same as :func:`run_with_subprocess` (labtasker runs jobs on pipes, not a PTY)."""
    return run_with_subprocess(cmd, shell_exec=shell_exec, use_shell=use_shell)
