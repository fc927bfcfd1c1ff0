"""Planner statistics of the tasks table after bulk inserts (PostgreSQL only).

PostgreSQL plans from the row counts and value distributions that ``ANALYZE`` last sampled.
Autovacuum refreshes them only after 10% of the table changed *and* its next round (every
minute by default), so right after a bulk submit the planner still believes the queue holds
the few rows it held before: it then reads every pending task of the queue through
``ix_tasks_claim`` and sorts them for a page of 100 (measured: 5.9 ms at 1k tasks, 19-36 ms
at 20k-50k, growing with the queue), where with fresh statistics it walks
``ix_tasks_queue_modified`` in order and stops after the page (~1.5 ms at 50k).

``BulkAnalyzer.inserted(n)`` is told how many tasks each committed submit inserted; once the
inserts since the last ``ANALYZE`` reach ``max(MIN_ROWS, FRACTION * rows at that ANALYZE)``
it runs ``ANALYZE tasks`` in a background thread (one at a time; the submit that crossed the
line does not wait). ``ANALYZE`` takes a lock that blocks neither reads nor writes and samples
a bounded number of rows (~30,000), so it costs tens of milliseconds at any size. SQLite's
planner needs no such statistics for these queries (it prefers the index that covers the
ORDER BY): nothing is done there.
"""

from __future__ import annotations

import logging
import threading

from labtasker.server.db import Database

log = logging.getLogger("labtasker.server")

MIN_ROWS = 1000  # inserted tasks before the first ANALYZE of a server process
FRACTION = 0.2  # then: inserted tasks since the last ANALYZE, as a share of the table


class BulkAnalyzer:
    """Counts inserted tasks and refreshes the statistics of ``tasks`` (module doc)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.enabled = db.dialect == "postgresql"
        self._lock = threading.Lock()
        self._pending = 0  # tasks inserted since the last ANALYZE started
        self._threshold = MIN_ROWS
        self._running: threading.Thread | None = None
        self.runs = 0  # ANALYZE runs finished (tests, diagnostics)

    def inserted(self, count: int) -> None:
        """Note ``count`` committed task inserts; may start a background ``ANALYZE``."""
        if not self.enabled or count <= 0:
            return
        with self._lock:
            self._pending += count
            if self._pending < self._threshold or self._running is not None:
                return
            self._pending = 0
            self._running = threading.Thread(
                target=self._analyze, name="labtasker-analyze", daemon=True
            )
            self._running.start()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a running ``ANALYZE`` to finish (tests, shutdown)."""
        thread = self._running
        if thread is not None:
            thread.join(timeout)

    def _analyze(self) -> None:
        rows = 0.0
        try:
            with self.db.write() as conn:
                conn.exec_driver_sql("ANALYZE tasks")
                rows = float(
                    conn.exec_driver_sql(
                        "SELECT reltuples FROM pg_class WHERE oid = 'tasks'::regclass"
                    ).scalar_one()
                )
        except Exception as exc:  # statistics are an optimisation: never fail a request
            log.warning("ANALYZE tasks failed: %s", exc)
        finally:
            with self._lock:
                self._threshold = max(MIN_ROWS, int(FRACTION * max(rows, 0.0)))
                self.runs += 1
                self._running = None
