"""Flood benchmark: ``python -m bench.flood [--seconds S] [--only a,b] [--db-url URL]
[--workers N] [--json FILE]``.

Starts one ``labtasker-server serve`` on 127.0.0.1 (a fresh SQLite file in a temporary
directory unless ``--db-url`` names an empty database; the server is the labtasker that this
interpreter imports, so ``PYTHONPATH=OTHER/src`` measures another checkout) and runs each
flood for ``--seconds`` while another tenant works as a loop would: submit a task, claim it,
report it (one keep-alive connection), plus a search on a new connection each round.
Printed per flood: the server's RSS before and at its peak (sampled every 50 ms; with
``--workers`` the processes summed), the other tenant's p50/p99/max latency and errors, and
what the flood got back.

The floods come from 127.0.0.2 (another address than the tenant's 127.0.0.1), each from a
child process so that the flood's own CPU does not sit in the measuring process:

* ``none``: no flood (the baseline).
* ``slowloris``: 1000 connections sending a request head one byte every 2 s; each
  connection the server closes is opened again at once.
* ``wrong_password``: 40 concurrent clients, each request with a new wrong password.
* ``big_body``: 6 concurrent clients sending 100 MiB bodies: declared by Content-Length,
  streamed (chunked) with valid credentials, and with wrong credentials.
* ``regex``: 8 concurrent clients searching the flooding tenant's 2,000 tasks with
  ``$regex`` ``^(a+)+$`` (exponential for a backtracking engine), a 1,000-member ``$or``, and
  filters over the cost budget.
* ``filters``: 8 concurrent clients each sending filters of a shape never sent before
  (the statement cache).

Only the standard library and httpx are imported here (not labtasker), so it drives any
version of the server. Figures: docs/deployment.md, *Floods*.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

API = "/api/v1/queues/me"
FLOOD_ADDRESS = "127.0.0.2"
FLOODS = ("none", "slowloris", "wrong_password", "big_body", "regex", "filters")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    """``p``-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    data = sorted(values)
    k = (len(data) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


# --------------------------------------------------------------------------- the server
class Server:
    """A ``labtasker-server serve`` child process and its memory."""

    def __init__(self, workdir: Path, db_url: str | None, workers: int) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.db_url = db_url or f"sqlite:///{workdir / 'labtasker.db'}"
        self.workers = workers
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.workdir / "server.log", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "labtasker.server.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--db-url",
                self.db_url,
                "--workers",
                str(self.workers),
                "--log-level",
                "warning",
            ],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.log_tail())
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not start: " + self.log_tail())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def pids(self) -> list[int]:
        assert self.proc is not None
        pids = [self.proc.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    pids.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return pids

    def rss_mb(self) -> float:
        total = 0.0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as fh:
                    for line in fh:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) / 1024.0
            except OSError:
                continue
        return total


