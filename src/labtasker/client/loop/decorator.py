"""``@labtasker.loop(...)``: turn a job function into a task loop."""

from __future__ import annotations

import dataclasses
import functools
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from labtasker.client.loop.options import STOP_GRACE_SECONDS, LoopOptions
from labtasker.exceptions import LabtaskerTypeError, LabtaskerValueError, LoopStopped

if TYPE_CHECKING:
    from labtasker.client.loop.slots import Slot


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
    gpus: str | Sequence[int] | None = None,
    gpus_per_task: int = 1,
    parallel: int | None = None,
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

    ``gpus=[0, 1]`` (or ``"0,1"``, or ``"all"``: found with NVML / ``nvidia-smi -L`` within
    ``CUDA_VISIBLE_DEVICES``), ``gpus_per_task=K`` and ``parallel=N`` run one *slot* per
    device (per K devices; N slots without GPUs), as ``labtasker loop --gpus`` does: each
    slot is a worker of its own and runs the function in a fresh process (``multiprocessing``
    spawn, so the script needs the usual ``if __name__ == "__main__":`` guard) whose
    ``CUDA_VISIBLE_DEVICES``/``CUDA_DEVICE_ORDER``/``LABTASKER_SLOT``/``LABTASKER_GPUS`` are
    set before the function's module is imported. The call then returns the number of tasks
    run by all slots; it raises ``LoopStopped`` naming the slots that stopped for a reason
    (after the others finished), ``KeyboardInterrupt``/``SystemExit(128+N)`` when stopped by
    a signal. Arguments of the call must be picklable.
    """
    from labtasker.client.required import collect_required, required_fields_of

    if callable(required_fields):
        raise LabtaskerTypeError("Use @labtasker.loop(...) with parentheses")
    gpu_spec = _gpu_spec(gpus)
    if parallel is not None or gpu_spec is not None or gpus_per_task != 1:
        from labtasker.client.loop.slots import check_slot_request

        check_slot_request(gpu_spec, gpus_per_task, parallel)  # devices are found at the call
        if worker_id is not None:
            raise LabtaskerValueError(
                "worker_id cannot be used with gpus/parallel: each slot creates its own worker"
            )
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
        func_options = dataclasses.replace(
            options, required_fields=None if fields is None else tuple(fields)
        )

        def run_one_slot(slot: Slot | None, args: tuple, kwargs: dict) -> tuple[int, int]:
            from labtasker.client.loop.prompt import no_prompt
            from labtasker.client.loop.runner import LoopRunner, ensure_logging

            ensure_logging()
            if slot is None:
                runner = LoopRunner(func_options)
            else:
                runner = LoopRunner(func_options, slot=slot, prompt=no_prompt)
            runner.setup()
            signum = runner.run(runner.python_executor(func, params, args, kwargs, pass_args_dict))
            return runner.tasks_run, signum

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> int:
            if gpu_spec is None and parallel is None:
                tasks_run, signum = run_one_slot(None, args, kwargs)
            else:
                _refuse_inside_a_slot(func)
                tasks_run, signum = _run_slots(
                    wrapper, gpu_spec, gpus_per_task, parallel, args, kwargs
                )
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            if signum:
                raise SystemExit(128 + signum)
            return tasks_run

        wrapper._labtasker_run_slot = run_one_slot  # type: ignore[attr-defined]
        wrapper.required_fields = fields  # type: ignore[attr-defined]
        return wrapper

    return decorator


def _refuse_inside_a_slot(func: Callable[..., Any]) -> None:
    """Stop a slot process that is about to start slots of its own: the script called the
    decorated function at import, without ``if __name__ == "__main__":``, so every slot
    process (``multiprocessing`` spawn imports the script again) would run the whole
    multi-slot loop once more. One line on stderr and exit 2, instead of each slot failing
    on devices it cannot see."""
    import multiprocessing

    from labtasker.client.loop.slots import SLOT_PROCESS_PREFIX

    # (while spawn imports the script, the process has its name but no parent_process yet)
    if not multiprocessing.current_process().name.startswith(SLOT_PROCESS_PREFIX):
        return
    print(
        f"Error: {func.__name__}() decorated with @labtasker.loop(gpus=... or parallel=...) "
        "was called while the script was imported by a slot process: call it under "
        '`if __name__ == "__main__":` (each slot process imports the script again).',
        file=sys.stderr,
    )
    raise SystemExit(2)


def _gpu_spec(gpus: str | Sequence[int] | None) -> str | None:
    """``gpus`` of the decorator as the ``--gpus`` text (``"0,1"``, ``"all"``) or None."""
    if gpus is None or isinstance(gpus, str):
        return gpus
    if isinstance(gpus, int) or not all(
        isinstance(g, int) and not isinstance(g, bool) for g in gpus
    ):
        raise LabtaskerTypeError(f"gpus must be a list of device indices or 'all', got {gpus!r}")
    return ",".join(str(g) for g in gpus)


def _run_slots(
    wrapper: Callable[..., Any],
    gpu_spec: str | None,
    gpus_per_task: int,
    parallel: int | None,
    args: tuple,
    kwargs: dict,
) -> tuple[int, int]:
    """Run ``wrapper``'s loop once per slot in fresh processes; (tasks run, signal or 0)."""
    from labtasker.client.loop.runner import ensure_logging
    from labtasker.client.loop.slots import plan_slots
    from labtasker.client.loop.supervisor import run_slot_processes

    ensure_logging()
    slots = plan_slots(gpu_spec, gpus_per_task, parallel)
    tasks_run, signum, results = run_slot_processes(wrapper, slots, args, kwargs)
    if signum:
        return tasks_run, signum
    stopped = [r for r in results if r.reason]
    if stopped:
        raise LoopStopped(
            "; ".join(f"slot {r.label} stopped: {r.reason}" for r in stopped)
            + f" ({tasks_run} task(s) run by all slots)"
        )
    return tasks_run, 0
