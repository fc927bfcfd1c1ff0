"""Time helpers shared by client and server.

Every timestamp in labtasker is a timezone-aware UTC ``datetime``. The database's clock is the
only one that decides timeouts (``Database.now``); clients never send their own "now".
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone

_UNIT_SECONDS = {
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)([a-z]+)")


def _clock_offset() -> float:
    raw = os.environ.get("LABTASKER_TEST_CLOCK_OFFSET", "")
    try:
        return float(raw) if raw else 0.0
    except ValueError:
        return 0.0


# Test-only: seconds added to this process's clock (``LABTASKER_TEST_CLOCK_OFFSET``, read at
# import), to show that no lease and no filter date depends on a client's or server's host
# clock being right. Never set it outside tests.
CLOCK_OFFSET = _clock_offset()


def utc_now() -> datetime:
    """Return the current time as a timezone-aware UTC datetime (this process's clock)."""
    now = datetime.now(timezone.utc)
    return now + timedelta(seconds=CLOCK_OFFSET) if CLOCK_OFFSET else now


class RelativeTime(datetime):
    """A moment given relative to "now", as ``date("30 minutes ago")`` in a filter.

    Its value is this process's now + ``offset`` seconds (a UTC datetime like any other);
    sent to a server, it travels as the offset, and the server resolves it with its own clock
    (``{"_dt": <iso>, "_rel": <offset>}``), so a client whose clock is wrong still finds the
    tasks of the last 30 minutes."""

    offset: float

    @classmethod
    def from_now(cls, offset: float) -> RelativeTime:
        """The moment ``offset`` seconds from now (negative: in the past)."""
        at = utc_now() + timedelta(seconds=offset)
        value = cls(
            at.year,
            at.month,
            at.day,
            at.hour,
            at.minute,
            at.second,
            at.microsecond,
            tzinfo=timezone.utc,
        )
        value.offset = float(offset)
        return value


def as_utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime; a naive value is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def parse_duration(text: str | int | float) -> float:
    """Parse a duration into float seconds.

    Accepts a plain number (seconds: ``"90"``, ``60.5``) or a concatenation of
    ``<number><unit>`` parts with units d/day(s), h/hour(s), m/min(s)/minute(s),
    s/sec(s)/second(s), case-insensitive, spaces/commas/colons ignored: ``"1h30m"``,
    ``"1 hour, 30 minutes"``, ``"1.5h"``, ``"2d"``. As in labtasker 1.0.1, plus days.

    Raises ``ValueError`` with a message naming the problem on any other input, and on
    negative values.
    """
    if isinstance(text, bool) or text is None:
        raise ValueError(f"Invalid duration: {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"Duration must not be negative: {text!r}")
        return float(text)
    raw = str(text)
    try:
        value = float(raw.strip())
    except ValueError:
        pass
    else:
        if value < 0 or value != value:
            raise ValueError(f"Invalid duration: {raw!r}")
        return value
    compact = re.sub(r"[\s,:]", "", raw.lower())
    if not compact:
        raise ValueError(f"Invalid duration: {raw!r}")
    total = 0.0
    pos = 0
    for match in _PART.finditer(compact):
        if match.start() != pos:
            break
        unit = match.group(2)
        if unit not in _UNIT_SECONDS:
            raise ValueError(f"Invalid duration {raw!r}: unknown unit {unit!r}")
        total += float(match.group(1)) * _UNIT_SECONDS[unit]
        pos = match.end()
    if pos != len(compact):
        raise ValueError(
            f"Invalid duration {raw!r}: expected seconds or parts like '1h30m', '90s', '2 min'"
        )
    return total


def parse_positive_duration(text: str | int | float) -> float:
    """:func:`parse_duration`, and more than 0 seconds (a timeout of 0 would fail every run
    at once). ``ValueError`` names the problem."""
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("must be > 0 seconds")
    return value


MAX_SECONDS = 10 * 365 * 86400
"""The longest duration the server takes (``heartbeat_timeout``, ``task_timeout``,
``eta_max``, ``gone_for``): ten years of seconds. Here, without pydantic, so that the client
can check a value before sending it; ``labtasker.wire`` uses the same constant."""


def over_max_seconds(name: str, seconds: float, given: object) -> str | None:
    """The one-line problem when ``seconds`` (what ``given`` says, for the message) is more
    than :data:`MAX_SECONDS` (NaN and infinity too), naming ``name`` and the limit; ``None``
    when it is within it."""
    if seconds <= MAX_SECONDS:
        return None
    return f"{name}: {given} is more than the limit ({MAX_SECONDS} seconds, i.e. 10 years)"


# The run limits a fetch sets: without heartbeats, only ``eta_max`` can end a lost run.
ETA_MAX_REQUIRED = "Eta max must be specified when start_heartbeat is False"


MIN_TIMEOUT_INTERVALS = 2.0  # a heartbeat timeout must span at least this many intervals


def heartbeat_timeout_problem(
    heartbeat_timeout: float | None,
    interval: float | None,
    *,
    interval_name: str = "heartbeat_interval",
    source: str | None = None,
) -> str | None:
    """Why ``heartbeat_timeout`` (seconds) cannot work with heartbeats every ``interval``
    seconds, or ``None`` when it can (or either is unknown): one line naming both values. A
    timeout below 2 x the interval fails healthy runs (one late beat under load times the
    run out as it finishes); ``interval_name``/``source`` say where the interval comes from
    in the message (``source``, e.g. ``"task.heartbeat_interval in client.toml"``)."""
    if (
        heartbeat_timeout is None
        or interval is None
        or heartbeat_timeout >= MIN_TIMEOUT_INTERVALS * interval
    ):
        return None
    where = f", {source}" if source else ""
    return (
        f"heartbeat_timeout ({heartbeat_timeout:g}s) must be at least 2 x "
        f"{interval_name} ({interval:g}s{where}), i.e. >= "
        f"{MIN_TIMEOUT_INTERVALS * interval:g}s; the default is 3 x the interval"
    )