class RssSampler(threading.Thread):
    """Samples the server's RSS every 50 ms until stopped; ``peak`` in MB."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peak = 0.0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, self.server.rss_mb())
            self.stopped.wait(0.05)


def new_queue(url: str, name: str, password: str) -> None:
    r = httpx.post(
        url + "/api/v1/queues", json={"queue_name": name, "password": password}, timeout=120
    )
    if r.status_code != 201:
        raise RuntimeError(f"cannot create queue {name}: {r.status_code} {r.text[:200]}")


# --------------------------------------------------------------------------- the tenant
def tenant(url: str, auth: tuple[str, str], seconds: float) -> dict:
    """Work as a loop for ``seconds``: per round submit, claim and report on one keep-alive
    connection, then one search on a new connection. Returns latencies (ms) and errors."""
    latencies: list[float] = []
    fresh: list[float] = []
    errors: Counter[str] = Counter()

    def timed(
        client: httpx.Client, method: str, path: str, body: dict, want: int, into: list[float]
    ) -> httpx.Response | None:
        start = time.perf_counter()
        try:
            r = client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] += 1
            return None
        into.append((time.perf_counter() - start) * 1000.0)
        if r.status_code != want:
            errors[str(r.status_code)] += 1
            return None
        return r

    with httpx.Client(base_url=url, auth=auth, timeout=60) as c:
        c.post(API + "/tasks/search", json={"limit": 1})  # the password check, not measured
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            i += 1
            timed(c, "POST", API + "/tasks", {"args": {"round": i}}, 201, latencies)
            r = timed(
                c, "POST", API + "/tasks/next", {"required_fields": ["round"]}, 200, latencies
            )
            task = r.json().get("task") if r is not None else None
            if task:
                timed(
                    c,
                    "POST",
                    f"{API}/tasks/{task['task_id']}/status",
                    {"status": "success", "run_id": task["run_id"]},
                    200,
                    latencies,
                )
            with httpx.Client(base_url=url, auth=auth, timeout=60, verify=False) as once:
                timed(once, "POST", API + "/tasks/search", {"limit": 10}, 200, fresh)
            time.sleep(0.02)
    return {"latencies": latencies, "fresh": fresh, "errors": dict(errors)}


# --------------------------------------------------------------------------- the floods
def _flood_main(
    kind: str,
    url: str,
    auth: tuple[str, str],
    seconds: float,
    results: multiprocessing.Queue,
    started: Any,
) -> None:
    """Entry point of a flood's child process: sets ``started`` (an Event) once the flood
    begins, and puts its summary dict on ``results`` at the end."""
    try:
        if kind == "slowloris":
            out = slowloris(url, seconds, started)
        else:
            out = asyncio.run(request_flood(kind, url, auth, seconds, started))
    except Exception as exc:  # noqa: BLE001 - the report names it
        out = {"error": f"{type(exc).__name__}: {exc}"}
    results.put(out)


def slowloris(url: str, seconds: float, started: Any, n: int = 1000, interval: float = 2.0) -> dict:
    """``n`` connections trickling a request head, one byte every ``interval`` s each; a
    connection the server closes is replaced at once. Reports how many of the first ``n``
    the server still held at the end, and how many connections were opened in all."""
    port = int(url.rsplit(":", 1)[1])
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: " + b"s" * 4000 + b"\r\n\r\n"
    sel = selectors.DefaultSelector()
    conns: dict[socket.socket, list] = {}  # sock -> [bytes sent, next send, first batch]
    opened = refused = 0

    def open_one(first: bool) -> None:
        nonlocal opened, refused
        sock = socket.socket()
        try:
            sock.bind((FLOOD_ADDRESS, 0))
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))
        except OSError:
            refused += 1
            sock.close()
            return
        sock.setblocking(False)
        opened += 1
        conns[sock] = [0, time.monotonic() + random.uniform(0, interval), first]
        sel.register(sock, selectors.EVENT_READ)

    def drop(sock: socket.socket) -> None:
        sel.unregister(sock)
        conns.pop(sock)
        sock.close()

    started.set()
    end = time.monotonic() + seconds
    for _ in range(n):
        open_one(True)
    while time.monotonic() < end:
        now = time.monotonic()
        for sock, state in list(conns.items()):
            if state[1] <= now:
                try:
                    sock.send(head[state[0] % len(head) : state[0] % len(head) + 1])
                    state[0] += 1
                except BlockingIOError:
                    pass
                except OSError:
                    drop(sock)
                    open_one(False)
                    continue
                state[1] = now + interval
        for key, _ in sel.select(timeout=0.05):
            sock = key.fileobj  # type: ignore[assignment]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                drop(sock)  # closed by the server
                open_one(False)
    survivors = sum(1 for state in conns.values() if state[2])
    held = len(conns)
    for sock in list(conns):
        drop(sock)
    return {
        "opened": opened,
        "refused": refused,
        "open_at_end": held,
        f"first_{n}_still_open_after_{seconds:g}s": survivors,
    }


def _random_filter(rng: random.Random, depth: int = 0) -> dict:
    """A filter of a random shape (fields, operators, nesting): practically never the same
    SQL twice."""
    if depth < 2 and rng.random() < 0.4:
        op = rng.choice(["$and", "$or"])
        return {op: [_random_filter(rng, depth + 1) for _ in range(rng.randint(2, 4))]}
    path = "args." + ".".join(f"k{rng.randint(0, 50)}" for _ in range(rng.randint(1, 3)))
    kind = rng.choice(["$gt", "$lt", "$in", "$exists", "$ne", "$size", "eq"])
    if kind == "eq":
        return {path: rng.randint(0, 100)}
    if kind == "$in":
        return {path: {"$in": [rng.randint(0, 100) for _ in range(rng.randint(1, 12))]}}
    if kind == "$exists":
        return {path: {"$exists": rng.random() < 0.5}}
    return {path: {kind: rng.randint(0, 100)}}


async def request_flood(
    kind: str, url: str, auth: tuple[str, str], seconds: float, started: Any = None
) -> dict:
    """A flood of requests of ``kind`` (module doc) from ``FLOOD_ADDRESS``; counts answers by
    status (and transport errors by name)."""
    statuses: Counter[str] = Counter()
    rng = random.Random(12)
    chunk = b"x" * (1 << 20)

    async def body_chunks(n: int):
        for _ in range(n):
            yield chunk

    concurrency = {"wrong_password": 40, "big_body": 6, "regex": 8, "filters": 8}[kind]
    # one client for all workers (a client per worker spent seconds building TLS contexts
    # on a loaded machine before its first request)
    transport = httpx.AsyncHTTPTransport(
        local_address=FLOOD_ADDRESS, verify=False, limits=httpx.Limits(max_connections=concurrency)
    )
    c = httpx.AsyncClient(base_url=url, auth=auth, timeout=60, transport=transport)
    wrong = (auth[0], "wrong")

    big_or = {"$or": [{"args.i": k} for k in range(1000)]}
    too_costly = {"$and": [{f"args.{'.'.join(['d'] * 16)}{k}": k} for k in range(600)]}
    regex_filters = [
        {"args.s": {"$regex": "^(a+)+$"}},
        big_or,
        too_costly,
        {"args.s": {"$regex": "(a{255}){255}"}},
    ]

    async def declared_too_large() -> str:
        """A head declaring 100 MiB (httpx will not send a body shorter than declared)."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(FLOOD_ADDRESS, 0)
        )
        try:
            writer.write(
                (
                    f"POST {API}/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: {basic}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {100 << 20}\r\n\r\n{{"
                ).encode()
            )
            await writer.drain()
            status = await reader.readline()
            return status.split()[1].decode() if len(status.split()) > 1 else "closed"
        finally:
            writer.close()

    async def worker(w: int) -> None:
        n = 0
        while True:
            n += 1
            try:
                if kind == "wrong_password":
                    r = await c.post(
                        API + "/tasks/search", json={"limit": 1}, auth=(auth[0], uuid.uuid4().hex)
                    )
                elif kind == "big_body":
                    form = (w + n) % 3
                    if form == 0:  # declared too large: refused before reading
                        statuses[await declared_too_large()] += 1
                        continue
                    if form == 1:  # streamed: refused once 64 MiB were read
                        r = await c.post(
                            API + "/tasks",
                            content=body_chunks(100),
                            headers={"Content-Type": "application/json"},
                        )
                    else:  # wrong credentials: refused before reading
                        r = await c.post(
                            API + "/tasks",
                            content=body_chunks(100),
                            auth=wrong,
                            headers={"Content-Type": "application/json"},
                        )
                elif kind == "regex":
                    r = await c.post(
                        API + "/tasks/search",
                        json={
                            "extra_filter": regex_filters[(w + n) % len(regex_filters)],
                            "limit": 100,
                        },
                    )
                else:  # filters
                    r = await c.post(
                        API + "/tasks/search",
                        json={"extra_filter": _random_filter(rng), "limit": 10},
                    )
                statuses[str(r.status_code)] += 1
            except (httpx.HTTPError, OSError) as exc:
                statuses[type(exc).__name__] += 1
                await asyncio.sleep(0.05)

    import base64

    port = int(url.rsplit(":", 1)[1])
    basic = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    tasks = [asyncio.ensure_future(worker(w)) for w in range(concurrency)]
    if started is not None:
        started.set()
    await asyncio.wait(tasks, timeout=seconds)
    for task in tasks:  # requests still in flight at the end are abandoned, not counted
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await c.aclose()
    return {"concurrency": concurrency, "answers": dict(sorted(statuses.items()))}


