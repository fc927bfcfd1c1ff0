"""The periodic timeout sweep, run in a background thread of the server.

Every ``interval`` seconds (``PERIODIC_TASK_INTERVAL``, default 30) it fails running tasks
whose heartbeat or execution time expired, on the server's clock. It runs off the event loop,
survives errors (logged, retried next period) and records when it last completed, for
``GET /api/v1/polling``.
"""

from __future__ import annotations

import logging
import threading
import time

from labtasker.server.storage import Storage

log = logging.getLogger("labtasker.server")


class Sweeper:
    def __init__(self, storage: Storage, interval: float):
        self.storage = storage
        self.interval = interval
        self.prev_polling = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labtasker-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def sweep_once(self) -> int:
        """Run one sweep now; returns the number of tasks timed out."""
        count = self.storage.sweep_timeouts()
        self.prev_polling = time.time()
        if count:
            log.info("timed out %d task(s)", count)
        return count

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep_once()
            except Exception:  # keep sweeping; a broken period is retried next time
                log.exception("timeout sweep failed")
            self._stop.wait(self.interval)

    def polling_info(self) -> dict[str, float]:
        """``{"prev_polling": epoch s, "next_eta": s, "polling_interval": s}``."""
        return {
            "prev_polling": self.prev_polling,
            "next_eta": self.prev_polling + self.interval - time.time(),
            "polling_interval": self.interval,
        }
