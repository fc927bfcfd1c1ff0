"""The labtasker REST API as functions (the 1.0.1 Python API, plus our additions).

Every function takes an optional ``client``: a
:class:`~labtasker.client.transport.LabtaskerClient`, or a bare ``httpx.Client`` (base URL and
auth set; it is used with the process's retry policy and notification printer). Without one,
the default client is used: built lazily from ``client.toml`` (base URL ``[endpoint]
api_base_url``, HTTP Basic auth with ``[queue] queue_name``/``password``, 30 s timeout) and
rebuilt automatically when the configuration file (or ``$LABTASKER_ROOT``) changes.

Transport, retries and error conversion are the client's (see ``labtasker.client.transport``):

* 4xx/5xx answer -> :class:`LabtaskerHTTPStatusError` (``status_code``, ``detail``, ``code``;
  the message contains the server's ``detail``);
* connection refused / DNS -> :class:`LabtaskerConnectError`; connect timeout ->
  :class:`LabtaskerConnectTimeout`; other transport errors -> :class:`LabtaskerNetworkError`;
* ``fetch_task`` 403 -> :class:`WorkerSuspended`; heartbeat/report refused because the run no
  longer owns the task -> :class:`TaskNotOwned`.

Retries: failures to *connect* are retried for every call (nothing was sent). Calls that are
safe to repeat (heartbeat, status reports, get/search) are also retried on read/write errors and
on HTTP 502/503/504, with exponential back-off (see :func:`set_retry_policy`); every call is
retried on the server's ``503 storage_unavailable`` (nothing was written).

All timestamps in responses are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from labtasker import error_codes as codes
from labtasker.__version__ import __version__
from labtasker.client.config import (
    get_labtasker_client_config_path,
    load_connection,
)
from labtasker.client.filtering import coerce_filter
from labtasker.client.transport import (  # noqa: F401 - DEFAULT_TIMEOUT, format_detail re-exported
    DEFAULT_TIMEOUT,
    LabtaskerClient,
    RetryPolicy,
    detail_of,
    error_code,
    format_detail,
    idempotency_headers,
    notification_printer,
    status_error,
)
from labtasker.exceptions import (
    LabtaskerHTTPStatusError,
    LabtaskerNetworkError,
    LabtaskerRuntimeError,
    LabtaskerTypeError,
    LabtaskerValueError,
    TaskNotOwned,
    WorkerSuspended,
)
from labtasker.keys import MAX_NAME_LENGTH, NAME_PATTERN, validate_keys
from labtasker.literals import non_finite_path
from labtasker.timeutil import (
    MAX_SECONDS,
    heartbeat_timeout_problem,
    over_max_seconds,
    parse_duration,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

    import labtasker.wire as _wire
    from labtasker.client.transport import RequestOptions
    from labtasker.wire import (
        HealthCheckResponse as HealthCheckResponse,
    )
    from labtasker.wire import (
        QueueCreateRequest as QueueCreateRequest,
    )
    from labtasker.wire import (
        QueueCreateResponse as QueueCreateResponse,
    )
    from labtasker.wire import (
        QueueGetResponse as QueueGetResponse,
    )
    from labtasker.wire import (
        QueueOverviewResponse as QueueOverviewResponse,
    )
    from labtasker.wire import (
        QueueUpdateRequest as QueueUpdateRequest,
    )
    from labtasker.wire import (
        Task as Task,
    )
    from labtasker.wire import (
        TaskCountRequest as TaskCountRequest,
    )
    from labtasker.wire import (
        TaskCountResponse as TaskCountResponse,
    )
    from labtasker.wire import (
        TaskFetchRequest as TaskFetchRequest,
    )
    from labtasker.wire import (
        TaskFetchResponse as TaskFetchResponse,
    )
    from labtasker.wire import (
        TaskLsRequest as TaskLsRequest,
    )
    from labtasker.wire import (
        TaskLsResponse as TaskLsResponse,
    )
    from labtasker.wire import (
        TaskProgressRequest as TaskProgressRequest,
    )
    from labtasker.wire import (
        TaskRequeueRequest as TaskRequeueRequest,
    )
    from labtasker.wire import (
        TaskRunsResponse as TaskRunsResponse,
    )
    from labtasker.wire import (
        TaskStatusUpdateRequest as TaskStatusUpdateRequest,
    )
    from labtasker.wire import (
        TaskSubmitRequest as TaskSubmitRequest,
    )
    from labtasker.wire import (
        TaskSubmitResponse as TaskSubmitResponse,
    )
    from labtasker.wire import (
        TaskUpdateRequest as TaskUpdateRequest,
    )
    from labtasker.wire import (
        Worker as Worker,
    )
    from labtasker.wire import (
        WorkerCreateRequest as WorkerCreateRequest,
    )
    from labtasker.wire import (
        WorkerCreateResponse as WorkerCreateResponse,
    )
    from labtasker.wire import (
        WorkerLsRequest as WorkerLsRequest,
    )
    from labtasker.wire import (
        WorkerLsResponse as WorkerLsResponse,
    )
    from labtasker.wire import (
        WorkerPruneRequest as WorkerPruneRequest,
    )
    from labtasker.wire import (
        WorkerStatusUpdateRequest as WorkerStatusUpdateRequest,
    )
else:

    class _LazyWire:
        """``labtasker.wire`` (pydantic and 40 models: about half of a CLI call's start-up),
        imported on the first attribute read: a call that sends a plain body never pays it."""

        def __getattr__(self, name: str) -> Any:
            import labtasker.wire

            return getattr(labtasker.wire, name)

    _wire = _LazyWire()

_WIRE_NAMES = frozenset(
    {
        "HealthCheckResponse",
        "QueueCreateRequest",
        "QueueCreateResponse",
        "QueueGetResponse",
        "QueueOverviewResponse",
        "QueueUpdateRequest",
        "Task",
        "TaskCountRequest",
        "TaskCountResponse",
        "TaskFetchRequest",
        "TaskFetchResponse",
        "TaskLsRequest",
        "TaskLsResponse",
        "TaskProgressRequest",
        "TaskRequeueRequest",
        "TaskRunsResponse",
        "TaskStatusUpdateRequest",
        "TaskSubmitRequest",
        "TaskSubmitResponse",
        "TaskUpdateRequest",
        "Worker",
        "WorkerCreateRequest",
        "WorkerCreateResponse",
        "WorkerLsRequest",
        "WorkerLsResponse",
        "WorkerPruneRequest",
        "WorkerStatusUpdateRequest",
    }
)


def __getattr__(name: str) -> Any:
    """The wire models this module has always exported (``api.Task``...), loaded lazily."""
    if name in _WIRE_NAMES:
        import labtasker.wire

        return getattr(labtasker.wire, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "get_httpx_client",
    "close_httpx_client",
    "default_client",
    "set_retry_policy",
    "health_check",
    "create_queue",
    "get_queue",
    "update_queue",
    "delete_queue",
    "submit_task",
    "submit_tasks",
    "submit_bodies",
    "task_body",
    "fetch_task",
    "report_task_status",
    "report_task_and_claim_next",
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
    "cancel_tasks",
    "delete_task",
    "delete_worker",
    "count_tasks",
    "requeue_tasks",
    "queue_overview",
    "report_task_progress",
    "mark_worker_gone",
    "prune_workers",
    "ls_task_runs",
]

_QUEUE_ME = "/api/v1/queues/me"

ClientLike = LabtaskerClient | httpx.Client

# ----------------------------------------------------------------------------- default client


class _DefaultClient:
    """The process's default :class:`LabtaskerClient`, built from ``client.toml`` and rebuilt
    when the file (path or modification time) changes; plus the retry policy and notification
    printer that bare ``httpx.Client`` arguments are used with."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: LabtaskerClient | None = None
        self._key: tuple | None = None
        self.retry_policy = RetryPolicy()
        budget = os.environ.get("LABTASKER_TEST_RETRY_BUDGET")  # tests only: seconds
        if budget:
            self.retry_policy = dataclasses.replace(self.retry_policy, budget=float(budget))
        self.on_notification = notification_printer("medium")

    def get(self) -> LabtaskerClient:
        path = get_labtasker_client_config_path()
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            stamp = None
        key = (str(path), stamp)
        with self._lock:
            if self._client is not None and self._key == key:
                return self._client
            cfg = load_connection(path)
            self.on_notification = notification_printer(cfg.notifications_level)
            # An older client may still be used by another thread; it is left to the GC.
            self._client = LabtaskerClient.connect(
                cfg.api_base_url,
                cfg.queue_name,
                cfg.password,
                timeout=DEFAULT_TIMEOUT,
                retry_policy=self.retry_policy,
                on_notification=self.on_notification,
            )
            self._key = key
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client, self._key = None, None

    def set_retry_policy(self, policy: RetryPolicy) -> None:
        with self._lock:
            self.retry_policy = policy
            if self._client is not None:
                self._client.retry_policy = policy

    def resolve(self, client: ClientLike | None) -> LabtaskerClient:
        """The ``LabtaskerClient`` for a function's ``client`` argument."""
        if client is None:
            return self.get()
        if isinstance(client, LabtaskerClient):
            return client
        return LabtaskerClient(
            client, retry_policy=self.retry_policy, on_notification=self.on_notification
        )


_default = _DefaultClient()


def default_client() -> LabtaskerClient:
    """The default :class:`LabtaskerClient` built from ``client.toml`` (see the module
    docstring). Raises :class:`~labtasker.exceptions.ConfigNotFoundError` /
    :class:`~labtasker.exceptions.ConfigError` when the configuration is missing or invalid."""
    return _default.get()


def get_httpx_client() -> httpx.Client:
    """The ``httpx.Client`` of :func:`default_client` (1.0.1 API)."""
    return _default.get().http


def close_httpx_client() -> None:
    """Close the default client (a new one is created on the next call)."""
    _default.close()


def set_retry_policy(
    attempts: int = 10,
    initial: float = 0.5,
    max_wait: float = 16.0,
    jitter: float = 1.0,
    budget: float = 100.0,
) -> None:
    """Change the retry policy of the default client (times in seconds).

    ``attempts=1`` disables retries. The CLI uses a short policy so that an unreachable server
    is reported quickly; the loop runner keeps the default (about 100 s of retrying).
    """
    _default.set_retry_policy(RetryPolicy(attempts, initial, max_wait, jitter, budget))


def _send(
    method: str, path: str, *, client: ClientLike | None, **options: Unpack[RequestOptions]
) -> tuple[httpx.Response, int]:
    """``LabtaskerClient.send`` on the client for ``client``: ``(response, attempts_used)``."""
    return _default.resolve(client).send(method, path, **options)


def _call(
    method: str, path: str, *, client: ClientLike | None, **options: Unpack[RequestOptions]
) -> Any:
    """``LabtaskerClient.call`` on the client for ``client``: the JSON body of a successful
    answer; raises :class:`LabtaskerHTTPStatusError` on 4xx/5xx."""
    return _default.resolve(client).call(method, path, **options)


def _check_storable_numbers(value: Any, name: str) -> None:
    """Refuse a float JSON cannot store (infinite or NaN) anywhere in ``value`` (a task's
    ``args``, ``metadata`` or ``summary``): JSON encoding would turn it into null, or fail. Raises
    :class:`LabtaskerValueError` naming where it is (``name``, then the path inside)."""
    found = non_finite_path(value, name)
    if found is not None:
        path, number = found
        raise LabtaskerValueError(
            f"{path} is {number!r}, a number JSON cannot store (infinite or NaN); nothing was sent"
        )


# The free-form fields of request models, checked for numbers JSON cannot store.
_DOCUMENT_FIELDS = ("args", "metadata", "summary", "metadata_update")


def _body(model) -> dict[str, Any]:
    """A request model as a JSON body (``client_version`` added). Raises
    :class:`LabtaskerValueError` for NaN or infinity in a free-form field, which the JSON
    dump would otherwise turn into null."""
    for name in _DOCUMENT_FIELDS:
        value = getattr(model, name, None)
        if value:
            _check_storable_numbers(value, name)
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


def health_check(client: ClientLike | None = None) -> HealthCheckResponse:
    """``GET /health/full``: ``HealthCheckResponse(status="healthy"|..., database=...)``.

    Raises :class:`LabtaskerConnectError` etc. when the server cannot be reached.
    """
    response, _ = _send("GET", "/health/full", client=client, safe=True)
    if response.status_code == 404:  # server without the full check
        response, _ = _send("GET", "/health", client=client, safe=True)
        if response.is_error:
            raise status_error(response)
        return _wire.HealthCheckResponse(status="healthy", database="unknown")
    if response.is_error:
        raise status_error(response)
    return _wire.HealthCheckResponse.model_validate(response.json())


def create_queue(
    queue_name: str,
    password: str,
    metadata: dict[str, Any] | None = None,
    client: ClientLike | None = None,
) -> QueueCreateResponse:
    """Create a queue (no authentication needed). Returns ``QueueCreateResponse(queue_id)``.

    Raises ``pydantic.ValidationError`` for an invalid name/password/metadata key and
    :class:`LabtaskerHTTPStatusError` (409) if the name is taken.
    """
    req = _wire.QueueCreateRequest(queue_name=queue_name, password=password, metadata=metadata)
    body = _call("POST", "/api/v1/queues", client=client, json_body=_body(req))
    return _wire.QueueCreateResponse.model_validate(body)


def get_queue(client: ClientLike | None = None) -> QueueGetResponse:
    """Return the authenticated queue (``queue_id, queue_name, created_at, last_modified,
    metadata``). HTTP 401 (bad credentials / no such queue) raises
    :class:`LabtaskerHTTPStatusError`."""
    return _wire.QueueGetResponse.model_validate(_call("GET", _QUEUE_ME, client=client, safe=True))


def update_queue(
    new_queue_name: str | None = None,
    new_password: str | None = None,
    metadata_update: dict[str, Any] | None = None,
    client: ClientLike | None = None,
) -> QueueGetResponse:
    """Rename the queue, change its password and/or patch its metadata (``{}`` clears it;
    top-level keys are merged). Returns the updated queue. The local ``client.toml`` is not
    changed."""
    req = _wire.QueueUpdateRequest(
        new_queue_name=new_queue_name, new_password=new_password, metadata_update=metadata_update
    )
    body = _call("PUT", _QUEUE_ME, client=client, json_body=_body(req))
    return _wire.QueueGetResponse.model_validate(body)


def delete_queue(cascade_delete: bool = True, client: ClientLike | None = None) -> None:
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
    priority: int = 10,  # Priority.MEDIUM
    client: ClientLike | None = None,
    unique: bool = False,
) -> _wire.TaskSubmitResponse:
    """Submit a task; returns ``TaskSubmitResponse(task_id)``.

    ``args``/``metadata`` are dicts (dotted keys like ``"a.b"`` are nested by the server);
    ``heartbeat_timeout``/``task_timeout`` are seconds. With ``unique`` no task is made when
    one with equal args exists in the queue: ``created`` is then False and ``task_id`` that
    task's id. The request carries an idempotency key: a retry after a lost answer makes no
    second task. Raises :class:`LabtaskerValueError` if neither ``args`` nor ``cmd`` is
    given, ``pydantic.ValidationError`` for invalid fields.
    """
    body = _submit_task(
        task_name,
        args,
        metadata,
        cmd,
        heartbeat_timeout,
        task_timeout,
        max_retries,
        priority,
        client,
        unique,
    )
    return _wire.TaskSubmitResponse.model_validate(body)


