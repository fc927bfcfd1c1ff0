"""Machine-readable error codes: the ``code`` our server puts beside ``detail`` in every error
answer (``{"detail": "Task 3f... not found", "code": "task_not_found"}``).

``detail`` stays the human message (1.0.1 clients read only it); clients decide by ``code``.
Answers without a ``code`` come from a 1.0.1 server or from something in between (a proxy).
"""

from __future__ import annotations

# 404
NOT_FOUND = "not_found"
QUEUE_NOT_FOUND = "queue_not_found"
TASK_NOT_FOUND = "task_not_found"
TASK_NOT_RUNNING = "task_not_running"  # heartbeat for a task that is missing or not running
WORKER_NOT_FOUND = "worker_not_found"
ROUTE_NOT_FOUND = "route_not_found"  # no such path (or method: 405) on this server
# 409 (and 403 for a heartbeat from another worker)
RUN_NOT_OWNER = "run_not_owner"  # the run_id is not the task's current run
WORKER_NOT_OWNER = "worker_not_owner"  # the task is assigned to another worker
NAME_TAKEN = "name_taken"
QUEUE_NOT_EMPTY = "queue_not_empty"
CONFLICT = "conflict"
# 403
WORKER_NOT_ACTIVE = "worker_not_active"  # fetch by a suspended or crashed worker
FORBIDDEN = "forbidden"
# 400 / 422
INVALID_TRANSITION = "invalid_transition"  # the state machine forbids the status change
INVALID_REQUEST = "invalid_request"
# 413 / 429
TOO_LARGE = "too_large"  # a request body or one task's data over its configured limit
TOO_MANY_REQUESTS = "too_many_requests"  # password checks saturated or throttled (Retry-After)
# 408: the client did not send its request head or body in time (--header-timeout,
# --body-timeout); the connection is closed
REQUEST_TIMEOUT = "request_timeout"
# 401
INVALID_CREDENTIALS = "invalid_credentials"  # unknown queue, wrong password, no credentials
# 5xx
STORAGE_UNAVAILABLE = "storage_unavailable"  # 503: transient database trouble, nothing written
INTERNAL_ERROR = "internal_error"
SERVER_BUSY = "server_busy"  # 503: every connection of the process has a request in progress

# A heartbeat or report refused with one of these: the run is over for good (task deleted,
# re-dispatched, reported, cancelled or reassigned); the job should stop.
RUN_GONE = frozenset({TASK_NOT_FOUND, TASK_NOT_RUNNING, RUN_NOT_OWNER, WORKER_NOT_OWNER})
