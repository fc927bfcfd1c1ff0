"""Listening to a queue's live events: ``connect_events`` and ``EventListener``.

The listener runs a daemon thread that holds the SSE stream (parsed by ``httpx-sse``) ``GET /api/v1/queues/me/events``
open and puts every message on an in-memory queue. When the connection drops it reconnects on
its own with ``Last-Event-ID`` set to the last event it saw, so no event is missed as long as
the server still keeps it (the server keeps a bounded log). ``stop()`` ends it.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator

import httpx
from httpx_sse import EventSource, ServerSentEvent

from labtasker.exceptions import LabtaskerRuntimeError
from labtasker.wire import EventResponse

EVENTS_PATH = "/api/v1/queues/me/events"


# 4xx answers worth another try: the server is busy (429) or timed the request out (408)
_RETRIED = frozenset({408, 429})


class EventListener:
    """A background listener of the current queue's events.

    ``client``: an ``httpx.Client`` with base URL and auth (default: the one built from
    ``client.toml``). Use ``start()`` (or ``connect_events()``), then ``iter_events()`` /
    ``get_event(timeout)``; ``stop()`` when done. ``on_status``, if given, is called (from
    the listener thread) with a one-line message when the connection drops and when it is
    back, so that a reconnect is never silent. ``last_event_id``: resume after this event
    id (the ``id`` of a message seen earlier); default: from now on. When events the
    listener has not seen were pruned from the server's log, a ``lost`` message comes
    before the next events (counted in ``events_lost``): re-read the queue's state.
    """

    def __init__(
        self,
        client: httpx.Client | None = None,
        reconnect_delay: float = 1.0,
        on_status=None,
        last_event_id: str | None = None,
    ):
        if client is None:
            from labtasker.client.api import get_httpx_client

            client = get_httpx_client()
        self._client = client
        self._queue: queue.Queue[ServerSentEvent] = queue.Queue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._client_id: str | None = None
        self._last_id: str | None = last_event_id
        self._error: BaseException | None = None
        self._reconnect_delay = reconnect_delay
        self._on_status = on_status
        self._dropped = False  # the connection was lost after it had been up
        self._ever_connected = False  # from then on, a lost connection is retried
        # why the server ended the stream for good (``closed``: the queue's password changed
        # or the queue was deleted); the listener then stops
        self.closed_reason: str | None = None
        # ``lost`` messages received: events were pruned from the server's log before this
        # listener saw them (a reconnect after a long gap); the state must be re-read
        self.events_lost = 0

    def start(self, timeout: float = 10) -> EventListener:
        """Connect in a daemon thread; wait up to ``timeout`` s for the ``connection``
        message. Raises ``LabtaskerConnectError`` at once when the server cannot be reached,
        ``LabtaskerRuntimeError`` on timeout, or the HTTP error (e.g. 401)."""
        self._thread = threading.Thread(target=self._run, name="labtasker-events", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.05):
            if self._error is not None:
                self.stop()
                raise self._error
            if time.monotonic() > deadline:
                self.stop()
                raise LabtaskerRuntimeError("Timeout waiting for event connection")
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            headers = {"Accept": "text/event-stream"}
            if self._last_id is not None:
                headers["Last-Event-ID"] = self._last_id
            try:
                with self._client.stream(
                    "GET", EVENTS_PATH, headers=headers, timeout=httpx.Timeout(10, read=60)
                ) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        from labtasker.client.transport import status_error

                        raise status_error(resp)
                    for msg in EventSource(resp).iter_sse():
                        if self._stop.is_set():
                            return
                        if msg.event == "connection":
                            self._client_id = json.loads(msg.data).get("client_id")
                            self._ever_connected = True
                            self._connected.set()
                            if self._dropped:
                                self._dropped = False
                                self._status("Reconnected; resuming after the last event seen.")
                        if msg.id:
                            self._last_id = msg.id
                        self._queue.put(msg)
                        if msg.event == "lost":
                            self.events_lost += 1
                            self._status(
                                "Events were lost (pruned from the server's log "
                                "before they were seen); re-read the queue's state."
                            )
                        if msg.event == "closed":  # password changed or queue deleted
                            self._closed(msg.data)
                            return
                # the server ended the stream without ``closed`` (it is shutting down, e.g.
                # for a restart): reconnect as for a lost connection
                self._lost("the server ended the stream")
            except httpx.TransportError as exc:
                if not self._ever_connected:
                    # never connected: fail at once, as every other command does
                    from labtasker.client.transport import _convert_transport_error

                    self._error = _convert_transport_error(exc, str(self._client.base_url))
                    return
                self._lost(type(exc).__name__)
            except Exception as exc:
                if not self._ever_connected:  # report to start(): e.g. a 401
                    self._error = exc
                    return
                response = getattr(exc, "response", None)
                code = getattr(response, "status_code", None)
                if isinstance(code, int) and 400 <= code < 500 and code not in _RETRIED:
                    # refused for good (credentials, queue gone): stop, saying why
                    self._closed(json.dumps({"detail": str(exc)}))
                    return
                # a server starting up (5xx), a busy one (429), or a message this client
                # could not read: reconnect after the last event seen
                self._lost(f"HTTP {code}" if code is not None else type(exc).__name__)
            self._connected.clear()
            self._stop.wait(self._reconnect_delay)

    def _lost(self, why: str) -> None:
        """The connection ended after it had been up: say so once; the loop reconnects with
        ``Last-Event-ID``, so no event is missed (``Reconnected`` is said when it is back)."""
        if not self._dropped:
            self._dropped = True
            self._status(f"Connection lost ({why}); reconnecting...")

    def _closed(self, data: str) -> None:
        """The server ended the stream for good: stop, saying why."""
        try:
            detail = json.loads(data).get("detail") or data
        except (ValueError, AttributeError):
            detail = data
        self.closed_reason = str(detail)
        self._status(f"The server closed the event stream: {detail}")
        self._stop.set()

    def _status(self, message: str) -> None:
        if self._on_status is not None:
            try:
                self._on_status(message)
            except Exception:  # a broken callback must not end the listener
                pass

    def get_client_id(self) -> str | None:
        return self._client_id

    def is_connected(self) -> bool:
        return self._connected.is_set()

    def stop(self) -> None:
        """Stop listening (the stream is closed within a few seconds)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def get_raw_sse(self, timeout: float | None = None) -> ServerSentEvent | None:
        """The next message of any kind (``connection``, ``ping``, ``event``), or None."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def get_event(self, timeout: float | None = None) -> EventResponse | None:
        """The next state-transition event; None on timeout or for a non-``event`` message."""
        msg = self.get_raw_sse(timeout)
        if msg is None or msg.event != "event":
            return None
        return EventResponse.model_validate_json(msg.data)

    def iter_raw_sse(self) -> Iterator[ServerSentEvent]:
        """Every message until ``stop()`` or until the server closes the stream for good
        (its ``closed`` message is the last one; see ``closed_reason``)."""
        while not self._stop.is_set() or not self._queue.empty():
            msg = self.get_raw_sse(timeout=0.5)
            if msg is not None:
                yield msg

    def iter_events(self) -> Iterator[EventResponse]:
        """Every state-transition event until ``stop()``, resuming across reconnects."""
        for msg in self.iter_raw_sse():
            if msg.event == "event":
                yield EventResponse.model_validate_json(msg.data)


def connect_events(timeout: float = 10, client: httpx.Client | None = None) -> EventListener:
    """Start and return an ``EventListener`` for the configured queue."""
    return EventListener(client=client).start(timeout=timeout)
