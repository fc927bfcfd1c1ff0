"""One supervisor for the slots of a loop (``labtasker loop --gpus ...`` / ``--parallel N``).

* Every slot is a :class:`~labtasker.client.loop.runner.LoopRunner` of its own (own worker,
  own fetches, own run directories), run in a thread of this process; jobs are child
  processes, so this process's one job watchdog covers every slot when the loop is killed
  (``kill -9``).
* Signals arrive here (main thread): SIGINT/SIGTERM/SIGHUP are passed to every slot, whose
  running job gets the signal, SIGKILL after the grace period (at once on a second signal),
  and whose task goes back to pending.
* A slot that cannot go on (its worker crashed or suspended, the fetch refused for good,
  repeated internal errors) stops alone with one line saying why; the others go on.
* Exit status when every slot has stopped: 128+N if stopped by signal N, else 1 if any slot
  stopped for a reason, else 0 (all ran out of matching tasks).
* Output: each job's lines and each slot's log lines are prefixed with ``[<slot>]``; on a
  terminal a status line at the bottom shows every slot (task, its args, how long it has
  run, or idle/stopped).

:func:`run_slot_processes` is the same for ``@labtasker.loop(gpus=..., parallel=...)``, with one
fresh process per slot.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from labtasker.client.loop.interrupts import HANDLED_SIGNALS
from labtasker.client.loop.options import LoopOptions
from labtasker.client.loop.prompt import no_prompt
from labtasker.client.loop.runner import LOG_DATEFMT, LOG_FORMAT, LoopRunner
from labtasker.client.loop.slots import SLOT_PROCESS_PREFIX, Slot
from labtasker.client.terminal import is_tty
from labtasker.exceptions import LabtaskerError, LoopStopped

if TYPE_CHECKING:
    from multiprocessing.context import SpawnProcess

logger = logging.getLogger("labtasker.loop")

STATUS_REFRESH_SECONDS = 1.0


def _escape(text: str) -> str:
    """Control characters of user data shown as ``\\xNN`` (a job name cannot move the
    cursor or clear the status line)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


class SlotConsole:
    """Writes prefixed lines from every slot and, when ``live``, keeps one status line at the
    bottom of ``status_stream`` (a terminal). Thread-safe."""

    def __init__(self, out: TextIO, err: TextIO, *, live: bool) -> None:
        self.out = out
        self.err = err
        self.live = live
        self._lock = threading.Lock()
        self._status = ""

    def line(self, label: str, text: str, *, stream: TextIO | None = None) -> None:
        """Write ``[label] text`` as one line (to ``out`` unless ``stream`` is given)."""
        target = stream or self.out
        with self._lock:
            with contextlib.suppress(OSError, ValueError):
                if self.live and self._status:
                    self.err.write("\r\x1b[2K")
                    self.err.flush()
                target.write(f"[{label}] {text}\n")
                target.flush()
                if self.live and self._status:
                    self.err.write(self._status)
                    self.err.flush()

    def status(self, text: str) -> None:
        """Replace the status line (``live`` consoles only)."""
        if not self.live:
            return
        width = shutil.get_terminal_size((100, 24)).columns
        text = text[: max(10, width - 1)]
        with self._lock:
            self._status = text
            with contextlib.suppress(OSError, ValueError):
                self.err.write("\r\x1b[2K" + text)
                self.err.flush()

    def close(self) -> None:
        """Remove the status line."""
        with self._lock:
            if self.live and self._status:
                with contextlib.suppress(OSError, ValueError):
                    self.err.write("\r\x1b[2K")
                    self.err.flush()
            self._status = ""


