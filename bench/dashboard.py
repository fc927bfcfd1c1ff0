"""Dashboard benchmark: ``python -m bench.dashboard [--tasks 100000] [--samples 20]``.

Starts a server of this checkout (its ``src`` on PYTHONPATH) on 127.0.0.1 with a fresh SQLite file, fills one queue with
``--tasks`` tasks (half of them finished with a summary, the others pending), logs in to the
dashboard and times what its pages ask the server for. Prints one markdown table: median
and 95th percentile of the wall time per request, measured by the client (HTTP included).

Seeding: the tasks are submitted over HTTP in batches of 5,000; the finished half then gets
its status, times (ended over the last day, one every 2 s) and summary by one SQL ``UPDATE``
on the file, and one finished run each in ``task_runs`` by one ``INSERT`` (seed data only: the
numbers measured are the reads).
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as `python bench/dashboard.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, percentile
from bench.run import QUEUE_ME, REPO, Impl

TARGET_MS = 200.0


def seed(impl: Impl, queue: str, count: int) -> None:
    with impl.client(queue) as c:
        for start in range(0, count, 5000):
            body = [
                {
                    "task_name": f"t{n}",
                    "args": {
                        "i": n,
                        "lr": [0.001, 0.01, 0.1][n % 3],
                        "seed": n % 5,
                        "model": ["mlp", "cnn"][n % 2],
                    },
                }
                for n in range(start, min(count, start + 5000))
            ]
            r = c.post(QUEUE_ME + "/tasks/batch", json={"tasks": body})
            r.raise_for_status()
    db = sqlite3.connect(impl.db_url.removeprefix("sqlite:///"), timeout=60)
    with db:
        # finished over the last day, one every 2 s (so ~300 in the last 10 minutes)
        ended = (
            "strftime('%Y-%m-%d %H:%M:%S', created_at, '-' || "
            "(json_extract(args, '$.i') % 86400) || ' seconds') || '.000000'"
        )
        db.execute(
            f"UPDATE tasks SET status = 'success', last_modified = {ended}, "
            f"start_time = strftime('%Y-%m-%d %H:%M:%S', {ended}, '-30 seconds') || '.000000', "
            "summary = json_object('accuracy', (abs(random()) % 10000) / 10000.0, "
            "'loss', (abs(random()) % 10000) / 1000.0) "
            "WHERE queue_id = ? AND json_extract(args, '$.i') % 2 = 0",
            (impl.queues[queue][0],),
        )
        # one finished run per finished task, so the overview's window (runs that ended in
        # the last 10 minutes, read through ix_task_runs_ended) holds its ~300 runs
        db.execute(
            "INSERT INTO task_runs (run_id, task_id, queue_id, worker_id, started, ended, "
            "status, charged, summary) SELECT lower(hex(randomblob(16))), task_id, queue_id, "
            "NULL, start_time, last_modified, 'success', 0, '{}' FROM tasks "
            "WHERE queue_id = ? AND status = 'success'",
            (impl.queues[queue][0],),
        )
    db.close()


def log_in(impl: Impl, queue: str) -> httpx.Client:
    c = httpx.Client(base_url=impl.url, timeout=600)
    page = c.get("/ui/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    r = c.post(
        "/ui/login", data={"queue": queue, "password": impl.queues[queue][1], "login_token": token}
    )
    assert r.status_code == 303, r.text
    return c


def timed(c: httpx.Client, path: str, samples: int, params=None) -> tuple[list[float], dict]:
    walls, last = [], {}
    for _ in range(samples):
        t0 = time.perf_counter()
        r = c.get(path, params=params)
        walls.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code} {r.text[:200]}")
        if r.headers.get("content-type", "").startswith("application/json"):
            last = r.json()
    return walls, last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dashboard", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args(argv)
    n, samples = args.tasks, args.samples
    with tempfile.TemporaryDirectory(prefix="labtasker-bench-ui-") as tmp:
        impl = Impl("current", "current", sys.executable, "labtasker", Path(tmp))
        impl.pythonpath = str(REPO / "src")  # this checkout's server, not the installed one
        impl.start()
        try:
            queue = impl.new_queue("ui")
            t0 = time.perf_counter()
            seed(impl, queue, n)
            print(
                f"[bench] seeded {n:,} tasks in {time.perf_counter() - t0:.1f} s", file=sys.stderr
            )
            c = log_in(impl, queue)
            rows: list[tuple[str, list[float]]] = []

            def row(label, path, params=None, k=samples):
                walls, data = timed(c, path, k, params)
                rows.append((label, walls))
                return data

            first = row(
                "tasks table, first page of 50 (newest first) + match count",
                "/ui/api/tasks",
                {"limit": 50},
            )
            cursor, pages = first["next_cursor"], 1
            while pages < min(200, n // 50 - 1):
                cursor = c.get(
                    "/ui/api/tasks", params={"limit": 50, "cursor": cursor, "count": "false"}
                ).json()["next_cursor"]
                pages += 1
            row(
                f"tasks table, page {pages + 1} by keyset cursor (a page turn: no recount)",
                "/ui/api/tasks",
                {"limit": 50, "cursor": cursor, "count": "false"},
            )
            row(
                "tasks table, sorted by summary.accuracy (descending), first page",
                "/ui/api/tasks",
                {"limit": 50, "sort": "summary.accuracy:-1"},
            )
            row(
                "tasks table, sorted by args.lr, page at offset 10,000",
                "/ui/api/tasks",
                {"limit": 50, "sort": "args.lr:1", "offset": 10_000},
            )
            row(
                'tasks table, filter `args.lr == 0.01 and status == "success"`',
                "/ui/api/tasks",
                {"limit": 50, "filter": 'args.lr == 0.01 and status == "success"'},
            )
            overview = row("overview numbers", "/ui/api/overview")
            task_id = first["rows"][0]["task_id"]
            row("task detail page (HTML)", f"/ui/tasks/{task_id}")
            row("tasks page (HTML shell)", "/ui/tasks")
            plot = row(
                "results plot data (finished tasks, capped at 10,000; first load: "
                "metric and x chosen by the server)",
                "/ui/api/plot",
                k=max(3, samples // 4),
            )
            row(
                "results plot data, the page's next picture: summary.loss against args.lr "
                "coloured by args.model (keys known)",
                "/ui/api/plot",
                {"metric": "loss", "x": "lr", "color": "model", "keys": "false"},
                k=max(3, samples // 4),
            )
            rows.append(
                ("CSV export of every task (one request)", timed(c, "/ui/api/tasks.csv", 1)[0])
            )
        finally:
            impl.stop()
    print(
        f"\nDashboard at {n:,} tasks ({n // 2:,} finished), SQLite, {samples} samples "
        f"per row (plot: {max(3, samples // 4)}; CSV: 1); wall ms per request\n"
    )
    print("| request | p50 ms | p95 ms | target |")
    print("|---|---|---|---|")
    for label, walls in rows:
        target = "" if "CSV" in label else f"< {TARGET_MS:.0f} ms"
        print(f"| {label} | {median(walls):.1f} | {percentile(walls, 95):.1f} | {target} |")
    points = plot["points"] if "points" in plot else plot["task_id"]  # before / after columns
    print(f"\nplot points: {len(points):,} (truncated: {plot['truncated']})")
    print(f"overview: {overview['finished_recently']:,} runs finished in its window")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
