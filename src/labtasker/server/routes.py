"""HTTP routes of the REST API: paths, bodies, defaults and status codes of
labtasker 1.0.1. Each handler authenticates, validates, calls ``Storage`` and shapes the
answer; all business rules live in storage/claim. Timestamps are UTC ISO-8601 with offset.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from labtasker import error_codes, wire
from labtasker.keys import parse_required_fields
from labtasker.server import paging
from labtasker.server.deps import QueueId, Store, legacy_client
from labtasker.server.errors import Invalid
from labtasker.timeutil import ETA_MAX_REQUIRED, heartbeat_timeout_problem, parse_duration

router = APIRouter()


def _for_client(
    body, model, answer: dict, key: str, extra: set[str], drop: frozenset | set = frozenset()
):
    """Validate ``answer`` with ``model``; for a 1.0.x client, leave out the fields it does
    not know (``extra`` inside ``answer[key]``, ``drop`` at the top), because 1.0.1 prints
    an "Unknown fields" warning for every object that carries one."""
    data = model.model_validate(answer).model_dump(mode="json")
    if not legacy_client(body.client_version):
        return JSONResponse(data)
    for name in drop:
        data.pop(name, None)
    items = data[key] if isinstance(data[key], list) else [data[key]]
    for item in items:
        if item is not None:
            for name in extra:
                item.pop(name, None)
    return JSONResponse(data)


# The body of the answers that carry no value (1.0.1: ``null``), built once instead of through
# FastAPI's encoder on every report.
_NULL_JSON = b"null"

# Fields 1.0.x clients do not know (left out of their answers).
_NEW_TASK_FIELDS = {"run_id", "progress"}
_NEW_WORKER_FIELDS = {"running_task_ids", "gone_at"}


# ------------------------------------------------------------------ service
@router.get("/")
def welcome(request: Request):
    """The 1.0.1 welcome message; a browser (``Accept: text/html``) is sent to the dashboard
    at ``/ui`` when the server has one."""
    if getattr(request.app.state, "dashboard", False) and "text/html" in request.headers.get(
        "accept", ""
    ):
        return RedirectResponse("/ui/", status_code=303)
    return {"message": "Welcome to Labtasker!", "versions": ["v1"], "docs": "/docs"}


@router.get("/health")
def health() -> dict[str, str]:
    """Liveness: 200 ``{"connection": "ok"}`` while the process serves requests."""
    return {"connection": "ok"}


@router.get("/health/full")
def health_full(store: Store):
    """Readiness: commits a small write to the database. 200 ``{"status": "healthy",
    "database": "connected"}``; while the database cannot write, 503 with ``Retry-After``
    and ``{"status": "unhealthy", "database": <the cause>, "detail": <same>, "code":
    "storage_unavailable"}``."""
    try:
        store.check_writable()
    except Exception as exc:  # report, never raise
        retry_after = getattr(exc, "retry_after", 5.0)
        reason = str(exc) or type(exc).__name__
        return JSONResponse(
            {
                "status": "unhealthy",
                "database": reason,
                "detail": reason,
                "code": error_codes.STORAGE_UNAVAILABLE,
            },
            status_code=503,
            headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
        )
    return {"status": "healthy", "database": "connected"}


@router.get("/api/v1/polling")
def polling(request: Request) -> dict[str, float]:
    """When the timeout sweep last ran (epoch seconds) and when it runs next (seconds)."""
    return request.app.state.sweeper.polling_info()


# ------------------------------------------------------------------ queues
@router.post("/api/v1/queues", status_code=201, response_model=wire.QueueCreateResponse)
def create_queue(body: wire.QueueCreateRequest, store: Store):
    """Create a queue (no auth). 409 when the name is taken."""
    return {"queue_id": store.create_queue(body.queue_name, body.password, body.metadata)}


@router.get("/api/v1/queues/me", response_model=wire.QueueGetResponse)
def get_queue(qid: QueueId, store: Store):
    return store.get_queue(qid)


@router.put("/api/v1/queues/me", response_model=wire.QueueGetResponse)
def update_queue(body: wire.QueueUpdateRequest, qid: QueueId, store: Store):
    """Rename, change password, patch metadata. 409 when the new name is taken."""
    return store.update_queue(qid, body.new_queue_name, body.new_password, body.metadata_update)


@router.delete("/api/v1/queues/me", status_code=204)
def delete_queue(qid: QueueId, store: Store, cascade_delete: bool = False):
    """Delete the queue. With ``cascade_delete`` its tasks and workers go with it; without,
    a queue that still has any is not deleted (409) -- 1.0.1 deleted the queue and left its
    tasks and workers orphaned."""
    store.delete_queue(qid, cascade=cascade_delete)
    return Response(status_code=204)


# ------------------------------------------------------------------ tasks
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=100,
        description="Ours: a client-chosen key (e.g. a UUID) per submit request, reused by its "
        "retries. A submit whose key was already stored in this queue (last 24 h) makes no "
        "task and returns the first answer again; the same key with a different body is 409.",
    ),
]


@router.post(
    "/api/v1/queues/me/tasks",
    status_code=201,
    response_model=wire.TaskSubmitResponse,
    response_model_exclude_none=True,
)
def submit_task(
    body: wire.TaskSubmitRequest, qid: QueueId, store: Store, idempotency_key: IdempotencyKey = None
):
    """Submit one task; it starts ``pending``. With ``unique`` the answer also says whether
    it was ``created`` (false: ``task_id`` is the existing task with equal args)."""
    answer = store.submit_batch(
        qid, [body.model_dump(exclude={"client_version"})], idempotency_key=idempotency_key
    )
    out = {"task_id": answer["task_ids"][0]}
    if body.unique:
        out["created"] = answer["created"][0]
    return out


@router.post(
    "/api/v1/queues/me/tasks/batch",
    status_code=201,
    response_model=wire.TaskBatchSubmitResponse,
    response_model_exclude_none=True,
)
def submit_tasks(
    body: wire.TaskBatchSubmitRequest,
    qid: QueueId,
    store: Store,
    idempotency_key: IdempotencyKey = None,
):
    """Submit up to 5,000 tasks in one request, all or nothing (ours; not in 1.0.1).
    422 names the index of a bad task (``tasks.<i>.<field>``). With ``unique`` (or a task's
    own ``unique``) ``created`` says per task whether it was made."""
    batch = [t.model_dump(exclude={"client_version"}) for t in body.tasks]
    answer = store.submit_batch(qid, batch, unique=body.unique, idempotency_key=idempotency_key)
    out = {"task_ids": answer["task_ids"]}
    if body.unique or any(t.unique for t in body.tasks):
        out["created"] = answer["created"]
    return out


@router.put("/api/v1/queues/me/tasks", response_model=wire.TaskLsResponse)
def update_tasks(
    body: Annotated[list[wire.TaskUpdateRequest], Body()],
    qid: QueueId,
    store: Store,
    reset_pending: bool = True,
):
    """Update a batch of tasks, all or nothing. With ``reset_pending`` (default, as 1.0.1)
    every task goes back to pending with retries 0."""
    updates = []
    for item in body:
        fields = item.model_dump(exclude_unset=True, exclude={"client_version"})
        fields["task_id"] = item.task_id
        updates.append(fields)
    content = store.update_tasks(qid, updates, reset_pending)
    return {"found": bool(content), "content": content}


@router.post("/api/v1/queues/me/tasks/search", response_model=wire.TaskLsResponse)
def search_tasks(body: wire.TaskLsRequest, qid: QueueId, store: Store):
    """One page of tasks; default order last_modified ascending."""
    content = store.search_tasks(
        qid,
        extra_filter=body.extra_filter,
        task_id=body.task_id,
        task_name=body.task_name,
        status=body.status,
        sort=body.sort,
        offset=body.offset,
        limit=body.limit,
        cursor=body.cursor,
    )
    keys = paging.keyset_sort(body.sort)
    next_cursor = (
        paging.encode_cursor(keys, content[-1])
        if keys is not None and len(content) == body.limit
        else None
    )
    answer = {"found": bool(content), "content": content, "next_cursor": next_cursor}
    return _for_client(
        body, wire.TaskLsResponse, answer, "content", _NEW_TASK_FIELDS, drop={"next_cursor"}
    )


def _claim_options(body: wire.TaskFetchRequest) -> dict[str, Any]:
    """The keyword arguments of ``Storage.fetch_task`` for a claim request, checked: raises
    ``Invalid`` (400) for an ``eta_max`` that is not a duration of at most ``MAX_SECONDS``,
    a claim with neither heartbeat nor ``eta_max``, a ``heartbeat_timeout`` shorter than
    the ``heartbeat_interval``, or malformed ``required_fields``."""
    task_timeout = None
    if body.eta_max:
        try:
            task_timeout = parse_duration(body.eta_max)
        except ValueError as exc:
            raise Invalid(f"eta_max: {exc}") from exc
        if not task_timeout <= wire.MAX_SECONDS:  # also NaN and infinity ("inf")
            raise Invalid(
                f"eta_max: {body.eta_max!r} is more than the limit ({wire.MAX_SECONDS} seconds)"
            )
    if not body.start_heartbeat and not task_timeout:
        raise Invalid(ETA_MAX_REQUIRED)
    problem = heartbeat_timeout_problem(body.heartbeat_timeout, body.heartbeat_interval)
    if problem:
        raise Invalid(problem)
    try:
        parse_required_fields(body.required_fields)
    except ValueError as exc:
        raise Invalid(f"Invalid required fields. Detail: {exc}") from exc
    return {
        "worker_id": body.worker_id,
        "task_timeout": task_timeout,
        "heartbeat_timeout": body.heartbeat_timeout,
        "start_heartbeat": body.start_heartbeat,
        "required_fields": body.required_fields,
        "extra_filter": body.extra_filter,
        "cmd": body.cmd,
    }


@router.post("/api/v1/queues/me/tasks/next", response_model=wire.TaskFetchResponse)
def fetch_task(body: wire.TaskFetchRequest, qid: QueueId, store: Store):
    """Claim the next pending task whose args satisfy ``required_fields`` (no more, no
    less) and ``extra_filter``. 404 unknown worker, 403 suspended/crashed worker."""
    task = store.fetch_task(qid, **_claim_options(body))
    answer = {"found": task is not None, "task": task}
    return _for_client(body, wire.TaskFetchResponse, answer, "task", _NEW_TASK_FIELDS)


@router.post("/api/v1/queues/me/tasks/{task_id}/status")
def report_task_status(
    task_id: str, body: wire.TaskStatusUpdateRequest, qid: QueueId, store: Store
):
    """Report a run's outcome. 409 when ``run_id``/``worker_id`` do not own the task.
    Answers ``null``; with ``claim_next`` (a ``POST /tasks/next`` body), the report is
    followed by that claim and the answer is ``{"next": {"found", "task"}}``, or
    ``{"next": null}`` when the claim was refused (worker unknown, suspended or crashed:
    the refusal is for a plain claim to tell). A ``claim_next`` that is not a valid claim
    is refused (400) and nothing is stored. The report and the claim are one transaction
    (``Storage.report_and_claim``): one request and one commit instead of two for a loop."""
    report: dict[str, Any] = {
        "status": body.status,
        "worker_id": body.worker_id,
        "run_id": body.run_id,
        "summary": body.summary,
    }
    if body.claim_next is None:
        store.report_task(qid, task_id, **report)
        return Response(_NULL_JSON, media_type="application/json")
    claim_next = _claim_options(body.claim_next)
    claimed, task = store.report_and_claim(qid, task_id, **report, claim_next=claim_next)
    answer: dict[str, Any] = {"next": {"found": task is not None, "task": task}}
    if not claimed:
        answer = {"next": None}
    return JSONResponse(wire.TaskReportClaimResponse.model_validate(answer).model_dump(mode="json"))


@router.post("/api/v1/queues/me/tasks/{task_id}/heartbeat", status_code=204)
def heartbeat(
    task_id: str,
    qid: QueueId,
    store: Store,
    worker_id: str | None = None,
    run_id: str | None = None,
):
    """Refresh the heartbeat. 404 not running, 409 stale ``run_id``, 403 other worker."""
    store.heartbeat(qid, task_id, worker_id=worker_id, run_id=run_id)
    return Response(status_code=204)


@router.post("/api/v1/queues/me/tasks/{task_id}/progress", response_model=wire.TaskProgressResponse)
def report_progress(task_id: str, body: wire.TaskProgressRequest, qid: QueueId, store: Store):
    """Store the latest progress of a running task (ours; also refreshes its heartbeat).
    Answer ``{"progress": {"step", "total", "metrics", "updated_at"}}``. 404 not running,
    409 stale ``run_id``, 403 other worker, 422 bad values (naming the field)."""
    progress = {"step": body.step, "total": body.total, "metrics": body.metrics}
    return {
        "progress": store.report_progress(
            qid, task_id, progress=progress, worker_id=body.worker_id, run_id=body.run_id
        )
    }


@router.post("/api/v1/queues/me/tasks/count", response_model=wire.TaskCountResponse)
def count_tasks(body: wire.TaskCountRequest, qid: QueueId, store: Store):
    """Count matching tasks grouped by ``by`` (``status`` by default, a task column, or a
    dotted ``args.*``/``metadata.*``/``summary.*`` path) in one query: the groups always
    add up to ``total``. At most 1,000 groups (``truncated``). 400 names a bad field."""
    return store.count_tasks(qid, extra_filter=body.extra_filter, status=body.status, by=body.by)


@router.post("/api/v1/queues/me/tasks/requeue", response_model=wire.TaskRequeueResponse)
def requeue_tasks(body: wire.TaskRequeueRequest, qid: QueueId, store: Store):
    """Put matching tasks back to pending with retries 0 (ours). Without ``status``, the
    ended ones (success, failed, cancelled) are requeued; at most ``limit`` per call, and
    ``more`` says whether to call again."""
    return store.requeue_tasks(
        qid,
        task_ids=body.task_ids,
        status=body.status,
        extra_filter=body.extra_filter,
        limit=body.limit,
    )


@router.post("/api/v1/queues/me/tasks/cancel", response_model=wire.TaskCancelResponse)
def cancel_tasks(body: wire.TaskCancelRequest, qid: QueueId, store: Store):
    """Cancel up to 1,000 tasks by id in one transaction (ours): pending and running ones
    become ``cancelled`` (a running task's loop stops its job at its next heartbeat), ended
    ones are left unchanged. ``results``: for each distinct id in the order asked, the
    status it had (``before``), ``null`` when the queue has no such task."""
    return {"results": store.cancel_tasks(qid, body.task_ids)}


@router.get("/api/v1/queues/me/overview", response_model=wire.QueueOverviewResponse)
def overview(qid: QueueId, store: Store, window_seconds: float = 600.0):
    """The queue at a glance (ours): counts per status, runs finished in the last
    ``window_seconds`` (1..86400, default 600), throughput and ETA, workers, running tasks
    with their progress."""
    if not 1 <= window_seconds <= 86400:
        raise Invalid(f"window_seconds: must be between 1 and 86400, got {window_seconds:g}")
    return store.queue_overview(qid, window_seconds=window_seconds)


@router.get("/api/v1/queues/me/tasks/{task_id}", response_model=wire.Task)
def get_task(task_id: str, qid: QueueId, store: Store):
    return store.get_task(qid, task_id)


@router.get("/api/v1/queues/me/tasks/{task_id}/runs", response_model=wire.TaskRunsResponse)
def list_task_runs(
    task_id: str, qid: QueueId, store: Store, limit: Annotated[int, Query(ge=1, le=1000)] = 100
):
    """The task's runs, newest first (``limit`` 1..1000): ``{"task_id", "content": [run]}``,
    each run as ``Storage.list_task_runs`` describes. 404 when the queue has no such task."""
    return {"task_id": task_id, "content": store.list_task_runs(qid, task_id, limit)}


@router.delete("/api/v1/queues/me/tasks/{task_id}", status_code=204)
def delete_task(task_id: str, qid: QueueId, store: Store):
    store.delete_task(qid, task_id)
    return Response(status_code=204)


# ------------------------------------------------------------------ workers
@router.post("/api/v1/queues/me/workers", status_code=201, response_model=wire.WorkerCreateResponse)
def create_worker(body: wire.WorkerCreateRequest, qid: QueueId, store: Store):
    return {
        "worker_id": store.create_worker(qid, body.worker_name, body.metadata, body.max_retries)
    }


@router.post("/api/v1/queues/me/workers/search", response_model=wire.WorkerLsResponse)
def search_workers(body: wire.WorkerLsRequest, qid: QueueId, store: Store):
    content = store.search_workers(
        qid,
        extra_filter=body.extra_filter,
        worker_id=body.worker_id,
        worker_name=body.worker_name,
        status=body.status,
        sort=body.sort,
        offset=body.offset,
        limit=body.limit,
        gone=body.gone,
    )
    answer = {"found": bool(content), "content": content}
    return _for_client(body, wire.WorkerLsResponse, answer, "content", _NEW_WORKER_FIELDS)


@router.post("/api/v1/queues/me/workers/{worker_id}/status")
def report_worker_status(
    worker_id: str, body: wire.WorkerStatusUpdateRequest, qid: QueueId, store: Store
):
    """Set a worker ``active`` or ``suspended``; ``crashed`` is refused with 400."""
    store.report_worker(qid, worker_id, body.status)
    return None


@router.post("/api/v1/queues/me/workers/prune", response_model=wire.WorkerPruneResponse)
def prune_workers(body: wire.WorkerPruneRequest, qid: QueueId, store: Store):
    """Delete workers that have gone (for at least ``gone_for`` seconds) and run no task
    (ours). At most 1,000 per call (``more``)."""
    from datetime import timedelta

    from labtasker.timeutil import utc_now

    before = utc_now() - timedelta(seconds=body.gone_for) if body.gone_for else None
    return store.prune_workers(qid, gone_before=before)


@router.post("/api/v1/queues/me/workers/{worker_id}/gone", response_model=wire.Worker)
def mark_worker_gone(worker_id: str, qid: QueueId, store: Store):
    """Mark the worker as gone: the loop that created it ended (ours). Idempotent; a
    later fetch with its id makes it live again."""
    return store.mark_worker_gone(qid, worker_id)


@router.get("/api/v1/queues/me/workers/{worker_id}")
def get_worker(worker_id: str, qid: QueueId, store: Store) -> dict[str, Any]:
    """The worker, keyed ``worker_id`` (and ``_id`` as 1.0.1 clients expect)."""
    worker = wire.Worker(**store.get_worker(qid, worker_id)).model_dump(mode="json")
    return {"_id": worker["worker_id"], **worker}


@router.delete("/api/v1/queues/me/workers/{worker_id}", status_code=204)
def delete_worker(worker_id: str, qid: QueueId, store: Store, cascade_update: bool = True):
    store.delete_worker(qid, worker_id, cascade_update)
    return Response(status_code=204)
