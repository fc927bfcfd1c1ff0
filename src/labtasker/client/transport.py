"""The HTTP transport of the labtasker client: :class:`LabtaskerClient`.

A ``LabtaskerClient`` owns one ``httpx.Client`` (base URL, HTTP Basic auth of the queue,
timeouts), a :class:`RetryPolicy` and a notification hook. It sends one request with retries
and turns ``httpx`` errors into labtasker ones:

* 4xx/5xx answer -> :class:`~labtasker.exceptions.LabtaskerHTTPStatusError` (``status_code``,
  ``detail``, ``code``; the message contains the server's ``detail``);
* connection refused / DNS -> ``LabtaskerConnectError``; connect timeout ->
  ``LabtaskerConnectTimeout``; other transport errors -> ``LabtaskerNetworkError``.

Retries (exponential back-off, see :class:`RetryPolicy`):

* failures to *connect* are retried for every call (nothing was sent);
* calls that are safe to repeat (``safe=True``: heartbeats, status reports, reads) are also
  retried on read/write errors and on HTTP 502/503/504;
* every call is retried on a labtasker ``503`` whose ``code`` is ``storage_unavailable``: the
  server says its database could not complete the request and nothing was written;
* every call is retried on a labtasker ``429`` whose ``code`` is ``too_many_requests``: the
  server's password checks were saturated (or this address failed too many) and the request
  was refused before it ran;
* submits are safe too: each submit request carries an ``Idempotency-Key`` header
  (:func:`idempotency_headers`, a new UUID per request) that every retry of it resends, so a
  submit whose answer was lost after the server stored it returns the first answer instead
  of making its tasks again.

A ``Retry-After`` header (seconds) sets the wait before the next attempt (the server knows
when it expects to write again); such retries are limited by the time budget only. A ``stop``
event passed to :meth:`LabtaskerClient.send` interrupts the back-off at once.

The server puts a machine-readable ``code`` beside ``detail`` in every error answer (our server
only; 1.0.1 servers send ``detail`` alone). :func:`error_code` reads it; callers decide by code,
not by the wording of the message.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

import httpx

from labtasker.__version__ import __version__
from labtasker.exceptions import (
    LabtaskerConnectError,
    LabtaskerConnectTimeout,
    LabtaskerHTTPStatusError,
    LabtaskerNetworkError,
    LabtaskerValueError,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

_log = logging.getLogger("labtasker.client")

__all__ = [
    "DEFAULT_TIMEOUT",
    "RetryPolicy",
    "LabtaskerClient",
    "RequestOptions",
    "http_client",
    "NotificationHook",
    "notification_printer",
    "error_code",
    "format_detail",
    "status_error",
    "STORAGE_UNAVAILABLE",
    "idempotency_headers",
]

DEFAULT_TIMEOUT = 30.0  # seconds, per request
STORAGE_UNAVAILABLE = "storage_unavailable"  # 503 code: transient database trouble, no write
TOO_MANY_REQUESTS = "too_many_requests"  # 429 code: password checks saturated, nothing ran


def idempotency_headers() -> dict[str, str]:
    """A fresh ``Idempotency-Key`` header for one submit request (reused by its retries)."""
    return {"Idempotency-Key": str(uuid.uuid4())}


# A notification hook gets the ``notification`` list of an answer (dicts with ``type``,
# ``level``, ``details``).
NotificationHook = Callable[[list], None]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off: wait ``initial * 2**n`` (capped at ``max_wait``) plus up to
    ``jitter`` seconds between attempts; give up after ``attempts`` tries or once ``budget``
    seconds have passed since the first try. All times in seconds."""

    attempts: int = 10
    initial: float = 0.5
    max_wait: float = 16.0
    jitter: float = 1.0
    budget: float = 100.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise LabtaskerValueError("attempts must be >= 1")

    def wait(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.initial * (2 ** (attempt - 1)), self.max_wait) + random.uniform(
            0, self.jitter
        )

    def next_delay(
        self, attempt: int, started: float, retry_after: float | None = None
    ) -> float | None:
        """Seconds before the next attempt, or ``None`` when the policy is exhausted.
        ``started`` is the ``time.monotonic()`` of the first attempt. ``retry_after``: the
        server's ``Retry-After`` (seconds); when given, the server sets the pace -- that wait
        (capped at ``max_wait``, plus up to 10 % jitter) instead of the exponential one, and
        only the ``budget`` limits the retries, not ``attempts``."""
        if retry_after is not None:
            wait = min(retry_after, self.max_wait)
            delay = wait + random.uniform(0, 0.1 * wait)
        elif attempt >= self.attempts:
            return None
        else:
            delay = self.wait(attempt)
        if time.monotonic() - started + delay > self.budget:
            return None
        return delay


_ALWAYS_RETRY = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_SAFE_RETRY = (
    httpx.ReadError,
    httpx.ReadTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
)
_RETRY_STATUS = {502, 503, 504}


# ----------------------------------------------------------------------------- error helpers


