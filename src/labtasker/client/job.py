"""Run one job as a child process that labtasker owns completely, so that it can always be stopped.

* The child starts in its **own session and process group** (``start_new_session=True``), so
  a Ctrl+C in the terminal reaches only the runner, which then decides what to do, and
  :meth:`JobProcess.stop` can signal the whole tree the job created (data-loader workers...).
* argv mode runs the list directly (no shell); shell mode runs ``<executable> -c <string>``
  with ``/bin/sh`` as default executable.
* stdin is ``/dev/null`` (a job that reads stdin gets EOF instead of hanging, as it did under 1.0.1).
* stdout and stderr are merged into one pipe; a reader thread copies every chunk to the
  terminal (``echo``) and to ``run.log`` (ANSI colour codes stripped there) and keeps the last
  ``tail_bytes`` for the failure summary. ``PYTHONUNBUFFERED=1`` is set in the child so Python
  jobs stream their output line by line.
* After the job's main process exits, any process it left behind in its group gets SIGTERM,
  then SIGKILL after a short grace period, so nothing keeps GPU memory or the pipe alive.

**When the runner itself dies** (``kill -9`` of the loop, OOM killer; Linux only):

* the job's whole process group (the job, ``bash -c 'sleep 600 & sleep 600'``, data-loader
  workers...) is handled by the **job watchdog** below; only when no watchdog can run does
  the job's main process get ``prctl(PR_SET_PDEATHSIG)`` (SIGKILL when the runner dies)
  instead: that needs a ``preexec_fn``, which forces ``subprocess`` off its ``vfork`` fast
  path (~3-10 ms more per job in a big runner process);
* the **job watchdog** is one small process per runner process, started lazily by the first :meth:`JobProcess.start` and reused by every later job. It holds
  the read end of a pipe whose write end only the runner holds; the runner writes
  ``+ <pgid> <grace>`` when a job starts and ``- <pgid>`` when its group is cleaned up. The
  watchdog waits in ``poll()`` for the hang-up only, so a message does not even wake it up;
  it drains the pipe (1 MiB) once a second and at EOF. When the pipe reaches EOF
  -- the runner exited or died, however -- the watchdog sends SIGTERM to every registered
  group, SIGKILL after that job's grace period (seconds) to what is left, and exits. A normal runner exit closes the pipe with no group registered: the watchdog exits
  at once (:func:`shutdown_watchdog` also reaps it).

  Why a ``python -I -S -c <40 lines>`` child and not ``os.fork()``: the runner is
  multi-threaded when a job starts (heartbeat and output threads, maybe the user's threads
  in ``@labtasker.loop``); forking such a process is only safe if the child never touches a
  lock another thread might hold, and a forked child keeps the whole parent address space
  (copy-on-write: every page the runner later writes is duplicated for the watchdog's
  lifetime -- a lot with torch imported). ``subprocess`` forks and execs in C (no Python
  code runs in the child), which is safe from any thread; the cost is one interpreter start (~10-30 ms, ~9 MB RSS) **per
  loop**, not per task; per task it is two small writes to a pipe (~7 µs) and no context
  switch, plus one wake-up of the watchdog per second. The watchdog runs in its own
  session with ``cwd=/`` and ``/dev/null`` for stdin/stdout/stderr (it never holds the
  loop's output pipe or terminal), ignores SIGINT/SIGTERM/SIGHUP (a Ctrl+C or ``kill`` of the
  loop's process group must not take it away with the loop), and needs no PDEATHSIG: it only
  waits for EOF. Forked children of the runner close their copy of the write end
  (``os.register_at_fork``), so a ``fork``-ed worker of a Python job cannot delay the EOF.
  If the watchdog disappears, the next registration notices (``EPIPE``) and starts a new one
  with the groups still running.

  ``PR_SET_CHILD_SUBREAPER`` is not used: it only re-parents orphans to a live ancestor and
  does nothing once that ancestor is killed. Not covered: a process that leaves the job's
  process group on purpose (``setsid``, ``setpgid``), and the microseconds between the job's
  ``fork`` and its registration. On other platforms
  the runner keeps the previous behaviour (no PDEATHSIG, no watchdog).

Exit codes follow ``subprocess``: ``0`` success, ``n > 0`` the job's code, ``-N`` killed by
signal ``N``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from labtasker.exceptions import LabtaskerRuntimeError, LabtaskerTypeError, LabtaskerValueError

logger = logging.getLogger("labtasker.job")


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

DEFAULT_GRACE_SECONDS = 10.0  # SIGTERM -> SIGKILL delay of a job when none is given
_default_grace = DEFAULT_GRACE_SECONDS  # changed by default_grace_period()
# what is left of a job's group once its main process exited gets at most this long
LEFTOVER_GRACE_SECONDS = 2.0


def _check_grace(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LabtaskerTypeError(f"grace_period must be a number of seconds, got {value!r}")
    if not 0 <= value < float("inf"):
        raise LabtaskerValueError(f"grace_period must be a finite number >= 0, got {value!r}")
    return float(value)


@contextlib.contextmanager
def default_grace_period(seconds: float) -> Iterator[None]:
    """Within the ``with`` block, jobs created without ``grace_period`` (e.g. by
    :func:`run_with_subprocess` in a ``@labtasker.loop`` job) get ``seconds`` (finite, >= 0)
    as SIGTERM -> SIGKILL delay. Raises ``LabtaskerTypeError``/``LabtaskerValueError``."""
    global _default_grace
    seconds = _check_grace(seconds)
    old, _default_grace = _default_grace, seconds
    try:
        yield
    finally:
        _default_grace = old


# Source of the watchdog process (see the module docstring), run as
# ``python -I -S -c _WATCHDOG_SOURCE <read fd>``. Protocol, one ASCII line per message:
# ``+ <pgid> <grace seconds>`` (a job group started), ``- <pgid>`` (it was cleaned up).
_WATCHDOG_MARK = "labtasker-job-watchdog"
_WATCHDOG_SOURCE = f"""# {_WATCHDOG_MARK}
import os, select, signal, sys, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
fd = int(sys.argv[1])
os.set_blocking(fd, False)
hangup = select.poll()
hangup.register(fd, 0)  # POLLHUP only: a message does not wake the watchdog up
groups = {{}}
buf = b""

