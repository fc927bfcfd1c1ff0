"""Wire models: the JSON bodies of the REST API, shared by server and client.

Field names, defaults and key order follow labtasker 1.0.1 so that a 1.0.1 client works
against our server. Differences: every timestamp is timezone-aware UTC; tasks carry ``run_id``
(the fencing token of the current claim); metadata/summary keys are validated (1.0.1 accepted any
key; docs/compatibility.md, V1).
Unknown request fields are ignored, as 1.0.1 does.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from labtasker.fields import DICT_TASK_FIELDS, UPDATABLE_TASK_FIELDS  # noqa: F401 (re-exported)
from labtasker.fsm import RunOutcome, TaskState, WorkerState
from labtasker.keys import MAX_NAME_LENGTH, NAME_PATTERN, validate_keys
from labtasker.timeutil import MAX_SECONDS as MAX_SECONDS  # longest duration (re-exported)

# Statuses are the ``fsm`` enums; the models store the plain string value
# (``use_enum_values``), so ``task.status == "pending"`` and JSON output are unchanged.
TaskStatus = TaskState
WorkerStatus = WorkerState
ReportStatus = RunOutcome  # what a run reports: ``success`` | ``failed`` | ``cancelled``
Cmd = str | list[str] | None


class Priority:
    """Priority constants; any int is accepted, higher is fetched first."""

    LOW = 0
    MEDIUM = 10
    HIGH = 20


INT32 = (-(2**31), 2**31 - 1)  # whole-number fields are 32-bit columns on PostgreSQL
_DURATIONS = frozenset({"heartbeat_timeout", "task_timeout", "heartbeat_interval", "gone_for"})


# defer_build everywhere: a model's validator is built on its first use rather than at import,
# so a CLI call pays only for the few models it uses.
class _Request(BaseModel):
    """Every request: whole-number fields fit in 32 bits, durations are at most
    ``MAX_SECONDS`` (422 naming the field and the limit)."""

    model_config = ConfigDict(extra="ignore", use_enum_values=True, defer_build=True)
    client_version: str | None = None

    @model_validator(mode="after")
    def _check_ranges(self) -> _Request:
        for name in type(self).model_fields:
            value = getattr(self, name, None)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if isinstance(value, int) and not INT32[0] <= value <= INT32[1]:
                raise ValueError(
                    f"{name}: {value} is outside the range of a 32-bit integer "
                    f"({INT32[0]} to {INT32[1]})"
                )
            if name in _DURATIONS and not value <= MAX_SECONDS:
                raise ValueError(
                    f"{name}: {value} seconds is more than the limit ({MAX_SECONDS} seconds)"
                )
        return self


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", use_enum_values=True, defer_build=True)
    notification: list[dict[str, Any]] | None = None


def _check_dict_keys(value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
    if value is not None:
        validate_keys(value, info.field_name or "")
    return value


KeyedDict = Annotated[dict[str, Any] | None, AfterValidator(_check_dict_keys)]
"""A dict field whose keys follow the key rule at every depth (``labtasker.keys``; the error
names the field)."""


# ---------------------------------------------------------------- queues
class QueueCreateRequest(_Request):
    queue_name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)
    password: str = Field(min_length=1, max_length=100)
    metadata: KeyedDict = None


class QueueCreateResponse(_Response):
    queue_id: str


class QueueGetResponse(_Response):
    queue_id: str
    queue_name: str
    created_at: datetime
    last_modified: datetime
    metadata: dict[str, Any] = Field(default_factory=dict)


class QueueUpdateRequest(_Request):
    new_queue_name: str | None = Field(
        None, min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN
    )
    new_password: str | None = Field(None, min_length=1, max_length=100)
    metadata_update: KeyedDict = None


# ---------------------------------------------------------------- tasks
class Task(BaseModel):
    """A task as returned by search/get/fetch, keys in 1.0.1's order (that of the task-field
    registry, ``labtasker.fields.TASK_FIELDS``)."""

    model_config = ConfigDict(extra="ignore", use_enum_values=True, defer_build=True)
    task_id: str
    queue_id: str
    status: TaskStatus
    task_name: str | None = None
    created_at: datetime
    start_time: datetime | None = None
    last_heartbeat: datetime | None = None
    last_modified: datetime
    heartbeat_timeout: float | None = None
    task_timeout: int | None = None  # seconds; 1.0.1 clients expect an int
    max_retries: int = 3
    retries: int = 0
    priority: int = Priority.MEDIUM
    metadata: dict[str, Any] = Field(default_factory=dict)
    args: dict[str, Any] = Field(default_factory=dict)
    cmd: Cmd = ""
    summary: dict[str, Any] = Field(default_factory=dict)
    worker_id: str | None = None
    run_id: str | None = None
    # Latest progress snapshot of the current/last run (ours): {"step", "total", "metrics",
    # "updated_at"}; None until the job reports progress. Left out for 1.0.x clients.
    progress: dict[str, Any] | None = None

    @field_validator("task_timeout", mode="before")
    @classmethod
    def _whole_seconds(cls, v: Any) -> Any:
        # a per-run eta_max may be fractional; shown rounded up (1.0.1 clients parse an int)
        return math.ceil(v) if isinstance(v, float) else v


class TaskSubmitRequest(_Request):
    task_name: str | None = Field(
        None, min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN
    )
    args: KeyedDict = None
    metadata: KeyedDict = None
    cmd: Cmd = None
    heartbeat_timeout: float | None = Field(None, gt=0)
    task_timeout: int | None = Field(None, gt=0)  # seconds (whole, as in 1.0.1)
    max_retries: int = Field(3, ge=0)
    priority: int = Priority.MEDIUM
    unique: bool = Field(
        False,
        description="Ours: create the task only if no task of the queue (any state) "
        "has equal args (canonical JSON: key order and 1 vs 1.0 do not matter); otherwise "
        "the answer holds the existing task's id and created=false.",
    )

    @model_validator(mode="after")
    def _args_or_cmd(self) -> TaskSubmitRequest:
        if not self.args and not self.cmd:
            raise ValueError("Either args or cmd must be provided")
        return self


class TaskSubmitResponse(_Response):
    task_id: str
    # Ours, only in the answer to a ``unique`` submit: false when an equal task existed
    # (``task_id`` is then that task's id).
    created: bool | None = None


SortSpec = list[tuple[str, Literal[1, -1]]]


class TaskLsRequest(_Request):
    offset: int = Field(0, ge=0)
    limit: int = Field(100, ge=1, le=1000)
    task_id: str | None = None
    task_name: str | None = None
    status: TaskStatus | None = None
    extra_filter: dict[str, Any] | None = None
    sort: SortSpec | None = None
    cursor: str | None = None  # keyset paging (ours): the previous page's ``next_cursor``


class TaskLsResponse(_Response):
    found: bool = False
    content: list[Task] = Field(default_factory=list)
    # Keyset paging (ours): pass back as ``cursor`` for the next page; null when no page may
    # follow or when the sort is on a JSON path (page by ``offset`` then).
    next_cursor: str | None = None


RunStatus = Literal["running", "success", "failed", "timed_out", "cancelled", "requeued"]


class TaskRunRecord(BaseModel):
    """One run (claim) of a task in its history (``GET /tasks/{id}/runs``; ours).

    ``status``: ``running``, or how the run ended -- ``success``/``failed`` (reported),
    ``timed_out`` (heartbeat or task timeout), ``cancelled``, ``requeued`` (handed back to
    pending by its loop, or reset by an update). ``charged``: this failure counts in its
    worker's current streak of failures. ``summary``: ``exit_code``, ``message``, ``timeout``
    (``"heartbeat"``/``"task"``) when known. Times are UTC."""

    model_config = ConfigDict(extra="ignore")
    run_id: str
    task_id: str
    worker_id: str | None = None
    started: datetime
    ended: datetime | None = None
    status: RunStatus
    charged: bool = False
    summary: dict[str, Any] = Field(default_factory=dict)


class TaskRunsResponse(_Response):
    task_id: str
    content: list[TaskRunRecord] = Field(default_factory=list)


MAX_BATCH = 5000


class TaskBatchSubmitRequest(_Request):
    """``POST /tasks/batch``: up to 5,000 tasks, stored all or nothing."""

    tasks: list[TaskSubmitRequest] = Field(min_length=1, max_length=MAX_BATCH)
    unique: bool = Field(
        False, description="Every task of the batch is unique (see the task's own ``unique``)."
    )


class TaskBatchSubmitResponse(_Response):
    """``task_ids`` in request order: the new task's id, or for a unique task whose args
    already existed (in the queue or earlier in the batch) that task's id."""

    task_ids: list[str]
    # Only in the answer to a submit with a unique task: per task, whether it was created.
    created: list[bool] | None = None