def _submit_task(
    task_name,
    args,
    metadata,
    cmd,
    heartbeat_timeout,
    task_timeout,
    max_retries,
    priority,
    client,
    unique,
) -> Any:
    """:func:`submit_task` up to the server's answer (its JSON, not validated): the CLI's
    ``task submit`` uses it to print the id without loading the wire models."""
    if not args and not cmd:
        raise LabtaskerValueError("Either cmd or args must be specified.")
    if args is not None and not isinstance(args, dict):
        raise LabtaskerTypeError(f"args must be a dict, got {type(args).__name__}")
    _check_storable_numbers(args, "args")
    _check_storable_numbers(metadata, "metadata")
    _check_heartbeat_timeout(heartbeat_timeout)
    fields = dict(
        task_name=task_name,
        args=args,
        metadata=metadata,
        cmd=cmd,
        heartbeat_timeout=heartbeat_timeout,
        task_timeout=task_timeout,
        max_retries=max_retries,
        priority=priority,
        unique=unique,
    )
    data = _plain_submit_body(fields)
    if data is None:
        data = _body(_wire.TaskSubmitRequest(**fields))
    if not unique:
        data.pop("unique", None)  # the body stays the 1.0.1 one
    return _default.resolve(client).call(
        "POST", f"{_QUEUE_ME}/tasks", json_body=data, safe=True, headers=idempotency_headers()
    )


