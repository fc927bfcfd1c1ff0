"""Seed a labtasker 2.x database offline (run with the 2.x interpreter while its server is
stopped: a 2.x server owns its database file exclusively). 2.x has no batch route (one PUT
per task), so the tasks go through its own ``TaskService.create`` inside one transaction,
committed once at the end, like ``seed_ref.py`` does for 1.0.1.

    python bench/seed_v2.py DB_PATH QUEUE KIND START COUNT [ROUTE]
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import make_args, v2_task_id  # noqa: E402


def main() -> None:
    db_path, queue, kind = sys.argv[1:4]
    start, count = int(sys.argv[4]), int(sys.argv[5])
    route = sys.argv[6] if len(sys.argv) > 6 else "default"
    from labtasker_server.database import Database
    from labtasker_server.schemas import TaskCreate
    from labtasker_server.services.queues import QueueService
    from labtasker_server.services.tasks import TaskService

    db = Database(Path(db_path))
    try:
        db.initialize()
        QueueService(db).create(queue)  # idempotent
        with db.write_session() as session:

            @contextmanager
            def same_session(operation: str = "write"):
                yield session

            db.write_session = same_session  # type: ignore[method-assign]
            service = TaskService(db)
            for n in range(start, start + count):
                request = TaskCreate(args=make_args(kind, n), routes=[route])
                service.create(queue, v2_task_id(kind, n), request)
                if n % 2000 == 0:
                    session.expunge_all()  # flushed already; keeps memory flat
    finally:
        db.dispose()


if __name__ == "__main__":
    main()
