"""HTTP wrappers of the labtasker REST API (the 1.0.1 Python API, same signatures).

Every function takes an optional ``client: httpx.Client``. Without one, a process-global client
is used, created lazily from ``client.toml`` (base URL ``[endpoint] api_base_url``, HTTP Basic
auth with ``[queue] queue_name``/``password``, 30 s timeout). It is rebuilt automatically when
the configuration file (or ``$LABTASKER_ROOT``) changes.

Errors: ``httpx`` exceptions are converted to labtasker ones:

* 4xx/5xx answer -> :class:`LabtaskerHTTPStatusError` (``status_code``, ``detail``; the message
  contains the server's ``detail``);
* connection refused / DNS -> :class:`LabtaskerConnectError`; connect timeout ->
  :class:`LabtaskerConnectTimeout`; other transport errors -> :class:`LabtaskerNetworkError`;
* ``fetch_task`` 403 -> :class:`WorkerSuspended`; heartbeat/report refused because the run no
  longer owns the task -> :class:`TaskNotOwned`.

Retries: failures to *connect* are retried for every call (nothing was sent). Calls that are
safe to repeat (heartbeat, status reports, get/search) are also retried on read/write errors and
on HTTP 502/503/504, with exponential back-off (see :func:`set_retry_policy`).

All timestamps in responses are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from labtasker.__version__ import __version__
from labtasker.client.config import (
    get_labtasker_client_config_path,
    load_client_config,
)
from labtasker.client.filtering import coerce_filter
from labtasker.exceptions import (
    LabtaskerConnectError,
    LabtaskerConnectTimeout,
    LabtaskerHTTPStatusError,
    LabtaskerNetworkError,
    LabtaskerRuntimeError,
    LabtaskerTypeError,
    LabtaskerValueError,
    TaskNotOwned,
    WorkerSuspended,
)
from labtasker.timeutil import parse_duration
from labtasker.wire import (
    HealthCheckResponse,
    Priority,
    QueueCreateRequest,
    QueueCreateResponse,
    QueueGetResponse,
    QueueUpdateRequest,
    Task,
    TaskFetchRequest,
    TaskFetchResponse,
    TaskLsRequest,
    TaskLsResponse,
    TaskStatusUpdateRequest,
    TaskSubmitRequest,
    TaskSubmitResponse,
    TaskUpdateRequest,
    Worker,
    WorkerCreateRequest,
    WorkerCreateResponse,
    WorkerLsRequest,
    WorkerLsResponse,
    WorkerStatusUpdateRequest,
)

_log = logging.getLogger("labtasker.client")

__all__ = [
    "get_httpx_client",
    "close_httpx_client",
    "set_retry_policy",
    "health_check",
    "create_queue",
    "get_queue",
    "update_queue",
    "delete_queue",
    "submit_task",
    "submit_tasks",
    "fetch_task",
    "report_task_status",
    "refresh_task_heartbeat",
    "create_worker",
    "ls_workers",
    "get_worker",
    "report_worker_status",
    "ls_tasks",
    "iter_tasks",
    "iter_task_pages",
    "iter_workers",
    "get_task",
    "update_tasks",
    "cancel_task",
    "delete_task",
    "delete_worker",
]

DEFAULT_TIMEOUT = 30.0  # seconds, per request
_QUEUE_ME = "/api/v1/queues/me"

# ----------------------------------------------------------------------------- global client

_lock = threading.Lock()
_client: httpx.Client | None = None
_client_key: tuple | None = None
_notification_level = "medium"


def get_httpx_client() -> httpx.Client:
    """Return the process-global ``httpx.Client`` built from ``client.toml``.

    Re-created when the config file path or its modification time changed since the last call.
    Raises :class:`~labtasker.exceptions.ConfigNotFoundError` /
    :class:`~labtasker.exceptions.ConfigError` when the configuration is missing or invalid.
    """
    global _client, _client_key, _notification_level
    path = get_labtasker_client_config_path()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None
    key = (str(path), stamp)
    with _lock:
        if _client is not None and _client_key == key:
            return _client
        cfg = load_client_config(path)
        _client = httpx.Client(
            base_url=cfg.endpoint.api_base_url,
            auth=httpx.BasicAuth(cfg.queue.queue_name, cfg.queue.password),
            timeout=DEFAULT_TIMEOUT,
            headers={"User-Agent": f"labtasker/{__version__}"},
        )
        # An older client may still be used by another thread; it is left to the GC.
        _client_key = key
        _notification_level = cfg.display_server_notifications_level
        return _client


def close_httpx_client() -> None:
    """Close the process-global client (a new one is created on the next call)."""
    global _client, _client_key
    with _lock:
        if _client is not None:
            _client.close()
        _client, _client_key = None, None


# ----------------------------------------------------------------------------- retries


@dataclass
class RetryPolicy:
    """Exponential back-off: wait ``initial * 2**n`` (capped at ``max_wait``) plus up to
    ``jitter`` seconds between attempts; give up after ``attempts`` tries or once ``budget``
    seconds have passed since the first try."""

    attempts: int = 10
    initial: float = 0.5
    max_wait: float = 16.0
    jitter: float = 1.0
    budget: float = 100.0

    def wait(self, attempt: int) -> float:
        return min(self.initial * (2 ** (attempt - 1)), self.max_wait) + random.uniform(
            0, self.jitter
        )


_retry_policy = RetryPolicy()


def set_retry_policy(
    attempts: int = 10,
    initial: float = 0.5,
    max_wait: float = 16.0,
    jitter: float = 1.0,
    budget: float = 100.0,
) -> None:
    """Change the transport retry policy of this process (times in seconds).

    ``attempts=1`` disables retries. The CLI uses a short policy so that an unreachable server
    is reported quickly; the loop runner keeps the default (about 100 s of retrying).
    """
    global _retry_policy
    if attempts < 1:
        raise LabtaskerValueError("attempts must be >= 1")
    _retry_policy = RetryPolicy(attempts, initial, max_wait, jitter, budget)


_ALWAYS_RETRY = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_SAFE_RETRY = (
    httpx.ReadError,
    httpx.ReadTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
)
_RETRY_STATUS = {502, 503, 504}


def _exc_request(exc: httpx.HTTPError) -> httpx.Request | None:
    try:
        return exc.request
    except RuntimeError:
        return None


def _convert_transport_error(exc: httpx.HTTPError, client: httpx.Client) -> LabtaskerNetworkError:
    where = str(client.base_url)
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


def _detail_of(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text
    if isinstance(body, dict) and "detail" in body:
        return body["detail"]
    return body


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


def _status_error(response: httpx.Response) -> LabtaskerHTTPStatusError:
    detail = _detail_of(response)
    request = response.request
    message = (
        f"{response.status_code} {response.reason_phrase} for {request.method} {request.url}. "
        f"Response details: {format_detail(detail)}"
    )
    return LabtaskerHTTPStatusError(message, request=request, response=response, detail=detail)


def _send(
    method: str,
    path: str,
    *,
    client: httpx.Client | None,
    json_body: Any = None,
    params: dict[str, Any] | None = None,
    safe: bool = False,
) -> tuple[httpx.Response, int]:
    """Send one request with retries; return ``(response, attempts_used)``.

    Raises the converted network errors; does not check the status code except for retrying
    502/503/504 on ``safe`` calls.
    """
    client = client or get_httpx_client()
    policy = _retry_policy
    start = time.monotonic()
    if params:
        params = {k: v for k, v in params.items() if v is not None}
    kwargs: dict[str, Any] = {"params": params or None}
    if json_body is not None:
        kwargs["json"] = json_body
    attempt = 0
    while True:
        attempt += 1
        try:
            response = client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            retryable = isinstance(exc, _ALWAYS_RETRY) or (safe and isinstance(exc, _SAFE_RETRY))
            delay = _next_delay(policy, attempt, start) if retryable else None
            if delay is None:
                raise _convert_transport_error(exc, client) from exc
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if not (safe and response.status_code in _RETRY_STATUS):
                return response, attempt
            delay = _next_delay(policy, attempt, start)
            if delay is None:
                return response, attempt
            problem = f"HTTP {response.status_code}"
        # say so (INFO: shown by the loop's log, not by one-shot commands, which end with a
        # one-line error): a loop waiting for a server that is down must not look hung
        _log.info("%s %s: %s; retrying in %.1fs (attempt %d)", method, path, problem,
                     delay, attempt + 1)
        time.sleep(delay)


def _next_delay(policy: RetryPolicy, attempt: int, start: float) -> float | None:
    """Seconds to wait before the next attempt, or ``None`` when the policy is exhausted."""
    if attempt >= policy.attempts:
        return None
    delay = policy.wait(attempt)
    if time.monotonic() - start + delay > policy.budget:
        return None
    return delay


_LEVELS = {"low": 0, "medium": 1, "high": 2}


def _show_notifications(body: Any) -> None:
    """Print server notifications whose level is >= ``display_server_notifications_level``."""
    import sys

    if not isinstance(body, dict) or not body.get("notification"):
        return
    threshold = _LEVELS.get(_notification_level)
    if threshold is None:  # "none"
        return
    for note in body["notification"]:
        if not isinstance(note, dict) or _LEVELS.get(note.get("level", "medium"), 1) < threshold:
            continue
        kind = str(note.get("type", "info"))
        details = note.get("details")
        text = details if isinstance(details, str) else json.dumps(details, default=str)
        stream = sys.stdout if kind == "info" else sys.stderr
        print(f"{kind.upper()}(notification): {text}", file=stream)


def _call(
    method: str,
    path: str,
    *,
    client: httpx.Client | None,
    json_body: Any = None,
    params: dict[str, Any] | None = None,
    safe: bool = False,
) -> Any:
    """Send a request, raise :class:`LabtaskerHTTPStatusError` on 4xx/5xx, return the JSON body
    (``None`` for an empty body)."""
    response, _ = _send(method, path, client=client, json_body=json_body, params=params, safe=safe)
    if response.is_error:
        raise _status_error(response)
    if not response.content:
        return None
    body = response.json()
    _show_notifications(body)
    return body


def _body(model) -> dict[str, Any]:
    data = model.model_dump(mode="json", exclude_none=True)
    data["client_version"] = __version__
    return data


def _normalize_sort(sort: Any) -> list[list[Any]] | None:
    """Accept ``[("field", 1|-1), ...]`` or ``["field:asc", "field:desc", ...]``."""
    if sort is None:
        return None
    if isinstance(sort, str):
        sort = [sort]
    out = []
    for item in sort:
        if isinstance(item, str):
            field, _, order = item.partition(":")
            order = order.strip().lower() or "asc"
            if not field.strip() or order not in ("asc", "desc"):
                raise LabtaskerValueError(
                    f"Invalid sort {item!r}: expected 'field:asc' or 'field:desc'"
                )
            out.append([field.strip(), 1 if order == "asc" else -1])
        elif isinstance(item, (list, tuple)) and len(item) == 2 and item[1] in (1, -1):
            out.append([str(item[0]), int(item[1])])
        else:
            raise LabtaskerValueError(
                f"Invalid sort entry {item!r}: expected ('field', 1) or ('field', -1)"
            )
    return out


# ----------------------------------------------------------------------------- health / queues


def health_check(client: httpx.Client | None = None) -> HealthCheckResponse:
    """``GET /health/full``: ``HealthCheckResponse(status="healthy"|..., database=...)``.

    Raises :class:`LabtaskerConnectError` etc. when the server cannot be reached.
    """
    response, _ = _send("GET", "/health/full", client=client, safe=True)
    if response.status_code == 404:  # server without the full check
        response, _ = _send("GET", "/health", client=client, safe=True)
        if response.is_error:
            raise _status_error(response)
        return HealthCheckResponse(status="healthy", database="unknown")
    if response.is_error:
        raise _status_error(response)
    return HealthCheckResponse.model_validate(response.json())


def create_queue(
    queue_name: str,
    password: str,
    metadata: dict[str, Any] | None = None,
    client: httpx.Client | None = None,
) -> QueueCreateResponse:
    """Create a queue (no authentication needed). Returns ``QueueCreateResponse(queue_id)``.

    Raises ``pydantic.ValidationError`` for an invalid name/password/metadata key and
    :class:`LabtaskerHTTPStatusError` (409) if the name is taken.
    """
    req = QueueCreateRequest(queue_name=queue_name, password=password, metadata=metadata)
    body = _call("POST", "/api/v1/queues", client=client, json_body=_body(req))
    return QueueCreateResponse.model_validate(body)


def get_queue(client: httpx.Client | None = None) -> QueueGetResponse:
    """Return the authenticated queue (``queue_id, queue_name, created_at, last_modified,
    metadata``). HTTP 401 (bad credentials / no such queue) raises
    :class:`LabtaskerHTTPStatusError`."""
    return QueueGetResponse.model_validate(_call("GET", _QUEUE_ME, client=client, safe=True))


def update_queue(
    new_queue_name: str | None = None,
    new_password: str | None = None,
    metadata_update: dict[str, Any] | None = None,
    client: httpx.Client | None = None,
) -> QueueGetResponse:
    """Rename the queue, change its password and/or patch its metadata (``{}`` clears it;
    top-level keys are merged). Returns the updated queue. The local ``client.toml`` is not
    changed."""
    req = QueueUpdateRequest(
        new_queue_name=new_queue_name, new_password=new_password, metadata_update=metadata_update
    )
    body = _call("PUT", _QUEUE_ME, client=client, json_body=_body(req))
    return QueueGetResponse.model_validate(body)


def delete_queue(cascade_delete: bool = True, client: httpx.Client | None = None) -> None:
    """Delete the queue; with ``cascade_delete`` (default True, as in 1.0.1's Python API) also
    its tasks and workers."""
    _call(
        "DELETE",
        _QUEUE_ME,
        client=client,
        params={"cascade_delete": str(bool(cascade_delete)).lower()},
    )


# ----------------------------------------------------------------------------- tasks


def submit_task(
    task_name: str | None = None,
    args: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    cmd: str | list[str] | None = None,
    heartbeat_timeout: float | None = None,
    task_timeout: int | float | None = None,
    max_retries: int = 3,
    priority: int = Priority.MEDIUM,
    client: httpx.Client | None = None,
) -> TaskSubmitResponse:
    """Submit a task; returns ``TaskSubmitResponse(task_id)``.

    ``args``/``metadata`` are dicts (dotted keys like ``"a.b"`` are nested by the server);
    ``heartbeat_timeout``/``task_timeout`` are seconds. Raises :class:`LabtaskerValueError`
    if neither ``args`` nor ``cmd`` is given, ``pydantic.ValidationError`` for invalid fields.
    """
    if not args and not cmd:
        raise LabtaskerValueError("Either cmd or args must be specified.")
    if args is not None and not isinstance(args, dict):
        raise LabtaskerTypeError(f"args must be a dict, got {type(args).__name__}")
    req = TaskSubmitRequest(
        task_name=task_name,
        args=args,
        metadata=metadata,
        cmd=cmd,
        heartbeat_timeout=heartbeat_timeout,
        task_timeout=task_timeout,
        max_retries=max_retries,
        priority=priority,
    )
    body = _call("POST", f"{_QUEUE_ME}/tasks", client=client, json_body=_body(req))
    return TaskSubmitResponse.model_validate(body)


MAX_BATCH = 5000  # tasks per ``POST /tasks/batch`` request accepted by the server


def _submit_body(index: int, task: Any) -> dict[str, Any]:
    """Validate one element of :func:`submit_tasks` and return its JSON body."""
    if isinstance(task, TaskSubmitRequest):
        req = task
    else:
        if not isinstance(task, dict):
            raise LabtaskerTypeError(f"tasks[{index}] must be a dict, got {type(task).__name__}")
        if task.get("args") is not None and not isinstance(task["args"], dict):
            raise LabtaskerTypeError(
                f"tasks[{index}].args must be a dict, got {type(task['args']).__name__}"
            )
        try:
            req = TaskSubmitRequest.model_validate(task)
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            text = " ".join(str(exc).split())
            raise LabtaskerValueError(f"tasks[{index}] is invalid: {text}") from exc
    data = req.model_dump(mode="json", exclude_none=True)
    data.pop("client_version", None)
    return data


def submit_tasks(
    tasks: Sequence[dict[str, Any] | TaskSubmitRequest],
    chunk_size: int = MAX_BATCH,
    progress: Any = None,
    client: httpx.Client | None = None,
) -> list[str]:
    """Submit many tasks; return their ids in the order given.

    Each element is a dict with the keyword arguments of :func:`submit_task` (``args``,
    ``task_name``, ``metadata``, ``cmd``, ``heartbeat_timeout``, ``task_timeout``,
    ``max_retries``, ``priority``). Every task is validated before anything is sent
    (:class:`LabtaskerValueError` / :class:`LabtaskerTypeError` naming ``tasks[i]``).

    Tasks are sent ``chunk_size`` (1..5000) at a time to ``POST /tasks/batch``; each request is
    all-or-nothing. When a request is refused, the :class:`LabtaskerHTTPStatusError` raised
    carries ``submitted_task_ids`` (ids of the chunks already accepted) and ``first_index``
    (the position of the refused chunk's first task). A server without the batch route (HTTP
    404/405, e.g. 1.0.1) gets the tasks one by one instead -- not atomic then.

    ``progress``, if given, is called as ``progress(done, total)`` after every request.
    """
    if not 1 <= chunk_size <= MAX_BATCH:
        raise LabtaskerValueError(f"chunk_size must be in 1..{MAX_BATCH}, got {chunk_size}")
    bodies = [_submit_body(i, t) for i, t in enumerate(tasks)]
    total = len(bodies)
    ids: list[str] = []
    batch_path = f"{_QUEUE_ME}/tasks/batch"
    batch = True
    while len(ids) < total:
        start = len(ids)
        if batch:
            chunk = bodies[start : start + chunk_size]
            payload = {"tasks": chunk, "client_version": __version__}
            response, _ = _send("POST", batch_path, client=client, json_body=payload)
            if response.status_code in (404, 405) and not _is_labtasker_404(response):
                batch = False  # no batch route: fall back to one request per task
                continue
            if response.is_error:
                raise _bulk_error(response, ids, start)
            body = response.json()
            _show_notifications(body)
            got = list(body.get("task_ids") or ())
            if len(got) != len(chunk):
                raise LabtaskerRuntimeError(
                    f"Server returned {len(got)} task ids for {len(chunk)} tasks"
                )
            ids.extend(got)
        else:
            payload = {**bodies[start], "client_version": __version__}
            response, _ = _send("POST", f"{_QUEUE_ME}/tasks", client=client, json_body=payload)
            if response.is_error:
                raise _bulk_error(response, ids, start)
            ids.append(TaskSubmitResponse.model_validate(response.json()).task_id)
        if progress is not None:
            progress(len(ids), total)
    return ids


def _is_labtasker_404(response: httpx.Response) -> bool:
    """A 404 produced by a handler (e.g. "Queue not found") rather than a missing route."""
    if response.status_code != 404:
        return False
    detail = _detail_of(response)
    return isinstance(detail, str) and detail != "Not Found"


def _bulk_error(
    response: httpx.Response, submitted: list[str], first_index: int
) -> LabtaskerHTTPStatusError:
    exc = _status_error(response)
    if first_index:
        exc.args = (
            f"{exc.args[0] if exc.args else exc} ({first_index} task(s) before this request "
            f"were already submitted; indexes in the detail are relative to task "
            f"#{first_index})",
        )
    exc.submitted_task_ids = list(submitted)
    exc.first_index = first_index
    return exc


def fetch_task(
    worker_id: str | None = None,
    eta_max: str | None = None,
    heartbeat_timeout: float | None = None,
    start_heartbeat: bool = True,
    required_fields: list[str] | None = None,
    extra_filter: str | dict[str, Any] | None = None,
    cmd: str | list[str] | None = None,
    client: httpx.Client | None = None,
    heartbeat_interval: float | None = None,
) -> TaskFetchResponse:
    """Claim the next pending task matching the criteria; returns ``TaskFetchResponse(found,
    task)`` (``task`` carries ``run_id``, the token to pass to heartbeats/reports).

    ``eta_max`` is a duration string (``"1h30m"``, ``"90"`` seconds) limiting the run time;
    ``heartbeat_timeout`` is seconds; both apply to this run only. ``heartbeat_interval``
    (seconds between the caller's heartbeats) lets the server refuse a ``heartbeat_timeout``
    shorter than it (HTTP 400; 1.0.1 servers ignore it). ``extra_filter`` is a dict or a
    string (see :func:`labtasker.client.filtering.parse_filter`). Raises
    :class:`LabtaskerValueError` if ``start_heartbeat`` is False without ``eta_max``,
    :class:`WorkerSuspended` on HTTP 403.
    """
    if not start_heartbeat and eta_max is None:
        raise LabtaskerValueError("Eta max must be specified when start_heartbeat is False")
    if eta_max is not None:
        try:
            parse_duration(eta_max)
        except ValueError as exc:
            raise LabtaskerValueError(f"Invalid eta_max: {exc}") from None
        eta_max = str(eta_max)
    req = TaskFetchRequest(
        worker_id=worker_id,
        eta_max=eta_max,
        heartbeat_timeout=heartbeat_timeout,
        heartbeat_interval=heartbeat_interval,
        start_heartbeat=start_heartbeat,
        required_fields=list(required_fields) if required_fields is not None else None,
        extra_filter=coerce_filter(extra_filter),
        cmd=cmd,
    )
    body = _body(req)
    body["start_heartbeat"] = bool(start_heartbeat)
    try:
        data = _call("POST", f"{_QUEUE_ME}/tasks/next", client=client, json_body=body)
    except LabtaskerHTTPStatusError as exc:
        if exc.status_code == 403:
            raise WorkerSuspended(format_detail(exc.detail)) from exc
        raise
    return TaskFetchResponse.model_validate(data)


def _not_owned(exc: LabtaskerHTTPStatusError, what: str, task_id: str) -> TaskNotOwned:
    return TaskNotOwned(
        f"{what} for task {task_id} refused (HTTP {exc.status_code}): {format_detail(exc.detail)}",
        status_code=exc.status_code,
        detail=exc.detail,
    )


def report_task_status(
    task_id: str,
    status: str,
    summary: dict[str, Any] | None = None,
    worker_id: str | None = None,
    run_id: str | None = None,
    client: httpx.Client | None = None,
) -> None:
    """Report the outcome of a task: ``status`` is ``"success"``, ``"failed"`` or
    ``"cancelled"``; ``summary`` keys are merged into the task's summary.

    With ``worker_id``/``run_id`` the server checks that this run still owns the task; if not
    (HTTP 409, or 404 for a vanished task) :class:`TaskNotOwned` is raised. Invalid state
    transitions raise :class:`LabtaskerHTTPStatusError` (400). Retried on transport errors; if
    the first attempt's answer was lost and a retry is refused, the task is re-read and the
    report counts as done when the task already has the reported ``success``/``cancelled``
    status.
    """
    req = TaskStatusUpdateRequest(
        status=status, summary=summary, worker_id=worker_id, run_id=run_id
    )
    body = _body(req)
    if summary is not None:
        body["summary"] = summary  # keep explicit {} (resets the summary)
    response, attempts = _send(
        "POST", f"{_QUEUE_ME}/tasks/{task_id}/status", client=client, json_body=body, safe=True
    )
    if not response.is_error:
        return
    exc = _status_error(response)
    if attempts > 1 and status in ("success", "cancelled") and response.status_code in (400, 409):
        try:
            if get_task(task_id, client=client).status == status:
                return  # an earlier attempt went through; only its answer was lost
        except LabtaskerNetworkError:
            pass
    if response.status_code in (404, 409):
        raise _not_owned(exc, "Status report", task_id) from exc
    raise exc


def refresh_task_heartbeat(
    task_id: str,
    worker_id: str | None = None,
    run_id: str | None = None,
    client: httpx.Client | None = None,
) -> None:
    """Tell the server the task is still alive (sets ``last_heartbeat`` to the server's now).

    Raises :class:`TaskNotOwned` when the server refuses (409: the run was fenced off; 404: the
    task is no longer running; 403: it belongs to another worker) -- the job should stop.
    Retried on transport errors.
    """
    try:
        _call(
            "POST",
            f"{_QUEUE_ME}/tasks/{task_id}/heartbeat",
            client=client,
            params={"worker_id": worker_id, "run_id": run_id},
            safe=True,
        )
    except LabtaskerHTTPStatusError as exc:
        if exc.status_code in (403, 404, 409):
            raise _not_owned(exc, "Heartbeat", task_id) from exc
        raise


_TASK_SEARCH = f"{_QUEUE_ME}/tasks/search"
_WORKER_SEARCH = f"{_QUEUE_ME}/workers/search"


def _search_body(
    request_model: type[TaskLsRequest] | type[WorkerLsRequest],
    selection: dict[str, Any],
    extra_filter: str | dict[str, Any] | None,
    limit: int,
    offset: int,
    sort: Sequence[tuple[str, int]] | Sequence[str] | None,
) -> dict[str, Any]:
    """JSON body of one search request (``TaskLsRequest`` or ``WorkerLsRequest``).

    ``selection`` holds the id/name/status equality conditions. Raises
    ``pydantic.ValidationError`` for out-of-range ``limit``/``offset`` or a bad status,
    :class:`LabtaskerValueError` for a bad ``sort`` and the filter errors of
    :func:`~labtasker.client.filtering.coerce_filter`.
    """
    req = request_model(
        offset=offset,
        limit=limit,
        extra_filter=coerce_filter(extra_filter),
        sort=_normalize_sort(sort),
        **selection,
    )
    return _body(req)


def _search_page(path: str, body: dict[str, Any], client: httpx.Client | None) -> dict[str, Any]:
    """One ``POST .../search`` request (retried like every read); the answer's JSON object."""
    return _call("POST", path, client=client, json_body=body, safe=True) or {}


def _iter_pages(
    path: str,
    body: dict[str, Any],
    item_model: type[Task] | type[Worker],
    client: httpx.Client | None,
) -> Iterator[list[Any]]:
    """Yield the non-empty pages (lists of ``item_model``) of a search, starting at ``body``.

    Keyset paging when the answer carries ``next_cursor`` (our server, task listings in
    column order): the next page is requested with that cursor instead of an offset, so
    each page costs the same however deep it is. Otherwise (1.0.1 servers, worker listings,
    sorts on JSON paths) the offset advances by the page length until a short page.
    """
    page_size = body["limit"]
    while True:
        data = _search_page(path, body, client)
        content = [item_model.model_validate(item) for item in data.get("content") or ()]
        if content:
            yield content
        if "next_cursor" in data:  # keyset paging
            cursor = data["next_cursor"]
            if not cursor or not content:
                return
            body = {**body, "cursor": cursor}
            body.pop("offset", None)
        else:  # offset paging
            if len(content) < page_size:
                return
            body = {**body, "offset": body.get("offset", 0) + len(content)}


def ls_tasks(
    task_id: str | None = None,
    task_name: str | None = None,
    status: str | None = None,
    extra_filter: str | dict[str, Any] | None = None,
    limit: int = 100,
    offset: int = 0,
    sort: Sequence[tuple[str, int]] | Sequence[str] | None = None,
    client: httpx.Client | None = None,
) -> TaskLsResponse:
    """Search tasks, one page: ``TaskLsResponse(found, content=[Task, ...])``.

    ``limit`` is 1..1000, ``offset`` >= 0; ``sort`` is ``[("field", 1 | -1), ...]`` or
    ``["field:asc", ...]``. ``extra_filter`` as in :func:`fetch_task`. Use :func:`iter_tasks`
    to go through every page. Raises ``pydantic.ValidationError`` for out-of-range
    ``limit``/``offset`` or an unknown ``status``, :class:`LabtaskerValueError` for a bad
    ``sort``, :class:`LabtaskerHTTPStatusError` (400) for a filter the server refuses.
    """
    selection = {"task_id": task_id, "task_name": task_name, "status": status}
    body = _search_body(TaskLsRequest, selection, extra_filter, limit, offset, sort)
    return TaskLsResponse.model_validate(_search_page(_TASK_SEARCH, body, client))


def iter_task_pages(
    task_id: str | None = None,
    task_name: str | None = None,
    status: str | None = None,
    extra_filter: str | dict[str, Any] | None = None,
    page_size: int = 100,
    offset: int = 0,
    sort: Sequence[tuple[str, int]] | Sequence[str] | None = None,
    client: httpx.Client | None = None,
) -> Iterator[list[Task]]:
    """Yield every matching task page by page (lists of at most ``page_size`` tasks).

    Keyset paging: when the server answers with a ``next_cursor`` (column sorts, including
    the default order), the following pages are requested with that cursor, so each page
    costs the same however deep into the queue it is. Servers without cursors (1.0.1), and
    sorts on JSON fields, are paged by ``offset``. Only one page is held at a time.
    Arguments and errors as in :func:`ls_tasks` (raised when iteration starts).
    """
    selection = {"task_id": task_id, "task_name": task_name, "status": status}
    body = _search_body(TaskLsRequest, selection, extra_filter, page_size, offset, sort)
    yield from _iter_pages(_TASK_SEARCH, body, Task, client)


def iter_tasks(
    task_id: str | None = None,
    task_name: str | None = None,
    status: str | None = None,
    extra_filter: str | dict[str, Any] | None = None,
    page_size: int = 100,
    offset: int = 0,
    sort: Sequence[tuple[str, int]] | Sequence[str] | None = None,
    client: httpx.Client | None = None,
) -> Iterator[Task]:
    """Yield every matching task, fetching pages of ``page_size`` starting at ``offset``
    (keyset cursors when the server offers them; see :func:`iter_task_pages`)."""
    for page in iter_task_pages(
        task_id, task_name, status, extra_filter, page_size, offset, sort, client
    ):
        yield from page


def get_task(task_id: str, client: httpx.Client | None = None) -> Task:
    """Return one task; HTTP 404 raises :class:`LabtaskerHTTPStatusError`."""
    return Task.model_validate(
        _call("GET", f"{_QUEUE_ME}/tasks/{task_id}", client=client, safe=True)
    )


def update_tasks(
    task_updates: Sequence[TaskUpdateRequest | dict[str, Any]],
    reset_pending: bool = False,
    client: httpx.Client | None = None,
) -> TaskLsResponse:
    """Apply updates (``PUT /tasks``); returns the updated tasks in request order.

    Each update is a :class:`~labtasker.wire.TaskUpdateRequest` (or a dict for one) with
    ``task_id`` plus the fields to change; only fields that were set are sent. Dict fields are
    merged one level deep unless named in ``replace_fields``. With ``reset_pending`` the tasks
    also go back to ``pending`` with ``retries=0``.
    """
    items = []
    for upd in task_updates:
        if isinstance(upd, dict):
            upd = TaskUpdateRequest.model_validate(upd)
        elif not isinstance(upd, TaskUpdateRequest):
            raise LabtaskerTypeError(
                f"task_updates items must be TaskUpdateRequest or dict, got {type(upd).__name__}"
            )
        items.append(upd.model_dump(mode="json", exclude_unset=True))
    data = _call(
        "PUT",
        f"{_QUEUE_ME}/tasks",
        client=client,
        json_body=items,
        params={"reset_pending": str(bool(reset_pending)).lower()},
    )
    return TaskLsResponse.model_validate(data)


ENDED_TASK_STATUSES = ("success", "failed", "cancelled")
_CANCEL_ATTEMPTS = 5


def cancel_task(task_id: str, client: httpx.Client | None = None) -> str:
    """Cancel a task that has not ended yet; return the status it had before.

    * ``"pending"``: it is now ``cancelled`` and will not be fetched.
    * ``"running"``: it is now ``cancelled``; the server refuses the next heartbeat of the
      run, so the ``labtasker loop`` / ``@labtasker.loop`` running it stops the job and moves
      on without reporting it (a late report of that run is refused as well).
    * ``"success"``, ``"failed"`` or ``"cancelled"``: the task had already ended and is left
      unchanged (its result and summary are kept). Compare the returned value with
      :data:`ENDED_TASK_STATUSES` to tell.

    Sent as ``POST /tasks/{id}/status`` with ``status="cancelled"``. A running task is
    cancelled only while it is still the run that was read (fenced by its ``run_id``, or by
    its ``worker_id`` on a server without run ids): when that run ends or is re-dispatched in
    between, the task is read again and the decision made anew. A pending task is cancelled
    without a fence: if a worker claimed it in between, that run is stopped like any other.

    Raises :class:`LabtaskerHTTPStatusError` (``status_code`` 404) when there is no such task,
    :class:`LabtaskerRuntimeError` if the task changed run under it 5 times in a row.
    """
    for _ in range(_CANCEL_ATTEMPTS):
        task = get_task(task_id, client=client)
        if task.status in ENDED_TASK_STATUSES:
            return task.status
        fence: dict[str, str] = {}
        if task.status == "running":
            if task.run_id:
                fence["run_id"] = task.run_id
            elif task.worker_id:
                fence["worker_id"] = task.worker_id
        try:
            report_task_status(task_id, "cancelled", client=client, **fence)
        except TaskNotOwned:
            continue  # the run ended or changed (or the task vanished) meanwhile: look again
        return task.status
    raise LabtaskerRuntimeError(
        f"Task {task_id} changed its run {_CANCEL_ATTEMPTS} times while being cancelled; "
        "not cancelled"
    )


def delete_task(task_id: str, client: httpx.Client | None = None) -> None:
    """Delete a task; HTTP 404 (``Task not found``) raises :class:`LabtaskerHTTPStatusError`."""
    _call("DELETE", f"{_QUEUE_ME}/tasks/{task_id}", client=client)


# ----------------------------------------------------------------------------- workers


def create_worker(
    worker_name: str | None = None,
    metadata: dict[str, Any] | None = None,
    max_retries: int = 3,
    client: httpx.Client | None = None,
) -> str:
    """Register a worker and return its id (str). ``max_retries`` failures crash it."""
    req = WorkerCreateRequest(worker_name=worker_name, metadata=metadata, max_retries=max_retries)
    body = _call("POST", f"{_QUEUE_ME}/workers", client=client, json_body=_body(req))
    return WorkerCreateResponse.model_validate(body).worker_id


def ls_workers(
    worker_id: str | None = None,
    worker_name: str | None = None,
    status: str | None = None,
    extra_filter: str | dict[str, Any] | None = None,
    limit: int = 100,
    offset: int = 0,
    sort: Sequence[tuple[str, int]] | Sequence[str] | None = None,
    client: httpx.Client | None = None,
) -> WorkerLsResponse:
    """Search workers, one page: ``WorkerLsResponse(found, content=[Worker, ...])``.

    Arguments and errors as in :func:`ls_tasks` (``status``: active|suspended|crashed).
    """
    selection = {"worker_id": worker_id, "worker_name": worker_name, "status": status}
    body = _search_body(WorkerLsRequest, selection, extra_filter, limit, offset, sort)
    return WorkerLsResponse.model_validate(_search_page(_WORKER_SEARCH, body, client))


def iter_workers(
    worker_id: str | None = None,
    worker_name: str | None = None,
    status: str | None = None,
    extra_filter: str | dict[str, Any] | None = None,
    page_size: int = 100,
    offset: int = 0,
    sort: Sequence[tuple[str, int]] | Sequence[str] | None = None,
    client: httpx.Client | None = None,
) -> Iterator[Worker]:
    """Yield every matching worker, fetching pages of ``page_size`` starting at ``offset``.
    Arguments and errors as in :func:`ls_workers` (raised when iteration starts)."""
    selection = {"worker_id": worker_id, "worker_name": worker_name, "status": status}
    body = _search_body(WorkerLsRequest, selection, extra_filter, page_size, offset, sort)
    for page in _iter_pages(_WORKER_SEARCH, body, Worker, client):
        yield from page


def get_worker(worker_id: str, client: httpx.Client | None = None) -> Worker:
    """Return one worker; HTTP 404 raises :class:`LabtaskerHTTPStatusError`."""
    data = _call("GET", f"{_QUEUE_ME}/workers/{worker_id}", client=client, safe=True)
    if isinstance(data, dict) and "worker_id" not in data and "_id" in data:
        data = {**data, "worker_id": data["_id"]}
    return Worker.model_validate(data)


def report_worker_status(worker_id: str, status: str, client: httpx.Client | None = None) -> None:
    """Set a worker's status: ``"active"`` (re-activate) or ``"suspended"``.

    Raises :class:`LabtaskerValueError` for other values, :class:`LabtaskerRuntimeError`
    (``FSM invalid transition: ...``) when the state machine forbids the change.
    """
    if status not in ("active", "suspended", "crashed"):
        raise LabtaskerValueError(
            f"Invalid worker status {status!r}: expected 'active', 'suspended' or 'crashed'"
        )
    req = WorkerStatusUpdateRequest(status=status)
    try:
        _call(
            "POST",
            f"{_QUEUE_ME}/workers/{worker_id}/status",
            client=client,
            json_body=_body(req),
            safe=True,
        )
    except LabtaskerHTTPStatusError as exc:
        text = format_detail(exc.detail)
        if exc.status_code in (400, 409) and "transition" in text.lower():
            raise LabtaskerRuntimeError(f"FSM invalid transition: {text}") from exc
        raise


def delete_worker(
    worker_id: str, cascade_update: bool = True, client: httpx.Client | None = None
) -> None:
    """Delete a worker; with ``cascade_update`` (default) its tasks' ``worker_id`` is cleared."""
    _call(
        "DELETE",
        f"{_QUEUE_ME}/workers/{worker_id}",
        client=client,
        params={"cascade_update": str(bool(cascade_update)).lower()},
    )