def _json_native(value: Any, depth: int = 0) -> bool:
    """True for str keys and JSON values that serialize as they are (finite floats)."""
    kind = type(value)
    if kind in (str, int, bool) or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if depth > 100:
        return False
    if kind is dict:
        return all(type(k) is str and _json_native(v, depth + 1) for k, v in value.items())
    if kind is list:
        return all(_json_native(v, depth + 1) for v in value)
    return False


_TASK_NAME_RE = re.compile(NAME_PATTERN)
# The request models' range rule (``labtasker.wire.INT32``, a test keeps it equal; and
# ``MAX_SECONDS``, the same constant): whole numbers fit in 32 bits, durations are at most
# ten years of seconds.
_INT32 = (-(2**31), 2**31 - 1)
_MAX_SECONDS = MAX_SECONDS


def _plain_submit_body(f: dict[str, Any]) -> dict[str, Any] | None:
    """The body ``_body(TaskSubmitRequest(**f))`` would make, built without pydantic when
    every field is plainly valid (declared type, within its limits, JSON-native values);
    ``None`` otherwise, and the model then builds it (or words the error)."""
    name, cmd, hb, tt = f["task_name"], f["cmd"], f["heartbeat_timeout"], f["task_timeout"]
    if name is not None and not (
        type(name) is str and 1 <= len(name) <= MAX_NAME_LENGTH and _TASK_NAME_RE.search(name)
    ):
        return None
    for key in ("args", "metadata"):
        value = f[key]
        if value is None:
            continue
        if type(value) is not dict or not _json_native(value):
            return None
        try:
            validate_keys(value, key)
        except ValueError:
            return None
    if not (
        cmd is None or type(cmd) is str or (type(cmd) is list and all(type(c) is str for c in cmd))
    ):
        return None
    if hb is not None and not (
        type(hb) in (int, float)
        and math.isfinite(hb)
        and 0 < hb <= _MAX_SECONDS
        and (type(hb) is float or _INT32[0] <= hb <= _INT32[1])
    ):
        return None
    if tt is not None and not (type(tt) is int and 0 < tt <= _MAX_SECONDS):
        return None
    for key, low in (("max_retries", 0), ("priority", _INT32[0])):
        if type(f[key]) is not int or not low <= f[key] <= _INT32[1]:
            return None
    if type(f["unique"]) is not bool:
        return None
    if not f["args"] and not cmd:
        return None
    body = {k: v for k, v in f.items() if v is not None}
    if hb is not None:
        body["heartbeat_timeout"] = float(hb)
    body["client_version"] = __version__
    return body


MAX_BATCH = 5000  # tasks per ``POST /tasks/batch`` request accepted by the server


def _configured_heartbeat_interval() -> float | None:
    """``task.heartbeat_interval`` of ``client.toml`` (seconds), ``None`` without a config."""
    from labtasker.exceptions import ConfigError

    try:
        return float(load_connection(get_labtasker_client_config_path()).heartbeat_interval)
    except (ConfigError, OSError, ValueError):
        return None


def _check_heartbeat_timeout(timeout: float | None, where: str = "") -> None:
    """Refuse a task ``heartbeat_timeout`` below 2 x the configured heartbeat interval
    (:class:`LabtaskerValueError`, one line naming both values)."""
    if timeout is None:
        return
    interval = _configured_heartbeat_interval()
    problem = heartbeat_timeout_problem(
        timeout,
        interval,
        interval_name="the heartbeat interval",
        source="task.heartbeat_interval in client.toml",
    )
    if problem:
        raise LabtaskerValueError(f"{where}{problem}")


def task_body(index: int, task: Any) -> dict[str, Any]:
    """Validate one element of :func:`submit_tasks` (a dict or ``TaskSubmitRequest``) and
    return its JSON body; errors name ``tasks[index]``."""
    if isinstance(task, _wire.TaskSubmitRequest):
        req = task
    else:
        if not isinstance(task, dict):
            raise LabtaskerTypeError(f"tasks[{index}] must be a dict, got {type(task).__name__}")
        if task.get("args") is not None and not isinstance(task["args"], dict):
            raise LabtaskerTypeError(
                f"tasks[{index}].args must be a dict, got {type(task['args']).__name__}"
            )
        try:
            req = _wire.TaskSubmitRequest.model_validate(task)
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            text = " ".join(str(exc).split())
            raise LabtaskerValueError(f"tasks[{index}] is invalid: {text}") from exc
    _check_storable_numbers(req.args, f"tasks[{index}].args")
    _check_storable_numbers(req.metadata, f"tasks[{index}].metadata")
    _check_heartbeat_timeout(req.heartbeat_timeout, f"tasks[{index}]: ")
    data = req.model_dump(mode="json", exclude_none=True)
    data.pop("client_version", None)
    if not data.get("unique"):
        data.pop("unique", None)
    return data