def _body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def detail_of(response: httpx.Response) -> Any:
    """The ``detail`` of an error answer (string or validation list), else the JSON body, else
    the raw text (an HTML page from a proxy, say)."""
    body = _body_of(response)
    if body is None:
        return response.text
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    return body


def error_code(answer: httpx.Response | LabtaskerHTTPStatusError | None) -> str | None:
    """The machine-readable ``code`` of a labtasker error answer (e.g. ``"task_not_found"``,
    ``"run_not_owner"``, ``"invalid_credentials"``, ``"storage_unavailable"``), or ``None`` for
    an answer without one (a 1.0.1 server, a proxy, a success)."""
    if isinstance(answer, LabtaskerHTTPStatusError):
        return answer.code
    if answer is None:
        return None
    body = _body_of(answer)
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        return body["code"]
    return None


def format_detail(detail: Any) -> str:
    """Render a server ``detail`` (string, or FastAPI's list of validation errors) as one line."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                loc = [str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path")]
                parts.append(f"{'.'.join(loc)}: {item['msg']}" if loc else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return json.dumps(detail, default=str)


def status_error(response: httpx.Response) -> LabtaskerHTTPStatusError:
    """The :class:`LabtaskerHTTPStatusError` for an error answer (``status_code``, ``detail``,
    ``code``)."""
    detail = detail_of(response)
    request = response.request
    message = (
        f"{response.status_code} {response.reason_phrase} for {request.method} {request.url}. "
        f"Response details: {format_detail(detail)}"
    )
    return LabtaskerHTTPStatusError(
        message, request=request, response=response, detail=detail, code=error_code(response)
    )


def _exc_request(exc: httpx.HTTPError) -> httpx.Request | None:
    try:
        return exc.request
    except RuntimeError:
        return None


def _convert_transport_error(exc: httpx.HTTPError, where: str) -> LabtaskerNetworkError:
    request = _exc_request(exc)
    if isinstance(exc, httpx.ConnectTimeout):
        return LabtaskerConnectTimeout(
            f"Timed out connecting to the Labtasker server at {where}: {exc}", request=request
        )
    if isinstance(exc, httpx.ConnectError):
        return LabtaskerConnectError(
            f"Cannot connect to the Labtasker server at {where}: {exc}", request=request
        )
    text = str(exc) or type(exc).__name__
    return LabtaskerNetworkError(f"Network error talking to {where}: {text}")


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (the delta-seconds form only), else ``None``."""
    raw = response.headers.get("Retry-After")
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


# ----------------------------------------------------------------------------- notifications

_LEVELS = {"low": 0, "medium": 1, "high": 2}


def notification_printer(level: str = "medium") -> NotificationHook | None:
    """A hook printing server notifications whose level is >= ``level`` (``low`` | ``medium``
    | ``high``; ``none`` prints nothing and returns ``None``): ``INFO(notification): text`` on
    stdout for ``info``, the other types on stderr."""
    threshold = _LEVELS.get(level)
    if threshold is None:
        return None

    def show(notes: list) -> None:
        for note in notes:
            if (
                not isinstance(note, dict)
                or _LEVELS.get(note.get("level", "medium"), 1) < threshold
            ):
                continue
            kind = str(note.get("type", "info"))
            details = note.get("details")
            text = details if isinstance(details, str) else json.dumps(details, default=str)
            stream = sys.stdout if kind == "info" else sys.stderr
            print(f"{kind.upper()}(notification): {text}", file=stream)

    return show


# ----------------------------------------------------------------------------- the client


