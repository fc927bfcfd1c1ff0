"""Measuring live events: commit-to-listener latencies of new tasks, their summary, and
the settings of servers whose streams poll the log only rarely (so that a bound on the
latency holds only if commits wake the listeners)."""

from __future__ import annotations

import random
import statistics
import time
import uuid

import httpx

from labtasker.client.events import EventListener
from support.http import API

# The latency tests' servers re-read the event log on their own (fallback poll, and with each
# ping) only every SLOW_POLL s, far above the latency bounds: the bounds hold only when a commit
# wakes the listeners (in-process on SQLite, NOTIFY on PostgreSQL).
SLOW_POLL = 30.0
SLOW_POLL_ENV = {"EVENT_POLL_INTERVAL": str(SLOW_POLL), "SSE_PING_INTERVAL": str(SLOW_POLL)}
LATENCY_BOUND = 0.150  # s, median commit-to-listener latency
MAX_LATENCY = 5.0  # s, any single event


def event_latencies(
    writer: httpx.Client, listener: EventListener, n: int = 20, timeout: float = MAX_LATENCY
) -> list[float]:
    """Submit ``n`` tasks one by one through ``writer``; for each, the seconds from the
    acknowledged (committed) submission until ``listener`` delivers its ``created -> pending``
    event. Submissions are spaced by random pauses so they do not line up with any poll
    period. Fails when an event takes longer than ``timeout`` s."""
    rng = random.Random(7)
    out = []
    for i in range(n):
        resp = writer.post(f"{API}/tasks", json={"args": {"i": i}})
        acked = time.perf_counter()
        assert resp.status_code == 201, resp.text
        tid = resp.json()["task_id"]
        while True:
            left = acked + timeout - time.perf_counter()
            assert left > 0, f"event of task {i} not delivered within {timeout} s"
            ev = listener.get_event(timeout=left)
            if ev is not None and ev.event.entity_id == tid:
                out.append(time.perf_counter() - acked)
                break
        time.sleep(rng.uniform(0.02, 0.25))
    return out


def describe(latencies: list[float]) -> str:
    ms = sorted(1000 * x for x in latencies)
    return (
        f"median {statistics.median(ms):.1f} ms, p90 {ms[int(0.9 * len(ms)) - 1]:.1f} ms, "
        f"max {ms[-1]:.1f} ms over {len(ms)}"
    )


def new_queue(url: str) -> httpx.Client:
    """A fresh queue on the server at ``url``; returns a client authenticated as it."""
    name = "q-" + uuid.uuid4().hex[:12]
    resp = httpx.post(url + "/api/v1/queues", json={"queue_name": name, "password": "pw"})
    assert resp.status_code == 201, resp.text
    return httpx.Client(base_url=url, auth=(name, "pw"), timeout=30)
