"""Slow clients cannot hold the server (issue 12, "slow clients"): a real
``labtasker-server serve`` on 127.0.0.1, driven through raw sockets.

* A request head must be complete within ``HEADER_TIMEOUT`` seconds of the connection's
  opening, and of each answer on a keep-alive connection; bytes trickling in do not extend it.
* A request body must arrive within ``BODY_TIMEOUT`` seconds (408 naming the limit).
* At ``--max-connections``, connections waiting on their clients make room for new ones, so
  slow clients do not lock the others out; only busy connections lead to 503 server_busy.
* Event streams are long-lived answers, not slow clients: they outlive both timeouts.
* ``serve --workers 2`` runs the same protocol.

The timeouts are shortened for the tests (seconds); every bound leaves room for a loaded
machine.
"""

from __future__ import annotations

import json
import re
import select
import socket
import time
import uuid

import httpx
import pytest
from support.server import ServerProcess

HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 2.0
SLACK = 4.0  # seconds a closing may come after its deadline on a loaded machine
API = "/api/v1/queues/me"


def connect(srv: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    sock.setblocking(False)
    return sock


def trickle(
    sock: socket.socket, data: bytes, interval: float, limit: float
) -> tuple[float, bytes, bool]:
    """Send ``data`` one byte every ``interval`` s until the server closes the connection or
    ``limit`` s pass. Returns (seconds until end-of-file or ``limit``, bytes received, whether
    the server closed the connection)."""
    start = time.monotonic()
    received = b""
    sent = 0
    next_send = start
    while True:
        now = time.monotonic()
        if now - start >= limit:
            return now - start, received, False
        if sent < len(data) and now >= next_send:
            try:
                sock.send(data[sent : sent + 1])
                sent += 1
            except BlockingIOError:
                pass
            except OSError:  # reset by the server: it closed the connection
                return time.monotonic() - start, received, True
            next_send = now + interval
        readable, _, _ = select.select([sock], [], [], 0.05)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return time.monotonic() - start, received, True
            if not chunk:
                return time.monotonic() - start, received, True
            received += chunk


def head(path: str = "/health", extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: {'p' * 200}\r\n{extra}\r\n"
    ).encode()


def read_response(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read one complete answer with a Content-Length body."""
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        if b"\r\n\r\n" in data:
            top, _, rest = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", top)
            if length and len(rest) >= int(length.group(1)):
                return data
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    raise AssertionError(f"no complete answer within {timeout} s: {data!r}")


def is_open(sock: socket.socket) -> bool:
    """Whether the server still holds the connection (reads what it sent)."""
    while True:
        try:
            if sock.recv(65536) == b"":
                return False
        except BlockingIOError:
            return True
        except OSError:
            return False


def body_of(response: bytes) -> dict:
    return json.loads(response.partition(b"\r\n\r\n")[2])


@pytest.fixture(scope="module")
def srv(tmp_path_factory, scratch_dbs):
    """A server with shortened header and body timeouts; event streams ping every 0.5 s."""
    workdir = tmp_path_factory.mktemp("slow")
    server = ServerProcess(
        db_url=scratch_dbs.new_url(),
        workdir=workdir,
        extra_env={
            "HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            "BODY_TIMEOUT": str(BODY_TIMEOUT),
            "SSE_PING_INTERVAL": "0.5",
        },
    ).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def queue(srv) -> tuple[str, str]:
    name = "slow-" + uuid.uuid4().hex[:8]
    r = httpx.post(
        srv.url + "/api/v1/queues", json={"queue_name": name, "password": "pw"}, timeout=60
    )
    assert r.status_code == 201, r.text
    return name, "pw"


def test_a_trickled_request_head_is_answered_408_and_closed(srv):
    with connect(srv) as sock:
        elapsed, received, closed = trickle(sock, head(), 0.5, HEADER_TIMEOUT + SLACK)
    assert closed, f"still open after {elapsed:.1f} s"
    assert HEADER_TIMEOUT - 0.2 <= elapsed <= HEADER_TIMEOUT + SLACK
    assert received.startswith(b"HTTP/1.1 408 "), received
    answer = body_of(received)
    assert answer["code"] == "request_timeout"
    assert "--header-timeout" in answer["detail"] and f"{HEADER_TIMEOUT:g} s" in answer["detail"]


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(srv):
    with connect(srv) as sock:
        elapsed, received, closed = trickle(sock, b"", 1.0, HEADER_TIMEOUT + SLACK)
    assert closed and received == b""
    assert HEADER_TIMEOUT - 0.2 <= elapsed <= HEADER_TIMEOUT + SLACK


def test_a_keep_alive_connection_idle_then_trickling_is_closed(srv):
    """After an answer the next head has ``HEADER_TIMEOUT`` s in all, counted from the
    answer: uvicorn's keep-alive timer stops at the first byte, this one does not."""
    with connect(srv) as sock:
        sock.sendall(head())
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()
        time.sleep(HEADER_TIMEOUT * 0.5)  # idle, then one byte every 0.2 s
        _, received, closed = trickle(sock, head(), 0.2, HEADER_TIMEOUT + SLACK)
        elapsed = time.monotonic() - answered
    assert closed, f"still open {elapsed:.1f} s after the answer"
    assert HEADER_TIMEOUT - 0.2 <= elapsed <= HEADER_TIMEOUT + SLACK
    assert received.startswith(b"HTTP/1.1 408 "), received


def test_a_keep_alive_connection_serves_requests_sent_in_time(srv):
    """Requests each sent within the timeout keep one connection for longer than it."""
    with connect(srv) as sock:
        start = time.monotonic()
        for _ in range(4):
            sock.sendall(head())
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(HEADER_TIMEOUT * 0.5)
        assert time.monotonic() - start > HEADER_TIMEOUT * 1.5


@pytest.mark.parametrize("authenticated", [False, True])
def test_a_slow_request_body_is_answered_408(srv, queue, authenticated):
    body = json.dumps({"args": {"x": "y" * 100}}).encode()
    if authenticated:
        import base64

        token = base64.b64encode(f"{queue[0]}:{queue[1]}".encode()).decode()
        path, extra = API + "/tasks", f"Authorization: Basic {token}\r\n"
    else:
        path, extra = "/api/v1/queues", ""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode()
    with connect(srv) as sock:
        sock.sendall(request)
        elapsed, received, closed = trickle(sock, body, 0.2, BODY_TIMEOUT + SLACK)
    assert closed, f"still open after {elapsed:.1f} s"
    assert BODY_TIMEOUT - 0.2 <= elapsed <= BODY_TIMEOUT + SLACK
    assert received.startswith(b"HTTP/1.1 408 "), received
    answer = body_of(received)
    assert answer["code"] == "request_timeout"
    assert "--body-timeout" in answer["detail"] and f"{BODY_TIMEOUT:g} s" in answer["detail"]
    if authenticated:  # nothing was stored
        with httpx.Client(base_url=srv.url, auth=queue, timeout=30) as c:
            found = c.post(API + "/tasks/search", json={"limit": 10}).json()["content"]
        assert found == []


def test_an_event_stream_outlives_both_timeouts(srv, queue):
    """An event stream is a long answer, not a slow client: it keeps delivering pings and
    events well past the header and body timeouts."""
    with (
        httpx.Client(base_url=srv.url, auth=queue, timeout=30) as c,
        c.stream("GET", API + "/events") as stream,
    ):
        assert stream.status_code == 200
        lines = stream.iter_lines()
        start = time.monotonic()
        pings = 0
        while time.monotonic() - start < 2 * (HEADER_TIMEOUT + BODY_TIMEOUT):
            if next(lines).startswith("event: ping"):
                pings += 1
        with httpx.Client(base_url=srv.url, auth=queue, timeout=30) as other:
            r = other.post(API + "/tasks", json={"args": {"late": 1}})
            assert r.status_code == 201, r.text
        task_id = r.json()["task_id"]
        for line in lines:
            if task_id in line:
                break
        assert pings >= 3


def _slow_connections(srv: ServerProcess, n: int) -> list[socket.socket]:
    """``n`` connections, half with part of a request head, half with a complete head and
    part of a declared body."""
    socks = []
    for i in range(n):
        sock = connect(srv)
        if i % 2:
            sock.sendall(
                b"POST /api/v1/queues HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )
        else:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        socks.append(sock)
    return socks


@pytest.fixture(scope="module")
def tight(tmp_path_factory, scratch_dbs):
    """A server with room for 20 connections and timeouts far above the test's duration, so
    that only the connection cap decides."""
    workdir = tmp_path_factory.mktemp("tight")
    server = ServerProcess(
        db_url=scratch_dbs.new_url(),
        workdir=workdir,
        extra_env={
            "LABTASKER_MAX_CONNECTIONS": "20",
            "HEADER_TIMEOUT": "120",
            "BODY_TIMEOUT": "120",
            "SSE_PING_INTERVAL": "0.5",
        },
    ).start()
    yield server
    server.kill()


def test_slow_connections_do_not_lock_out_another_client(tight):
    """200 slow clients against room for 20: each new connection closes the one that has
    waited longest on its client, so another client's requests are answered at once."""
    socks = _slow_connections(tight, 200)
    try:
        for _ in range(5):
            start = time.monotonic()
            r = httpx.get(tight.url + "/health", timeout=10)
            assert r.status_code == 200, r.text
            assert time.monotonic() - start < 2.0
        time.sleep(0.5)
        still_open = sum(is_open(sock) for sock in socks)
        assert still_open <= 20, still_open
    finally:
        for sock in socks:
            sock.close()


def test_busy_connections_get_503_server_busy(tight):
    """When every connection has a request in progress (here: event streams), a new
    request is answered 503 server_busy with Retry-After; none of the streams is closed."""
    name = "busy-" + uuid.uuid4().hex[:8]
    assert (
        httpx.post(
            tight.url + "/api/v1/queues", json={"queue_name": name, "password": "pw"}, timeout=60
        ).status_code
        == 201
    )
    clients = [httpx.Client(base_url=tight.url, auth=(name, "pw"), timeout=30) for _ in range(20)]
    streams = []
    try:
        for c in clients:
            stream = c.stream("GET", API + "/events")
            response = stream.__enter__()
            assert response.status_code == 200
            streams.append((stream, response.iter_lines()))
        r = httpx.get(tight.url + "/health", timeout=10)
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "server_busy" and "--max-connections" in r.json()["detail"]
        assert r.headers["retry-after"] == "1"
        for _, lines in streams:  # every stream still delivers
            assert next(line for line in lines if line.startswith("event:"))
    finally:
        for stream, _ in streams:
            stream.__exit__(None, None, None)
        for c in clients:
            c.close()
    deadline = time.monotonic() + 10
    while httpx.get(tight.url + "/health", timeout=10).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_two_server_processes_apply_the_header_timeout(tmp_path, scratch_dbs):
    server = ServerProcess(
        db_url=scratch_dbs.new_url(),
        workdir=tmp_path,
        extra_env={"LABTASKER_SERVER_WORKERS": "2", "HEADER_TIMEOUT": str(HEADER_TIMEOUT)},
    ).start()
    try:
        deadline = time.monotonic() + 60
        while len(re.findall(r"Started server process", server.log_text())) < 2:
            assert time.monotonic() < deadline, server.log_text()
            time.sleep(0.1)
        socks = [connect(server) for _ in range(20)]
        for sock in socks:
            sock.send(b"GET /health HTTP/1.1\r\n")
        start = time.monotonic()
        open_ = set(socks)
        received: dict[socket.socket, bytes] = {s: b"" for s in socks}
        while open_ and time.monotonic() - start < HEADER_TIMEOUT + SLACK:
            readable, _, _ = select.select(list(open_), [], [], 0.1)
            for sock in readable:
                chunk = sock.recv(65536)
                received[sock] += chunk
                if not chunk:
                    open_.discard(sock)
        elapsed = time.monotonic() - start
        assert not open_, f"{len(open_)} of 20 connections still open after {elapsed:.1f} s"
        assert all(data.startswith(b"HTTP/1.1 408 ") for data in received.values())
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        for sock in socks:
            sock.close()
    finally:
        server.kill(15)


@pytest.mark.parametrize(
    "flag, value",
    [("--header-timeout", "0"), ("--body-timeout", "-1"), ("--header-timeout", "inf")],
)
def test_serve_refuses_a_bad_timeout(tmp_path, flag, value):
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "labtasker.server.cli",
            "serve",
            "--db-url",
            f"sqlite:///{tmp_path / 'x.db'}",
            flag,
            value,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert flag in done.stderr and "positive" in done.stderr
