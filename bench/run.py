"""labtasker benchmark: ``python -m bench [--quick] [--compare] [--json FILE]``.

Starts its own servers on 127.0.0.1 (fresh SQLite file in a temporary directory), drives them
over HTTP and prints one markdown table. With ``--compare`` the same rows also run against
labtasker 1.0.1 and labtasker 2.x (each installed from PyPI into its own venv under
``bench/.cache/``; 1.0.1 rows capped by ``--ref-budget`` seconds), through each peer's own
REST API and CLI, and a ratio column per peer is added. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):  # run as `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, make_args, median, percentile

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CACHE = BENCH_DIR / ".cache"
REF_VERSION = "1.0.1"
V2_VERSION = "2.8.0"  # the newest 2.x on PyPI when this row set was written; pinned
V2_TOKEN = "bench-token-" + uuid.uuid4().hex[:12]
QUEUE_ME = "/api/v1/queues/me"


# ----------------------------------------------------------------------------- configuration


@dataclass
class Sizes:
    submit_one: int = 2000
    submit_bulk: int = 100_000
    sweep: int = 100_000
    claim_tasks: int = 5000
    claim_workers: tuple[int, ...] = (1, 4, 16)
    fetch_sizes: tuple[int, ...] = (1000, 10_000, 100_000)
    fetch_samples: int = 200
    ls_sizes: tuple[int, ...] = (10_000, 100_000)
    ls_samples: int = 30
    loop_tasks: int = 200
    startup_runs: int = 10

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            submit_one=100,
            submit_bulk=2000,
            sweep=2000,
            claim_tasks=200,
            claim_workers=(1, 4),
            fetch_sizes=(100, 1000),
            fetch_samples=20,
            ls_sizes=(1000,),
            ls_samples=5,
            loop_tasks=10,
            startup_runs=3,
        )


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x.replace("_", "").replace(",", "")) for x in text.split(",") if x)


def fmt_n(n: int) -> str:
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


# ----------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Impl:
    """One implementation under test: its interpreter, CLI and server."""

    name: str  # "current", "1.0.1" or the 2.x version
    kind: str  # "current", "ref101" or "v2"
    python: str
    cli: str
    workdir: Path
    budget: float | None = None  # seconds per row (1.0.1 only)
    port: int = 0
    proc: subprocess.Popen | None = None
    has_batch: bool | None = None
    db_url: str = ""
    db_path: str = ""
    queues: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (id, password)
    server_workers: int = 1  # server processes (``serve --workers N``; current only)
    # PYTHONPATH of the server (``None``: the installed labtasker; bench.dashboard passes this
    # checkout's ``src`` so that a worktree measures its own code)
    pythonpath: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_ref(self) -> bool:
        return self.kind == "ref101"

    @property
    def is_v2(self) -> bool:
        return self.kind == "v2"

    def start(self, timeout: float = 600.0) -> None:
        self.port = self.port or free_port()
        cmd = [self.python, str(BENCH_DIR / "serve.py"), self.kind, "--port", str(self.port)]
        if self.kind == "current":
            self.db_url = self.db_url or f"sqlite:///{self.workdir / 'labtasker.db'}"
            cmd += ["--db-url", self.db_url, "--workers", str(self.server_workers)]
        elif self.is_v2:
            self.db_path = self.db_path or str(self.workdir / "server.db")
            cmd += ["--db-path", self.db_path]
        else:
            self.db_path = self.db_path or str(self.workdir / "labtasker_db.json")
            cmd += ["--db-path", self.db_path]
        log = open(self.workdir / "server.log", "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "LABTASKER_SERVER_TOKEN": V2_TOKEN}
        env.pop("PYTHONPATH", None)
        if self.pythonpath is not None:
            env["PYTHONPATH"] = self.pythonpath
        self.proc = subprocess.Popen(
            cmd, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} server did not start: {self.log_tail()}")

    def fresh_database(self) -> None:
        """Restart on an empty database (1.0.1 between row groups: it rewrites its whole
        database file on every write, so leftovers of earlier rows would dominate)."""
        self.stop()
        self.db_path = str(self.workdir / f"labtasker_db-{uuid.uuid4().hex[:6]}.json")
        self.queues.clear()
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def server_pids(self) -> list[int]:
        """The server process and its children (the worker processes of ``--workers N``)."""
        assert self.proc is not None
        pids = [self.proc.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    pids.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return pids

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server processes so far (load-independent cost)."""
        total = 0
        for pid in self.server_pids():
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def rss_mb(self, field: str = "VmRSS:") -> float:
        """Memory of the server processes in MB: the sum of ``VmRSS`` (pages shared by the
        forked ``--workers`` processes counted once per process) or, with ``field="Pss:"``,
        of the proportional set size (shared pages split between the processes)."""
        total = 0.0
        for pid in self.server_pids():
            path = f"/proc/{pid}/status" if field == "VmRSS:" else f"/proc/{pid}/smaps_rollup"
            try:
                with open(path) as fh:
                    for line in fh:
                        if line.startswith(field):
                            total += int(line.split()[1]) / 1024.0
            except OSError:
                continue
        return total or float("nan")

    # ------------------------------------------------------------------ queues and seeding
    def client(self, queue: str) -> httpx.Client:
        """A client for one queue: basic auth with the queue's password (API v1), or the
        bearer token with ``/api/v2/queues/{queue}`` as base (2.x)."""
        if self.is_v2:
            return httpx.Client(
                base_url=f"{self.url}/api/v2/queues/{queue}",
                timeout=600,
                headers={"Authorization": f"Bearer {V2_TOKEN}"},
            )
        _qid, password = self.queues[queue]
        return httpx.Client(base_url=self.url, auth=(queue, password), timeout=600)

    def new_queue(self, label: str) -> str:
        """Create a queue over HTTP; returns its name."""
        name = f"{label}-{uuid.uuid4().hex[:8]}"
        if self.is_v2:
            resp = httpx.put(
                f"{self.url}/api/v2/queues/{name}",
                timeout=600,
                headers={"Authorization": f"Bearer {V2_TOKEN}"},
            )
            resp.raise_for_status()
            self.queues[name] = (name, V2_TOKEN)
            return name
        password = "pw-" + uuid.uuid4().hex[:8]
        resp = httpx.post(
            self.url + "/api/v1/queues",
            json={"queue_name": name, "password": password},
            timeout=600,
        )
        resp.raise_for_status()
        self.queues[name] = (resp.json()["queue_id"], password)
        return name

    def probe_batch(self) -> bool:
        if self.has_batch is None:
            if self.is_ref or self.is_v2:
                self.has_batch = False
            else:
                name = self.new_queue("probe")
                with self.client(name) as c:
                    r = c.post(QUEUE_ME + "/tasks/batch", json={"tasks": []})
                self.has_batch = r.status_code not in (404, 405)
        return self.has_batch

    def seed(self, queue: str, kind: str, start: int, count: int) -> None:
        """Add ``count`` pending tasks of ``kind`` (bulk route, or offline)."""
        if count <= 0:
            return
        qid, password = self.queues[queue]
        if self.is_v2:
            # 2.x has no batch route and its server owns the file: seed offline.
            self.stop()
            subprocess.run(
                [
                    self.python,
                    str(BENCH_DIR / "seed_v2.py"),
                    self.db_path,
                    queue,
                    kind,
                    str(start),
                    str(count),
                ],
                check=True,
                cwd=self.workdir,
                stdout=subprocess.DEVNULL,
            )
            self.start()
        elif self.is_ref:
            # 1.0.1 rewrites its whole database file on every write: seed offline.
            self.stop()
            subprocess.run(
                [
                    self.python,
                    str(BENCH_DIR / "seed_ref.py"),
                    self.db_path,
                    queue,
                    password,
                    kind,
                    str(start),
                    str(count),
                ],
                check=True,
                cwd=self.workdir,
                stdout=subprocess.DEVNULL,
            )
            self.start()
        elif self.probe_batch():
            bulk_submit(self, queue, kind, start, count)
        else:
            subprocess.run(
                [
                    sys.executable,
                    str(BENCH_DIR / "seed_current.py"),
                    self.db_url,
                    qid,
                    kind,
                    str(start),
                    str(count),
                ],
                check=True,
            )

    def cli_env(self, queue: str) -> dict[str, str]:
        """Environment for this implementation's CLI, configured for ``queue`` (a
        ``client.toml`` under ``LABTASKER_ROOT`` for API v1; ``LABTASKER_URL``/``_TOKEN``/
        ``_QUEUE`` and an empty root for 2.x), without the bench's own Python settings."""
        env = {**os.environ}
        for var in (
            "PYTHONPATH",
            "PYTHONDONTWRITEBYTECODE",
            "LABTASKER_TASK_ID",
            "LABTASKER_WORKER_ID",
            "LABTASKER_LOG_DIR",
            "LABTASKER_RUN_ID",
        ):
            env.pop(var, None)
        if self.is_v2:
            root = self.workdir / f"root-{queue}"
            root.mkdir(parents=True, exist_ok=True)
            env.update(
                LABTASKER_ROOT=str(root),
                LABTASKER_URL=self.url,
                LABTASKER_TOKEN=V2_TOKEN,
                LABTASKER_QUEUE=queue,
            )
        else:
            env["LABTASKER_ROOT"] = str(self.write_client_root(queue))
        return env

    def write_client_root(self, queue: str) -> Path:
        _qid, password = self.queues[queue]
        root = self.workdir / f"root-{queue}"
        root.mkdir(parents=True, exist_ok=True)
        (root / "client.toml").write_text(
            f'version_check = false\n\n[endpoint]\napi_base_url = "{self.url}"\n\n'
            f'[queue]\nqueue_name = "{queue}"\npassword = "{password}"\n\n'
            "[task]\nheartbeat_interval = 30.0\n"
        )
        return root


