"""Heartbeat thread of one running task; a definitive loss stops the job (1.0.1's thread
died on the first error and the job ran on; docs/compatibility.md).

* The first beat is sent one ``interval`` after the start, then one every ``interval``
  seconds: the claim itself (a fetch with ``start_heartbeat``, as the loop's) set the task's
  heartbeat, on 1.0.1 as on ours. A beat at once cost a third request per task, about a
  third of a short task's HTTP traffic, and told the server nothing new.
* Errors other than "the task is no longer ours" (network errors, 5xx, timeouts...) are
  logged and retried with exponential back-off (0.5 s doubling, capped at ``interval``); the
  thread never dies silently. Each beat is one request (no transport retries: a beat that
  waited longer than the interval would be worth less than the next one).
* When labtasker answers that the task is no longer this run's (``TaskNotOwned``: task
  cancelled, timed out and re-dispatched, reported, deleted; the queue deleted or its password
  changed), ``on_lost(exc)`` is called once and the thread ends, so the runner can stop the
  job. Any other answer (a proxy's 404, a 503 while the database is away) is retried.
* :meth:`Heartbeat.stop` returns at once: the thread waits on an ``Event``, never on a bare
  ``sleep``, and the same event ends the transport's retries of a beat. No beat is sent after
  it.
* ``lock_file`` (``<run dir>/heartbeat.lock``) exists while the heartbeat runs, as in 1.0.1;
  deleting it stops the heartbeat without calling ``on_lost``.
* ``finishing()`` (optional predicate) is true while/after a ``finish()`` -- possibly in the
  job's child process -- reports the task: beats go on (a report retried while the database
  is away must not lose the lease meanwhile), and a "not ours" answer then means "just
  reported", so ``on_lost`` is not called.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from labtasker.exceptions import LabtaskerRuntimeError, TaskNotOwned

if TYPE_CHECKING:  # the API (and httpx) load on the first beat
    from labtasker.client.api import ClientLike

logger = logging.getLogger("labtasker.heartbeat")


def _default_refresh(
    task_id: str,
    worker_id: str | None,
    run_id: str | None,
    stop: threading.Event | None = None,
    client: ClientLike | None = None,
) -> None:
    from labtasker.client.api import refresh_task_heartbeat

    refresh_task_heartbeat(
        task_id, worker_id=worker_id, run_id=run_id, stop=stop, retry=False, client=client
    )


class Heartbeat:
    """Periodic ``POST /tasks/{id}/heartbeat`` for one claim (``task_id`` + ``run_id``).

    ``interval`` is in seconds. ``refresh(task_id, worker_id, run_id)`` performs one beat and
    raises ``TaskNotOwned`` when the claim is gone (default: the HTTP API wrapper, on
    ``client`` -- a ``LabtaskerClient`` or ``httpx.Client``; the default client if ``None``).
    """

    def __init__(
        self,
        task_id: str,
        *,
        worker_id: str | None,
        run_id: str | None,
        interval: float,
        on_lost: Callable[[Exception], None] | None = None,
        lock_file: Path | None = None,
        refresh: Callable[[str, str | None, str | None], object] | None = None,
        finishing: Callable[[], bool] | None = None,
        client: ClientLike | None = None,
    ):
        if interval <= 0:
            raise LabtaskerRuntimeError(f"heartbeat interval must be > 0, got {interval}")
        self.task_id = task_id
        self.worker_id = worker_id
        self.run_id = run_id
        self.interval = float(interval)
        self.on_lost = on_lost
        self.lock_file = Path(lock_file) if lock_file else None
        self.finishing = finishing
        self._stop = threading.Event()
        self.refresh = refresh or (
            lambda t, w, r: _default_refresh(t, w, r, stop=self._stop, client=client)
        )
        self._thread: threading.Thread | None = None
        self.beats = 0  # successful beats, for tests and logs
        self.lost: Exception | None = None

    def start(self) -> Heartbeat:
        """Create the lock file and start the thread; a second start raises
        ``LabtaskerRuntimeError``."""
        if self._thread is not None:
            raise LabtaskerRuntimeError("Heartbeat already started.")
        if self.lock_file is not None:
            self.lock_file.touch()
        self._thread = threading.Thread(
            target=self._run, name=f"labtasker-heartbeat-{self.task_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Stop beating now; joins the thread up to ``timeout`` seconds (a beat already in
        flight is not waited for longer: its answer no longer matters) and removes the lock
        file. Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self.lock_file is not None:
            try:
                self.lock_file.unlink()
            except FileNotFoundError:
                pass

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _released(self) -> bool:
        return self.lock_file is not None and not os.path.exists(self.lock_file)

    def _is_finishing(self) -> bool:
        try:
            return bool(self.finishing and self.finishing())
        except Exception:  # noqa: BLE001 - a broken predicate must not kill the thread
            return False

    def _run(self) -> None:
        failures = 0
        delay = self.interval  # the claim was the first beat
        while not self._stop.wait(delay):
            if self._released():
                logger.debug("Heartbeat of task %s released (lock file removed).", self.task_id)
                return
            try:
                self.refresh(self.task_id, self.worker_id, self.run_id)
            except TaskNotOwned as exc:
                if self._stop.is_set() or self._released() or self._is_finishing():
                    return  # the task was just reported by a finish(), not lost
                self.lost = exc
                logger.warning("Task %s is no longer ours: %s", self.task_id, exc)
                if self.on_lost is not None:
                    try:
                        self.on_lost(exc)
                    except Exception:  # pragma: no cover - defensive
                        logger.exception("Heartbeat on_lost callback failed")
                return
            except Exception as exc:  # noqa: BLE001 - transient: retry, never die
                if self._stop.is_set():
                    return
                failures += 1
                delay = min(self.interval, 0.5 * 2 ** (failures - 1))
                logger.warning(
                    "Failed to refresh heartbeat of task %s (attempt %d, retry in %.1fs): %s",
                    self.task_id,
                    failures,
                    delay,
                    exc,
                )
                continue
            if failures:
                logger.info(
                    "Heartbeat of task %s recovered after %d failures.", self.task_id, failures
                )
            failures = 0
            self.beats += 1
            delay = self.interval
