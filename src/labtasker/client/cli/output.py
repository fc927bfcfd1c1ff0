"""Output of the CLI commands: format choice, YAML/JSONL/table records, tables, cells.

Only the standard library is imported at module level (``rich`` and ``yaml`` inside the
functions) so that ``labtasker --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any, Literal

from labtasker.client.cli.options import OutputFormat
from labtasker.client.terminal import stdout_is_tty


def choose_format(fmt: OutputFormat | None) -> str:
    """Explicit ``--fmt`` wins; otherwise a table on a terminal and YAML when piped."""
    if fmt is not None:
        return fmt.value
    return "table" if stdout_is_tty() else "yaml"


def model_to_dict(model: Any) -> dict:
    return model.model_dump(mode="python") if hasattr(model, "model_dump") else dict(model)


def write_yaml_item(item: dict) -> None:
    """One YAML list item per record followed by a blank line (labtasker 1.0.1 layout)."""
    import yaml

    text = yaml.safe_dump([item], sort_keys=False, allow_unicode=True, default_flow_style=False)
    sys.stdout.write(text + "\n")


def write_jsonl_item(item: dict) -> None:
    """Exactly one compact JSON object per line."""
    sys.stdout.write(json.dumps(item, default=json_default, ensure_ascii=False) + "\n")


def emit_records(
    records: Iterable[Any],
    fmt: str,
    table_builder: Callable[[list[dict]], Any] | None = None,
    quiet_key: str | None = None,
    quiet: bool = False,
    ansi: bool = True,
) -> int:
    """Print records (pydantic models or dicts) as yaml / jsonl / a Rich table.

    ``quiet`` prints only ``record[quiet_key]`` per line. Records are streamed for yaml/jsonl
    and collected for the table. Returns the number of records printed.
    """
    count = 0
    collected: list[dict] = []
    for record in records:
        item = model_to_dict(record)
        count += 1
        if quiet:
            sys.stdout.write(f"{item[quiet_key]}\n")
        elif fmt == "jsonl":
            write_jsonl_item(item)
        elif fmt == "yaml":
            write_yaml_item(item)
        else:
            collected.append(item)
        if count % 100 == 0:
            sys.stdout.flush()
    if fmt == "table" and not quiet and table_builder is not None:
        console = make_console(ansi)
        if collected:
            console.print(table_builder(collected))
        else:
            console.print("No results.", style="dim")
    sys.stdout.flush()
    return count


def make_console(ansi: bool = True):
    from rich.console import Console

    # On a terminal use its width; when redirected, do not squeeze the table into 80 columns.
    width = None if stdout_is_tty() else 200
    color_system: Literal["auto"] | None = "auto" if ansi else None
    return Console(color_system=color_system, highlight=False, soft_wrap=False, width=width)


# The one palette of task and worker statuses (tables, ``event listen``).
STATUS_STYLES = {
    "pending": "yellow",
    "running": "blue",
    "success": "green",
    "failed": "red",
    "cancelled": "dim",
    "active": "green",
    "suspended": "dim",
    "crashed": "red",
}


def fmt_time(value: Any) -> str:
    """Datetime -> ``YYYY-MM-DD HH:MM:SS`` in UTC (``-`` for None)."""
    if value is None:
        return "-"
    if hasattr(value, "astimezone"):
        from datetime import timezone

        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def compact_json(value: Any, limit: int = 60) -> str:
    """Short one-line JSON of a dict for table cells (``-`` when empty)."""
    if not value:
        return "-"
    text = json.dumps(value, default=json_default, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_text(status: str):
    from rich.text import Text

    return Text(status, style=STATUS_STYLES.get(status, ""))


def table(title: str):
    """An empty Rich table in the CLI's style (simple head, left-aligned title)."""
    from rich import box
    from rich.table import Table

    return Table(
        title=title,
        header_style="bold",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
        title_justify="left",
    )


def tasks_table(items: list[dict]):
    """Rich table of tasks: id, name, status, priority, retries, args, summary."""
    rows = table(f"{len(items)} task(s)")
    rows.add_column("ID", no_wrap=True)
    rows.add_column("Name", overflow="fold", min_width=4)
    rows.add_column("Status", no_wrap=True)
    rows.add_column("Prio", justify="right", no_wrap=True)
    rows.add_column("Tries", justify="right", no_wrap=True)
    rows.add_column("Args", overflow="fold", ratio=2, min_width=10)
    rows.add_column("Summary", overflow="fold", ratio=1, min_width=7)
    for t in items:
        rows.add_row(
            t["task_id"],
            t.get("task_name") or "-",
            status_text(t["status"]),
            str(t.get("priority")),
            f"{t.get('retries', 0)}/{t.get('max_retries', 0)}",
            compact_json(t.get("args"), 200),
            compact_json(t.get("summary"), 120),
        )
    return rows


def print_filter(query: Any) -> None:
    """``-v``: show the parsed filter as JSON on stderr (``filters.pyquery.format_filter``:
    indent 4, datetimes as ISO ``...Z``)."""
    from labtasker.filters.pyquery import format_filter

    print(f"Parsed filter: {format_filter(query)}", file=sys.stderr)


def json_default(value: Any) -> Any:
    """``json.dumps`` default of the CLI output: datetimes as ISO text, else ``str``."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