def drain():
    global buf
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            eof = False
            break
        except OSError:
            chunk = b""
        if not chunk:
            eof = True
            break
        buf += chunk
    *lines, buf = buf.split(b"\\n")
    for line in lines:
        parts = line.split()
        try:
            if parts[0] == b"+":
                groups[int(parts[1])] = float(parts[2])
            elif parts[0] == b"-":
                groups.pop(int(parts[1]), None)
        except (IndexError, ValueError):
            pass
    return eof

while not drain():
    hangup.poll(1000)  # wakes up at EOF, else drains the pipe once a second

def signal_all(sig):
    alive = False
    for pgid in list(groups):
        try:
            os.killpg(pgid, sig)
            alive = True
        except OSError:
            groups.pop(pgid)
    return alive

if signal_all(signal.SIGTERM):
    deadline = time.monotonic() + max(groups.values(), default=0.0)
    while time.monotonic() < deadline and signal_all(0):
        time.sleep(0.05)
    signal_all(signal.SIGKILL)
"""


class _Watchdog:
    """The runner side of the job watchdog (module docstring): spawns the process on first
    use, registers/unregisters job process groups, respawns it if it vanished."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._wfd: int | None = None
        self._groups: dict[int, float] = {}

    @property
    def pid(self) -> int | None:
        """Process id of the watchdog, or ``None`` if none is running."""
        return self._proc.pid if self._proc is not None else None

    def register(self, pgid: int, grace_seconds: float) -> None:
        """Watch job group ``pgid``; ``grace_seconds`` is its SIGTERM -> SIGKILL delay if the
        runner dies. Never raises: without a watchdog the job just runs unprotected."""
        with self._lock:
            self._groups[pgid] = grace_seconds
            try:
                self._send(f"+ {pgid} {grace_seconds:.3f}\n")
            except Exception as exc:  # noqa: BLE001 - e.g. EMFILE: the job runs on regardless
                logger.warning("Job watchdog unavailable: %s", exc)

    def ensure(self) -> bool:
        """Start the watchdog if it is not running; True when it runs (a job started now
        will be covered once registered)."""
        with self._lock:
            if self._wfd is None:
                self._send("", spawn=True)
            return self._wfd is not None

    def unregister(self, pgid: int) -> None:
        """Stop watching ``pgid`` (its group has been cleaned up)."""
        with self._lock:
            if self._groups.pop(pgid, None) is not None and self._wfd is not None:
                with contextlib.suppress(Exception):
                    self._send(f"- {pgid}\n", spawn=False)

    def shutdown(self, timeout: float = 1.0) -> bool:
        """If no job group is registered: close the pipe (the watchdog exits) and reap the
        process, waiting up to ``timeout`` seconds; True. Else do nothing; False."""
        with self._lock:
            if self._groups:
                return False
            proc, self._proc = self._proc, None
            self._close()
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        return True

    # -------------------------------------------------------------- internals (lock held)
    def _send(self, message: str, spawn: bool = True) -> None:
        for _ in range(2):
            if self._wfd is None:
                if not spawn or not self._spawn():
                    return
                message = "".join(f"+ {g} {t:.3f}\n" for g, t in self._groups.items())
            try:
                self._write(message.encode())
                return
            except BlockingIOError:
                logger.warning("Job watchdog is not reading its pipe; message dropped.")
                return
            except OSError:  # EPIPE: the watchdog is gone, start a new one
                self._close()
                if self._proc is not None:
                    with contextlib.suppress(OSError):
                        self._proc.poll()
                    self._proc = None

    def _write(self, data: bytes) -> None:
        assert self._wfd is not None
        try:
            os.write(self._wfd, data)  # a few bytes: all or nothing (< PIPE_BUF)
        except BlockingIOError:
            # pipe full: the watchdog drains it once a second; wait for that, once
            select.select([], [self._wfd], [], 3.0)
            os.write(self._wfd, data)

    def _spawn(self) -> bool:
        if not sys.executable:
            logger.warning("No Python executable known: job watchdog not started.")
            return False
        rfd, wfd = os.pipe()  # both close-on-exec: no job ever inherits them
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG_SOURCE, str(rfd)],
                pass_fds=(rfd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,
            )
        except OSError as exc:
            os.close(wfd)
            logger.warning("Could not start the job watchdog: %s", exc)
            return False
        finally:
            os.close(rfd)
        os.set_blocking(wfd, False)  # a stuck watchdog never blocks the runner for long
        with contextlib.suppress(OSError, AttributeError):  # room for ~30k messages a second
            import fcntl

            fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, 1 << 20)
        self._wfd = wfd
        return True

    def _close(self) -> None:
        if self._wfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._wfd)
            self._wfd = None

    def _after_fork_in_child(self) -> None:
        # a forked child must not keep the loop's write end open (the EOF would never come)
        # nor write to the parent's watchdog; it starts its own if it runs jobs
        self._lock = threading.Lock()
        self._close()
        self._proc = None
        self._groups = {}


