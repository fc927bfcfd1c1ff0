"""Polling with a deadline, and ``/proc`` queries on process trees (Linux)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def wait_for(predicate, timeout=30.0, interval=0.05, what="condition"):
    """Poll ``predicate`` every ``interval`` s until it returns something truthy (returned);
    AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(interval)


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid`` from ``/proc``, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs: absent, or a zombie (orphans are re-parented to
    PID 1, whose reaping is not ours to test)."""
    st = proc_stat(pid)
    return st is None or st[0] == "Z"


def alive(pid: int) -> bool:
    return not gone(pid)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, grandchildren...), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st:
                children.setdefault(st[1], []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out
