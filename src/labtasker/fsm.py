"""State machines of tasks and workers, shared by server and client.

The server applies every status change through these tables; an edge that is not listed raises
``InvalidTransition``, and the caller turns that into HTTP 400/409 without writing anything.
"""

from __future__ import annotations

from enum import Enum


class InvalidTransition(ValueError):
    """A status change that the state machine does not allow."""

    def __init__(self, entity: str, old: str, new: str):
        # "InvalidStateTransition" in the text: 1.0.1 clients recognise FSM errors by it.
        super().__init__(f"InvalidStateTransition: Cannot transition {entity} from {old} to {new}.")
        self.entity, self.old, self.new = entity, old, new


class TaskState(str, Enum):
    """The status of a task: the one task-status vocabulary (wire models, storage, CLI
    choices). Members compare equal to their value (``TaskState.PENDING == "pending"``)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class WorkerState(str, Enum):
    """The status of a worker: the one worker-status vocabulary."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    CRASHED = "crashed"

    def __str__(self) -> str:
        return self.value


class RunOutcome(str, Enum):
    """What a run of a task reports (``POST /tasks/{id}/status``); also the states in which a
    task has ended (:data:`TERMINAL_TASK_STATES`)."""

    SUCCESS = TaskState.SUCCESS.value
    FAILED = TaskState.FAILED.value
    CANCELLED = TaskState.CANCELLED.value

    def __str__(self) -> str:
        return self.value


class WorkerReportState(str, Enum):
    """The states a user may put a worker in (``worker report``); ``crashed`` is reached only
    by failures."""

    ACTIVE = WorkerState.ACTIVE.value
    SUSPENDED = WorkerState.SUSPENDED.value

    def __str__(self) -> str:
        return self.value


TASK_STATES: tuple[str, ...] = tuple(s.value for s in TaskState)
WORKER_STATES: tuple[str, ...] = tuple(s.value for s in WorkerState)
# A task in one of these states has ended: no run of it is in progress or due.
TERMINAL_TASK_STATES: frozenset[str] = frozenset(s.value for s in RunOutcome)
WORKER_REPORT_STATES: tuple[str, ...] = tuple(s.value for s in WorkerReportState)

TASK_TRANSITIONS: dict[str, frozenset[str]] = {
    "created": frozenset({"pending"}),
    "pending": frozenset({"running", "pending", "cancelled"}),
    "running": frozenset({"success", "failed", "pending", "cancelled"}),
    "success": frozenset({"pending", "cancelled"}),
    "failed": frozenset({"pending", "cancelled", "failed"}),
    "cancelled": frozenset({"pending", "cancelled"}),
}

WORKER_TRANSITIONS: dict[str, frozenset[str]] = {
    "created": frozenset({"active"}),
    "active": frozenset({"active", "suspended", "crashed"}),
    "suspended": frozenset({"active"}),
    "crashed": frozenset({"active", "crashed"}),
}


def check_task_transition(old: str, new: str) -> None:
    """Raise ``InvalidTransition`` unless the task table allows ``old -> new``."""
    if new not in TASK_TRANSITIONS.get(old, frozenset()):
        raise InvalidTransition("task", old, new)


def check_worker_transition(old: str, new: str) -> None:
    """Raise ``InvalidTransition`` unless the worker table allows ``old -> new``."""
    if new not in WORKER_TRANSITIONS.get(old, frozenset()):
        raise InvalidTransition("worker", old, new)


def task_after_failure(status: str, retries: int, max_retries: int) -> tuple[str, int]:
    """Status and retry count of a task after a failed run (report ``failed`` or timeout).

    ``running``: retries + 1; back to ``pending`` while ``retries < max_retries``, else
    ``failed``. ``failed`` stays ``failed`` unchanged. Anything else raises
    ``InvalidTransition``. With ``max_retries = N`` a task runs at most N times (1.0.1's
    arithmetic).
    """
    if status == "failed":
        return "failed", retries
    if status != "running":
        raise InvalidTransition("task", status, "failed")
    retries += 1
    return ("pending" if retries < max_retries else "failed"), retries


# A worker's streak with no success elsewhere to show that the tasks can run is allowed this
# many times its ``max_retries`` before the worker is crashed (see ``worker_crashes``).
UNCONFIRMED_STREAK_FACTOR = 2


def worker_crashes(retries: int, max_retries: int, *, confirmed: bool = True) -> bool:
    """Whether an active worker with a streak of ``retries`` charged failures is taken out of
    service.

    ``confirmed``: another worker of the queue has reported a success since this worker's
    streak began (so the sweep's tasks can run and this machine is the odd one out): crashed
    at ``max_retries``. Unconfirmed (a lone loop, or every worker failing): nothing shows yet
    whether the machine or the configurations are bad, so the streak may reach
    ``UNCONFIRMED_STREAK_FACTOR * max_retries``; a lone loop that meets a few bad
    configurations in a row goes on, a lone broken machine still stops after a bounded
    number of tasks.
    """
    limit = max_retries if confirmed else UNCONFIRMED_STREAK_FACTOR * max_retries
    return retries >= limit


def worker_after_failure(
    status: str, retries: int, max_retries: int, *, confirmed: bool = True
) -> tuple[str, int]:
    """Status and failure count of a worker charged with one failed run.

    ``active``: retries + 1, ``crashed`` once ``worker_crashes`` says so (``confirmed`` as
    there). A suspended worker is charged too (its count rises, it stays suspended) so that a
    task's failure can always be recorded whatever its worker's state (1.0.1 refused it and
    the task stayed ``running``; docs/compatibility.md, B7). ``crashed`` is unchanged.
    """
    if status == "crashed":
        return status, retries
    retries += 1
    if status == "active" and worker_crashes(retries, max_retries, confirmed=confirmed):
        return "crashed", retries
    return status, retries
    retries += 1
    if status == "active" and retries >= max_retries:
        return "crashed", retries
    return status, retries