class SlotOutput:
    """Binary stream for a job's output (``JobProcess(echo=...)``): complete lines go to the
    console with the slot's prefix; a partial line waits for its end (or the job's end)."""

    MAX_PENDING = 8192

    def __init__(self, console: SlotConsole, label: str) -> None:
        self.console = console
        self.label = label
        self._pending = b""

    def write(self, data: bytes) -> int:
        buf = self._pending + data
        *lines, self._pending = buf.split(b"\n")
        if len(self._pending) > self.MAX_PENDING:
            lines.append(self._pending)
            self._pending = b""
        for raw in lines:
            text = raw.decode("utf-8", errors="replace").rstrip("\r")
            self.console.line(self.label, text.rsplit("\r", 1)[-1])
        return len(data)

    def flush(self) -> None:
        """Nothing to do: lines are written when complete."""

    def end_of_job(self) -> None:
        """Write what is left of a last line without newline."""
        if self._pending:
            rest, self._pending = self._pending, b""
            self.console.line(self.label, rest.decode("utf-8", errors="replace"))


class _SlotLogHandler(logging.Handler):
    """Log records of the slot threads (and their heartbeat threads), prefixed with the slot."""

    def __init__(self, console: SlotConsole, labels: Callable[[str], str]) -> None:
        super().__init__()
        self.console = console
        self.labels = labels
        self.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - logging must never break the loop
            return
        self.console.line(self.labels(record.threadName or ""), text, stream=self.console.err)


@dataclass
class SlotState:
    """One slot under supervision: its runner and why it stopped (None while running or
    when it ran out of tasks)."""

    slot: Slot
    runner: LoopRunner
    thread: threading.Thread | None = None
    reason: str | None = None
    done: bool = False


def _describe(state: SlotState, now: float) -> str:
    label = state.slot.label
    if state.done:
        return f"{label}: {'stopped' if state.reason else 'done'}"
    current = state.runner.current
    if current is None:
        return f"{label}: idle"
    task, since = current
    name = task.task_name or task.task_id[:8]
    args = ",".join(f"{k}={v}" for k, v in (task.args or {}).items())
    took = int(now - since)
    return _escape(f"{label}: {name} {args} {took // 60}m{took % 60:02d}s")