class TaskFetchRequest(_Request):
    """``heartbeat_timeout``/``eta_max`` override the task's own timeouts for this run only.
    ``heartbeat_interval`` (seconds; not in 1.0.1, which ignores it) is how often the client
    will beat: the server refuses a ``heartbeat_timeout`` shorter than it (400)."""

    worker_id: str | None = None
    eta_max: str | None = None
    heartbeat_timeout: float | None = Field(None, gt=0)
    heartbeat_interval: float | None = Field(None, gt=0)
    start_heartbeat: bool = True
    required_fields: list[str] | None = None
    extra_filter: dict[str, Any] | None = None
    cmd: Cmd = None


class TaskFetchResponse(_Response):
    found: bool = False
    task: Task | None = None


class TaskStatusUpdateRequest(_Request):
    """A run's outcome. ``claim_next`` (ours; 1.0.1 servers ignore it): after the report,
    claim the next task as ``POST /tasks/next`` would with this body, in the same request
    and transaction; the answer is then ``TaskReportClaimResponse`` instead of ``null``."""

    status: ReportStatus
    worker_id: str | None = None
    summary: KeyedDict = None
    run_id: str | None = None
    claim_next: TaskFetchRequest | None = None


class TaskReportClaimResponse(_Response):
    """The answer to a report with ``claim_next``: ``next`` is the claim's answer, or
    ``None`` when the server made no claim (the worker is suspended, crashed or unknown: a
    plain ``POST /tasks/next`` says why)."""

    next: TaskFetchResponse | None = None


