"""Sorts on one JSON path at scale: ``python -m bench.sort_paths URL [--tasks 100000] [--seed]``.

Times ``SqlStorage.search_tasks`` (no HTTP) on the database at ``URL`` (``sqlite:///file`` or
``postgresql://...``): the first page of 50 and a later page (after 10,000 rows) sorted by
``summary.accuracy`` descending and by ``args.lr`` ascending. With ``--seed`` the database is
first created and filled with one queue of ``--tasks`` tasks (half with a summary). A later page
is read by the leaf cursor where the code has it (``labtasker.server.leaf_sort``), else by
``offset`` (the code before it), so the same database can be timed by both.
"""

from __future__ import annotations

import argparse
import statistics
import time

from sqlalchemy import text

from labtasker.server.db import Database
from labtasker.server.sql_storage import SqlStorage

try:
    from labtasker.server import leaf_sort
except ImportError:  # the code before the leaf sort
    leaf_sort = None  # type: ignore[assignment]

QUEUE = "bench-sort"
NO_FILTER = dict(extra_filter=None, task_id=None, task_name=None, status=None)


def seed(store: SqlStorage, db: Database, n: int) -> str:
    qid = store.create_queue(QUEUE, "pw", None)
    for start in range(0, n, 5000):
        batch = [
            {"args": {"i": i, "lr": [0.001, 0.01, 0.1][i % 3], "seed": i % 5}}
            for i in range(start, min(n, start + 5000))
        ]
        store.submit_tasks(qid, batch)
    with db.write() as conn:  # half finished, with an accuracy (the triggers index it)
        if db.dialect == "postgresql":
            sql = (
                "UPDATE tasks SET status = 'success', summary = jsonb_build_object('accuracy', "
                "((args->>'i')::int % 997) / 997.0) WHERE (args->>'i')::int % 2 = 0"
            )
        else:
            sql = (
                "UPDATE tasks SET status = 'success', summary = json_object('accuracy', "
                "(json_extract(args, '$.i') % 997) / 997.0) WHERE json_extract(args, '$.i') % 2 = 0"
            )
        conn.execute(text(sql))
    return qid


def timed(fn, k: int) -> float:
    walls = []
    for _ in range(k):
        t0 = time.perf_counter()
        fn()
        walls.append((time.perf_counter() - t0) * 1000)
    return statistics.median(walls)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--seed", action="store_true")
    p.add_argument("--samples", type=int, default=7)
    a = p.parse_args()
    db = Database(a.url)
    if a.seed:
        db.migrate()
    store = SqlStorage(db)
    if a.seed:
        qid = seed(store, db, a.tasks)
    else:
        with db.read() as conn:
            qid = conn.execute(
                text("SELECT queue_id FROM queues WHERE queue_name = :n"), {"n": QUEUE}
            ).scalar_one()

    def page(sort, cursor=None, offset=0):
        return store.search_tasks(
            qid, **NO_FILTER, sort=sort, offset=offset, limit=50, cursor=cursor
        )

    for field, direction in (("summary.accuracy", -1), ("args.lr", 1)):
        sort = [(field, direction)]
        first = timed(lambda: page(sort), a.samples)  # noqa: B023 (called at once)
        if leaf_sort is not None:
            cursor = None
            for _ in range(200):  # to the page after 10,000 rows
                rows = page(sort, cursor)
                cursor = leaf_sort.next_cursor(leaf_sort.json_sort(sort), rows[-1])
            later = timed(lambda: page(sort, cursor), a.samples)  # noqa: B023
            how = "cursor"
        else:
            later = timed(lambda: page(sort, offset=10_000), a.samples)  # noqa: B023
            how = "offset"
        print(
            f"{db.dialect} {field}:{direction} first page {first:.1f} ms, "
            f"page 201 ({how}) {later:.1f} ms"
        )
    db.dispose()


if __name__ == "__main__":
    main()
