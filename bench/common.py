"""Helpers shared by the bench driver and its child scripts.

Must import with only the standard library: the seeding scripts also run under the
labtasker 1.0.1 interpreter of ``--compare``.
"""

from __future__ import annotations

import statistics


def make_args(kind: str, n: int) -> dict:
    """Arguments of the ``n``-th task of a kind.

    ``claim``/``loop``: ``{"i"}``; ``fetch``: ``{"i", "grp"}`` (``grp`` = n % 10, the ls filter
    selects one group); ``other``: ``{"x"}`` (a shape no fetch of ``fetch`` tasks matches).
    """
    if kind in ("claim", "loop"):
        return {"i": n}
    if kind == "fetch":
        return {"i": n, "grp": n % 10}
    if kind == "other":
        return {"x": n}
    raise ValueError(f"unknown task kind {kind!r}")


REQUIRED = {"claim": ["i"], "loop": ["i"], "fetch": ["i", "grp"], "other": ["x"]}


def percentile(values: list[float], p: float) -> float:
    """``p``-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    k = (len(data) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def v2_task_id(kind: str, n: int) -> str:
    """A labtasker 2.x task id (``t_`` + 12 URL-safe characters) for the ``n``-th task of a
    kind, unique within a queue."""
    return f"t_{kind[0]}{n:011d}"
