"""Print every task of the current queue as a table: args -> status -> accuracy.

Pages through ``labtasker.ls_tasks`` (one page per call) until the queue is exhausted, then
renders a rich table sorted by the task args, with the best accuracy highlighted.

Usage: python report.py [--require-success] [--page-size N]

``--require-success`` makes the exit status 1 unless the queue holds at least one task and
every task is ``success`` (demo.sh uses this as its final verdict).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

import labtasker

# Columns for these args come first, in this order; any other args follow alphabetically.
ARG_ORDER = ("model", "C", "scaler")

STATUS_STYLE = {
    "success": "green",
    "failed": "red",
    "running": "blue",
    "pending": "yellow",
    "cancelled": "dim",
}


def fetch_all_tasks(page_size: int) -> list[Any]:
    """All tasks of the queue, oldest first, fetched one page at a time."""
    tasks: list[Any] = []
    offset = 0
    while True:
        page = labtasker.ls_tasks(limit=page_size, offset=offset, sort=[("created_at", 1)])
        tasks.extend(page.content)
        if len(page.content) < page_size:
            return tasks
        offset += page_size


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def sort_key(task: Any, arg_keys: list[str]) -> tuple:
    # Mixed types (e.g. int and str in one column) must not break sorting: sort on
    # (type name, value) pairs, with missing values last.
    key = []
    for k in arg_keys:
        v = task.args.get(k)
        key.append((v is None, type(v).__name__, v if v is not None else 0))
    return tuple(key)


def ordered_keys(keys) -> list[str]:
    return sorted(keys, key=lambda k: (ARG_ORDER.index(k) if k in ARG_ORDER else len(ARG_ORDER), k))


def build_table(tasks: list[Any]) -> Table:
    arg_keys = ordered_keys({k for t in tasks for k in t.args})
    accuracies = [
        t.summary.get("accuracy")
        for t in tasks
        if isinstance(t.summary.get("accuracy"), (int, float))
    ]
    best = max(accuracies) if accuracies else None

    table = Table(title=f"labtasker digits demo: {len(tasks)} tasks", title_justify="left")
    table.add_column("task", style="dim", no_wrap=True)
    for k in arg_keys:
        table.add_column(k, justify="right" if k == "C" else "left")
    table.add_column("submitted by", style="dim", no_wrap=True)
    table.add_column("status")
    table.add_column("retries", justify="right")
    table.add_column("accuracy", justify="right")

    for task in sorted(tasks, key=lambda t: sort_key(t, arg_keys)):
        status = str(task.status)
        acc = task.summary.get("accuracy")
        if isinstance(acc, (int, float)):
            acc_text = f"{acc:.4f}"
            if acc == best:
                acc_text = f"[bold green]{acc_text} *[/]"
        else:
            acc_text = "-"
        table.add_row(
            task.task_id[:8],
            *(fmt_value(task.args.get(k, "")) for k in arg_keys),
            str(task.metadata.get("submitted_by", "")),
            f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]",
            str(task.retries),
            acc_text,
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the digits grid results.")
    parser.add_argument(
        "--require-success",
        action="store_true",
        help="exit 1 unless there are tasks and every one of them is 'success'",
    )
    parser.add_argument("--page-size", type=int, default=5, help="tasks per ls_tasks call")
    args = parser.parse_args(argv)

    tasks = fetch_all_tasks(args.page_size)
    console = Console()
    if not console.is_terminal:
        # Piped / CI output: do not squeeze the table into the 80-column default.
        console = Console(width=120)
    if not tasks:
        console.print("No tasks in the queue.")
        return 1 if args.require_success else 0

    console.print(build_table(tasks))
    counts = Counter(str(t.status) for t in tasks)
    console.print("status: " + ", ".join(f"{status}={n}" for status, n in sorted(counts.items())))
    scored = [t for t in tasks if isinstance(t.summary.get("accuracy"), (int, float))]
    if scored:
        top = max(scored, key=lambda t: t.summary["accuracy"])
        console.print(
            f"best: {top.summary['accuracy']:.4f} with "
            + " ".join(f"{k}={fmt_value(top.args[k])}" for k in ordered_keys(top.args))
        )

    if args.require_success and counts.get("success", 0) != len(tasks):
        console.print(f"[red]not every task succeeded: {dict(counts)}[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
