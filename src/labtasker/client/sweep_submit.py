"""Submit a sweep: expand it (``labtasker.sweep``) and send its tasks in batches.

``submit_sweep`` is ``labtasker.submit_sweep`` and the engine of ``labtasker task submit
--grid/--zip/--sweep``. Every task of one call shares ``metadata.sweep``: ``id`` (a new
UUID), ``index`` (0-based position in the expansion), ``name`` (when given) and, for a random
sweep, ``seed``. Tasks go out ``MAX_BATCH`` at a time, each batch all or nothing and sent with
its own idempotency key (a retried batch whose answer was lost makes no second copy).
"""

from __future__ import annotations

import builtins
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from labtasker.exceptions import LabtaskerValueError
from labtasker.keys import validate_keys
from labtasker.literals import non_finite_path
from labtasker.sweep import MAX_TASKS, Sweep, SweepError, build
from labtasker.wire import MAX_BATCH, Priority, TaskSubmitRequest


@dataclass
class SweepResult:
    """What ``submit_sweep`` did.

    ``sweep``: the expanded sweep (iterate it for the args); ``sweep_id``: ``metadata.sweep.id``
    of its tasks; ``task_ids``: one per task in expansion order (for a unique task whose args
    already existed, the existing task's id); ``created_ids``/``existing_ids``: the new tasks
    and the existing tasks that matched. Empty lists for a dry run (``submitted`` False).
    """

    sweep: Sweep
    sweep_id: str
    name: str | None
    total: int
    submitted: bool = False
    task_ids: list[str] = field(default_factory=list)
    created_ids: list[str] = field(default_factory=list)
    existing_ids: list[str] = field(default_factory=list)


def _common_fields(
    task_name, metadata, cmd, heartbeat_timeout, task_timeout, max_retries, priority
) -> dict[str, Any]:
    """Validate the options every task shares once (raises ``LabtaskerValueError``)."""
    if metadata is not None and not isinstance(metadata, Mapping):
        raise LabtaskerValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    if metadata and "sweep" in metadata:
        raise LabtaskerValueError("metadata.sweep is set by the sweep; use another key")
    found = non_finite_path(metadata, "metadata")
    if found is not None:  # model_dump(mode="json") below would store it as null
        raise LabtaskerValueError(
            f"{found[0]} is {found[1]!r}, a number JSON cannot store (infinite or NaN)"
        )
    try:
        req = TaskSubmitRequest(
            task_name=task_name,
            args={"_": 0},
            metadata=metadata,
            cmd=cmd,
            heartbeat_timeout=heartbeat_timeout,
            task_timeout=task_timeout,
            max_retries=max_retries,
            priority=priority,
        )
    except ValueError as exc:  # pydantic.ValidationError
        raise LabtaskerValueError(" ".join(str(exc).split())) from None
    data = req.model_dump(
        mode="json", exclude_none=True, exclude={"client_version", "args", "unique"}
    )
    return data


def task_bodies(
    sw: Sweep, common: dict[str, Any], sweep_meta: dict[str, Any]
) -> Iterable[dict[str, Any]]:
    """The JSON body of each task of ``sw`` (``common`` fields, its args, metadata.sweep)."""
    base_meta = common.get("metadata") or {}
    for index, args in enumerate(sw):
        validate_keys(args, "args")
        yield {
            **common,
            "args": args,
            "metadata": {**base_meta, "sweep": {**sweep_meta, "index": index}},
        }


def submit_sweep(
    grid: Mapping[str, Any] | Iterable[str] | None = None,
    zip: Mapping[str, Any] | Iterable[str] | None = None,  # noqa: A002 - the CLI option's name
    fixed: Mapping[str, Any] | None = None,
    sweep: str | os.PathLike | Mapping[str, Any] | Sweep | None = None,
    *,
    unique: bool = False,
    dry_run: bool = False,
    name: str | None = None,
    seed: int | None = None,
    max_tasks: int | None = MAX_TASKS,
    task_name: str | None = None,
    metadata: dict[str, Any] | None = None,
    cmd: str | list[str] | None = None,
    heartbeat_timeout: float | None = None,
    task_timeout: int | float | None = None,
    max_retries: int = 3,
    priority: int = Priority.MEDIUM,
    progress: Callable[[int, int], None] | None = None,
    client: Any = None,
) -> SweepResult:
    """Expand a sweep and submit its tasks; returns a :class:`SweepResult`.

    ``grid``/``zip``: ``{key: values}`` (a list, or ``"0.1,0.01"``, ``"range(3)"``,
    ``"linspace(0, 1, 5)"``, ``"logspace(-3, -1, 3)"``, a JSON list) or ``["key=values", ...]``;
    ``fixed``: args of every task; ``sweep``: a W&B-style sweep configuration (dict or YAML
    path; ``method: grid | random``) or a ``Sweep`` from ``labtasker.sweep.build``. ``unique``: skip tasks whose args equal a task already
    in the queue (decided by the server). ``dry_run``: expand and validate only. ``name``:
    ``metadata.sweep.name`` (default: the sweep file's ``name``). The other keywords are those
    of ``submit_task`` and apply to every task; ``progress(done, total)`` is called after each
    batch.

    Raises :class:`~labtasker.sweep.SweepError` (a ``LabtaskerValueError``) for an invalid
    sweep before anything is sent; HTTP errors as ``submit_tasks`` does (batches already
    stored stay stored: re-run with ``unique=True`` to complete a sweep).
    """
    if isinstance(sweep, Sweep):  # already built (the CLI validates and counts first)
        if grid or zip or fixed or seed is not None:
            raise SweepError("give grid/zip/fixed/seed to build() when passing a Sweep")
        sw = sweep
    else:
        sw = build(grid=grid, zip=zip, fixed=fixed, sweep=sweep, seed=seed, max_tasks=max_tasks)
    common = _common_fields(
        task_name, metadata, cmd, heartbeat_timeout, task_timeout, max_retries, priority
    )
    sweep_id = str(uuid.uuid4())
    label = name if name is not None else sw.name
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise SweepError("the sweep name must be a non-empty string")
    result = SweepResult(sweep=sw, sweep_id=sweep_id, name=label, total=len(sw))
    if dry_run:
        return result
    meta: dict[str, Any] = {"id": sweep_id}
    if label is not None:
        meta["name"] = label
    if sw.method == "random":
        meta["seed"] = sw.seed
    from labtasker.client import api

    bodies = list(task_bodies(sw, common, meta))
    ids, created = api.submit_bodies(bodies, unique=unique, progress=progress, client=client)
    result.submitted = True
    result.task_ids = ids
    pairs = list(builtins.zip(ids, created, strict=True))
    result.created_ids = [t for t, new in pairs if new]
    seen = set(result.created_ids)  # a repeat inside the sweep is not an "existing" task
    for t, new in pairs:
        if not new and t not in seen:
            seen.add(t)
            result.existing_ids.append(t)
    return result


__all__ = ["SweepResult", "submit_sweep", "MAX_BATCH"]
