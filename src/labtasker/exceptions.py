"""Exception classes of the labtasker client (the 1.0.1 names, plus ours).

Hierarchy (all derive from :class:`LabtaskerError`)::

    LabtaskerError
    ├── LabtaskerRuntimeError (RuntimeError)
    │   ├── WorkerSuspended          fetch_task answered 403 (worker suspended/crashed)
    │   ├── LoopStopped              the loop ended: going on cannot help (exit 1)
    │   ├── TaskNotOwned             heartbeat/report refused: stale run, task gone or reassigned
    │   └── ConfigError              client.toml invalid
    │       └── ConfigNotFoundError  client.toml missing (also a FileNotFoundError)
    ├── LabtaskerValueError (ValueError)
    │   └── LabtaskerTypeError (TypeError; still a ValueError, as in 1.0.1)
    ├── LabtaskerNetworkError
    │   ├── LabtaskerHTTPStatusError (httpx.HTTPStatusError)
    │   ├── LabtaskerConnectError    (httpx.ConnectError)
    │   └── LabtaskerConnectTimeout  (httpx.ConnectTimeout)
    ├── CmdParserError
    │   ├── CmdSyntaxError (SyntaxError), CmdKeyError (KeyError), CmdTypeError (TypeError)
    └── QueryTranspilerError
        ├── QueryTranspilerSyntaxError (SyntaxError), QueryTranspilerValueError (ValueError)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "LabtaskerError",
    "LabtaskerRuntimeError",
    "LabtaskerValueError",
    "LabtaskerTypeError",
    "LabtaskerNetworkError",
    "LabtaskerHTTPStatusError",
    "LabtaskerConnectError",
    "LabtaskerConnectTimeout",
    "WorkerSuspended",
    "LoopStopped",
    "TaskNotOwned",
    "ConfigError",
    "ConfigNotFoundError",
    "CmdParserError",
    "CmdSyntaxError",
    "CmdKeyError",
    "CmdTypeError",
    "QueryTranspilerError",
    "QueryTranspilerSyntaxError",
    "QueryTranspilerValueError",
]


class LabtaskerError(Exception):
    """Base class of every error raised by labtasker client code."""


class LabtaskerRuntimeError(LabtaskerError, RuntimeError):
    """An operation could not be carried out (server refused it, bad state, ...)."""


class LabtaskerValueError(LabtaskerError, ValueError):
    """An argument has an invalid value."""


class LabtaskerTypeError(LabtaskerValueError, TypeError):
    """An argument has the wrong type (also a ``ValueError``, as in labtasker 1.0.1)."""


class LabtaskerNetworkError(LabtaskerError):
    """A transport-level problem talking to the server (base of the HTTP errors below)."""


class WorkerSuspended(LabtaskerRuntimeError):
    """``fetch_task`` was refused (HTTP 403) because the worker is suspended or crashed."""


class LoopStopped(LabtaskerRuntimeError):
    """The loop ended because going on cannot help: its worker is suspended or crashed, or the
    server refused a fetch for good (HTTP 400/401/404/422: a bad filter, a deleted queue, a
    changed password, a deleted worker). ``labtasker loop`` exits 1 with this message."""


class TaskNotOwned(LabtaskerRuntimeError):
    """The server refused a heartbeat or a status report for a task this worker ran.

    Raised for HTTP 409 (the run was fenced off: the task was re-dispatched or reset, so this
    ``run_id``/``worker_id`` no longer owns it), HTTP 404 (task deleted or no longer running)
    and, for heartbeats, HTTP 403 (task assigned to another worker). The job that was working on
    the task should stop. ``status_code``, ``detail`` and ``code`` carry the server's answer.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        detail: Any = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail
        self.code = code


if TYPE_CHECKING:  # static view of the lazily created classes below
    import httpx

    class LabtaskerHTTPStatusError(LabtaskerNetworkError, httpx.HTTPStatusError):
        status_code: int
        detail: Any
        code: str | None
        # set on the error of a refused request of ``submit_tasks`` (a batch)
        submitted_task_ids: list[str]
        first_index: int

        def __init__(
            self,
            message: str,
            *,
            request: httpx.Request,
            response: httpx.Response,
            detail: Any = None,
            code: str | None = None,
        ) -> None: ...

    class LabtaskerConnectError(LabtaskerNetworkError, httpx.ConnectError): ...

    class LabtaskerConnectTimeout(LabtaskerNetworkError, httpx.ConnectTimeout): ...


def _make_httpx_based_classes() -> dict[str, type]:
    """Create the classes that also derive from httpx exceptions.

    They are built on first access (module ``__getattr__``) so that importing this module
    does not import httpx, which keeps ``labtasker --help`` fast.
    """
    import httpx

    class LabtaskerHTTPStatusError(LabtaskerNetworkError, httpx.HTTPStatusError):
        """The server answered with a 4xx/5xx status.

        Attributes: ``status_code`` (int), ``detail`` (the server's ``detail`` field: a string,
        a list of validation errors, or the raw body text), ``code`` (the server's
        machine-readable error code, ``None`` when the answer has none), plus httpx's
        ``request``/``response``.
        """

        def __init__(
            self,
            message: str,
            *,
            request: httpx.Request,
            response: httpx.Response,
            detail: Any = None,
            code: str | None = None,
        ):
            super().__init__(message, request=request, response=response)
            self.status_code = response.status_code
            self.detail = detail
            self.code = code

    class LabtaskerConnectError(LabtaskerNetworkError, httpx.ConnectError):
        """The server could not be reached (connection refused, DNS failure, ...)."""

    class LabtaskerConnectTimeout(LabtaskerNetworkError, httpx.ConnectTimeout):
        """Connecting to the server timed out."""

    classes = {
        "LabtaskerHTTPStatusError": LabtaskerHTTPStatusError,
        "LabtaskerConnectError": LabtaskerConnectError,
        "LabtaskerConnectTimeout": LabtaskerConnectTimeout,
    }
    for cls in classes.values():
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    return classes


_LAZY = ("LabtaskerHTTPStatusError", "LabtaskerConnectError", "LabtaskerConnectTimeout")


def __getattr__(name: str):
    if name in _LAZY:
        globals().update(_make_httpx_based_classes())
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ConfigError(LabtaskerRuntimeError):
    """The client configuration file exists but cannot be read or is invalid."""


class ConfigNotFoundError(ConfigError, FileNotFoundError):
    """The client configuration file does not exist (run ``labtasker init``)."""


class CmdParserError(LabtaskerError):
    """Base class of command-template parsing errors."""


class CmdSyntaxError(CmdParserError, SyntaxError):
    """Malformed command template (e.g. unmatched ``%(``)."""


class CmdKeyError(CmdParserError, KeyError):
    """A command template refers to a key the task does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class CmdTypeError(CmdParserError, TypeError):
    """A command template value has an unsupported type."""


class QueryTranspilerError(LabtaskerError):
    """A Python-syntax filter could not be turned into a query. Raised by the transpiler
    with ``reason`` (the message without the pointer), ``expression`` (the filter text),
    ``line`` and ``column`` of the offending token (``None`` without a position) and
    ``pointer`` (the marker lines), set on the instance."""

    reason: str
    expression: str
    line: int | None
    column: int | None
    pointer: str


class QueryTranspilerSyntaxError(QueryTranspilerError, SyntaxError):
    """A Python-syntax filter is not valid Python syntax."""


class QueryTranspilerValueError(QueryTranspilerError, ValueError):
    """A Python-syntax filter uses an unsupported construct or field."""