class Supervisor:
    """Run one :class:`LoopRunner` per slot (see the module docstring).

    ``make_executor(runner, output)`` builds the slot's executor (``output`` is the slot's
    :class:`SlotOutput`). ``out``/``err`` default to ``sys.stdout``/``sys.stderr``; ``live``
    (default: ``err`` is a terminal) shows the status line.
    """

    def __init__(
        self,
        options: LoopOptions,
        slots: list[Slot],
        make_executor: Callable[[LoopRunner, SlotOutput], Any],
        *,
        out: TextIO | None = None,
        err: TextIO | None = None,
        live: bool | None = None,
    ) -> None:
        self.options = options
        self.slots = slots
        self.make_executor = make_executor
        out = out or sys.stdout
        err = err or sys.stderr
        if live is None:
            live = _is_terminal(err)
        self.console = SlotConsole(out, err, live=live)
        self.states = [SlotState(s, LoopRunner(options, prompt=no_prompt, slot=s)) for s in slots]
        self.signum: int | None = None
        self._threads: dict[str, str] = {}  # thread name -> slot label

    def _label_of(self, thread_name: str) -> str:
        label = self._threads.get(thread_name)
        if label is not None:
            return label
        for state in self.states:  # a heartbeat thread: named after its task
            cur = state.runner.current
            if cur is not None and thread_name.endswith(cur[0].task_id):
                return state.slot.label
        return "loop"

    def setup(self) -> None:
        """Check the queue and create every slot's worker (raises what
        :meth:`LoopRunner.setup` raises)."""
        for state in self.states:
            session = state.runner.setup()
            logger.info(
                "Slot %s: worker %s, %s.",
                state.slot.label,
                session.worker_id,
                f"CUDA_VISIBLE_DEVICES={state.slot.gpus}" if state.slot.devices else "no GPU",
            )

    def run(self) -> int:
        """Run every slot until all have stopped; returns the exit status (module
        docstring)."""
        root = logging.getLogger("labtasker")
        console_handlers = [h for h in root.handlers if getattr(h, "_labtasker_console", False)]
        handler = _SlotLogHandler(self.console, self._label_of)
        handler.setLevel(min((h.level for h in console_handlers), default=logging.NOTSET))
        handler._labtasker_console = True  # type: ignore[attr-defined]
        for h in console_handlers:
            root.removeHandler(h)
        root.addHandler(handler)
        old_handlers: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED_SIGNALS:
                old_handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            for state in self.states:
                output = SlotOutput(self.console, state.slot.label)
                executor = self.make_executor(state.runner, output)
                name = f"labtasker-slot-{state.slot.label}"
                self._threads[name] = state.slot.label
                state.thread = threading.Thread(
                    target=self._run_slot, args=(state, executor), name=name, daemon=True
                )
                state.thread.start()
            while not all(s.done for s in self.states):
                now = time.monotonic()
                self.console.status(" | ".join(_describe(s, now) for s in self.states))
                for state in self.states:
                    if state.thread is not None and not state.done:
                        state.thread.join(timeout=STATUS_REFRESH_SECONDS / len(self.states))
        finally:
            for sig, old in old_handlers.items():
                signal.signal(sig, old)
            self.console.close()
            root.removeHandler(handler)
            for h in console_handlers:
                root.addHandler(h)
        stopped = [s for s in self.states if s.reason]
        run = sum(s.runner.tasks_run for s in self.states)
        ok = sum(s.runner.tasks_succeeded for s in self.states)
        failed = sum(s.runner.tasks_failed for s in self.states)
        logger.info(
            "All %d slot(s) stopped: %d task(s) run, %d succeeded, %d failed%s.",
            len(self.states),
            run,
            ok,
            failed,
            f"; {len(stopped)} slot(s) stopped early" if stopped else "",
        )
        if self.signum:
            return 128 + self.signum
        return 1 if stopped else 0

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signum = signum
        for state in self.states:
            state.runner.interrupts.trigger(signum)

    def _run_slot(self, state: SlotState, executor: Any) -> None:
        try:
            state.runner.run(executor)
        except LoopStopped as exc:
            state.reason = str(exc).splitlines()[0]
        except LabtaskerError as exc:
            state.reason = f"stopped after repeated internal errors: {exc}"
        except Exception as exc:  # noqa: BLE001 - one broken slot must not take the others
            state.reason = f"unexpected error: {type(exc).__name__}: {exc}"
        finally:
            if state.reason:
                self.console.line(
                    state.slot.label,
                    f"slot stopped: {state.reason}",
                    stream=self.console.err,
                )
            state.done = True


def _is_terminal(stream: TextIO) -> bool:
    """A terminal that can redraw a status line (not ``TERM=dumb``)."""
    return is_tty(stream) and os.environ.get("TERM", "") != "dumb"


# ------------------------------------------------------------------ one process per slot
@dataclass(frozen=True)
class SlotResult:
    """What a slot process reports back: tasks run, and why it stopped (if for a reason)."""

    label: str
    tasks_run: int
    reason: str | None


def _prefix_fds(label: str) -> Callable[[], None]:
    """Route this process's fd 1 and 2 through pipes whose lines get the ``[label]`` prefix
    (covers C-level output and subprocesses too). Returns a function that puts the original
    fds back and writes what is left."""
    prefix = f"[{label}] ".encode()
    restore: list[tuple[int, int, threading.Thread]] = []

    def pump(rfd: int, original: int) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(rfd, 65536)
            except OSError:
                break
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            data = b"".join(prefix + line + b"\n" for line in lines)
            with contextlib.suppress(OSError):
                if data:
                    os.write(original, data)
        if pending:
            with contextlib.suppress(OSError):
                os.write(original, prefix + pending + b"\n")
        os.close(rfd)

    for fd in (1, 2):
        try:
            original = os.dup(fd)
        except OSError:
            continue
        rfd, wfd = os.pipe()
        os.dup2(wfd, fd)
        os.close(wfd)
        thread = threading.Thread(
            target=pump, args=(rfd, original), name=f"labtasker-output-{fd}", daemon=True
        )
        thread.start()
        restore.append((fd, original, thread))

    def undo() -> None:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        for fd, original, _ in restore:
            os.dup2(original, fd)  # closes the pipe's write end: the pump sees EOF
        for _, _, thread in restore:
            thread.join(timeout=2.0)

    return undo


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM this slot process when the supervising process dies (Linux PDEATHSIG; else a
    thread polling the parent), so ``kill -9`` of the loop stops every slot's job."""
    from labtasker.client.job import _PRCTL

    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before that
        os.kill(os.getpid(), signal.SIGTERM)
    if _PRCTL is None:

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="labtasker-parent-watch", daemon=True).start()