def bulk_submit(impl: Impl, queue: str, kind: str, start: int, count: int) -> float:
    """Submit through ``POST /tasks/batch`` in chunks of 5,000; returns the seconds taken."""
    bodies = [{"args": make_args(kind, n), "heartbeat_timeout": 3600} for n in range(count)]
    for off, body in enumerate(bodies):
        body["args"] = make_args(kind, start + off)
    t0 = time.perf_counter()
    with impl.client(queue) as c:
        for i in range(0, count, 5000):
            r = c.post(QUEUE_ME + "/tasks/batch", json={"tasks": bodies[i : i + 5000]})
            if r.status_code != 201:
                raise RuntimeError(f"batch submit failed: {r.status_code} {r.text[:300]}")
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- results


@dataclass
class Result:
    value: float | None  # the number compared (tasks/s, ms or MB)
    text: str  # shown in the table
    higher_better: bool = False
    note: str = ""
    na: str = ""  # why this implementation cannot run the row (a footnote of the table)


def na(reason: str) -> Result:
    """A row the implementation cannot do: shown as "—" with ``reason`` as a footnote."""
    return Result(None, "—", na=reason)


class Budget:
    def __init__(self, seconds: float | None):
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def left(self) -> bool:
        return self.deadline is None or time.monotonic() < self.deadline


def ms(x: float) -> str:
    if x != x:  # NaN
        return "-"
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def timed_post(c: httpx.Client, path: str, body: Any) -> tuple[httpx.Response, float, float]:
    return timed(c, "POST", path, json=body)