def submit_tasks(
    tasks: Sequence[dict[str, Any] | TaskSubmitRequest],
    chunk_size: int = MAX_BATCH,
    progress: Any = None,
    client: ClientLike | None = None,
    unique: bool = False,
) -> list[str]:
    """Submit many tasks; return their ids in the order given.

    Each element is a dict with the keyword arguments of :func:`submit_task` (``args``,
    ``task_name``, ``metadata``, ``cmd``, ``heartbeat_timeout``, ``task_timeout``,
    ``max_retries``, ``priority``). Every task is validated before anything is sent
    (:class:`LabtaskerValueError` / :class:`LabtaskerTypeError` naming ``tasks[i]``).

    Tasks are sent ``chunk_size`` (1..5000) at a time to ``POST /tasks/batch``; each request is
    all-or-nothing and carries its own idempotency key, so that it is retried after a lost
    answer without making its tasks twice. When a request is refused, the
    :class:`LabtaskerHTTPStatusError` raised carries ``submitted_task_ids`` (ids of the chunks
    already accepted) and ``first_index`` (the position of the refused chunk's first task). A
    server without the batch route (HTTP 404/405, e.g. 1.0.1) gets the tasks one by one
    instead -- not atomic then. With ``unique``, a task whose args equal those of a task
    already in the queue is not made and its place holds that task's id.

    ``progress``, if given, is called as ``progress(done, total)`` after every request.
    """
    if not 1 <= chunk_size <= MAX_BATCH:
        raise LabtaskerValueError(f"chunk_size must be in 1..{MAX_BATCH}, got {chunk_size}")
    bodies = [task_body(i, t) for i, t in enumerate(tasks)]
    ids, _ = submit_bodies(
        bodies, unique=unique, chunk_size=chunk_size, progress=progress, client=client
    )
    return ids


def submit_bodies(
    bodies: list[dict[str, Any]],
    *,
    unique: bool = False,
    chunk_size: int = MAX_BATCH,
    progress: Any = None,
    client: ClientLike | None = None,
) -> tuple[list[str], list[bool]]:
    """Send validated task bodies (JSON dicts, see :func:`task_body`) in batches; returns
    ``(task_ids, created)`` in order (``created[i]`` False: a unique task matched the
    existing task ``task_ids[i]``). Batching, idempotency keys and errors as in
    :func:`submit_tasks`; ``unique`` needs a server with the batch route."""
    lc = _default.resolve(client)
    ids: list[str] = []
    created: list[bool] = []
    try:
        _send_bodies(lc, bodies, unique, chunk_size, progress, ids, created)
    except LabtaskerNetworkError as exc:
        if isinstance(exc, LabtaskerHTTPStatusError):
            raise
        # the server went away mid-way (retries spent): say what is known to be stored
        exc.submitted_task_ids = list(ids)  # type: ignore[attr-defined]
        exc.first_index = len(ids)  # type: ignore[attr-defined]
        if ids:
            exc.args = (
                f"{exc.args[0] if exc.args else exc} ({len(ids)} of {len(bodies)} task(s) "
                "were submitted before this; submitting again with --unique (unique=True) "
                "adds only the rest)",
            )
        raise
    return ids, created


def _send_bodies(
    lc: LabtaskerClient,
    bodies: list[dict[str, Any]],
    unique: bool,
    chunk_size: int,
    progress: Any,
    ids: list[str],
    created: list[bool],
) -> None:
    """The loop of :func:`submit_bodies`: appends to ``ids``/``created`` as batches are
    stored, so that the caller knows how far it got when a request fails."""
    total = len(bodies)
    batch_path = f"{_QUEUE_ME}/tasks/batch"
    batch = True
    while len(ids) < total:
        start = len(ids)
        if batch:
            chunk = bodies[start : start + chunk_size]
            payload: dict[str, Any] = {"tasks": chunk, "client_version": __version__}
            if unique:
                payload["unique"] = True
            response, _ = lc.send(
                "POST", batch_path, json_body=payload, safe=True, headers=idempotency_headers()
            )
            if _is_missing_route(response):
                if unique:
                    raise LabtaskerRuntimeError(
                        "This server has no batch route (labtasker 1.0.x?) and cannot "
                        "submit unique tasks"
                    )
                batch = False  # no batch route: fall back to one request per task
                continue
            if response.is_error:
                raise _bulk_error(response, ids, start)
            body = response.json()
            lc.notify(body)
            got = list(body.get("task_ids") or ())
            if len(got) != len(chunk):
                raise LabtaskerRuntimeError(
                    f"Server returned {len(got)} task ids for {len(chunk)} tasks"
                )
            flags = body.get("created")
            ids.extend(got)
            created.extend(
                flags if isinstance(flags, list) and len(flags) == len(got) else [True] * len(got)
            )
        else:
            payload = {**bodies[start], "client_version": __version__}
            response, _ = lc.send(
                "POST",
                f"{_QUEUE_ME}/tasks",
                json_body=payload,
                safe=True,
                headers=idempotency_headers(),
            )
            if response.is_error:
                raise _bulk_error(response, ids, start)
            ids.append(_wire.TaskSubmitResponse.model_validate(response.json()).task_id)
            created.append(True)
        if progress is not None:
            progress(len(ids), total)


def _is_missing_route(response: httpx.Response) -> bool:
    """HTTP 404/405 because the server has no such route (1.0.1 has no batch route), not a
    labtasker answer such as "Queue not found". Decided by the answer's ``code``; a server
    without codes (1.0.1) is judged by FastAPI's own wording for a missing route."""
    if response.status_code not in (404, 405):
        return False
    code = error_code(response)
    if code is not None:
        return code == codes.ROUTE_NOT_FOUND
    detail = detail_of(response)
    return response.status_code == 405 or not isinstance(detail, str) or detail == "Not Found"


def _bulk_error(
    response: httpx.Response, submitted: list[str], first_index: int
) -> LabtaskerHTTPStatusError:
    exc = status_error(response)
    if first_index:
        exc.args = (
            f"{exc.args[0] if exc.args else exc} ({first_index} task(s) before this request "
            f"were already submitted; indexes in the detail are relative to task "
            f"#{first_index})",
        )
    exc.submitted_task_ids = list(submitted)
    exc.first_index = first_index
    return exc