# ``UPDATABLE_TASK_FIELDS``/``DICT_TASK_FIELDS`` (imported above from the task-field
# registry, ``labtasker.fields``): what ``PUT /tasks`` may change and what it merges.


class TaskUpdateRequest(_Request):
    """One element of ``PUT /tasks``; only the fields present in the JSON are applied."""

    task_id: str = Field(validation_alias="task_id")
    replace_fields: list[str] = Field(default_factory=list)
    status: TaskStatus | None = None
    task_name: str | None = Field(
        None, min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN
    )
    heartbeat_timeout: float | None = Field(None, gt=0)
    task_timeout: int | None = Field(None, gt=0)  # seconds (whole, as in 1.0.1)
    max_retries: int | None = Field(None, ge=0)
    retries: int | None = Field(None, ge=0)
    priority: int | None = None
    metadata: KeyedDict = None
    args: KeyedDict = None
    cmd: Cmd = None
    summary: KeyedDict = None
    # Fence (not stored): only apply if this is still the task's current run, else 409.
    run_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _id_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "task_id" not in data and "_id" in data:
            data = dict(data)
            data["task_id"] = data.pop("_id")
        return data


# ---------------------------------------------------------------- results (ours)
class TaskCountRequest(_Request):
    """``POST /tasks/count``: matching tasks counted in one query, grouped by ``by``."""

    status: TaskStatus | None = None
    extra_filter: dict[str, Any] | None = None
    # status (default), a column, a dotted args./metadata./summary. path, or "arg_fields"
    by: str | None = Field(None, max_length=200)