def timed(
    c: httpx.Client, method: str, path: str, **kwargs: Any
) -> tuple[httpx.Response, float, float]:
    """One request; returns the response, the client wall time and the server's
    ``X-Process-Time`` (both in ms; NaN when the header is missing)."""
    t0 = time.perf_counter()
    r = c.request(method, path, **kwargs)
    wall = (time.perf_counter() - t0) * 1000
    server = r.headers.get("x-process-time")
    return r, wall, float(server) if server else float("nan")


# ----------------------------------------------------------------------------- the two APIs
# API v1 (ours, 1.0.1): one queue per credentials, `POST /queues/me/tasks`, claim by
# `required_fields`. API v2 (2.x): `PUT /queues/{q}/tasks/{id}` with a client-chosen id,
# claim by route with a client-chosen `run_id`.


def api_submit(impl: Impl, c: httpx.Client, args: dict, route: str = "default") -> None:
    """Submit one task (``route`` only matters for 2.x)."""
    if impl.is_v2:
        r = c.put(f"/tasks/t_{secrets.token_urlsafe(9)}", json={"args": args, "routes": [route]})
    else:
        r = c.post(QUEUE_ME + "/tasks", json={"args": args, "heartbeat_timeout": 3600})
    if r.status_code != 201:
        raise RuntimeError(f"submit failed: {r.status_code} {r.text[:300]}")


def api_claim(
    impl: Impl, c: httpx.Client, kind: str, route: str = "default"
) -> tuple[bool, float, float]:
    """Claim one task of ``kind`` (API v1: by its required fields; 2.x: by ``route``);
    returns (found, wall ms, server ms)."""
    if impl.is_v2:
        body = {"route": route, "run_id": "r_" + secrets.token_urlsafe(9)}
        r, wall, server = timed(c, "POST", "/tasks/claim", json=body)
        if r.status_code not in (200, 204):
            raise RuntimeError(f"claim failed: {r.status_code} {r.text[:200]}")
        return r.status_code == 200, wall, server
    body = {"required_fields": REQUIRED[kind], "heartbeat_timeout": 3600}
    r, wall, server = timed_post(c, QUEUE_ME + "/tasks/next", body)
    if r.status_code != 200:
        raise RuntimeError(f"fetch failed: {r.status_code} {r.text[:200]}")
    return bool(r.json().get("found")), wall, server


def api_list(
    impl: Impl, c: httpx.Client, arg: str, value: int, limit: int = 100
) -> tuple[int, float, float]:
    """One listing page (default order) filtered by ``args.<arg> == value``; returns (tasks on
    the page, wall ms, server ms)."""
    if impl.is_v2:
        params = {"filter": f"args.{arg} == {value}", "limit": limit}
        r, wall, server = timed(c, "GET", "/tasks", params=params)
        items = r.json().get("items", []) if r.status_code == 200 else []
    else:
        body = {"extra_filter": {f"args.{arg}": value}, "limit": limit}
        r, wall, server = timed_post(c, QUEUE_ME + "/tasks/search", body)
        items = r.json().get("content", []) if r.status_code == 200 else []
    if r.status_code != 200:
        raise RuntimeError(f"ls failed: {r.status_code} {r.text[:200]}")
    return len(items), wall, server


# ----------------------------------------------------------------------------- rows


def row_submit_one(impl: Impl, sizes: Sizes, out: dict) -> None:
    queue = impl.new_queue("submit1")
    budget = Budget(impl.budget)
    done = 0
    with impl.client(queue) as c:
        cpu0 = impl.cpu_seconds()
        t0 = time.perf_counter()
        for n in range(sizes.submit_one):
            if not budget.left():
                break
            api_submit(impl, c, make_args("claim", n))
            done += 1
        elapsed = time.perf_counter() - t0
        cpu = (impl.cpu_seconds() - cpu0) / max(done, 1) * 1000
    rate = done / elapsed
    note = "" if done == sizes.submit_one else f"{done} of {sizes.submit_one} within budget"
    out["submit_one"] = Result(rate, f"{rate:,.0f}/s; server CPU {cpu:.2f} ms/task", True, note)


def row_http_floor(impl: Impl, sizes: Sizes, out: dict) -> None:
    """Server CPU per request of the cheapest routes: ``GET /health`` (no auth; no database
    for ours, one read for 2.x) and an authenticated read (``GET /queues/me``; 2.x: ``GET
    /api/v2/queues``): the HTTP stack's floor under every row. The authenticated read's CPU
    (ms per request) is the compared value."""
    queue = impl.new_queue("floor")
    n = max(200, sizes.submit_one)
    parts = []
    authed = (
        ("GET /api/v2/queues", impl.url + "/api/v2/queues")
        if impl.is_v2
        else ("GET /queues/me", impl.url + QUEUE_ME)
    )
    for label, path, auth in (("GET /health", impl.url + "/health", False), (*authed, True)):
        with impl.client(queue) if auth else httpx.Client() as c:
            c.get(path)
            cpu0 = impl.cpu_seconds()
            t0 = time.perf_counter()
            for _ in range(n):
                c.get(path)
            wall = (time.perf_counter() - t0) / n * 1000
            cpu = (impl.cpu_seconds() - cpu0) / n * 1000
        parts.append(f"{label} {cpu:.2f} ms CPU ({wall:.1f} ms wall)")
        if auth:  # compared: every API call is authenticated (2.x's /health reads the db)
            value = cpu
    out["http_floor"] = Result(
        value,
        "; ".join(parts)
        + " per request"
        + (" (its /health reads the database)" if impl.is_v2 else ""),
    )


def row_submit_bulk(impl: Impl, sizes: Sizes, out: dict) -> None:
    if impl.is_ref or impl.is_v2 or not impl.probe_batch():
        out["submit_bulk"] = na(
            f"labtasker {impl.name} has no batch route (one request per "
            "task: see the one-by-one row)"
        )
        return
    queue = impl.new_queue("bulk")
    cpu0 = impl.cpu_seconds()
    elapsed = bulk_submit(impl, queue, "claim", 0, sizes.submit_bulk)
    cpu = (impl.cpu_seconds() - cpu0) / sizes.submit_bulk * 1000
    rate = sizes.submit_bulk / elapsed
    out["submit_bulk"] = Result(rate, f"{rate:,.0f}/s; server CPU {cpu:.3f} ms/task", True)