def tls_verify(base_url: str) -> bool | ssl.SSLContext:
    """httpx's ``verify`` for ``base_url``: the CA bundle for an https:// server. An http://
    server never uses TLS, so loading the bundle (tens of ms, on every CLI call) is skipped:
    its context verifies (CERT_REQUIRED) against no CA at all, so an https request made
    through this client anyway fails closed instead of going unverified."""
    if base_url.lower().startswith("https:"):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def http_client(
    base_url: str,
    queue_name: str | None = None,
    password: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> httpx.Client:
    """A new ``httpx.Client`` as labtasker talks to its server: ``base_url``, HTTP Basic auth
    of the queue when ``queue_name`` is given, TLS verification (:func:`tls_verify`), the
    ``labtasker/<version>`` User-Agent and ``timeout`` seconds per request."""
    auth = httpx.BasicAuth(queue_name, password or "") if queue_name is not None else None
    return httpx.Client(
        base_url=base_url,
        verify=tls_verify(base_url),
        auth=auth,
        timeout=timeout,
        headers={"User-Agent": f"labtasker/{__version__}"},
    )


class RequestOptions(TypedDict, total=False):
    """How one request is sent: the keywords of :meth:`LabtaskerClient.send` and
    :meth:`LabtaskerClient.call` (and of the API's wrappers around them), all optional.

    ``json_body``: the JSON body (``None``: no body). ``params``: query parameters (values
    ``None`` are left out). ``headers``: sent with every attempt (an ``Idempotency-Key``
    stays the same across the retries). ``safe``: the call may be repeated (see the module
    docstring; default ``False``). ``stop``: when set, the back-off ends at once and the last
    answer (or error) is returned. ``retry``: ``False`` for one attempt only (default
    ``True``)."""

    json_body: Any
    params: Mapping[str, Any] | None
    headers: Mapping[str, str] | None
    safe: bool
    stop: threading.Event | None
    retry: bool


class LabtaskerClient:
    """One connection to a labtasker server for one queue.

    ``http``: the ``httpx.Client`` to send through (base URL and auth set); build one with
    :meth:`connect`. ``retry_policy``: see :class:`RetryPolicy` (default: 10 attempts within
    100 s). ``on_notification``: called with the ``notification`` list of every successful
    JSON answer that has one (``None``: ignored).
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        retry_policy: RetryPolicy | None = None,
        on_notification: NotificationHook | None = None,
    ):
        self.http = http
        self.retry_policy = retry_policy or RetryPolicy()
        self.on_notification = on_notification

    @classmethod
    def connect(
        cls,
        base_url: str,
        queue_name: str | None = None,
        password: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry_policy: RetryPolicy | None = None,
        on_notification: NotificationHook | None = None,
    ) -> LabtaskerClient:
        """A client on a new ``httpx.Client`` for ``base_url`` (:func:`http_client`)."""
        http = http_client(base_url, queue_name, password, timeout=timeout)
        return cls(http, retry_policy=retry_policy, on_notification=on_notification)

    def close(self) -> None:
        """Close the underlying ``httpx.Client``."""
        self.http.close()

    def __enter__(self) -> LabtaskerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(
        self, method: str, path: str, **options: Unpack[RequestOptions]
    ) -> tuple[httpx.Response, int]:
        """Send one request with retries (``options``: see :class:`RequestOptions`); return
        ``(response, attempts_used)``. Raises the converted network errors; does not raise
        for an error status (see :meth:`call`).
        """
        policy = self.retry_policy
        started = time.monotonic()
        safe = options.get("safe", False)
        stop = options.get("stop")
        retry = options.get("retry", True)
        params = options.get("params")
        if params:
            params = {k: v for k, v in params.items() if v is not None}
        kwargs: dict[str, Any] = {"params": params or None}
        if options.get("headers"):
            kwargs["headers"] = options["headers"]
        if options.get("json_body") is not None:
            kwargs["json"] = options["json_body"]
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                retryable = retry and (
                    isinstance(exc, _ALWAYS_RETRY) or (safe and isinstance(exc, _SAFE_RETRY))
                )
                delay = policy.next_delay(attempt, started) if retryable else None
                if delay is None or (stop is not None and stop.is_set()):
                    raise _convert_transport_error(exc, str(self.http.base_url)) from exc
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if not (retry and self._retryable(response, safe)):
                    return response, attempt
                retry_after = _retry_after(response)
                delay = policy.next_delay(attempt, started, retry_after)
                if delay is None or (stop is not None and stop.is_set()):
                    return response, attempt
                problem = f"HTTP {response.status_code}"
                if response.status_code == 503:
                    problem += f" ({format_detail(detail_of(response))})"
            # say so (INFO: shown by the loop's log, not by one-shot commands, which end with a
            # one-line error): a loop waiting for a server that is down must not look hung
            _log.info(
                "%s %s: %s; retrying in %.1fs (attempt %d)",
                method,
                path,
                problem,
                delay,
                attempt + 1,
            )
            if stop is not None:
                if stop.wait(delay):
                    # stopped during the back-off: one last answer is not needed
                    raise LabtaskerNetworkError(
                        f"{method} {path} stopped during retries: {problem}"
                    )
            else:
                time.sleep(delay)

    @staticmethod
    def _retryable(response: httpx.Response, safe: bool) -> bool:
        if response.status_code == 503 and error_code(response) == STORAGE_UNAVAILABLE:
            return True  # the server wrote nothing: any call may be repeated
        if response.status_code == 429 and error_code(response) == TOO_MANY_REQUESTS:
            return True  # refused before anything ran (password checks saturated)
        return safe and response.status_code in _RETRY_STATUS

    def call(self, method: str, path: str, **options: Unpack[RequestOptions]) -> Any:
        """Send a request (as :meth:`send`), raise :class:`LabtaskerHTTPStatusError` on
        4xx/5xx, pass notifications to the hook, return the JSON body (``None`` when empty)."""
        response, _ = self.send(method, path, **options)
        if response.is_error:
            raise status_error(response)
        if not response.content:
            return None
        body = response.json()
        self.notify(body)
        return body

    def notify(self, body: Any) -> None:
        """Pass the ``notification`` list of an answer's body to the hook, if both exist."""
        if self.on_notification is None or not isinstance(body, dict):
            return
        notes = body.get("notification")
        if notes:
            self.on_notification(list(notes))