_WATCHDOG: _Watchdog | None = None
if sys.platform.startswith("linux"):
    _WATCHDOG = _Watchdog()
    os.register_at_fork(after_in_child=_WATCHDOG._after_fork_in_child)


def watchdog_pid() -> int | None:
    """Process id of this process's job watchdog, or ``None`` (not started yet, or not on
    Linux)."""
    return _WATCHDOG.pid if _WATCHDOG is not None else None


def shutdown_watchdog(timeout: float = 1.0) -> bool:
    """End this process's job watchdog unless a job is still running (registered).

    Waits up to ``timeout`` seconds for the watchdog to exit. Returns False (and does nothing)
    while a :class:`JobProcess` of this process has not finished, else True. Called by the
    loop runner when it ends; harmless to call more than once; a later job starts a new
    watchdog. (When the process simply exits, the watchdog exits by itself.)
    """
    return _WATCHDOG.shutdown(timeout) if _WATCHDOG is not None else True


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
    stdout; ``None`` disables mirroring). ``grace_period`` (seconds, >= 0; default 10 or the
    value of :func:`default_grace_period`) is the SIGTERM -> SIGKILL delay of :meth:`stop`
    and of the job watchdog if the runner dies (module docstring). Raises
    ``LabtaskerRuntimeError``
    for an empty argv list, ``LabtaskerTypeError``/``LabtaskerValueError`` for a
    ``grace_period`` that is not a finite number >= 0.
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
        grace_period: float | None = None,
    ):
        grace_period = _default_grace if grace_period is None else _check_grace(grace_period)
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
        self.grace_period = grace_period
        self._watched = False
        self._kill_at: float | None = None  # SIGKILL due (monotonic) once a stop started
        self._killed = False
        self.proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._tail = bytearray()
        self._lock = threading.Lock()
        self.returncode: int | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> JobProcess:
        """Launch the child (and, on Linux, register its process group with the job
        watchdog, starting the watchdog on first use). Returns ``self``. Raises
        ``LabtaskerRuntimeError`` if it cannot be started (program not found, not
        executable...)."""
        # With the watchdog running, no PDEATHSIG: a ``preexec_fn`` forces subprocess off its
        # vfork fast path, which costs ~3-10 ms per job in a big runner process.
        watched = _WATCHDOG is not None and _WATCHDOG.ensure()
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
                preexec_fn=_kill_with_parent if _PRCTL is not None and not watched else None,
            )
        except OSError as exc:
            raise LabtaskerRuntimeError(f"Could not start job {self.argv[0]!r}: {exc}") from exc
        if _WATCHDOG is not None:
            _WATCHDOG.register(self.proc.pid, self.grace_period)
            self._watched = True
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
        ``None`` if still running. While the job is being stopped (:meth:`terminate`), sends
        SIGKILL when its grace period is over."""
        assert self.proc is not None, "job not started"
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if self._kill_at is not None and now >= self._kill_at:
                self.kill()
            slice_end = end
            if self._kill_at is not None and not self._killed:
                slice_end = self._kill_at if end is None else min(end, self._kill_at)
            try:
                code = self.proc.wait(
                    timeout=None if slice_end is None else max(0.0, slice_end - now)
                )
            except subprocess.TimeoutExpired:
                if end is not None and time.monotonic() >= end:
                    return None
                continue
            self._finish(code)
            return self.returncode

    def terminate(self, sig: int = signal.SIGTERM, grace_seconds: float | None = None) -> bool:
        """Start stopping the job: send ``sig`` (default SIGTERM; a loop forwards the SIGINT
        it got) to its whole process group; :meth:`wait` sends SIGKILL once ``grace_seconds``
        (default: the job's ``grace_period``) have passed. This is the one escalation
        policy of a job (the loop, :meth:`stop` and :func:`run_with_subprocess` all use it;
        the watchdog applies the same grace period when the loop dies). Returns True when
        this call started the stop, False when it was already stopping or has exited."""
        assert self.proc is not None, "job not started"
        if self._kill_at is not None or self.proc.poll() is not None:
            return False
        grace = self.grace_period if grace_seconds is None else grace_seconds
        self._kill_at = time.monotonic() + max(0.0, grace)
        self._signal_group(sig)
        return True

    def kill(self) -> None:
        """SIGKILL the job's whole process group now (e.g. on a second Ctrl+C)."""
        assert self.proc is not None, "job not started"
        self._kill_at = time.monotonic()
        if not self._killed and self.proc.poll() is None:
            self._killed = True
            self._signal_group(signal.SIGKILL)

    def stop(self, grace_seconds: float | None = None) -> int:
        """Stop the job: :meth:`terminate` (SIGTERM, SIGKILL after ``grace_seconds``, default
        the job's ``grace_period``) and reap it. An exception while waiting
        (KeyboardInterrupt) sends SIGKILL at once and propagates. Returns the exit code
        (negative = killed by that signal). Idempotent."""
        assert self.proc is not None, "job not started"
        self.terminate(grace_seconds=grace_seconds)
        try:
            code = self.wait()
        except BaseException:
            self.kill()
            self.proc.wait()  # SIGKILL: returns at once
            self._finish(self.proc.returncode)
            raise
        assert code is not None
        return code

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
        if self._group_alive():  # leftovers: the same SIGTERM -> SIGKILL, with a short grace
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + LEFTOVER_GRACE_SECONDS
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
        if self._watched and _WATCHDOG is not None:
            self._watched = False
            _WATCHDOG.unregister(self.proc.pid)  # type: ignore[union-attr]


def run_with_subprocess(
    cmd: list[str] | str, shell_exec: str | None = None, use_shell: bool = False
) -> int:
    """Run ``cmd`` to completion with output mirrored to stdout; returns the exit code.

    Compatibility helper of labtasker 1.0.1's Python API. A ``str`` command (or
    ``use_shell=True``) runs through ``shell_exec`` (default ``/bin/sh``) ``-c``. If the
    wait is interrupted (KeyboardInterrupt: Ctrl+C or SIGTERM of the loop, or the loop's
    task was taken away), the command's process group is stopped (SIGTERM, SIGKILL after the
    grace period: ``grace_period`` of ``@labtasker.loop``, default 10 s) and the exception
    propagates. Raises ``LabtaskerRuntimeError`` if the command cannot be started.
    """
    if use_shell and not isinstance(cmd, str):
        import shlex

        cmd = shlex.join(cmd)
    job = JobProcess(cmd, env=dict(os.environ), executable=shell_exec)
    try:
        job.start()  # inside the try: an interrupt right after the launch still stops it
        code = None
        while code is None:  # short slices: the loop's _thread.interrupt_main() gets through
            code = job.wait(timeout=0.1)
    except BaseException:
        if job.proc is not None:
            job.stop()
        raise
    return code


def run_with_pty(
    cmd: list[str] | str, shell_exec: str | None = None, use_shell: bool = False
) -> int:
    """Same as :func:`run_with_subprocess` (labtasker runs jobs on pipes, not a PTY)."""
    return run_with_subprocess(cmd, shell_exec=shell_exec, use_shell=use_shell)