def row_sweep(impl: Impl, sizes: Sizes, out: dict) -> None:
    """``labtasker task submit --grid i='range(N)' --yes`` end to end (CLI start, expansion,
    batches of 5,000 over HTTP, server), then the same with ``--unique`` into a fresh queue.
    Ours only: the peers' CLIs have no sweep (``--grid``) submit."""
    if impl.is_ref or impl.is_v2:
        reason = f"labtasker {impl.name}'s CLI has no sweep submit (one task per call)"
        out["sweep"] = out["sweep_unique"] = na(reason)
        return
    for key, extra in (("sweep", []), ("sweep_unique", ["--unique"])):
        queue = impl.new_queue(key.replace("_", "-"))
        env = {**os.environ, "LABTASKER_ROOT": str(impl.write_client_root(queue))}
        cmd = [
            impl.cli,
            "task",
            "submit",
            "--yes",
            *extra,
            "--grid",
            f"i=range({sizes.sweep})",
            "--",
            "--kind",
            "sweep",
        ]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{key}: {proc.stderr.strip()[-300:]}")
        rate = sizes.sweep / wall
        out[key] = Result(rate, f"{rate:,.0f}/s ({wall:.1f} s)", True)


def row_claim(impl: Impl, sizes: Sizes, workers: int, out: dict, combined: bool = False) -> None:
    """``claim_<workers>``: claim + report by ``workers`` processes until the queue is empty;
    ``combined`` (ours only, ``claim1_<workers>``): each report claims the next task in the
    same request, as our loop does."""
    key = f"claim1_{workers}" if combined else f"claim_{workers}"
    if combined and (impl.is_ref or impl.is_v2):
        out[key] = na(f"labtasker {impl.name} has no report that claims the next task")
        return
    queue = impl.new_queue(f"claim{workers}")
    impl.seed(queue, "claim", 0, sizes.claim_tasks)
    _qid, password = impl.queues[queue]
    tmp = Path(tempfile.mkdtemp(prefix="claim-", dir=impl.workdir))
    start_at = time.time() + 1.0 + 0.2 * workers
    deadline = start_at + (impl.budget if impl.budget else 3600)
    procs = []
    cpu0 = impl.cpu_seconds()
    for w in range(workers):
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(BENCH_DIR / "worker.py"),
                    impl.url,
                    queue,
                    password,
                    "default" if impl.is_v2 else ",".join(REQUIRED["claim"]),
                    str(tmp / f"w{w}.json"),
                    repr(start_at),
                    repr(deadline),
                    "v2" if impl.is_v2 else ("combined" if combined else "v1"),
                ]
            )
        )
    for p in procs:
        p.wait()
    cpu = impl.cpu_seconds() - cpu0
    ids: list[str] = []
    lat: list[float] = []
    errors = 0
    end = start_at
    for w in range(workers):
        data = json.loads((tmp / f"w{w}.json").read_text())
        ids += data["ids"]
        lat += data["lat"]
        errors += data["errors"]
        end = max(end, data["end"])
    shutil.rmtree(tmp, ignore_errors=True)
    dup = len(ids) - len(set(ids))
    rate = len(ids) / max(end - start_at, 1e-9)
    complete = len(set(ids)) == sizes.claim_tasks
    check = f"{dup} dup"
    if not complete:
        check += f", {len(set(ids))} of {sizes.claim_tasks} claimed" + (
            " within budget" if impl.budget else " (MISSING TASKS)"
        )
    if errors:
        check += f", {errors} HTTP errors"
    text = (
        f"{rate:,.0f}/s; p50 {ms(percentile(lat, 50) * 1000)} / "
        f"p99 {ms(percentile(lat, 99) * 1000)} ms; {check}; "
        f"server CPU {cpu / max(len(ids), 1) * 1000:.2f} ms/task"
    )
    out[key] = Result(rate, text, True)


def _fetch_samples(
    impl: Impl,
    queue: str,
    kind: str,
    samples: int,
    budget: Budget,
    before=None,
    route: str = "default",
) -> tuple[list[float], list[float]]:
    walls, servers = [], []
    with impl.client(queue) as c:
        for j in range(samples):
            if walls and not budget.left():
                break
            if before is not None:
                before(c, j)
            found, wall, server = api_claim(impl, c, kind, route)
            if not found:
                raise RuntimeError("fetch found nothing")
            walls.append(wall)
            servers.append(server)
    return walls, servers


def _lat_text(walls: list[float], servers: list[float], n_wanted: int) -> str:
    if servers and servers[0] == servers[0]:
        text = f"{ms(median(walls))} ms (server {ms(median(servers))})"
    else:
        text = f"{ms(median(walls))} ms"
    if len(walls) < n_wanted:
        text += f"; {len(walls)} samples"
    return text


def _ls_samples(impl: Impl, queue: str, arg: str, value: int, want: int, samples: int) -> Result:
    """``samples`` listings of one page filtered by ``args.<arg> == value``; each page must
    hold ``want`` tasks. The compared value is the server's time (the client's wall time when
    the server gives none)."""
    budget = Budget(impl.budget)
    walls, servers = [], []
    with impl.client(queue) as c:
        for _ in range(samples):
            if walls and not budget.left():
                break
            n, wall, server = api_list(impl, c, arg, value)
            if n != want:
                raise RuntimeError(f"ls {arg}=={value}: {n} tasks on the page, {want} wanted")
            walls.append(wall)
            servers.append(server)
    value_ms = median(servers) if servers and servers[0] == servers[0] else median(walls)
    return Result(value_ms, _lat_text(walls, servers, samples))


