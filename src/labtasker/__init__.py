"""labtasker: a task queue for ML experiments.

``import labtasker`` is cheap and has no side effects (no network, no config read): every
public name of the 1.0.1 Python API is resolved on first access (PEP 562 ``__getattr__``). Typical use::

    import labtasker
    from labtasker import Required

    @labtasker.loop()
    def train(lr=Required(), cfg=Required(alias="model.cfg")):
        ...
        labtasker.finish("success", summary={"accuracy": acc})   # optional

    train()   # runs matching tasks until none is left
"""

from __future__ import annotations

import importlib
from typing import Any

from labtasker.__version__ import __version__

__application__ = "labtasker"

_CONTEXT = "labtasker.client.loop.context"
_API = "labtasker.client.api"
_EXC = "labtasker.exceptions"

_LAZY: dict[str, str] = {
    # loop runner and context helpers
    "loop": "labtasker.client.loop.decorator",
    "finish": _CONTEXT,
    "set_loop_internal_error_handler": "labtasker.client.loop.runner",
    "set_prompt_on_task_failure": "labtasker.client.loop.prompt",
    "task_info": _CONTEXT,
    "current_task_id": _CONTEXT,
    "current_worker_id": _CONTEXT,
    "is_enabled": _CONTEXT,
    "get_labtasker_log_dir": _CONTEXT,
    "Required": "labtasker.client.required",
    "run_with_pty": "labtasker.client.job",
    "run_with_subprocess": "labtasker.client.job",
    # HTTP wrappers
    "get_httpx_client": _API,
    "close_httpx_client": _API,
    "health_check": _API,
    "create_queue": _API,
    "get_queue": _API,
    "update_queue": _API,
    "delete_queue": _API,
    "submit_task": _API,
    "submit_tasks": _API,
    "submit_sweep": "labtasker.client.sweep_submit",
    "SweepResult": "labtasker.client.sweep_submit",
    "sweep_args": "labtasker.sweep",
    "fetch_task": _API,
    "report_task_status": _API,
    "refresh_task_heartbeat": _API,
    "ls_tasks": _API,
    "update_tasks": _API,
    "delete_task": _API,
    "cancel_task": _API,
    "cancel_tasks": _API,
    "create_worker": _API,
    "ls_workers": _API,
    "report_worker_status": _API,
    "delete_worker": _API,
    "count_tasks": _API,
    "requeue_tasks": _API,
    "queue_overview": _API,
    "prune_workers": _API,
    # results
    "tasks_dataframe": "labtasker.client.tabular",
    "report_progress": "labtasker.client.progress",
    # events (optional module)
    "connect_events": "labtasker.client.events",
    "EventListener": "labtasker.client.events",
    # configuration
    "get_client_config": "labtasker.client.config",
    "get_labtasker_client_config_path": "labtasker.client.config",
    # task files (JSON lines / YAML) as submit requests
    "read_task_file": "labtasker.client.taskfile",
    # exceptions
    "LabtaskerError": _EXC,
    "LabtaskerRuntimeError": _EXC,
    "LabtaskerValueError": _EXC,
    "LabtaskerTypeError": _EXC,
    "LabtaskerNetworkError": _EXC,
    "LabtaskerHTTPStatusError": _EXC,
    "LabtaskerConnectError": _EXC,
    "LabtaskerConnectTimeout": _EXC,
    "WorkerSuspended": _EXC,
    "LoopStopped": _EXC,
    "TaskNotOwned": _EXC,
    "CmdParserError": _EXC,
    "CmdSyntaxError": _EXC,
    "CmdKeyError": _EXC,
    "CmdTypeError": _EXC,
    "QueryTranspilerError": _EXC,
    "QueryTranspilerSyntaxError": _EXC,
    "QueryTranspilerValueError": _EXC,
}

__all__ = ["__version__", "__application__", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first access and cache the value."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'labtasker' has no attribute {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AttributeError(f"labtasker.{name} is not available: {exc}") from exc
    try:
        value = getattr(module, name)
    except AttributeError:
        raise AttributeError(f"labtasker.{name} is not available in {module_name}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