class CountGroup(BaseModel):
    model_config = ConfigDict(defer_build=True)
    value: Any = None  # the field's value (JSON); None for null or missing
    count: int


class TaskCountResponse(_Response):
    total: int  # always the sum of every group's count
    by: str
    groups: list[CountGroup] = Field(default_factory=list)
    truncated: bool = False  # more distinct values than listed (the largest groups kept)

    def counts(self) -> dict[Any, int]:
        """``{value: count}``; unhashable values (lists, objects) keyed by their JSON text.
        ``None`` counts the tasks where the field is missing or null. Python takes ``True``
        and ``1`` (``False`` and ``0``) for the same key: when a queue holds both, the
        booleans are keyed by their JSON text (``"true"``, ``"false"``), so that no group is
        lost and the counts still add up to ``total``."""
        import json

        out: dict[Any, int] = {}
        numbers = {g.value for g in self.groups if type(g.value) in (int, float)}
        for group in self.groups:
            value = group.value
            if isinstance(value, (list, dict)) or (isinstance(value, bool) and value in numbers):
                value = json.dumps(value, sort_keys=True)
            out[value] = out.get(value, 0) + group.count
        return out


class TaskRequeueRequest(_Request):
    """``POST /tasks/requeue``: back to pending with retries 0. Without ``status`` the ended
    tasks (success, failed, cancelled) matching the other conditions are requeued."""

    task_ids: list[str] | None = Field(None, max_length=1000)
    status: Literal["running", "success", "failed", "cancelled"] | None = None
    extra_filter: dict[str, Any] | None = None
    limit: int = Field(1000, ge=1, le=1000)


class TaskRequeueResponse(_Response):
    requeued: int
    task_ids: list[str] = Field(default_factory=list)
    more: bool = False  # more tasks matched than ``limit``: call again


class TaskCancelRequest(_Request):
    """``POST /tasks/cancel``: cancel these tasks (1 to 1,000 ids; a repeated id counts
    once) if they have not ended."""

    task_ids: list[Annotated[str, Field(max_length=100)]] = Field(min_length=1, max_length=1000)


class TaskCancelResult(BaseModel):
    model_config = ConfigDict(defer_build=True)
    task_id: str
    # the status before the cancel; None when the queue has no such task. "pending" and
    # "running" tasks are cancelled now; ended ones (success, failed, cancelled) are unchanged.
    before: str | None


class TaskCancelResponse(_Response):
    results: list[TaskCancelResult]  # one per distinct id, in the order asked


ProgressNumber = float | int
MAX_PROGRESS_METRICS = 32


class TaskProgressRequest(_Request):
    """``POST /tasks/{id}/progress``: the latest progress of a running task (also counts as
    a heartbeat). ``metrics``: up to 32 numbers, strings (<= 200 characters), booleans or
    nulls under valid keys."""

    step: ProgressNumber = Field(ge=0)
    total: ProgressNumber | None = Field(None, gt=0)
    metrics: dict[str, float | int | bool | str | None] = Field(default_factory=dict)
    worker_id: str | None = None
    run_id: str | None = None

    @field_validator("step", "total")
    @classmethod
    def _finite(cls, v: Any) -> Any:
        if v is not None and isinstance(v, float) and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(v) > MAX_PROGRESS_METRICS:
            raise ValueError(f"at most {MAX_PROGRESS_METRICS} metrics, got {len(v)}")
        validate_keys(v, "metrics")
        for key, value in v.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"metrics.{key}: must be a finite number")
            if isinstance(value, str) and len(value) > 200:
                raise ValueError(f"metrics.{key}: at most 200 characters")
        return v


