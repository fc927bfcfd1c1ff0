"""Seed tasks straight into this checkout's database (used only when the server has no
``POST /tasks/batch`` route yet, so that 100k-task rows do not take half an hour to set up).

The tasks go through ``SqlStorage.submit_task`` -- the same code as an HTTP submit -- but all
inside one transaction. Safe while the server runs (SQLite WAL; the write lock is taken).

    python bench/seed_current.py DB_URL QUEUE_ID KIND START COUNT
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import make_args  # noqa: E402


class _OneTransaction:
    """A ``Database`` stand-in whose ``write()``/``read()`` reuse one open transaction."""

    def __init__(self, db, conn):
        self._db, self._conn = db, conn

    @contextmanager
    def write(self):
        yield self._conn

    read = write

    def __getattr__(self, name):
        return getattr(self._db, name)


def main() -> None:
    db_url, queue_id, kind = sys.argv[1:4]
    start, count = int(sys.argv[4]), int(sys.argv[5])
    from labtasker.server.db import Database
    from labtasker.server.sql_storage import SqlStorage

    db = Database(db_url)
    with db.write() as conn:
        storage = SqlStorage(_OneTransaction(db, conn))
        for n in range(start, start + count):
            storage.submit_task(queue_id, {"args": make_args(kind, n), "heartbeat_timeout": 3600.0})
    db.dispose()


if __name__ == "__main__":
    main()
