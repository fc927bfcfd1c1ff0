"""Output of the CLI commands: format choice, YAML/JSONL/table records, tables, cells.

Only the standard library is imported at module level (``rich`` and ``yaml`` inside the
functions) so that ``labtasker --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from labtasker.client.cli.options import OutputFormat
from labtasker.client.terminal import escape_control, stdout_is_tty


def choose_format(fmt: OutputFormat | None) -> str:
    """Explicit ``--fmt`` wins; otherwise a table on a terminal and YAML when piped."""
    if fmt is not None:
        return fmt.value
    return "table" if stdout_is_tty() else "yaml"


def model_to_dict(model: Any) -> dict:
    return model.model_dump(mode="python") if hasattr(model, "model_dump") else dict(model)


def write_yaml_item(item: dict) -> None:
    """One YAML list item per record followed by a blank line (labtasker 1.0.1 layout)."""
    from labtasker import yamlread

    # libyaml's emitter when PyYAML has it; a string such as "1e-5" quoted, so that a task
    # file read back (``--file``, ``yamlread``) keeps it a string
    text = yamlread.dump([item], sort_keys=False, allow_unicode=True, default_flow_style=False)
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
    columns: list[str] | None = None,
    row_builder: Callable[[Any], dict] | None = None,
    fields: Sequence[str] | None = None,
) -> int:
    """Print records (pydantic models or dicts) as yaml / jsonl / json / csv / a Rich table.

    ``quiet`` prints only ``record[quiet_key]`` per line. ``columns`` (see
    :mod:`labtasker.client.tabular`) turns every format into flat rows of those columns,
    built by ``row_builder`` (default: the record flattened); csv is always flat. Records are
    streamed for yaml/jsonl/json (json as one array) and collected for csv and the table.
    ``fields``: the records' field names; when given, a requested column that no printed
    record has (and no field: ``-c nosuchcol``) gets a warning on stderr after the output
    (``tabular.unknown_columns``). Returns the number of records printed.
    """
    from labtasker.client import tabular

    keys_seen: set[str] = set()

    def flat(record: Any) -> dict:
        if row_builder is not None:
            row = row_builder(record)
        else:
            row = tabular.flat_row(model_to_dict(record))
        if columns:
            keys_seen.update(row)
        return row

    def item_of(record: Any) -> dict:
        if columns:
            row = flat(record)
            return tabular.project(row, tabular.resolve_columns(columns, row))
        return model_to_dict(record)

    count = 0
    collected: list[dict] = []
    if fmt == "json" and not quiet:
        sys.stdout.write("[")
    for record in records:
        count += 1
        if quiet:
            sys.stdout.write(f"{model_to_dict(record)[quiet_key]}\n")
        elif fmt in ("csv", "table") and (columns or fmt == "csv"):
            collected.append(flat(record))
        elif fmt == "jsonl":
            write_jsonl_item(item_of(record))
        elif fmt == "json":
            text = json.dumps(item_of(record), default=json_default, ensure_ascii=False)
            sys.stdout.write(("\n" if count == 1 else ",\n") + text)
        elif fmt == "yaml":
            write_yaml_item(item_of(record))
        else:
            collected.append(model_to_dict(record))
        if count % 100 == 0:
            sys.stdout.flush()
    if quiet:
        pass
    elif fmt == "json":
        sys.stdout.write("\n]\n" if count else "]\n")
    elif fmt == "csv":
        write_csv(collected, tabular.resolve_columns(columns, (k for r in collected for k in r)))
    elif fmt == "table":
        console = make_console(ansi)
        if not collected:
            console.print("No results.", style="dim")
        elif columns:
            keys = tabular.resolve_columns(columns, (k for r in collected for k in r))
            console.print(columns_table(collected, keys))
        elif table_builder is not None:
            console.print(table_builder(collected))
    sys.stdout.flush()
    if fields is not None and count and not quiet:
        for column in tabular.unknown_columns(columns, keys_seen, fields):
            print(tabular.unknown_column_warning(column, fields), file=sys.stderr)
    return count


def write_csv(rows: list[dict], columns: list[str]) -> None:
    """``rows`` as CSV with a header line of ``columns`` (cells: ``tabular.csv_cell``)."""
    import csv

    from labtasker.client.tabular import csv_cell

    if not columns:  # nothing listed and no column asked for: no output at all
        return
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([csv_cell(row.get(c)) for c in columns])


def plain_text(value: Any):
    """A table cell showing ``value`` literally: no Rich markup (``[/oops]`` or ``[link=...]``
    is shown, not interpreted), control characters escaped (see ``escape_control``);
    ``None`` is ``-``, dicts and lists are JSON."""
    from rich.text import Text

    if value is None:
        return Text("-")
    if isinstance(value, (dict, list)):
        value = json.dumps(value, default=json_default, ensure_ascii=False)
    return Text(escape_control(str(value)))


def columns_table(rows: list[dict], columns: list[str]):
    """Rich table of flat rows with the given columns (``status`` coloured)."""
    out = table(f"{len(rows)} row(s)")
    for column in columns:
        out.add_column(column, overflow="fold")
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            cells.append(status_text(value) if column == "status" and value else plain_text(value))
        out.add_row(*cells)
    return out


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


def progress_text(progress: dict | None) -> str:
    """``"30/100 (30%) loss=0.52"`` for a progress snapshot; ``"-"`` for none."""
    if not progress:
        return "-"
    step, total = progress.get("step"), progress.get("total")

    def num(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    text = num(step) if total is None else f"{num(step)}/{num(total)}"
    if total and step is not None:
        text += f" ({100 * float(step) / float(total):.0f}%)"
    metrics = progress.get("metrics") or {}
    if metrics:
        text += " " + " ".join(f"{k}={num(v)}" for k, v in metrics.items())
    return text


def tasks_table(items: list[dict]):
    """Rich table of tasks: id, name, status, priority, retries, args, summary (and the
    latest progress when a task has one)."""
    show_progress = any(t.get("progress") for t in items)
    rows = table(f"{len(items)} task(s)")
    rows.add_column("ID", no_wrap=True)
    rows.add_column("Name", overflow="fold", min_width=4)
    rows.add_column("Status", no_wrap=True)
    rows.add_column("Prio", justify="right", no_wrap=True)
    rows.add_column("Tries", justify="right", no_wrap=True)
    rows.add_column("Args", overflow="fold", ratio=2, min_width=10)
    rows.add_column("Summary", overflow="fold", ratio=1, min_width=7)
    if show_progress:
        rows.add_column("Progress", overflow="fold", min_width=8)
    for t in items:
        cells = [
            plain_text(t["task_id"]),
            plain_text(t.get("task_name") or "-"),
            status_text(t["status"]),
            str(t.get("priority")),
            f"{t.get('retries', 0)}/{t.get('max_retries', 0)}",
            plain_text(compact_json(t.get("args"), 200)),
            plain_text(compact_json(t.get("summary"), 120)),
        ]
        if show_progress:
            cells.append(plain_text(progress_text(t.get("progress"))))
        rows.add_row(*cells)
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
