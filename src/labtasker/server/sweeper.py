"""The periodic timeout sweep, run in a background thread of the server.

Every ``interval`` seconds (``PERIODIC_TASK_INTERVAL``, default 30) it fails running tasks
whose heartbeat or execution time expired, on the database's clock. It runs off the event
loop, survives errors (logged, retried next period) and records when it last completed, for
``GET /api/v1/polling``.

**No lease expires for heartbeats the server could not receive.** The sweeper measures how
long the server has been *up*: running, sweeping on time, and answering requests. That
uptime restarts

* when the process starts (the server was down before, for all it knows), and again when its
  event loop first runs (a slow start-up does not count);
* after a sweep that came later than one interval (at least ``MIN_GAP_SECONDS``) past its
  time (the process was stopped or starved), that waited that long for the database (a
  stall), or that failed (the database could not write: heartbeats were refused meanwhile);
* while the event loop that answers requests has not ticked for that long (``tick()``,
  called by the app every ``TICK_SECONDS``), i.e. requests were not answered.

A heartbeat expires only once the uptime also exceeds the heartbeat timeout, so after any of
these every running lease gets one full heartbeat timeout of uptime to beat again. The task
timeout (``task_timeout``/``eta_max``: wall time since the start) keeps counting.
"""

from __future__ import annotations

import logging
import threading
import time

from labtasker.server.errors import Unavailable
from labtasker.server.storage import Storage

log = logging.getLogger("labtasker.server")

TICK_SECONDS = 0.5  # how often the app's event loop calls ``Sweeper.tick``
MIN_GAP_SECONDS = 2.0  # a gap shorter than this is never an outage (scheduling noise)


class Sweeper:
    def __init__(self, storage: Storage, interval: float):
        self.storage = storage
        self.interval = interval
        self.prev_polling = time.time()
        self._up_since = time.monotonic()  # start of the current stretch of uptime
        self._last_sweep: float | None = None  # monotonic start of the previous sweep
        self._sweep_started = 0.0  # monotonic start of the current sweep
        self._last_tick: float | None = None  # monotonic time of the event loop's last tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labtasker-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def tick(self) -> None:
        """Note that the event loop is answering (called from it every ``TICK_SECONDS``)."""
        now = time.monotonic()
        if self._last_tick is None:
            self._up_since = now  # serving starts now; the start-up before it was downtime
        self._last_tick = now

    def uptime(self) -> float:
        """Seconds the server has been up without a gap (see the module docstring)."""
        now = time.monotonic()
        late = max(self.interval, MIN_GAP_SECONDS)
        if self._last_sweep is not None and now - self._last_sweep > self.interval + late:
            self._restart_uptime(now, f"no sweep for {now - self._last_sweep:.1f}s")
        if self._last_tick is not None and now - self._last_tick > late:
            self._restart_uptime(now, f"requests not answered for {now - self._last_tick:.1f}s")
        return now - self._up_since

    def _restart_uptime(self, now: float, why: str) -> None:
        if now - self._up_since > 1.0:  # say it once per gap, not at every sweep of it
            log.warning(
                "server was not up (%s): every running lease gets a full heartbeat "
                "timeout from now",
                why,
            )
        self._up_since = now

    def _uptime_in_sweep(self) -> float:
        """``uptime()`` as seen inside the sweep's transaction: a sweep that waited more than
        an interval for the database restarts it (the stall held heartbeats up too)."""
        now = time.monotonic()
        if now - self._sweep_started > max(self.interval, MIN_GAP_SECONDS):
            self._restart_uptime(now, f"database stalled for {now - self._sweep_started:.1f}s")
        return self.uptime()

    def sweep_once(self) -> int:
        """Run one sweep now; returns the number of tasks timed out."""
        self._sweep_started = time.monotonic()
        self.uptime()  # notices a late sweep
        self._last_sweep = self._sweep_started
        try:
            count = self.storage.sweep_timeouts(uptime=self._uptime_in_sweep)
        except Exception:
            self._restart_uptime(time.monotonic(), "the sweep failed")
            raise
        self.prev_polling = time.time()
        if count:
            log.info("timed out %d task(s)", count)
        return count

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep_once()
            except Unavailable as exc:  # the database is away: say so in one line
                log.warning("timeout sweep skipped: %s", exc)
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