class _LoopWrapper(Protocol):
    """An ``@labtasker.loop`` wrapper, with the entry point of one slot's loop that the
    decorator attaches: ``(slot, args, kwargs) -> (tasks run, signal that stopped it)``."""

    _labtasker_run_slot: Callable[[Slot, tuple[Any, ...], dict[str, Any]], tuple[int, int | None]]

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


def _slot_process(
    target: _LoopWrapper, slot: Slot, parent_pid: int, results: Any, args: tuple, kwargs: dict
) -> None:  # pragma: no cover - child process
    """Entry point of one slot process (``multiprocessing`` spawn): its own process group (a
    Ctrl+C reaches the supervisor, which forwards it once), prefixed output, then the loop
    of ``target`` (an ``@labtasker.loop`` wrapper) for this slot only."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _die_with_parent(parent_pid)
    undo = _prefix_fds(slot.label)
    run_one_slot = target._labtasker_run_slot
    code = 0
    tasks_run = 0
    reason = None
    try:
        tasks_run, signum = run_one_slot(slot, args, kwargs)
        code = 128 + signum if signum else 0
    except LoopStopped as exc:
        reason = str(exc).splitlines()[0]
        code = 1
    except LabtaskerError as exc:
        reason = f"stopped after repeated internal errors: {exc}"
        code = 1
    finally:
        with contextlib.suppress(Exception):
            results.put(SlotResult(slot.label, tasks_run, reason))
        undo()
    sys.exit(code)


def run_slot_processes(
    target: Callable[..., Any], slots: list[Slot], args: tuple, kwargs: dict
) -> tuple[int, int | None, list[SlotResult]]:
    """Run ``target`` (an ``@labtasker.loop`` wrapper) once per slot, each in a fresh process
    (``multiprocessing`` spawn) whose environment has the slot's ``CUDA_VISIBLE_DEVICES``
    before anything is imported. Signals SIGINT/SIGTERM/SIGHUP are forwarded to every slot
    process (each hands its task back). Returns ``(tasks run, signal that stopped the loop or
    None, results of every slot)``."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    results = ctx.SimpleQueue()
    procs: list[SpawnProcess] = []
    state: dict[str, int | None] = {"signum": None}

    def forward(signum: int, frame: object) -> None:
        state["signum"] = signum
        for proc in procs:
            if proc.pid is not None and proc.exitcode is None:
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signum)

    old_handlers: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in HANDLED_SIGNALS:
            old_handlers[sig] = signal.signal(sig, forward)
    try:
        for slot in slots:
            saved = {k: os.environ.get(k) for k in slot.env()}
            os.environ.update(slot.env())  # the child's environment from its first instruction
            try:
                proc = ctx.Process(
                    target=_slot_process,
                    args=(target, slot, os.getpid(), results, args, kwargs),
                    name=f"{SLOT_PROCESS_PREFIX}{slot.label}",
                )
                proc.start()
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            procs.append(proc)
        from multiprocessing.connection import wait

        while any(p.exitcode is None for p in procs):
            wait([p.sentinel for p in procs if p.exitcode is None], timeout=1.0)
    finally:
        for sig, old in old_handlers.items():
            signal.signal(sig, old)
    collected: list[SlotResult] = []
    while not results.empty():
        collected.append(results.get())
    for proc, slot in zip(procs, slots, strict=True):
        if not any(r.label == slot.label for r in collected):
            collected.append(SlotResult(slot.label, 0, f"slot process exited with {proc.exitcode}"))
    signum = state["signum"]
    return sum(r.tasks_run for r in collected), signum, collected