def _fetch_body(
    worker_id: str | None = None,
    eta_max: str | None = None,
    heartbeat_timeout: float | None = None,
    start_heartbeat: bool = True,
    required_fields: list[str] | None = None,
    extra_filter: str | dict[str, Any] | None = None,
    cmd: str | list[str] | None = None,
    heartbeat_interval: float | None = None,
) -> dict[str, Any]:
    """The JSON body of a claim (``POST /tasks/next``, or a report's ``claim_next``) from
    :func:`fetch_task`'s arguments; raises :class:`LabtaskerValueError` as it documents."""
    if not start_heartbeat and eta_max is None:
        raise LabtaskerValueError("Eta max must be specified when start_heartbeat is False")
    if eta_max is not None:
        try:
            seconds = parse_duration(eta_max)
        except ValueError as exc:
            raise LabtaskerValueError(f"Invalid eta_max: {exc}") from None
        problem = over_max_seconds("eta_max", seconds, eta_max)
        if problem:
            raise LabtaskerValueError(problem)
        eta_max = str(eta_max)
    req = _wire.TaskFetchRequest(
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
    return body


def fetch_task(
    worker_id: str | None = None,
    eta_max: str | None = None,
    heartbeat_timeout: float | None = None,
    start_heartbeat: bool = True,
    required_fields: list[str] | None = None,
    extra_filter: str | dict[str, Any] | None = None,
    cmd: str | list[str] | None = None,
    client: ClientLike | None = None,
    heartbeat_interval: float | None = None,
) -> TaskFetchResponse:
    """Claim the next pending task matching the criteria; returns ``TaskFetchResponse(found,
    task)`` (``task`` carries ``run_id``, the token to pass to heartbeats/reports).

    ``eta_max`` is a duration string (``"1h30m"``, ``"90"`` seconds) limiting the run time;
    ``heartbeat_timeout`` is seconds; both apply to this run only. ``heartbeat_interval``
    (seconds between the caller's heartbeats) lets the server refuse a ``heartbeat_timeout``
    shorter than it (HTTP 400; 1.0.1 servers ignore it). ``extra_filter`` is a dict or a
    string (see :func:`labtasker.client.filtering.parse_filter`). Raises
    :class:`LabtaskerValueError` if ``start_heartbeat`` is False without ``eta_max`` or if
    ``eta_max`` is not a duration of at most ten years (``timeutil.MAX_SECONDS``),
    :class:`WorkerSuspended` on HTTP 403.
    """
    body = _fetch_body(
        worker_id=worker_id,
        eta_max=eta_max,
        heartbeat_timeout=heartbeat_timeout,
        start_heartbeat=start_heartbeat,
        required_fields=required_fields,
        extra_filter=extra_filter,
        cmd=cmd,
        heartbeat_interval=heartbeat_interval,
    )
    try:
        data = _call("POST", f"{_QUEUE_ME}/tasks/next", client=client, json_body=body)
    except LabtaskerHTTPStatusError as exc:
        if exc.status_code == 403:
            raise WorkerSuspended(format_detail(exc.detail)) from exc
        if _credentials_refused(exc):
            exc.args = (f"{CREDENTIALS_REFUSED} (HTTP 401 for POST {_QUEUE_ME}/tasks/next)",)
        raise
    return _wire.TaskFetchResponse.model_validate(data)


CREDENTIALS_REFUSED = (
    "The server refused the queue's credentials: the queue was deleted or its password changed"
)


def _credentials_refused(exc: LabtaskerHTTPStatusError) -> bool:
    """HTTP 401 from labtasker (``invalid_credentials``; any 401 from a server without
    codes)."""
    if exc.status_code != 401:
        return False
    return exc.code is None or exc.code == codes.INVALID_CREDENTIALS


def _not_owned(exc: LabtaskerHTTPStatusError, what: str, task_id: str) -> TaskNotOwned:
    return TaskNotOwned(
        f"{what} for task {task_id} refused (HTTP {exc.status_code}): {format_detail(exc.detail)}",
        status_code=exc.status_code,
        detail=exc.detail,
        code=exc.code,
    )


def _run_gone(exc: LabtaskerHTTPStatusError, statuses: tuple[int, ...]) -> bool:
    """Whether a refused heartbeat/report means the run is over for good (task deleted, not
    running, re-dispatched, reassigned): a labtasker answer whose ``code`` says so. A server
    without codes (1.0.1) counts when it answers one of ``statuses`` with its own JSON
    ``detail``; anything else (a proxy's HTML 404, FastAPI's bare "Not Found") is not."""
    if exc.code is not None:
        return exc.code in codes.RUN_GONE
    if exc.status_code not in statuses:
        return False
    try:
        body = exc.response.json()
    except ValueError:
        return False
    detail = body.get("detail") if isinstance(body, dict) else None
    return isinstance(detail, str) and detail != "Not Found"


def report_task_status(
    task_id: str,
    status: str,
    summary: dict[str, Any] | None = None,
    worker_id: str | None = None,
    run_id: str | None = None,
    client: ClientLike | None = None,
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
    _report(task_id, status, summary, worker_id, run_id, client, sent_before=False)


def _report_body(
    status: str, summary: dict[str, Any] | None, worker_id: str | None, run_id: str | None
) -> dict[str, Any]:
    req = _wire.TaskStatusUpdateRequest(
        status=status, summary=summary, worker_id=worker_id, run_id=run_id
    )
    body = _body(req)
    if summary is not None:
        body["summary"] = summary  # keep explicit {} (resets the summary)
    return body


def _report(
    task_id: str,
    status: str,
    summary: dict[str, Any] | None,
    worker_id: str | None,
    run_id: str | None,
    client: ClientLike | None,
    *,
    sent_before: bool,
) -> None:
    """:func:`report_task_status`; ``sent_before``: an earlier request may have stored this
    report already (its answer was lost), so a refusal is checked as for a retry."""
    body = _report_body(status, summary, worker_id, run_id)
    response, attempts = _send(
        "POST", f"{_QUEUE_ME}/tasks/{task_id}/status", client=client, json_body=body, safe=True
    )
    if response.is_error:
        _report_refused(response, task_id, status, client, again=sent_before or attempts > 1)


def _report_refused(
    response: httpx.Response, task_id: str, status: str, client: ClientLike | None, *, again: bool
) -> None:
    """Raise for a refused report, unless ``again`` (the report may have been stored by an
    earlier attempt whose answer was lost) and the task already has the reported status."""
    exc = status_error(response)
    if again and status in ("success", "cancelled") and response.status_code in (400, 409):
        try:
            if get_task(task_id, client=client).status == status:
                return  # an earlier attempt went through; only its answer was lost
        except LabtaskerNetworkError:
            pass
    if _run_gone(exc, (404, 409)):
        raise _not_owned(exc, "Status report", task_id) from exc
    raise exc


def report_task_and_claim_next(
    task_id: str,
    status: str,
    summary: dict[str, Any] | None = None,
    worker_id: str | None = None,
    run_id: str | None = None,
    *,
    claim: Mapping[str, Any],
    client: ClientLike | None = None,
) -> TaskFetchResponse | None:
    """Report the outcome of a task as :func:`report_task_status` does and, in the same
    request, claim the next one: ``claim`` holds :func:`fetch_task`'s keyword arguments
    (without ``client``). One request instead of two for a loop.

    Returns the claim's answer (``found`` False when no pending task matches), or ``None``
    when no claim was made: the server refused it (the worker is unknown, suspended or
    crashed: a plain :func:`fetch_task` says why), the server does not know the combined
    request (labtasker 1.0.1 answers the report alone), or the request failed in transit,
    in which case the report is sent again on its own (with the retries and the lost-answer
    check of :func:`report_task_status`). Raises what :func:`report_task_status` raises,
    and :class:`LabtaskerValueError` for a bad ``claim`` before anything is sent.

    The combined request itself is not repeated once it may have reached the server (a
    repeat could claim a second task); a claim whose answer was lost stays running until
    its heartbeat timeout, as the claim of a :func:`fetch_task` whose answer was lost.
    """
    body = _report_body(status, summary, worker_id, run_id)
    body["claim_next"] = _fetch_body(**claim)
    path = f"{_QUEUE_ME}/tasks/{task_id}/status"
    try:
        response, _ = _send("POST", path, client=client, json_body=body)
    except LabtaskerNetworkError:
        _report(task_id, status, summary, worker_id, run_id, client, sent_before=True)
        return None
    if response.status_code >= 500:
        # the report may or may not be stored: send it on its own, retried as usual
        _report(task_id, status, summary, worker_id, run_id, client, sent_before=True)
        return None
    if response.is_error:
        _report_refused(response, task_id, status, client, again=False)
    try:
        data = response.json() if response.content else None
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("next") is None:
        return None
    return _wire.TaskFetchResponse.model_validate(data["next"])


def refresh_task_heartbeat(
    task_id: str,
    worker_id: str | None = None,
    run_id: str | None = None,
    client: ClientLike | None = None,
    *,
    stop: threading.Event | None = None,
    retry: bool = True,
) -> None:
    """Tell the server the task is still alive (sets ``last_heartbeat`` to the database's
    now).

    Raises :class:`TaskNotOwned` when the server says the run is over (409: the run was fenced
    off; 404: the task is no longer running; 403: it belongs to another worker; 401: the queue
    was deleted or its password changed) -- the job should stop. Other errors (a proxy's
    answer, 5xx, network) are retried, then raised as they are. ``stop``: an event that ends
    the retries at once (``Heartbeat.stop``); ``retry=False``: one attempt only (the
    heartbeat thread retries on its own schedule).
    """
    try:
        _default.resolve(client).call(
            "POST",
            f"{_QUEUE_ME}/tasks/{task_id}/heartbeat",
            params={"worker_id": worker_id, "run_id": run_id},
            safe=True,
            stop=stop,
            retry=retry,
        )
    except LabtaskerHTTPStatusError as exc:
        if _run_gone(exc, (403, 404, 409)):
            raise _not_owned(exc, "Heartbeat", task_id) from exc
        if _credentials_refused(exc) and exc.code is not None:
            raise TaskNotOwned(
                f"Heartbeat for task {task_id} refused: {CREDENTIALS_REFUSED}",
                status_code=401,
                detail=exc.detail,
                code=exc.code,
            ) from exc
        raise


def ls_task_runs(
    task_id: str, limit: int = 100, client: ClientLike | None = None
) -> TaskRunsResponse:
    """The history of a task's runs, newest first: ``TaskRunsResponse(task_id, content=[
    TaskRunRecord(run_id, worker_id, started, ended, status, charged, summary), ...])``
    (``limit`` 1..1000). Raises :class:`LabtaskerHTTPStatusError` (404) for an unknown task
    or a server without run history (1.0.1)."""
    data = _call(
        "GET",
        f"{_QUEUE_ME}/tasks/{task_id}/runs",
        client=client,
        params={"limit": limit},
        safe=True,
    )
    return _wire.TaskRunsResponse.model_validate(data)


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


def _search_page(path: str, body: dict[str, Any], client: ClientLike | None) -> dict[str, Any]:
    """One ``POST .../search`` request (retried like every read); the answer's JSON object."""
    return _call("POST", path, client=client, json_body=body, safe=True) or {}


def _iter_pages(
    path: str,
    body: dict[str, Any],
    item_model: type[Task] | type[Worker],
    client: ClientLike | None,
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
        cursor = data.get("next_cursor")
        if cursor and content:  # keyset paging
            body = {**body, "cursor": cursor}
            body.pop("offset", None)
        else:
            # offset paging: servers without cursors (1.0.1), and our server for sorts on
            # JSON paths (no cursor then, though more pages may follow)
            if len(content) < page_size or "cursor" in body:
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
    client: ClientLike | None = None,
) -> TaskLsResponse:
    """Search tasks, one page: ``TaskLsResponse(found, content=[Task, ...])``.

    ``limit`` is 1..1000, ``offset`` >= 0; ``sort`` is ``[("field", 1 | -1), ...]`` or
    ``["field:asc", ...]``. ``extra_filter`` as in :func:`fetch_task`. Use :func:`iter_tasks`
    to go through every page. Raises ``pydantic.ValidationError`` for out-of-range
    ``limit``/``offset`` or an unknown ``status``, :class:`LabtaskerValueError` for a bad
    ``sort``, :class:`LabtaskerHTTPStatusError` (400) for a filter the server refuses.
    """
    selection = {"task_id": task_id, "task_name": task_name, "status": status}
    body = _search_body(_wire.TaskLsRequest, selection, extra_filter, limit, offset, sort)
    return _wire.TaskLsResponse.model_validate(_search_page(_TASK_SEARCH, body, client))


def iter_task_pages(
    task_id: str | None = None,
    task_name: str | None = None,
    status: str | None = None,
    extra_filter: str | dict[str, Any] | None = None,
    page_size: int = 100,
    offset: int = 0,
    sort: Sequence[tuple[str, int]] | Sequence[str] | None = None,
    client: ClientLike | None = None,
) -> Iterator[list[Task]]:
    """Yield every matching task page by page (lists of at most ``page_size`` tasks).

    Keyset paging: when the server answers with a ``next_cursor`` (column sorts, including
    the default order), the following pages are requested with that cursor, so each page
    costs the same however deep into the queue it is. Servers without cursors (1.0.1), and
    sorts on JSON fields, are paged by ``offset``. Only one page is held at a time.
    Arguments and errors as in :func:`ls_tasks` (raised when iteration starts).
    """
    selection = {"task_id": task_id, "task_name": task_name, "status": status}
    body = _search_body(_wire.TaskLsRequest, selection, extra_filter, page_size, offset, sort)
    yield from _iter_pages(_TASK_SEARCH, body, _wire.Task, client)


def iter_tasks(
    task_id: str | None = None,
    task_name: str | None = None,
    status: str | None = None,
    extra_filter: str | dict[str, Any] | None = None,
    page_size: int = 100,
    offset: int = 0,
    sort: Sequence[tuple[str, int]] | Sequence[str] | None = None,
    client: ClientLike | None = None,
) -> Iterator[Task]:
    """Yield every matching task, fetching pages of ``page_size`` starting at ``offset``
    (keyset cursors when the server offers them; see :func:`iter_task_pages`)."""
    for page in iter_task_pages(
        task_id, task_name, status, extra_filter, page_size, offset, sort, client
    ):
        yield from page


def get_task(task_id: str, client: ClientLike | None = None) -> Task:
    """Return one task; HTTP 404 raises :class:`LabtaskerHTTPStatusError`."""
    return _wire.Task.model_validate(
        _call("GET", f"{_QUEUE_ME}/tasks/{task_id}", client=client, safe=True)
    )


def update_tasks(
    task_updates: Sequence[TaskUpdateRequest | dict[str, Any]],
    reset_pending: bool = False,
    client: ClientLike | None = None,
) -> TaskLsResponse:
    """Apply updates (``PUT /tasks``); returns the updated tasks in request order.

    Each update is a :class:`~labtasker.wire.TaskUpdateRequest` (or a dict for one) with
    ``task_id`` plus the fields to change; only fields that were set are sent. Dict fields are
    merged one level deep unless named in ``replace_fields``. With ``reset_pending`` the tasks
    also go back to ``pending`` with ``retries=0``.
    """
    items: list[dict[str, Any]] = []
    for upd in task_updates:
        if isinstance(upd, dict):
            upd = _wire.TaskUpdateRequest.model_validate(upd)
        elif not isinstance(upd, _wire.TaskUpdateRequest):
            raise LabtaskerTypeError(
                f"task_updates items must be TaskUpdateRequest or dict, got {type(upd).__name__}"
            )
        for name in ("args", "metadata", "summary"):
            value = getattr(upd, name, None)
            if value:
                _check_storable_numbers(value, f"task_updates[{len(items)}].{name}")
        items.append(upd.model_dump(mode="json", exclude_unset=True))
    data = _call(
        "PUT",
        f"{_QUEUE_ME}/tasks",
        client=client,
        json_body=items,
        params={"reset_pending": str(bool(reset_pending)).lower()},
    )
    return _wire.TaskLsResponse.model_validate(data)


ENDED_TASK_STATUSES = ("success", "failed", "cancelled")
_CANCEL_ATTEMPTS = 5
_MAX_ID = 100  # characters of a task id in a batch cancel (``TaskCancelRequest``)


def cancel_task(task_id: str, client: ClientLike | None = None) -> str:
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
        run_id = worker_id = None  # the fence: the run that was read
        if task.status == "running":
            if task.run_id:
                run_id = task.run_id
            elif task.worker_id:
                worker_id = task.worker_id
        try:
            report_task_status(
                task_id, "cancelled", worker_id=worker_id, run_id=run_id, client=client
            )
        except TaskNotOwned:
            continue  # the run ended or changed (or the task vanished) meanwhile: look again
        return task.status
    raise LabtaskerRuntimeError(
        f"Task {task_id} changed its run {_CANCEL_ATTEMPTS} times while being cancelled; "
        "not cancelled"
    )


def cancel_tasks(
    task_ids: Sequence[str], client: ClientLike | None = None
) -> dict[str, str | None]:
    """Cancel many tasks; return ``{task_id: status before}`` for every distinct id, in the
    order given, with ``None`` for an id the queue does not have.

    As :func:`cancel_task` for each task (pending and running ones become ``cancelled``,
    ended ones are left unchanged), but 1,000 ids per request (``POST /tasks/cancel``), each
    request one transaction on the server: 2,000 ids take two requests instead of 4,000.
    Against a server without that route (labtasker 1.0.1) it falls back to
    :func:`cancel_task` per id. Raises :class:`LabtaskerRuntimeError` as
    :func:`cancel_task` does in that fallback.
    """
    ids = list(dict.fromkeys(task_ids))
    # an id longer than the route takes is no task's id: answered without asking
    before: dict[str, str | None] = {t: None for t in ids if len(t) > _MAX_ID}
    asked = [t for t in ids if len(t) <= _MAX_ID]
    for start in range(0, len(asked), 1000):
        chunk = asked[start : start + 1000]
        req = _wire.TaskCancelRequest(task_ids=chunk)
        try:
            body = _call("POST", f"{_QUEUE_ME}/tasks/cancel", client=client, json_body=_body(req))
        except LabtaskerHTTPStatusError as exc:
            if exc.status_code not in (404, 405) or start:
                raise
            return _cancel_one_by_one(ids, client)
        for item in _wire.TaskCancelResponse.model_validate(body).results:
            before[item.task_id] = item.before
    return {t: before.get(t) for t in ids}  # in the order given


def _cancel_one_by_one(ids: list[str], client: ClientLike | None) -> dict[str, str | None]:
    """``cancel_tasks`` through ``cancel_task`` per id (a server without ``/tasks/cancel``)."""
    before: dict[str, str | None] = {}
    for task_id in ids:
        try:
            before[task_id] = cancel_task(task_id, client=client)
        except LabtaskerHTTPStatusError as exc:
            if exc.status_code != 404:
                raise
            before[task_id] = None
    return before


def delete_task(task_id: str, client: ClientLike | None = None) -> None:
    """Delete a task; HTTP 404 (``Task not found``) raises :class:`LabtaskerHTTPStatusError`."""
    _call("DELETE", f"{_QUEUE_ME}/tasks/{task_id}", client=client)


# ----------------------------------------------------------------------------- workers


def create_worker(
    worker_name: str | None = None,
    metadata: dict[str, Any] | None = None,
    max_retries: int = 3,
    client: ClientLike | None = None,
) -> str:
    """Register a worker and return its id (str). ``max_retries`` failures crash it."""
    req = _wire.WorkerCreateRequest(
        worker_name=worker_name, metadata=metadata, max_retries=max_retries
    )
    body = _call("POST", f"{_QUEUE_ME}/workers", client=client, json_body=_body(req))
    return _wire.WorkerCreateResponse.model_validate(body).worker_id


def ls_workers(
    worker_id: str | None = None,
    worker_name: str | None = None,
    status: str | None = None,
    extra_filter: str | dict[str, Any] | None = None,
    limit: int = 100,
    offset: int = 0,
    sort: Sequence[tuple[str, int]] | Sequence[str] | None = None,
    client: ClientLike | None = None,
    gone: bool | None = None,
) -> WorkerLsResponse:
    """Search workers, one page: ``WorkerLsResponse(found, content=[Worker, ...])``.

    Arguments and errors as in :func:`ls_tasks` (``status``: active|suspended|crashed).
    ``gone``: True only workers whose loop ended, False only live ones (ours; a 1.0.1
    server ignores it).
    """
    selection = {"worker_id": worker_id, "worker_name": worker_name, "status": status, "gone": gone}
    body = _search_body(_wire.WorkerLsRequest, selection, extra_filter, limit, offset, sort)
    return _wire.WorkerLsResponse.model_validate(_search_page(_WORKER_SEARCH, body, client))


def iter_workers(
    worker_id: str | None = None,
    worker_name: str | None = None,
    status: str | None = None,
    extra_filter: str | dict[str, Any] | None = None,
    page_size: int = 100,
    offset: int = 0,
    sort: Sequence[tuple[str, int]] | Sequence[str] | None = None,
    client: ClientLike | None = None,
    gone: bool | None = None,
) -> Iterator[Worker]:
    """Yield every matching worker, fetching pages of ``page_size`` starting at ``offset``.
    Arguments and errors as in :func:`ls_workers` (raised when iteration starts)."""
    selection = {"worker_id": worker_id, "worker_name": worker_name, "status": status, "gone": gone}
    body = _search_body(_wire.WorkerLsRequest, selection, extra_filter, page_size, offset, sort)
    for page in _iter_pages(_WORKER_SEARCH, body, _wire.Worker, client):
        yield from page


def get_worker(worker_id: str, client: ClientLike | None = None) -> Worker:
    """Return one worker; HTTP 404 raises :class:`LabtaskerHTTPStatusError`."""
    data = _call("GET", f"{_QUEUE_ME}/workers/{worker_id}", client=client, safe=True)
    if isinstance(data, dict) and "worker_id" not in data and "_id" in data:
        data = {**data, "worker_id": data["_id"]}
    return _wire.Worker.model_validate(data)


def report_worker_status(worker_id: str, status: str, client: ClientLike | None = None) -> None:
    """Set a worker's status: ``"active"`` (re-activate) or ``"suspended"``.

    Raises :class:`LabtaskerValueError` for other values, :class:`LabtaskerRuntimeError`
    (``FSM invalid transition: ...``) when the state machine forbids the change.
    """
    if status not in ("active", "suspended", "crashed"):
        raise LabtaskerValueError(
            f"Invalid worker status {status!r}: expected 'active', 'suspended' or 'crashed'"
        )
    req = _wire.WorkerStatusUpdateRequest(status=status)
    try:
        _call(
            "POST",
            f"{_QUEUE_ME}/workers/{worker_id}/status",
            client=client,
            json_body=_body(req),
            safe=True,
        )
    except LabtaskerHTTPStatusError as exc:
        if _is_invalid_transition(exc):
            raise LabtaskerRuntimeError(
                f"FSM invalid transition: {format_detail(exc.detail)}"
            ) from exc
        raise


def _is_invalid_transition(exc: LabtaskerHTTPStatusError) -> bool:
    """The server refused a status change that its state machine forbids: ``code``
    ``invalid_transition``; a server without codes (1.0.1) says ``InvalidStateTransition``."""
    if exc.code is not None:
        return exc.code == codes.INVALID_TRANSITION
    return exc.status_code in (400, 409) and "transition" in format_detail(exc.detail).lower()


def delete_worker(
    worker_id: str, cascade_update: bool = True, client: ClientLike | None = None
) -> None:
    """Delete a worker; with ``cascade_update`` (default) its tasks' ``worker_id`` is cleared."""
    _call(
        "DELETE",
        f"{_QUEUE_ME}/workers/{worker_id}",
        client=client,
        params={"cascade_update": str(bool(cascade_update)).lower()},
    )


# ----------------------------------------------------------------------------- results


def count_tasks(
    extra_filter: str | dict[str, Any] | None = None,
    status: str | None = None,
    by: str | None = None,
    client: ClientLike | None = None,
) -> TaskCountResponse:
    """Count matching tasks on the server in one query, grouped by ``by``.

    ``by``: ``"status"`` (default), a task column (``task_name``, ``priority``, ...), a
    dotted ``args.*``/``metadata.*``/``summary.*`` path, or ``"arg_fields"`` (the set of
    argument fields). Returns ``TaskCountResponse(total, by, groups=[CountGroup(value,
    count)], truncated)``, whose groups always add up to ``total``; ``.counts()`` gives a
    ``{value: count}`` dict. Raises :class:`LabtaskerHTTPStatusError` (400) for an unknown
    field or a bad filter.
    """
    req = _wire.TaskCountRequest(extra_filter=coerce_filter(extra_filter), status=status, by=by)
    body = _call("POST", f"{_QUEUE_ME}/tasks/count", client=client, json_body=_body(req), safe=True)
    return _wire.TaskCountResponse.model_validate(body)


def requeue_tasks(
    task_ids: Sequence[str] | None = None,
    status: str | None = None,
    extra_filter: str | dict[str, Any] | None = None,
    client: ClientLike | None = None,
) -> list[str]:
    """Put tasks back to ``pending`` with ``retries`` 0; return the ids requeued.

    Selection (all given conditions apply): ``task_ids``, ``status`` (``failed``,
    ``cancelled``, ``success`` or ``running``; default: every ended task, i.e. success,
    failed and cancelled), ``extra_filter``. A requeued running task's run is stopped by its
    loop at the next heartbeat. Sent 1,000 at a time until nothing more matches.
    """
    ids = list(task_ids) if task_ids is not None else None
    chunks = [ids[i : i + 1000] for i in range(0, len(ids), 1000)] if ids is not None else [None]
    done: list[str] = []
    for chunk in chunks or [[]]:
        while True:
            req = _wire.TaskRequeueRequest(
                task_ids=chunk, status=status, extra_filter=coerce_filter(extra_filter)
            )
            body = _call("POST", f"{_QUEUE_ME}/tasks/requeue", client=client, json_body=_body(req))
            done.extend(body.get("task_ids") or [])
            if not body.get("more"):
                break
    return done


def queue_overview(
    window_seconds: float = 600.0, client: ClientLike | None = None
) -> QueueOverviewResponse:
    """The queue at a glance (``GET /overview``): counts per status, runs finished in the
    last ``window_seconds``, throughput and ETA, workers, running tasks with progress."""
    body = _call(
        "GET",
        f"{_QUEUE_ME}/overview",
        client=client,
        params={"window_seconds": window_seconds},
        safe=True,
    )
    return _wire.QueueOverviewResponse.model_validate(body)


def report_task_progress(
    task_id: str,
    step: float,
    total: float | None = None,
    metrics: dict[str, Any] | None = None,
    worker_id: str | None = None,
    run_id: str | None = None,
    client: ClientLike | None = None,
) -> dict[str, Any]:
    """Store the latest progress snapshot of a running task (also a heartbeat); returns it
    as stored (``{"step", "total", "metrics", "updated_at"}``). Raises
    :class:`TaskNotOwned` when the run no longer owns the task, ``pydantic.ValidationError``
    for bad values. Prefer :func:`labtasker.report_progress` inside a job (rate-limited)."""
    req = _wire.TaskProgressRequest(
        step=step, total=total, metrics=metrics or {}, worker_id=worker_id, run_id=run_id
    )
    try:
        body = _call(
            "POST",
            f"{_QUEUE_ME}/tasks/{task_id}/progress",
            client=client,
            json_body=_body(req),
            safe=True,
        )
    except LabtaskerHTTPStatusError as exc:
        if exc.status_code in (403, 404, 409):
            raise _not_owned(exc, "Progress report", task_id) from exc
        raise
    return body["progress"]


def mark_worker_gone(worker_id: str, client: ClientLike | None = None) -> Worker:
    """Mark a worker as gone (its loop ended); returns the worker with ``gone_at`` set."""
    data = _call("POST", f"{_QUEUE_ME}/workers/{worker_id}/gone", client=client, safe=True)
    return _wire.Worker.model_validate(data)


def prune_workers(gone_for: float = 0.0, client: ClientLike | None = None) -> list[str]:
    """Delete the workers that have gone (for at least ``gone_for`` seconds) and run no
    task; returns their ids."""
    deleted: list[str] = []
    while True:
        body = _call(
            "POST",
            f"{_QUEUE_ME}/workers/prune",
            client=client,
            json_body=_body(_wire.WorkerPruneRequest(gone_for=gone_for)),
        )
        deleted.extend(body.get("worker_ids") or [])
        if not body.get("more"):
            return deleted
