"""Filter and sort benchmark at the storage layer: ``python -m bench.filters [--tasks 100000]
[--backend sqlite|postgresql] [--samples 15]``.

Fills one queue of a fresh database (an SQLite file in a temporary directory, or a scratch
database on ``--pg-url``) with ``--tasks`` tasks through ``SqlStorage.submit_tasks`` in
batches of 5,000 (timed: the bulk-submit rate of the storage alone, no HTTP), then marks every
other task finished with a summary (one SQL ``UPDATE``, seed data only) and times the storage
calls behind task listings and the dashboard. Prints one markdown table: median and 95th
percentile in ms per call, in-process (no HTTP), plus the query plans with ``--plans``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/filters.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, percentile

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _seed(store, qid: str, n: int) -> float:
    """Submit ``n`` tasks in batches of 5,000; returns tasks per second."""
    t0 = time.perf_counter()
    for start in range(0, n, 5000):
        store.submit_tasks(
            qid,
            [
                {
                    "task_name": f"t{k}",
                    "args": {
                        "i": k,
                        "lr": [0.001, 0.01, 0.1][k % 3],
                        "seed": k % 5,
                        "model": ["mlp", "cnn"][k % 2],
                        "grp": k % 10,
                    },
                }
                for k in range(start, min(n, start + 5000))
            ],
        )
    return n / (time.perf_counter() - t0)


def _finish_half(db, qid: str) -> None:
    """Every task with an even ``args.i``: success, ended over the last day, a summary."""
    with db.write() as conn:
        if db.dialect == "sqlite":
            conn.exec_driver_sql(
                "UPDATE tasks SET status = 'success', start_time = created_at, "
                "summary = json_object('accuracy', (abs(random()) % 10000) / 10000.0, "
                "'loss', (abs(random()) % 10000) / 1000.0) "
                "WHERE queue_id = ? AND json_extract(args, '$.i') % 2 = 0",
                (qid,),
            )
        else:
            conn.exec_driver_sql(
                "UPDATE tasks SET status = 'success', start_time = created_at, "
                "summary = jsonb_build_object('accuracy', round(random()::numeric, 4), "
                "'loss', round((random() * 10)::numeric, 3)) "
                "WHERE queue_id = %s AND (args->>'i')::int %% 2 = 0",
                (qid,),
            )
            conn.exec_driver_sql("ANALYZE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.filters", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=os.environ.get("LABTASKER_TEST_PG_URL", PG_ADMIN))
    parser.add_argument("--plans", action="store_true", help="print the query plans")
    args = parser.parse_args(argv)

    from labtasker.server.db import Database
    from labtasker.server.sql_storage import SqlStorage

    n = args.tasks
    tmp = tempfile.TemporaryDirectory(prefix="labtasker-bench-filters-")
    pg_name = None
    if args.backend == "sqlite":
        url = f"sqlite:///{tmp.name}/labtasker.db"
    else:
        import psycopg

        pg_name = "bench_filters_" + uuid.uuid4().hex[:8]
        with psycopg.connect(args.pg_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{pg_name}"')
        url = args.pg_url.rsplit("/", 1)[0] + "/" + pg_name
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    db = Database(url)
    try:
        db.migrate()
        store = SqlStorage(db)
        qid = store.create_queue("bench", "pw", None)
        rate = _seed(store, qid, n)
        print(
            f"[bench] submitted {n:,} tasks: {rate:,.0f} tasks/s (storage, batches of 5,000)",
            file=sys.stderr,
        )
        _finish_half(db, qid)
        rows: list[tuple[str, list[float]]] = []

        def search(filt=None, sort=None, offset=0, limit=100, status=None):
            return store.search_tasks(
                qid,
                extra_filter=filt,
                task_id=None,
                task_name=None,
                status=status,
                sort=sort,
                offset=offset,
                limit=limit,
            )

        def timed(label, fn, k=args.samples):
            walls = []
            for _ in range(k):
                t0 = time.perf_counter()
                out = fn()
                walls.append((time.perf_counter() - t0) * 1000)
            rows.append((label, walls))
            return out

        k = n // 2 + 1
        got = timed(f"search `args.i == {k}` (one hit), page of 100", lambda: search({"args.i": k}))
        assert len(got) == 1, got
        timed("search `args.grp == 3` (10% match), page of 100", lambda: search({"args.grp": 3}))
        timed(
            "search `args.i in [5 values]`, page of 100",
            lambda: search({"args.i": {"$in": [1, 2, 3, n - 2, n - 1]}}),
        )
        timed(
            "search `args.i >= n - 50` (range, 50 hits), page of 100",
            lambda: search({"args.i": {"$gte": n - 50}}),
        )
        timed(
            "search `args.model == 'cnn' and args.seed == 2`, page of 100",
            lambda: search({"args.model": "cnn", "args.seed": 2}),
        )
        timed(
            "search `summary.accuracy > 0.999`, page of 100",
            lambda: search({"summary.accuracy": {"$gt": 0.999}}),
        )
        timed(
            "count `args.lr == 0.01 and status == success`",
            lambda: store.count_tasks(qid, extra_filter={"args.lr": 0.01, "status": "success"}),
        )
        timed(
            "sort by summary.accuracy desc, first page of 50",
            lambda: search(sort=[("summary.accuracy", -1)], limit=50),
        )
        timed(
            "sort by args.lr asc, page of 50 at offset 10,000",
            lambda: search(sort=[("args.lr", 1)], limit=50, offset=10_000),
        )
        timed("queue overview", lambda: store.queue_overview(qid))
        timed(
            "plot data: 10,000 finished tasks by last_modified (10 pages of 1,000)",
            lambda: [
                search(sort=[("last_modified", 1)], limit=1000, offset=o, status="success")
                for o in range(0, 10_000, 1000)
            ],
            k=max(3, args.samples // 5),
        )
        print(
            f"\nStorage calls at {n:,} tasks ({n // 2:,} finished), {db.dialect}, "
            f"in-process; bulk submit {rate:,.0f} tasks/s\n"
        )
        print("| call | p50 ms | p95 ms |")
        print("|---|---|---|")
        for label, walls in rows:
            print(f"| {label} | {median(walls):.1f} | {percentile(walls, 95):.1f} |")
        if args.plans:
            _plans(db, store, qid, k)
        _sizes(db, n)
    finally:
        db.dispose()
        if pg_name:
            import psycopg

            with psycopg.connect(args.pg_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{pg_name}" WITH (FORCE)')
        tmp.cleanup()
    return 0


def _plans(db, store, qid: str, k: int) -> None:
    """The plan of the one-hit search, built as ``search_tasks`` builds it."""
    from sqlalchemy import and_, select

    from labtasker.server.schema import tasks
    from labtasker.server.sql_storage import TASK_FIELDS

    filt = {"args.i": k}
    if hasattr(store, "_task_filter"):
        cond = and_(*store._task_filter(qid, filt))
    else:
        cond = and_(tasks.c.queue_id == qid, store._filter(TASK_FIELDS, filt))
    stmt = (
        select(tasks.c.task_id)
        .where(cond)
        .order_by(tasks.c.last_modified, tasks.c.task_id)
        .limit(100)
    )
    with db.read() as conn:
        sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
        prefix = "EXPLAIN QUERY PLAN " if db.dialect == "sqlite" else "EXPLAIN ANALYZE "
        print(f"\n{prefix}of `args.i == {k}`:\n")
        for row in conn.exec_driver_sql(prefix + sql.replace("%", "%%")):
            print("   ", " ".join(str(c) for c in row))


def _sizes(db, n: int) -> None:
    """Bytes per task of each table and index (``dbstat`` / ``pg_total_relation_size``)."""
    with db.read() as conn:
        if db.dialect == "sqlite":
            try:
                rows = conn.exec_driver_sql(
                    "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
                ).all()
            except Exception as exc:  # dbstat missing in this SQLite build
                print(f"\n(no dbstat: {exc})")
                return
        else:
            rows = conn.exec_driver_sql(
                "SELECT relname, pg_relation_size(oid) FROM pg_class WHERE relkind IN "
                "('r', 'i') AND relnamespace = 'public'::regnamespace ORDER BY 2 DESC"
            ).all()
    print(
        f"\nBytes per task ({n:,} tasks): "
        + ", ".join(f"{name} {size / n:.0f}" for name, size in rows if size / n >= 1)
    )


if __name__ == "__main__":
    raise SystemExit(main())