def rows_fetch_ls(impl: Impl, sizes: Sizes, out: dict) -> None:
    """fetch p50 at growing pending counts (one queue, topped up), ls at the listed sizes,
    the other-shapes row and the server RSS, all on the same queue."""
    queue = impl.new_queue("fetch")
    seeded = claimed = 0
    for size in sorted(set(sizes.fetch_sizes) | set(sizes.ls_sizes)):
        pending = seeded - claimed
        want = size + (sizes.fetch_samples if size in sizes.fetch_sizes else 0)
        impl.seed(queue, "fetch", seeded, want - pending)
        seeded += max(0, want - pending)
        if size in sizes.ls_sizes:
            # 10% of the tasks match args.grp == 3 (a full page); args.i == K matches one.
            out[f"ls_{size}"] = _ls_samples(impl, queue, "grp", 3, 100, sizes.ls_samples)
            out[f"lsone_{size}"] = _ls_samples(impl, queue, "i", seeded // 2, 1, sizes.ls_samples)
        if size in sizes.fetch_sizes:
            walls, servers = _fetch_samples(
                impl, queue, "fetch", sizes.fetch_samples, Budget(impl.budget)
            )
            claimed += len(walls)
            out[f"fetch_{size}"] = Result(
                median(walls), _lat_text(walls, servers, sizes.fetch_samples)
            )
    lo, hi = min(sizes.fetch_sizes), max(sizes.fetch_sizes)
    if f"fetch_{lo}" in out and f"fetch_{hi}" in out:
        ratio = out[f"fetch_{hi}"].value / out[f"fetch_{lo}"].value
        out["fetch_ratio"] = Result(ratio, f"{ratio:.2f}x")

    # 100k (largest size) pending tasks that this worker cannot take, 1 it can at a time:
    # API v1: of other arg shapes ({x} among {i, grp}); 2.x: on another route.
    def add_one(c: httpx.Client, j: int) -> None:
        api_submit(impl, c, make_args("other", j), route="other")

    walls, servers = _fetch_samples(
        impl, queue, "other", sizes.fetch_samples, Budget(impl.budget), add_one, route="other"
    )
    out["fetch_other"] = Result(median(walls), _lat_text(walls, servers, sizes.fetch_samples))
    if impl.is_ref:
        out["storage"] = na(
            "1.0.1's embedded store is one JSON file rewritten on every write; not measured"
        )
    else:
        out["storage"] = storage_per_task(impl)
    pss = impl.rss_mb("Pss:")
    out["rss"] = Result(
        impl.rss_mb(), f"{impl.rss_mb():.0f} MB" + (f" (PSS {pss:.0f} MB)" if pss == pss else "")
    )


def row_loop(impl: Impl, sizes: Sizes, out: dict) -> None:
    queue = impl.new_queue("loop")
    impl.seed(queue, "loop", 0, sizes.loop_tasks)
    env = impl.cli_env(queue)
    t0 = time.perf_counter()
    proc = subprocess.run(
        loop_cmd(impl, "true", "%{i}" if impl.is_v2 else "%(i)"),
        env=env,
        cwd=impl.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=3600,
    )
    t_loop = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace")[-500:]
        raise RuntimeError(f"loop exited {proc.returncode}: {tail}")
    with impl.client(queue) as c:
        if impl.is_v2:
            done = c.get("/tasks/count", params={"status": "succeeded"}).json()["count"]
        else:
            r = c.post(QUEUE_ME + "/tasks/search", json={"status": "success", "limit": 1000})
            done = len(r.json()["content"])
    t0 = time.perf_counter()
    for n in range(sizes.loop_tasks):
        subprocess.run(["true", str(n)], check=True)
    t_spawn = time.perf_counter() - t0
    per_task = (t_loop - t_spawn) / sizes.loop_tasks * 1000
    note = "" if done == sizes.loop_tasks else f"only {done} of {sizes.loop_tasks} succeeded"
    out["loop"] = Result(
        per_task,
        f"{per_task:.1f} ms (loop {t_loop:.2f} s vs spawn {t_spawn:.2f} s)"
        + (f"; {note}" if note else ""),
    )


def loop_cmd(impl: Impl, *job: str) -> list[str]:
    """``labtasker loop`` running ``job`` until the queue is empty (2.x: ``--idle-timeout 0``
    exits on the first empty claim; ours and 1.0.1 exit on an empty queue by default)."""
    if impl.is_v2:
        return [impl.cli, "loop", "--idle-timeout", "0", "--", *job]
    return [impl.cli, "loop", "--", *job]


def _run_times(cmd: list[str], runs: int, env: dict) -> list[float]:
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # warm
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _run_cpu_times(cmd: list[str], runs: int, env: dict) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system of the child) milliseconds of ``runs`` runs of ``cmd``
    after one warm-up run; each run must succeed."""
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    walls, cpus = [], []
    for _ in range(runs):
        before = os.times()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{cmd[1:4]} exited {proc.returncode}: "
                f"{proc.stderr.decode(errors='replace')[-300:]}"
            )
        walls.append((time.perf_counter() - t0) * 1000)
        after = os.times()
        cpus.append(
            (
                after.children_user
                - before.children_user
                + after.children_system
                - before.children_system
            )
            * 1000
        )
    return walls, cpus


def storage_per_task(impl: Impl) -> Result:
    """Bytes of the SQLite file per task (all of the run's tasks so far, their events and
    indexes), split by ``dbstat`` into the tasks table, its indexes, the event log (ours) or
    the route table (2.x: ``task_routes`` with its indexes), and the rest."""
    import sqlite3

    path = impl.db_path if impl.is_v2 else impl.db_url.removeprefix("sqlite:///")
    side = "task_routes" if impl.is_v2 else "events"
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        n_tasks = con.execute("SELECT count(*) FROM tasks").fetchone()[0]
        n_side = con.execute(f"SELECT count(*) FROM {side}").fetchone()[0]
        sizes = dict(con.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"))
        owner = dict(con.execute("SELECT name, tbl_name FROM sqlite_master"))
    finally:
        con.close()
    parts = {"tasks": 0, "task indexes": 0, side.replace("_", " "): 0, "other": 0}
    for name, size in sizes.items():
        table = owner.get(name, name)
        if name == "tasks":
            parts["tasks"] += size
        elif table == "tasks":
            parts["task indexes"] += size
        elif table == side:
            parts[side.replace("_", " ")] += size
        else:
            parts["other"] += size
    total = sum(parts.values()) / max(n_tasks, 1)
    split = ", ".join(f"{k} {v / max(n_tasks, 1):.0f}" for k, v in parts.items())
    return Result(
        total / 1024,
        f"{total / 1024:.2f} KB per task ({split} B; "
        f"{n_tasks:,} tasks, {n_side:,} {side.replace('_', ' ')} rows)",
    )


def _cpu_result(walls: list[float], cpus: list[float]) -> Result:
    return Result(median(walls), f"{median(walls):.0f} ms (CPU {median(cpus):.0f} ms)")


def rows_cli(impl: Impl, sizes: Sizes, out: dict) -> None:
    """One CLI process per call against the running server: ``task submit`` of one task,
    ``task ls`` (2.x: ``task list``) of a queue of 100 tasks, and ``loop`` on an empty queue
    (start-up, one empty claim, exit); wall and CPU per call."""
    queue = impl.new_queue("cli")
    env = impl.cli_env(queue)
    submit = [impl.cli, "task", "submit", "--args", '{"i": 1, "grp": 2}']
    out["cli_submit"] = _cpu_result(*_run_cpu_times(submit, sizes.startup_runs, env))
    empty = impl.new_queue("cli-empty")
    out["cli_loop"] = _cpu_result(
        *_run_cpu_times(loop_cmd(impl, "true"), sizes.startup_runs, impl.cli_env(empty))
    )
    impl.seed(queue, "fetch", 0, 100)
    ls = [impl.cli, "task", "list" if impl.is_v2 else "ls"]
    out["cli_ls"] = _cpu_result(*_run_cpu_times(ls, sizes.startup_runs, env))


def rows_startup(impl: Impl, sizes: Sizes, out: dict) -> None:
    # A configured client (version_check off: 1.0.1 would otherwise query PyPI on import).
    root = impl.workdir / "startup-root"
    root.mkdir(exist_ok=True)
    (root / "client.toml").write_text(
        'version_check = false\n\n[endpoint]\napi_base_url = "http://127.0.0.1:9"\n\n'
        '[queue]\nqueue_name = "startup"\npassword = "startup"\n'
    )
    env = {**os.environ, "LABTASKER_ROOT": str(root)}
    if impl.is_v2:  # 2.x refuses a v1 client.toml (legacy_config_found): use its variables
        (root / "client.toml").unlink()
        env.update(
            LABTASKER_URL="http://127.0.0.1:9", LABTASKER_QUEUE="startup", LABTASKER_TOKEN=V2_TOKEN
        )
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # users have .pyc caches; the warm-up writes them
    base = median(_run_times([impl.python, "-c", "pass"], sizes.startup_runs, env))
    out["help"] = _cpu_result(*_run_cpu_times([impl.cli, "--help"], sizes.startup_runs, env))
    out["loop_help"] = _cpu_result(
        *_run_cpu_times([impl.cli, "loop", "--help"], sizes.startup_runs, env)
    )
    t_imp = median(_run_times([impl.python, "-c", "import labtasker"], sizes.startup_runs, env))
    out["import"] = Result(t_imp, f"{t_imp:.0f} ms (bare python {base:.0f})")


# ----------------------------------------------------------------------------- driver

TARGETS = {
    "submit_one": "≥ 1,000/s",
    "submit_bulk": "≥ 20,000/s",
    "sweep": "≥ 10,000/s",
    "sweep_unique": "≥ 10,000/s",
    "claim_16": "≥ 800/s, 0 dup",
    "fetch_ratio": "≤ 2x",
    "ls_max": "≤ 10 ms server",  # the largest ls size
    "loop": "≤ 20 ms",
    "rss": "≤ 120 MB",
    "help": "≤ 200 ms",
    "cli_submit": "≤ 120 ms",
    "lsone_max": "≤ 10 ms server",
    "storage": "≤ 0.8 KB",
    "import": "≤ 150 ms",
}


def row_labels(sizes: Sizes) -> list[tuple[str, str]]:
    labels = [
        ("submit_one", f"submit {sizes.submit_one:,} one by one (tasks/s)"),
        ("submit_bulk", f"submit {sizes.submit_bulk:,} in bulk (tasks/s)"),
        ("sweep", f"`task submit --grid` sweep of {sizes.sweep:,}, end to end (tasks/s)"),
        ("sweep_unique", "the same with `--unique` (tasks/s)"),
    ]
    labels.append(
        (
            "http_floor",
            "HTTP floor: server CPU per request, sequential client "
            "(compared: the authenticated read)",
        )
    )
    for w in sizes.claim_workers:
        labels.append(
            (
                f"claim_{w}",
                f"claim + report, {w} worker process(es), {sizes.claim_tasks:,} tasks "
                "(tasks/s; latency)",
            )
        )
    top = max(sizes.claim_workers)
    for w in sorted({min(sizes.claim_workers), top}):
        labels.append(
            (
                f"claim1_{w}",
                f"claim + report in one request (our loop's), {w} worker process(es), "
                f"{sizes.claim_tasks:,} tasks (tasks/s; latency)",
            )
        )
    labels.append(
        (
            f"claim_{top}_procs2",
            f"claim + report, {top} worker process(es), server `--workers 2` (tasks/s; latency)",
        )
    )
    for n in sizes.fetch_sizes:
        labels.append((f"fetch_{n}", f"fetch p50, {fmt_n(n)} pending"))
    lo, hi = min(sizes.fetch_sizes), max(sizes.fetch_sizes)
    labels.append(("fetch_ratio", f"fetch p50 ratio {fmt_n(hi)} / {fmt_n(lo)} pending"))
    labels.append(
        ("fetch_other", f"fetch p50, {fmt_n(hi)} pending of other arg shapes + 1 matching")
    )
    for n in sizes.ls_sizes:
        labels.append((f"ls_{n}", f"`task ls` page of 100, args filter, {fmt_n(n)} tasks"))
    for n in sizes.ls_sizes:
        labels.append(
            (f"lsone_{n}", f"`task ls`, one-hit args filter (`args.i == K`), {fmt_n(n)} tasks")
        )
    labels += [
        ("loop", f"`loop` overhead per task, job `true`, {sizes.loop_tasks} tasks"),
        ("rss", f"server RSS with {fmt_n(hi)}+ tasks"),
        ("storage", "database size per task, events included (SQLite, dbstat)"),
        ("help", "`labtasker --help` (wall, median)"),
        ("loop_help", "`labtasker loop --help` (wall, median)"),
        ("cli_submit", "`labtasker task submit --args ...`, one process per call (wall, median)"),
        ("cli_ls", "`labtasker task ls`, 100+ tasks, one process (wall, median)"),
        ("cli_loop", "`labtasker loop -- true` on an empty queue, one process (wall, median)"),
        ("import", "`python -c 'import labtasker'` (wall, median)"),
    ]
    return labels


def ratio_text(key: str, cur: Result | None, ref: Result | None) -> str:
    """How ours compares with a peer on one row: "N.Nx better/worse" (by the row's value:
    higher is better for rates, lower for times and sizes)."""
    if cur is None or ref is None or cur.value is None or ref.value is None:
        return "—" if ref is not None and ref.na else "-"
    if key == "fetch_ratio" or not cur.value or not ref.value:
        return "-"
    factor = cur.value / ref.value if cur.higher_better else ref.value / cur.value
    return f"{factor:,.1f}x better" if factor >= 1 else f"{1 / factor:,.1f}x worse"


def render(sizes: Sizes, results: dict[str, dict[str, Result]], notes: list[str]) -> str:
    """The markdown table: one column per implementation (ours first), one ratio column per
    peer ("vs 1.0.1" = ours compared with 1.0.1), then the footnotes of the "—" cells."""
    names = list(results)
    peers = names[1:]
    header = ["row", "target"] + names + [f"vs {peer}" for peer in peers]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    footnotes: dict[str, str] = {}  # reason -> mark
    for key, label in row_labels(sizes):
        top_ls = f"_{max(sizes.ls_sizes)}"
        cells = [
            label,
            TARGETS.get(key.replace(top_ls, "_max") if key.endswith(top_ls) else key, ""),
        ]
        for name in names:
            res = results[name].get(key)
            cell = res.text if res else "-"
            if res and res.na:
                mark = footnotes.setdefault(res.na, chr(ord("a") + len(footnotes)))
                cell = f"— [{mark}]"
            elif res and res.note:
                cell += f" ({res.note})"
            cells.append(cell)
        for peer in peers:
            cells.append(ratio_text(key, results[names[0]].get(key), results[peer].get(key)))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"[{mark}] {reason}." for reason, mark in footnotes.items()]
    return "\n".join(lines + [""] + notes)


def ensure_venv(package: str, version: str) -> Path:
    """``bench/.cache/venv-<version>`` with ``<package>==<version>`` from PyPI (made once,
    reused while it holds that version)."""
    venv = CACHE / f"venv-{version}"
    python = venv / "bin" / "python"
    if python.exists():
        check = subprocess.run(
            [str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
            capture_output=True,
            text=True,
        )
        if check.stdout.strip() == version:
            return venv
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"[bench] installing {package}=={version} into {venv} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"{package}=={version}"], check=True)
    return venv


def row_claim_two_processes(impl: Impl, sizes: Sizes, out: dict) -> None:
    """The busiest claim row again against ``serve --workers 2`` on a fresh database (ours
    only: the peers have no multi-process server)."""
    top = max(sizes.claim_workers)
    if impl.is_ref:
        out[f"claim_{top}_procs2"] = na("1.0.1's server has no multi-process option")
        return
    if impl.is_v2:
        out[f"claim_{top}_procs2"] = na(
            f"labtasker {impl.name} allows exactly one server process per database file"
        )
        return
    workdir = impl.workdir / "procs2"
    workdir.mkdir(exist_ok=True)
    two = Impl(f"{impl.name} x2", impl.kind, impl.python, impl.cli, workdir, server_workers=2)
    two.start()
    try:
        two_out: dict[str, Result] = {}
        row_claim(two, sizes, top, two_out)
        out[f"claim_{top}_procs2"] = two_out[f"claim_{top}"]
    finally:
        two.stop()


def run_impl(impl: Impl, sizes: Sizes, only: set[str] | None) -> dict[str, Result]:
    out: dict[str, Result] = {}
    steps = [
        ("startup", lambda: rows_startup(impl, sizes, out)),
        ("startup", lambda: rows_cli(impl, sizes, out)),
        ("submit", lambda: row_submit_one(impl, sizes, out)),
        ("submit", lambda: row_submit_bulk(impl, sizes, out)),
        ("submit", lambda: row_sweep(impl, sizes, out)),
        ("claim", lambda: row_http_floor(impl, sizes, out)),
        *[("claim", lambda w=w: row_claim(impl, sizes, w, out)) for w in sizes.claim_workers],
        *[
            ("claim", lambda w=w: row_claim(impl, sizes, w, out, combined=True))
            for w in sorted({min(sizes.claim_workers), max(sizes.claim_workers)})
        ],
        ("claim", lambda: row_claim_two_processes(impl, sizes, out)),
        ("loop", lambda: row_loop(impl, sizes, out)),
        ("fetch", lambda: rows_fetch_ls(impl, sizes, out)),
    ]
    impl.start()
    try:
        for group, step in steps:
            if only and group not in only:
                continue
            t0 = time.monotonic()
            try:
                if impl.is_ref and group != "startup":
                    impl.fresh_database()
                step()
            except Exception as exc:  # keep going: one broken row must not hide the others
                print(f"[bench] {impl.name} {group}: FAILED: {exc}", file=sys.stderr)
                out.setdefault(f"error_{group}", Result(None, f"failed: {exc}"))
            print(f"[bench] {impl.name} {group}: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    finally:
        impl.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Small sizes (smoke test).")
    parser.add_argument(
        "--compare", action="store_true", help=f"Also run labtasker {REF_VERSION} and {V2_VERSION}."
    )
    parser.add_argument(
        "--peers",
        default=f"{REF_VERSION},{V2_VERSION}",
        help="With --compare: comma list of the peers to run (default: both).",
    )
    parser.add_argument(
        "--ref-budget",
        type=float,
        default=60.0,
        help="Seconds per row for labtasker 1.0.1 (it is too slow for the full sizes).",
    )
    parser.add_argument("--only", help="Comma list of groups: startup,submit,claim,loop,fetch.")
    parser.add_argument("--submit-one", type=int)
    parser.add_argument("--submit-bulk", type=int)
    parser.add_argument("--sweep", type=int, help="Tasks of the sweep rows.")
    parser.add_argument("--claim-tasks", type=int)
    parser.add_argument("--claim-workers", type=_ints, help="e.g. 1,4,16")
    parser.add_argument("--fetch-sizes", type=_ints, help="e.g. 1000,10000,100000")
    parser.add_argument("--fetch-samples", type=int)
    parser.add_argument("--ls-sizes", type=_ints, help="e.g. 10000,100000")
    parser.add_argument("--loop-tasks", type=int)
    parser.add_argument("--json", help="Also write the results as JSON to this file.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory.")
    args = parser.parse_args(argv)

    sizes = Sizes.quick() if args.quick else Sizes()
    for name in (
        "submit_one",
        "submit_bulk",
        "sweep",
        "claim_tasks",
        "claim_workers",
        "fetch_sizes",
        "fetch_samples",
        "ls_sizes",
        "loop_tasks",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(sizes, name, value)
    only = set(args.only.split(",")) if args.only else None

    tmp = Path(tempfile.mkdtemp(prefix="labtasker-bench-"))
    bindir = Path(sys.executable).parent
    impls = [
        Impl(
            "current",
            "current",
            sys.executable,
            str(bindir / "labtasker") if (bindir / "labtasker").exists() else "labtasker",
            tmp / "current",
        )
    ]
    peers = set(args.peers.split(",")) if args.compare else set()
    if REF_VERSION in peers:
        venv = ensure_venv("labtasker", REF_VERSION)
        impls.append(
            Impl(
                REF_VERSION,
                "ref101",
                str(venv / "bin" / "python"),
                str(venv / "bin" / "labtasker"),
                tmp / "ref",
                budget=args.ref_budget,
            )
        )
    if V2_VERSION in peers:
        venv = ensure_venv("labtasker", V2_VERSION)
        impls.append(
            Impl(
                V2_VERSION,
                "v2",
                str(venv / "bin" / "python"),
                str(venv / "bin" / "labtasker"),
                tmp / "v2",
            )
        )
    results: dict[str, dict[str, Result]] = {}
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    loads = []
    try:
        for impl in impls:
            impl.workdir.mkdir(parents=True)
            t0, load0 = time.monotonic(), os.getloadavg()[0]
            results[impl.name] = run_impl(impl, sizes, only)
            loads.append(
                f"{impl.name} {time.monotonic() - t0:.0f} s, load {load0:.1f} -> "
                f"{os.getloadavg()[0]:.1f}"
            )
    finally:
        for impl in impls:
            impl.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    cur = impls[0]
    notes = [
        f"SQLite (WAL, synchronous=FULL), {os.cpu_count()} CPU(s), Python "
        f"{sys.version.split()[0]}; total {time.monotonic() - started:.0f} s; load average "
        f"{load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end. "
        "Latencies are client-side wall times over HTTP; 'server' is the bench-side "
        "X-Process-Time (ASGI entry to response start). Per implementation: "
        + "; ".join(loads)
        + ".",
        "Bulk route: "
        + ("present" if cur.has_batch else "absent (seeding went straight to the database)")
        + ".",
    ]
    if REF_VERSION in peers:
        notes.append(
            f"labtasker {REF_VERSION}: embedded (mongomock) server, each row capped at "
            f"{args.ref_budget:.0f} s; its tasks are seeded offline."
        )
    if V2_VERSION in peers:
        notes.append(
            f"labtasker {V2_VERSION}: `labtasker-server serve --connection http` (SQLite WAL, "
            "synchronous=FULL, bearer token, access log off as for the others), driven "
            "through its REST API v2 and its own CLI; its big queues are seeded offline "
            "through its own TaskService (it has no batch route); `fetch` rows claim by "
            "route, and the 'other arg shapes' row puts the one claimable task on another "
            "route than the pending ones of the largest size."
        )
    errors = [
        f"{name}: {res.text}"
        for name, rows in results.items()
        for key, res in rows.items()
        if key.startswith("error_")
    ]
    if errors:
        notes.append("Errors: " + "; ".join(errors))
    print(render(sizes, results, notes))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    name: {k: {"value": r.value, "text": r.text} for k, r in rows.items()}
                    for name, rows in results.items()
                },
                indent=2,
            )
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
