"""``@labtasker.loop(...)``: turn a job function into a task loop."""

from __future__ import annotations

import dataclasses
import functools
import signal
from collections.abc import Callable
from typing import Any

from labtasker.client.loop.options import STOP_GRACE_SECONDS, LoopOptions
from labtasker.exceptions import LabtaskerTypeError


def loop(
    required_fields: list[str] | None = None,
    extra_filter: str | dict[str, Any] | None = None,
    cmd: str | list[str] | None = None,
    worker_id: str | None = None,
    create_worker_kwargs: dict[str, Any] | None = None,
    eta_max: str | None = None,
    heartbeat_timeout: float | None = None,
    pass_args_dict: bool = False,
    idle_timeout: float = 0.0,
    grace_period: float = STOP_GRACE_SECONDS,
) -> Callable[[Callable], Callable]:
    """Decorator turning a job function into a task loop.

    ``Required`` parameters of the function add their field (alias or name) to
    ``required_fields``. Nothing contacts the server at decoration time: calling the decorated
    function checks the queue, resolves the worker and runs tasks until none match; positional
    and keyword arguments of the call are forwarded to every job invocation. Returns the
    number of tasks run. ``pass_args_dict=True`` passes the task's whole ``args`` dict as
    first positional argument. The other arguments are the fields of :class:`LoopOptions`
    (durations in seconds). ``grace_period`` (default 10) applies to the processes a job
    starts with ``labtasker.run_with_subprocess``/``run_with_pty``: SIGTERM, then SIGKILL
    after that many seconds, when the loop is interrupted or killed or the task is taken
    away (the job function itself runs in-process and gets ``KeyboardInterrupt``). All are
    validated eagerly, at ``loop(...)``: raises
    ``LabtaskerTypeError``/``LabtaskerValueError`` (or ``QueryTranspilerError`` for a bad
    filter string) before any function is decorated.
    """
    from labtasker.client.required import collect_required, required_fields_of

    if callable(required_fields):
        raise LabtaskerTypeError("Use @labtasker.loop(...) with parentheses")
    options = LoopOptions(
        required_fields=required_fields,
        extra_filter=extra_filter,
        cmd=cmd,
        worker_id=worker_id,
        create_worker_kwargs=create_worker_kwargs,
        eta_max=eta_max,
        heartbeat_timeout=heartbeat_timeout,
        grace_period=grace_period,
        idle_timeout=idle_timeout,
    )

    def decorator(func: Callable) -> Callable:
        params = collect_required(func)
        fields: list[str] | None = None
        if required_fields is not None or params:
            fields = list(
                dict.fromkeys([*(options.required_fields or ()), *required_fields_of(params)])
            )
        func_options = dataclasses.replace(options, required_fields=fields)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> int:
            from labtasker.client.loop.runner import LoopRunner, ensure_logging

            ensure_logging()
            runner = LoopRunner(func_options)
            runner.setup()
            signum = runner.run(runner.python_executor(func, params, args, kwargs, pass_args_dict))
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            if signum:
                raise SystemExit(128 + signum)
            return runner.tasks_run

        wrapper.required_fields = fields  # type: ignore[attr-defined]
        return wrapper

    return decorator
