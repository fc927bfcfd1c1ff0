"""Server tunables, read from the environment once, when the app is built.

=========================  =========  ========================================================
variable                   default    meaning
=========================  =========  ========================================================
``PERIODIC_TASK_INTERVAL``  30         seconds between timeout sweeps
``EVENT_POLL_INTERVAL``     2          seconds: an event stream re-reads the log at least this
                                       often even without a wake-up (the safety net)
``SSE_PING_INTERVAL``       15         seconds between ``ping`` messages of an event stream
``EVENT_LOG_SIZE``          100000     newest events of each queue kept in the log (older
                                       ones are pruned by the timeout sweep)
``LABTASKER_UI_SECRET``     (none)     key signing the dashboard's session cookies (default:
                                       one generated once and kept in the database)
``LABTASKER_UI_SESSION_SECONDS`` 43200 seconds a dashboard log-in lasts (12 h)
``MAX_BODY_BYTES``          67108864   bytes in one request body (413 beyond)
``MAX_TASK_BYTES``          4194304    bytes of one task's args + metadata + summary as JSON
                                       (413 beyond)
``HEADER_TIMEOUT``          10         seconds a connection has to deliver a complete request
                                       head, from its opening and after each answer (408 and
                                       closed beyond; ``connections``)
``BODY_TIMEOUT``            30         seconds a request has to deliver its body once the
                                       server reads it (408 and closed beyond)
=========================  =========  ========================================================

:meth:`ServerSettings.from_env` raises ``ValueError`` naming the variable and the limit for a
value that is not a positive number (a whole number, 0 or more, for ``EVENT_LOG_SIZE``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_SWEEP_INTERVAL = 30.0
DEFAULT_EVENT_POLL_INTERVAL = 2.0
DEFAULT_SSE_PING_INTERVAL = 15.0
DEFAULT_EVENT_LOG_SIZE = 100_000
DEFAULT_UI_SESSION_SECONDS = 12 * 3600.0
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_TASK_BYTES = 4 * 1024 * 1024
DEFAULT_HEADER_TIMEOUT = 10.0  # = connections.DEFAULT_HEADER_TIMEOUT
DEFAULT_BODY_TIMEOUT = 30.0  # = limits.DEFAULT_BODY_TIMEOUT


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from exc
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {raw!r}")
    return value


def _count(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from exc
    if value < 0:
        raise ValueError(f"{name} must be 0 or more, got {raw!r}")
    return value


def sweep_interval_from_env(environ: Mapping[str, str] | None = None) -> float:
    """``PERIODIC_TASK_INTERVAL`` in seconds (default 30); ``ValueError`` if not positive."""
    return _seconds(
        os.environ if environ is None else environ, "PERIODIC_TASK_INTERVAL", DEFAULT_SWEEP_INTERVAL
    )


@dataclass(frozen=True)
class ServerSettings:
    """The tunables of one server process (seconds, except ``event_log_size``: events, and
    ``ui_secret``)."""

    sweep_interval: float = DEFAULT_SWEEP_INTERVAL
    event_poll_interval: float = DEFAULT_EVENT_POLL_INTERVAL
    sse_ping_interval: float = DEFAULT_SSE_PING_INTERVAL
    event_log_size: int = DEFAULT_EVENT_LOG_SIZE
    ui_secret: str | None = None
    ui_session_seconds: float = DEFAULT_UI_SESSION_SECONDS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_task_bytes: int = DEFAULT_MAX_TASK_BYTES
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        """Read the variables of the module docstring (``os.environ`` by default)."""
        env = os.environ if environ is None else environ
        return cls(
            sweep_interval=sweep_interval_from_env(env),
            event_poll_interval=_seconds(env, "EVENT_POLL_INTERVAL", DEFAULT_EVENT_POLL_INTERVAL),
            sse_ping_interval=_seconds(env, "SSE_PING_INTERVAL", DEFAULT_SSE_PING_INTERVAL),
            event_log_size=_count(env, "EVENT_LOG_SIZE", DEFAULT_EVENT_LOG_SIZE),
            ui_secret=env.get("LABTASKER_UI_SECRET") or None,
            ui_session_seconds=_seconds(
                env, "LABTASKER_UI_SESSION_SECONDS", DEFAULT_UI_SESSION_SECONDS
            ),
            max_body_bytes=_count(env, "MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            max_task_bytes=_count(env, "MAX_TASK_BYTES", DEFAULT_MAX_TASK_BYTES),
            header_timeout=_seconds(env, "HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT),
            body_timeout=_seconds(env, "BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT),
        )
