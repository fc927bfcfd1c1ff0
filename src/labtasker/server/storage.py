"""The storage interface of the labtasker server.

``Storage`` lists every operation the HTTP layer needs. ``SqlStorage`` (``sql_storage.py``)
implements it for SQLite and PostgreSQL through SQLAlchemy Core. Every method that touches a
queue's data takes the authenticated ``queue_id`` and never reads or writes outside it.
Methods return plain dicts shaped like the wire models (``labtasker.wire``) and raise the
errors of ``labtasker.server.errors``; they know nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol


class Storage(Protocol):
    reads_are_local: bool  # quick local reads, safe on the event loop (embedded SQLite)

    # --- queues
    def create_queue(self, name: str, password: str, metadata: dict | None) -> str: ...
    def queue_credentials(self, username: str) -> tuple[str, str] | None: ...
    def get_queue(self, queue_id: str) -> dict[str, Any]: ...
    def update_queue(
        self,
        queue_id: str,
        new_name: str | None,
        new_password: str | None,
        metadata_update: dict | None,
    ) -> dict[str, Any]: ...
    def delete_queue(self, queue_id: str, cascade: bool = True) -> None: ...
    def server_secret(self, name: str) -> str: ...
    def arg_keys(self, queue_id: str) -> list[str]: ...
    def summary_keys(self, queue_id: str, sample: int = 1000) -> list[str]: ...

    # --- tasks
    def submit_task(self, queue_id: str, fields: dict[str, Any]) -> str: ...
    def submit_tasks(self, queue_id: str, batch: list[dict[str, Any]]) -> list[str]: ...
    def submit_batch(
        self,
        queue_id: str,
        batch: list[dict[str, Any]],
        *,
        unique: bool = False,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]: ...
    def get_task(self, queue_id: str, task_id: str) -> dict[str, Any]: ...
    def search_tasks(
        self,
        queue_id: str,
        *,
        extra_filter: dict | None,
        task_id: str | None,
        task_name: str | None,
        status: str | None,
        sort: Sequence[tuple[str, int]] | None,
        offset: int,
        limit: int,
        cursor: str | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]: ...
    def task_events(
        self, queue_id: str, task_id: str, limit: int = 200
    ) -> list[dict[str, Any]]: ...
    def last_run_workers(self, queue_id: str, task_ids: Sequence[str]) -> dict[str, str | None]: ...
    def fetch_task(
        self,
        queue_id: str,
        *,
        worker_id: str | None,
        task_timeout: float | None,
        heartbeat_timeout: float | None,
        start_heartbeat: bool,
        required_fields: list[str] | None,
        extra_filter: dict | None,
        cmd: Any,
    ) -> dict[str, Any] | None: ...
    def report_task(
        self,
        queue_id: str,
        task_id: str,
        *,
        status: str,
        worker_id: str | None,
        run_id: str | None,
        summary: dict | None,
    ) -> None: ...
    def report_and_claim(
        self,
        queue_id: str,
        task_id: str,
        *,
        status: str,
        worker_id: str | None,
        run_id: str | None,
        summary: dict | None,
        claim_next: Mapping[str, Any],
    ) -> tuple[bool, dict[str, Any] | None]: ...
    def heartbeat(
        self, queue_id: str, task_id: str, *, worker_id: str | None, run_id: str | None
    ) -> None: ...
    def update_tasks(
        self, queue_id: str, updates: list[dict[str, Any]], reset_pending: bool
    ) -> list[dict[str, Any]]: ...
    def delete_task(self, queue_id: str, task_id: str) -> None: ...
    def report_progress(
        self,
        queue_id: str,
        task_id: str,
        *,
        progress: dict[str, Any],
        worker_id: str | None,
        run_id: str | None,
    ) -> dict[str, Any]: ...
    def requeue_tasks(
        self,
        queue_id: str,
        *,
        task_ids: list[str] | None = None,
        status: str | None = None,
        extra_filter: dict | None = None,
        limit: int = 1000,
    ) -> dict[str, Any]: ...
    def cancel_tasks(self, queue_id: str, task_ids: list[str]) -> list[dict[str, Any]]: ...
    def count_tasks(
        self,
        queue_id: str,
        *,
        extra_filter: dict | None = None,
        status: str | None = None,
        by: str | None = None,
    ) -> dict[str, Any]: ...
    def queue_overview(self, queue_id: str, *, window_seconds: float = 600.0) -> dict[str, Any]: ...
    def list_task_runs(
        self, queue_id: str, task_id: str, limit: int = 100
    ) -> list[dict[str, Any]]: ...

    # --- workers
    def create_worker(
        self, queue_id: str, name: str | None, metadata: dict | None, max_retries: int
    ) -> str: ...
    def search_workers(
        self,
        queue_id: str,
        *,
        extra_filter: dict | None,
        worker_id: str | None,
        worker_name: str | None,
        status: str | None,
        sort: Sequence[tuple[str, int]] | None,
        offset: int,
        limit: int,
        gone: bool | None = None,
    ) -> list[dict[str, Any]]: ...
    def get_worker(self, queue_id: str, worker_id: str) -> dict[str, Any]: ...
    def report_worker(self, queue_id: str, worker_id: str, status: str) -> None: ...
    def mark_worker_gone(self, queue_id: str, worker_id: str) -> dict[str, Any]: ...
    def prune_workers(
        self, queue_id: str, *, gone_before: datetime | None = None
    ) -> dict[str, Any]: ...
    def delete_worker(self, queue_id: str, worker_id: str, cascade_update: bool) -> None: ...

    # --- maintenance
    def sweep_timeouts(
        self, now: datetime | None = None, uptime: Callable[[], float] | None = None
    ) -> int: ...
    def ping(self) -> None: ...
    def check_writable(self) -> None: ...
