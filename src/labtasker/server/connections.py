"""Connection limits below the application: slow clients cannot hold the server.

uvicorn by itself sets no timer on a new connection, and its keep-alive timer is cancelled by
the first byte that arrives, so a client that sends one byte every few seconds keeps its
connection (and its place under ``--max-connections``) forever. :func:`protocol_class`
builds the HTTP/1.1 protocol every ``labtasker-server serve`` process runs (one process or
``--workers N``), a subclass of uvicorn's h11 protocol that adds:

* **Header timeout** (``--header-timeout``, default 10 s): a connection must deliver a
  complete request head within that many seconds of being opened, and again within that many
  seconds of each response it got (the time between requests on a keep-alive connection).
  The deadline is fixed when the wait starts: bytes trickling in do not move it. When it
  passes, a connection holding part of a head is answered ``408`` (``code``
  ``request_timeout``) and closed; an idle one is closed without an answer (a client reusing
  it would otherwise read the 408 as the answer to its next request). uvicorn's own
  keep-alive timeout (5 s without any byte after a response) still applies as well.
* **Connection cap** (``--max-connections``, default 1000, per server process): when a new
  connection would go over it, the server closes the open connection that has waited longest
  for its client -- an unfinished request head, an idle keep-alive connection, or a request
  whose body is still arriving -- so connections that send nothing useful cannot lock other
  clients out. Only when every open connection has a request the server is working on (or an
  event stream it is sending) is the new connection's request answered ``503`` with
  ``Retry-After: 1`` (``code`` ``server_busy``); our client retries that.

The body of a request has its own deadline (``--body-timeout``), enforced by
``limits.RequestGuard`` where the body is read.

No per-address cap: a lab's loops often reach the server from one address (a reverse proxy,
a cluster's NAT gateway), so any default that stops an attacker would also stop them, and
with the two rules above one address can at most make the server close connections that
are waiting on their own clients. See docs/deployment.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from labtasker import error_codes

log = logging.getLogger("labtasker.server")

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 1000
SHED_LOG_INTERVAL = 10.0  # seconds between two summary lines about closed connections


def _json_response(status: bytes, body: dict[str, Any], extra: bytes = b"") -> bytes:
    """A complete HTTP/1.1 answer with a JSON body and ``connection: close`` (written raw, for
    connections that have no request h11 could answer)."""
    data = json.dumps(body).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: "
        + str(len(data)).encode()
        + b"\r\n"
        + extra
        + b"connection: close\r\n\r\n"
        + data
    )


class _ShedLog:
    """Counts connections closed by the limits and logs them as one summary line at most
    every ``SHED_LOG_INTERVAL`` seconds (a flood must not flood the log too)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.last = -SHED_LOG_INTERVAL
        self.pending: asyncio.TimerHandle | None = None

    def add(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if self.pending is not None:
            return
        loop = asyncio.get_running_loop()
        wait = self.last + SHED_LOG_INTERVAL - loop.time()
        if wait <= 0:
            self.flush()
        else:
            self.pending = loop.call_later(wait, self.flush)

    def flush(self) -> None:
        self.pending = None
        self.last = asyncio.get_running_loop().time()
        if self.counts:
            text = ", ".join(f"{n} {why}" for why, n in sorted(self.counts.items()))
            self.counts = {}
            log.warning("closed slow or surplus connections: %s", text)


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the header timeout and the connection cap of the module
    doc. Use :func:`protocol_class` to get one with the limits set; the class attributes
    below are its configuration (seconds, connections per process)."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    shed_log: _ShedLog = _ShedLog()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # the cap is ours (connection_made), not uvicorn's check
        self._head_timer: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0  # loop time at which the server began to wait on the client

    # -- the header timeout ------------------------------------------------------------

    def _wait_for_head(self) -> None:
        """Start the header timeout: a request head must be complete within
        ``header_timeout`` seconds from now."""
        self._stop_head_timer()
        self._waiting_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        self.shed_log.add(f"header timeout (--header-timeout {self.header_timeout:g} s)")
        self._close_waiting(
            f"request head not received within {self.header_timeout:g} s "
            f"(limit {self.header_timeout:g} s, --header-timeout)"
        )

    def _close_waiting(self, detail: str) -> None:
        """Close a connection the server is waiting on: with a 408 answer when it holds part
        of a request head, silently when it is idle between requests."""
        partial = (
            self.conn.their_state is h11.IDLE
            and self.conn.our_state is h11.IDLE
            and bool(self.conn.trailing_data[0])
        )
        if partial:
            self.transport.write(
                _json_response(
                    b"408 Request Timeout", {"detail": detail, "code": error_codes.REQUEST_TIMEOUT}
                )
            )
        self.transport.close()

    # -- uvicorn's protocol hooks ------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for_head()
        if self._over_cap() and not self._make_room():
            self.app = _busy(self.max_connections)  # every other connection is being served

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request head arrived
            self._stop_head_timer()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._stop_head_timer()
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # also starts a request already pipelined
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._wait_for_head()

    # -- the connection cap ------------------------------------------------------------

    def waiting_on_client(self) -> bool:
        """True while the server waits for this client to send something: a request head
        (or an idle keep-alive connection), or the rest of a request body before any answer
        has started."""
        cycle = self.cycle
        if self.transport is None or self.transport.is_closing():
            return False
        if cycle is None or cycle.response_complete:
            return True
        return cycle.more_body and not cycle.response_started and not cycle.disconnected

    def _over_cap(self) -> bool:
        """More open connections than ``max_connections`` (those already closing, whose
        ``connection_lost`` has not run yet, do not count)."""
        if len(self.connections) <= self.max_connections:
            return False
        open_ = sum(
            1
            for c in self.connections
            if getattr(c, "transport", None) is None or not c.transport.is_closing()
        )
        return open_ > self.max_connections

    def _make_room(self) -> bool:
        """Close the open connection that has waited longest on its client; False when
        every other connection has a request in progress."""
        oldest: LimitedH11Protocol | None = None
        for other in self.connections:
            if (
                other is not self
                and isinstance(other, LimitedH11Protocol)
                and other.waiting_on_client()
                and (oldest is None or other._waiting_since < oldest._waiting_since)
            ):
                oldest = other
        if oldest is None:
            return False
        self.shed_log.add(f"closed to make room (--max-connections {self.max_connections})")
        oldest._stop_head_timer()
        if oldest.cycle is None or oldest.cycle.response_complete:
            oldest._close_waiting(
                f"request head not complete when the server needed the connection "
                f"(limit {self.max_connections} connections, --max-connections)"
            )
        else:
            oldest.transport.close()  # a body still arriving: the request sees a disconnect
        return True


def _busy(limit: int):
    """An ASGI app answering 503 ``server_busy`` (``Retry-After: 1``) and closing."""
    body = json.dumps(
        {
            "detail": f"server at its connection limit ({limit} connections, "
            "--max-connections), every one with a request in progress",
            "code": error_codes.SERVER_BUSY,
        }
    ).encode()

    async def app(scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"1"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def protocol_class(
    header_timeout: float = DEFAULT_HEADER_TIMEOUT, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> type[LimitedH11Protocol]:
    """The protocol class to pass as ``http=`` to ``uvicorn.Config``: a subclass of
    :class:`LimitedH11Protocol` with ``header_timeout`` (seconds, > 0) and
    ``max_connections`` (open connections per process, >= 1). ``ValueError`` otherwise."""
    if not (header_timeout > 0 and math.isfinite(header_timeout)):
        raise ValueError(f"header timeout must be positive, got {header_timeout!r}")
    if max_connections < 1:
        raise ValueError(f"max connections must be at least 1, got {max_connections!r}")
    return type(
        "LimitedH11Protocol",
        (LimitedH11Protocol,),
        {
            "header_timeout": float(header_timeout),
            "max_connections": max_connections,
            "shed_log": _ShedLog(),
        },
    )