def seed_flooder(url: str, auth: tuple[str, str], n: int = 2000) -> None:
    """The flooding tenant's own tasks: strings a backtracking ``^(a+)+$`` takes
    exponentially long to refuse, and numbers for the ``$or``."""
    with httpx.Client(base_url=url, auth=auth, timeout=120) as c:
        tasks = [{"args": {"s": "a" * 27 + "!", "i": i, "k1": i % 7}} for i in range(n)]
        r = c.post(API + "/tasks/batch", json={"tasks": tasks})
        if r.status_code != 201:
            raise RuntimeError(f"seeding failed: {r.status_code} {r.text[:200]}")


# --------------------------------------------------------------------------- driver
def run_flood(
    kind: str,
    server: Server,
    tenant_auth: tuple[str, str],
    flood_auth: tuple[str, str],
    seconds: float,
) -> dict:
    """One flood with the tenant working beside it; returns the row's figures."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    started = ctx.Event()
    child = None
    if kind != "none":
        child = ctx.Process(
            target=_flood_main, args=(kind, server.url, flood_auth, seconds, results, started)
        )
        child.start()
        if not started.wait(timeout=120):
            raise RuntimeError(f"flood {kind} did not start")
        time.sleep(1.0)  # let the flood build up before measuring
    before = server.rss_mb()
    sampler = RssSampler(server)
    sampler.start()
    work = tenant(server.url, tenant_auth, seconds - (1.0 if child else 0.0))
    sampler.stopped.set()
    flood = results.get(timeout=seconds + 120) if child else {}
    if child:
        child.join(timeout=60)
    sampler.join()
    lat = work["latencies"] + work["fresh"]
    row = {
        "flood": kind,
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(sampler.peak, 1),
        "requests": len(lat),
        "p50_ms": round(percentile(lat, 50), 1),
        "p99_ms": round(percentile(lat, 99), 1),
        "max_ms": round(max(lat, default=0), 1),
        "fresh_p99_ms": round(percentile(work["fresh"], 99), 1),
        "errors": work["errors"],
        "flood_result": flood,
    }
    time.sleep(2.0)  # let the server settle before the next flood
    return row


def render(rows: list[dict]) -> str:
    out = [
        "| flood | server RSS before → peak | tenant requests | p50 | p99 | max | "
        "p99, new connection | tenant errors | the flood got |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
        flood = r["flood_result"]
        got = "; ".join(f"{k} {v}" for k, v in flood.items()) if flood else "—"
        out.append(
            f"| {r['flood']} | {r['rss_before_mb']:.0f} → {r['rss_peak_mb']:.0f} MB | "
            f"{r['requests']} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | "
            f"{r['max_ms']:.0f} ms | {r['fresh_p99_ms']:.1f} ms | {errors} | {got} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.flood", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="Length of each flood (default 20)."
    )
    parser.add_argument(
        "--only",
        default=",".join(FLOODS),
        help=f"Comma-separated floods to run, in order ({', '.join(FLOODS)}).",
    )
    parser.add_argument(
        "--db-url",
        default=None,
        help="An empty database for the server (default: a fresh SQLite file).",
    )
    parser.add_argument("--workers", type=int, default=1, help="serve --workers N.")
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows here.")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in FLOODS]
    if unknown:
        parser.error(f"unknown flood {unknown[0]!r}; choose from {', '.join(FLOODS)}")
    if args.seconds < 3:
        parser.error("--seconds must be at least 3")
    rows = []
    with tempfile.TemporaryDirectory(prefix="lt-flood-") as tmp:
        server = Server(Path(tmp), args.db_url, args.workers)
        server.start()
        try:
            tenant_auth = ("tenant-b", "tenant-b-password")
            flood_auth = ("tenant-x", "tenant-x-password")
            new_queue(server.url, *tenant_auth)
            new_queue(server.url, *flood_auth)
            seed_flooder(server.url, flood_auth)
            for kind in kinds:
                print(f"flood {kind} ({args.seconds:g} s)...", file=sys.stderr, flush=True)
                rows.append(run_flood(kind, server, tenant_auth, flood_auth, args.seconds))
        finally:
            server.stop()
    load = os.getloadavg()
    print(render(rows))
    print(
        f"\n{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        f"(1 / 5 / 15 min) at the end; {args.seconds:g} s per flood; server "
        f"--workers {args.workers} on {args.db_url or 'a fresh SQLite file'}."
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
