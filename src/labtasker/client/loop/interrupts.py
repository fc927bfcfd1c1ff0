"""Signal handling of a running loop, as a context manager.

``with Interrupts() as intr:`` installs handlers for SIGINT, SIGTERM and SIGHUP (main thread only;
elsewhere nothing is installed and a supervisor forwards signals with :meth:`Interrupts.
trigger`). A signal records ``signum``, counts how many arrived and sets ``event`` (so idle
waits end at once). Three states change what a signal means:

* ``in_python_job``: an ``@labtasker.loop`` function runs in this thread; the signal raises
  ``KeyboardInterrupt`` inside it;
* ``prompting``: the failure countdown is on screen; Ctrl+C answers it instead of stopping
  the loop (``prompt_interrupted``);
* ``lost_callback_pending``: the heartbeat thread woke the main thread up (``interrupt_main``)
  because the task was taken away; :class:`TaskLost` is raised inside the Python job.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class TaskLost(BaseException):
    """Raised inside an in-process job whose task was taken away (heartbeat refused)."""


class Interrupts:
    """SIGINT/SIGTERM/SIGHUP bookkeeping of one loop (see the module docstring)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self.event = threading.Event()
        self.in_python_job = False
        self.prompting = False  # a failure prompt is on screen: Ctrl+C picks its choice
        self.prompt_interrupted = False
        self.lost_callback_pending = False
        self.installed = False
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal asked the loop to stop."""
        return self.signum is not None

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handler)
            self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        self.installed = False

    def trigger(self, signum: int) -> None:
        """Record ``signum`` as if it had been delivered to this loop (from any thread; never
        raises into a running Python job)."""
        self.signum = signum
        self.count += 1
        self.event.set()

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.lost_callback_pending:
            # raised by the heartbeat thread via interrupt_main: the task was taken from us
            self.lost_callback_pending = False
            if self.in_python_job:
                raise TaskLost()
            return
        if self.prompting and signum == signal.SIGINT:
            self.prompt_interrupted = True  # Ctrl+C answers the prompt; the loop goes on
            return
        self.trigger(signum)
        if self.in_python_job:
            raise KeyboardInterrupt
