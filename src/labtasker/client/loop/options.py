"""``LoopOptions``: everything that configures one task loop, validated once.

The runner, the executors and the decorator read these values; nobody copies or mutates
them. Values that only the server's configuration can settle (the heartbeat interval, hence
the default heartbeat timeout) are resolved when the loop starts, into
:class:`~labtasker.client.loop.runner.LoopSession`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labtasker.exceptions import LabtaskerTypeError, LabtaskerValueError
from labtasker.timeutil import over_max_seconds, parse_duration

STOP_GRACE_SECONDS = 10.0  # default SIGTERM -> SIGKILL delay when a job has to be stopped


def check_seconds(
    name: str,
    value: Any,
    *,
    allow_none: bool = False,
    positive: bool = False,
    allow_inf: bool = False,
) -> float | None:
    """``value`` as float seconds; ``LabtaskerTypeError`` if it is not a number (bools are
    not), ``LabtaskerValueError`` if negative (or 0 when ``positive``), NaN or infinite
    (unless ``allow_inf``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LabtaskerTypeError(f"{name} must be a number of seconds, got {value!r}")
    value = float(value)
    ok = value > 0 if positive else value >= 0  # False for NaN
    if not ok or (value == float("inf") and not allow_inf):
        bound = "> 0" if positive else ">= 0"
        raise LabtaskerValueError(
            f"{name} must be a finite number of seconds {bound}, got {value!r}"
        )
    return value


@dataclass(frozen=True)
class LoopOptions:
    """Everything that configures one task loop, validated once.

    Used by ``labtasker loop``, ``@labtasker.loop`` and
    :class:`~labtasker.client.loop.runner.LoopRunner`. Fields:

    * ``required_fields``: list/tuple of dotted arg keys (``"*"`` allowed) a task's args must
      have exactly ("no more, no less"); ``None`` = any task. Stored as a tuple.
    * ``extra_filter``: a Mongo-style ``dict`` or a filter string (Python expression or
      JSON), transpiled here; stored as a dict (``None`` when empty).
    * ``cmd``: command recorded on fetched tasks (``str`` or list of ``str``); ``None`` =
      ``sys.argv`` of the runner process.
    * ``worker_id``: an existing worker (else env ``LABTASKER_WORKER_ID``, else a worker
      named ``<host>-<pid>`` is created for the loop with ``create_worker_kwargs``: any of
      ``worker_name``, ``metadata``, ``max_retries``).
    * ``eta_max``: longest run time of each task run, a duration (``"2h"``, ``"1h30m"``,
      ``90``) of at most ten years (the server's limit, ``timeutil.MAX_SECONDS``); stored as
      a string.
    * ``heartbeat_timeout``: seconds (> 0, at most ten years) without heartbeat before the
      server fails a run; ``None`` = 3 x ``heartbeat_interval`` of the config; at least 2 x
      that interval (checked when the loop starts).
    * ``grace_period``: seconds (>= 0, finite) between the SIGTERM/SIGINT sent to a job's
      process group (loop interrupted, task taken away, loop killed) and SIGKILL; default
      10. For ``@labtasker.loop``: the groups of ``labtasker.run_with_subprocess`` calls.
    * ``idle_timeout``: seconds (>= 0, ``math.inf`` allowed) to keep polling when no pending
      task matches; default 0 = stop at once.

    Raises ``LabtaskerTypeError`` for a value of the wrong type, ``LabtaskerValueError`` for
    an out-of-range value or an invalid duration, ``QueryTranspilerError`` for an invalid
    filter string. Frozen: derive variants with ``dataclasses.replace`` (validated again).
    """

    required_fields: tuple[str, ...] | None = None
    extra_filter: dict[str, Any] | None = None
    cmd: str | tuple[str, ...] | None = None
    worker_id: str | None = None
    create_worker_kwargs: Mapping[str, Any] = field(default_factory=dict)
    eta_max: str | None = None
    heartbeat_timeout: float | None = None
    grace_period: float = STOP_GRACE_SECONDS
    idle_timeout: float = 0.0

    _WORKER_KWARGS = frozenset({"worker_name", "metadata", "max_retries"})

    if TYPE_CHECKING:  # what the constructor accepts; the fields above hold it normalised

        def __init__(
            self,
            required_fields: Sequence[str] | None = None,
            extra_filter: str | Mapping[str, Any] | None = None,
            cmd: str | Sequence[str] | None = None,
            worker_id: str | None = None,
            create_worker_kwargs: Mapping[str, Any] | None = None,
            eta_max: str | float | None = None,
            heartbeat_timeout: float | None = None,
            grace_period: float = STOP_GRACE_SECONDS,
            idle_timeout: float = 0.0,
        ) -> None: ...

    def __post_init__(self) -> None:
        put = functools.partial(object.__setattr__, self)
        fields = self.required_fields
        if fields is not None:
            if isinstance(fields, (str, bytes)) or not isinstance(fields, (list, tuple)):
                raise LabtaskerTypeError(
                    f"required_fields must be a list of strings, got {type(fields).__name__}"
                )
            for f in fields:
                if not isinstance(f, str):
                    raise LabtaskerTypeError(f"required_fields: {f!r} is not a string")
            put("required_fields", tuple(fields))
        flt = self.extra_filter
        if isinstance(flt, str):
            from labtasker.client.filtering import parse_filter

            flt = parse_filter(flt) if flt.strip() else None
        elif flt is not None and not isinstance(flt, Mapping):
            raise LabtaskerTypeError(
                f"extra_filter must be a dict or a filter string, got {type(flt).__name__}"
            )
        put("extra_filter", dict(flt) if flt else None)
        cmd = self.cmd
        if cmd is not None and not isinstance(cmd, str):
            if not isinstance(cmd, (list, tuple)) or not all(isinstance(c, str) for c in cmd):
                raise LabtaskerTypeError("cmd must be a string or a list of strings")
            put("cmd", tuple(cmd))
        if self.worker_id is not None and not isinstance(self.worker_id, str):
            raise LabtaskerTypeError(f"worker_id must be a string, got {self.worker_id!r}")
        kwargs = self.create_worker_kwargs if self.create_worker_kwargs is not None else {}
        if not isinstance(kwargs, Mapping):
            raise LabtaskerTypeError("create_worker_kwargs must be a dict")
        unknown = sorted(set(kwargs) - self._WORKER_KWARGS)
        if unknown:
            raise LabtaskerValueError(
                f"create_worker_kwargs: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(sorted(self._WORKER_KWARGS))}"
            )
        put("create_worker_kwargs", dict(kwargs))
        if self.eta_max is not None:
            try:
                seconds = parse_duration(self.eta_max)
            except ValueError as exc:
                raise LabtaskerValueError(f"Invalid eta_max: {exc}") from None
            problem = over_max_seconds("eta_max", seconds, self.eta_max)
            if problem:  # the server would refuse every fetch, after a worker was made
                raise LabtaskerValueError(problem)
            put("eta_max", str(self.eta_max))
        heartbeat_timeout = check_seconds(
            "heartbeat_timeout", self.heartbeat_timeout, allow_none=True, positive=True
        )
        if heartbeat_timeout is not None:
            problem = over_max_seconds(
                "heartbeat_timeout", heartbeat_timeout, f"{heartbeat_timeout:g}"
            )
            if problem:
                raise LabtaskerValueError(problem)
        put("heartbeat_timeout", heartbeat_timeout)
        put("grace_period", check_seconds("grace_period", self.grace_period))
        put("idle_timeout", check_seconds("idle_timeout", self.idle_timeout, allow_inf=True))