class TaskProgressResponse(_Response):
    progress: dict[str, Any]


class RunningTask(BaseModel):
    model_config = ConfigDict(defer_build=True)
    task_id: str
    task_name: str | None = None
    worker_id: str | None = None
    worker_name: str | None = None
    start_time: datetime | None = None
    last_heartbeat: datetime | None = None
    progress: dict[str, Any] | None = None


class QueueOverviewResponse(_Response):
    """``GET /overview``: the queue at a glance (see ``labtasker status``). Seconds; UTC."""

    queue_id: str
    queue_name: str | None = None
    now: datetime
    total: int
    counts: dict[str, int]  # per task status; sums to ``total``
    window_seconds: float
    finished_recently: int  # runs ended in the window (after a start)
    succeeded_recently: int
    failed_recently: int
    mean_run_seconds: float | None = None
    throughput_per_minute: float | None = None
    eta_seconds: float | None = None  # pending + running at the recent throughput
    workers: dict[str, int]  # live workers per status, plus "gone"
    running: list[RunningTask] = Field(default_factory=list)


class WorkerPruneRequest(_Request):
    """``POST /workers/prune``: delete gone workers (gone for at least ``gone_for`` s)."""

    gone_for: float = Field(0, ge=0)


class WorkerPruneResponse(_Response):
    deleted: int
    worker_ids: list[str] = Field(default_factory=list)
    more: bool = False


# ---------------------------------------------------------------- workers
class Worker(BaseModel):
    model_config = ConfigDict(extra="ignore", use_enum_values=True, defer_build=True)
    worker_id: str
    queue_id: str
    status: WorkerStatus
    worker_name: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    retries: int = 0
    max_retries: int = 3
    created_at: datetime
    last_modified: datetime
    # Tasks this worker is running now (computed from the tasks; empty for 1.0.1 servers).
    running_task_ids: list[str] = Field(default_factory=list)
    # When the loop that created this worker ended (ours); None while it is live.
    gone_at: datetime | None = None


class WorkerCreateRequest(_Request):
    worker_name: str | None = Field(
        None, min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN
    )
    metadata: KeyedDict = None
    max_retries: int = Field(3, ge=1)


class WorkerCreateResponse(_Response):
    worker_id: str


class WorkerLsRequest(_Request):
    offset: int = Field(0, ge=0)
    limit: int = Field(100, ge=1, le=1000)
    worker_id: str | None = None
    worker_name: str | None = None
    status: WorkerStatus | None = None
    extra_filter: dict[str, Any] | None = None
    sort: SortSpec | None = None
    gone: bool | None = None  # ours: True only gone workers, False only live ones


class WorkerLsResponse(_Response):
    found: bool = False
    content: list[Worker] = Field(default_factory=list)


class WorkerStatusUpdateRequest(_Request):
    status: WorkerStatus


# ---------------------------------------------------------------- misc
class HealthCheckResponse(BaseModel):
    model_config = ConfigDict(defer_build=True)
    status: str
    database: str


# ---------------------------------------------------------------- events
class StateTransitionEvent(BaseModel):
    """One state transition of a task or worker (1.0.1's payload)."""

    model_config = ConfigDict(extra="ignore", defer_build=True)
    type: str = "state_transition"
    queue_id: str
    timestamp: datetime
    metadata: dict[str, Any] = Field(default_factory=dict)
    entity_type: Literal["task", "worker"]
    entity_id: str
    old_state: str
    new_state: str
    entity_data: dict[str, Any] = Field(default_factory=dict)


class EventResponse(BaseModel):
    """The ``data`` of an SSE ``event`` message; ``sequence`` is the event id."""

    model_config = ConfigDict(extra="ignore", defer_build=True)
    sequence: int
    timestamp: datetime
    event: StateTransitionEvent
