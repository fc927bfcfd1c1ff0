"""Seed a labtasker 1.0.1 embedded database offline (run with the 1.0.1 interpreter while its
server is stopped). 1.0.1 rewrites its whole JSON file after every write, so the tasks are
inserted with saving disabled and the file is written once at the end.

    python bench/seed_ref.py DB_PATH QUEUE PASSWORD KIND START COUNT
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import make_args  # noqa: E402


def main() -> None:
    db_path, queue, password, kind = sys.argv[1:5]
    start, count = int(sys.argv[5]), int(sys.argv[6])
    os.environ.setdefault("DB_USER", "admin")
    os.environ.setdefault("DB_PASSWORD", "admin")
    from labtasker.server.config import get_server_config, init_server_config
    from labtasker.server.database import DBService
    from labtasker.server.embedded_db import MongoClient, ServerStore

    init_server_config(None)
    save = ServerStore.save_to_disk
    ServerStore.save_to_disk = lambda self, path=None: None
    store = ServerStore(persistence_path=db_path)
    db = DBService(db_name=get_server_config().db_name, client=MongoClient(_store=store))
    found = db._db.queues.find_one({"queue_name": queue})
    queue_id = found["_id"] if found else db.create_queue(queue_name=queue, password=password)
    for n in range(start, start + count):
        db.create_task(queue_id=queue_id, args=make_args(kind, n), heartbeat_timeout=3600)
    save(store)
    print(json.dumps({"queue_id": queue_id}))


if __name__ == "__main__":
    main()
