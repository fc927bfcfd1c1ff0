"""The task-field registry: every field of a task, once, with what may be done with it.

The wire model (``wire.Task``, keys in this order), the storage columns and filter field map
(``server.sql_storage``), the Python-syntax filter's field names (``filters.pyquery``), the
fields a task file or ``task submit`` may set and the fields ``task update`` may change
(``client.cli``) all derive from :data:`TASK_FIELDS`; ``tests/test_vocabulary.py`` checks
that the wire models agree with it.

``storage``: ``column`` (a plain SQL column), ``datetime`` (a timestamp column, UTC) or
``json`` (a JSON document, addressable by dotted path in filters and sorts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TaskField:
    """One field of a task.

    ``submit``: a submission (task file, ``POST /tasks``) may set it; ``update``: ``PUT
    /tasks`` may change it; ``merged``: dict-valued, an update merges it key by key unless the
    field is listed in ``replace_fields``; ``v1``: labtasker 1.0.1 has the field (ours:
    ``run_id``, ``progress``).
    """

    name: str
    storage: Literal["column", "datetime", "json"] = "column"
    submit: bool = False
    update: bool = False
    merged: bool = False
    v1: bool = True


TASK_FIELDS: tuple[TaskField, ...] = (
    TaskField("task_id"),
    TaskField("queue_id"),
    TaskField("status", update=True),
    TaskField("task_name", submit=True, update=True),
    TaskField("created_at", "datetime"),
    TaskField("start_time", "datetime"),
    TaskField("last_heartbeat", "datetime"),
    TaskField("last_modified", "datetime"),
    TaskField("heartbeat_timeout", submit=True, update=True),
    TaskField("task_timeout", submit=True, update=True),
    TaskField("max_retries", submit=True, update=True),
    TaskField("retries", update=True),
    TaskField("priority", submit=True, update=True),
    TaskField("metadata", "json", submit=True, update=True, merged=True),
    TaskField("args", "json", submit=True, update=True, merged=True),
    TaskField("cmd", "json", submit=True, update=True),
    TaskField("summary", "json", update=True, merged=True),
    TaskField("worker_id"),
    TaskField("run_id", v1=False),
    # the latest progress snapshot of the current/last run: {"step", "total", "metrics",
    # "updated_at"}; set by ``POST /tasks/{id}/progress`` only
    TaskField("progress", "json", v1=False),
)

TASK_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in TASK_FIELDS)
# Fields of a task that a submission may set (task files, ``task submit``, ``POST /tasks``).
SUBMIT_TASK_FIELDS: tuple[str, ...] = tuple(f.name for f in TASK_FIELDS if f.submit)
# Fields of a task that ``PUT /tasks`` may change (as in 1.0.1).
UPDATABLE_TASK_FIELDS: tuple[str, ...] = tuple(f.name for f in TASK_FIELDS if f.update)
# The dict-valued updatable fields, merged key by key unless listed in ``replace_fields``.
DICT_TASK_FIELDS: tuple[str, ...] = tuple(f.name for f in TASK_FIELDS if f.merged)
# Most items one ``PUT /tasks`` takes (the server refuses a longer batch with 400); the CLI's
# ``task update`` sends a larger selection in batches of this size.
MAX_TASK_UPDATES = 1000
# Fields set by the server only (shown, never changed by ``PUT /tasks``).
READ_ONLY_TASK_FIELDS: tuple[str, ...] = tuple(f.name for f in TASK_FIELDS if not f.update)
DATETIME_TASK_FIELDS: frozenset[str] = frozenset(
    f.name for f in TASK_FIELDS if f.storage == "datetime"
)
JSON_TASK_FIELDS: tuple[str, ...] = tuple(f.name for f in TASK_FIELDS if f.storage == "json")
# Keys of ``summary`` that describe how one run ended, written by the loop (a failed job's
# exception, exit code and output tail; an interrupt) and by the server (a timeout). When a run
# of the task ends, those of earlier runs are removed before the new report is merged, so the
# summary shows the latest run's outcome (a success no longer carries the previous failure);
# each run's outcome stays in its history (``GET /tasks/{id}/runs``).
RUN_OUTCOME_KEYS: frozenset[str] = frozenset(
    {
        "labtasker_exception",
        "labtasker_error",
        "labtasker_timeout",
        "labtasker_interrupted",
        "exit_code",
        "output_tail",
    }
)
