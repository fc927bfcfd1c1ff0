"""Shared helpers of the CLI commands: error handling and output formatting.

Only the standard library and ``typer`` are imported at module level so that
``labtasker --help`` stays fast; everything heavier is imported inside functions.

Exit codes: 0 success; 1 runtime problem (server unreachable, refused operation, bad
credentials); 2 bad input (usage errors, invalid values); 255 configuration missing
(like labtasker 1.0.1); 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any

import typer

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_NO_CONFIG = 255

TASK_STATUSES = ("pending", "running", "success", "failed", "cancelled")
WORKER_STATUSES = ("active", "suspended", "crashed")


class TaskStatusChoice(str, Enum):
    pending = "pending"
    running = "running"
    success = "success"
    failed = "failed"
    cancelled = "cancelled"


class WorkerStatusChoice(str, Enum):
    active = "active"
    suspended = "suspended"
    crashed = "crashed"


class OutputFormat(str, Enum):
    yaml = "yaml"
    jsonl = "jsonl"
    table = "table"


class CliError(Exception):
    """Print ``Error: <message>`` on stderr and exit with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_RUNTIME):
        super().__init__(message)
        self.exit_code = exit_code


def usage_error(message: str) -> CliError:
    """A bad-input error (exit 2); ``message`` should name the option."""
    return CliError(message, EXIT_USAGE)


def fail(message: str, exit_code: int = EXIT_RUNTIME) -> None:
    """Print ``Error: <message>`` (one line) on stderr and exit."""
    print(f"Error: {message}", file=sys.stderr)
    raise typer.Exit(exit_code)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _validation_message(exc) -> str:
    parts = []
    for item in exc.errors():
        loc = [str(p) for p in item.get("loc", ())]
        msg = item.get("msg", "invalid")
        if loc:
            name = _option_name(loc[0])
            sub = ".".join(loc[1:])
            parts.append(f"Invalid value for {name}{' (' + sub + ')' if sub else ''}: {msg}")
        else:
            parts.append(f"Invalid value: {msg}")
    return "; ".join(parts) or str(exc)


def _filter_error_message(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or str(exc).splitlines()[0]
    return f"Invalid value for '-f' / '--extra-filter': {_one_line(reason)}"


def _http_error_message(exc) -> tuple[str, int]:
    from labtasker.client.api import format_detail
    from labtasker.client.config import get_labtasker_client_config_path

    code = exc.status_code
    detail = _one_line(format_detail(exc.detail))
    if code == 401:
        return (
            "Either invalid credentials or queue not created. Check [queue] in "
            f"{get_labtasker_client_config_path()} or run `labtasker queue create-from-config`.",
            EXIT_RUNTIME,
        )
    if code == 422:
        return f"Invalid value: {detail}", EXIT_USAGE
    return f"{detail} (HTTP {code})", EXIT_RUNTIME


def convert_exception(exc: BaseException) -> tuple[str, int] | None:
    """Map a known exception to ``(one-line message, exit code)``; ``None`` if unknown."""
    from pydantic import ValidationError

    from labtasker import exceptions as ex

    if isinstance(exc, CliError):
        return str(exc), exc.exit_code
    if isinstance(exc, ex.ConfigNotFoundError):
        from labtasker.client.config import get_labtasker_client_config_path

        return (
            f"Configuration not initialized: {get_labtasker_client_config_path()} does not "
            "exist. Run `labtasker init` (or set LABTASKER_ROOT).",
            EXIT_NO_CONFIG,
        )
    if isinstance(exc, ex.ConfigError):
        return _one_line(str(exc)), EXIT_RUNTIME
    if isinstance(exc, ex.LabtaskerHTTPStatusError):
        return _http_error_message(exc)
    if isinstance(exc, ex.LabtaskerNetworkError):
        return _one_line(str(exc)), EXIT_RUNTIME
    if isinstance(exc, ex.QueryTranspilerError):
        return _filter_error_message(exc), EXIT_USAGE
    if isinstance(exc, ValidationError):
        return _validation_message(exc), EXIT_USAGE
    if isinstance(exc, (ex.LabtaskerValueError, ex.CmdParserError)):
        return _one_line(str(exc)), EXIT_USAGE
    if isinstance(exc, ex.LabtaskerError):
        return _one_line(str(exc)), EXIT_RUNTIME
    return None


_CLI_RETRY_SET = False


def _cli_retry_policy() -> None:
    """Fail fast in interactive commands: a few quick retries, at most ~5 s."""
    global _CLI_RETRY_SET
    if not _CLI_RETRY_SET:
        from labtasker.client import api

        api.set_retry_policy(attempts=3, initial=0.3, max_wait=2.0, jitter=0.2, budget=5.0)
        _CLI_RETRY_SET = True


def handle_errors(func: Callable) -> Callable:
    """Decorator for commands: turn labtasker/pydantic errors into one-line messages + exit codes.

    Unknown exceptions print ``Error: unexpected <Type>: <msg>`` (exit 1); set
    ``LABTASKER_DEBUG=1`` to get the traceback instead.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            _cli_retry_policy()
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except KeyboardInterrupt:
            print("Interrupted.", file=sys.stderr)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            _silence_stdout()
            raise typer.Exit(0) from None
        except Exception as exc:
            converted = convert_exception(exc)
            if converted is None:
                if os.environ.get("LABTASKER_DEBUG"):
                    raise
                converted = (
                    f"unexpected {type(exc).__name__}: {_one_line(str(exc))} "
                    "(set LABTASKER_DEBUG=1 for a traceback)",
                    EXIT_RUNTIME,
                )
            message, code = converted
            print(f"Error: {message}", file=sys.stderr)
            raise typer.Exit(code) from None

    return wrapper


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so interpreter exit stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# ----------------------------------------------------------------------------- shared options
# Factories (a fresh typer OptionInfo per command) for options several commands declare alike.


def fmt_option():
    """``--fmt yaml|jsonl|table`` (``None``: see :func:`choose_format`)."""
    return typer.Option(
        None, "--fmt", help="Output format (default: table on a terminal, yaml when piped)."
    )


def page_size_option():
    """``--limit`` of the listing commands: the page size, every page is listed."""
    return typer.Option(100, "--limit", min=1, max=1000, help="Page size (all pages are listed).")


def pager_option():
    """``--pager/--no-pager``: accepted like labtasker 1.0.1, never pages."""
    return typer.Option(
        False, "--pager/--no-pager", help="Accepted for compatibility; output is never paged."
    )


def ansi_option():
    """``--ansi/--no-ansi``: colours of the table output."""
    return typer.Option(True, "--ansi/--no-ansi", help="Colours in the table output.")


def ids_argument(kind: str, verb: str):
    """``[KIND_IDS]...`` of ``<kind> <verb>``, optional because they may come from stdin
    (see :func:`ids_to_act_on`)."""
    return typer.Argument(
        None, help=f"Ids of the {kind}s to {verb} (read from stdin when piped).", show_default=False
    )


def yes_option():
    """``-y/--yes``: skip the confirmation prompt."""
    return typer.Option(False, "-y", "--yes", help="Do not ask for confirmation.")


# ----------------------------------------------------------------------------- input helpers


def dict_option(text: str | None, option: str) -> dict | None:
    """Parse a dict-valued option (JSON or Python literal); bad text -> usage error (exit 2)."""
    from labtasker.client.cmdline import parse_dict_option

    return parse_dict_option(text, option)


def filter_option(text: str | None) -> dict | None:
    """Parse ``-f/--extra-filter`` (dict literal or Python expression); ``None`` if not given."""
    if text is None:
        return None
    from labtasker.client.filtering import parse_filter

    return parse_filter(text)


def parse_sort(values: list[str] | None) -> list[tuple[str, int]] | None:
    """``-S field:asc -S other:desc`` -> ``[("field", 1), ("other", -1)]``; bad entry -> exit 2."""
    if not values:
        return None
    out = []
    for value in values:
        field, sep, order = value.partition(":")
        order = order.strip().lower() if sep else "asc"
        if not field.strip() or order not in ("asc", "desc"):
            raise usage_error(
                f"Invalid value for '-S' / '--sort': {value!r} (expected field:asc or field:desc)"
            )
        out.append((field.strip(), 1 if order == "asc" else -1))
    return out


def stdin_is_tty() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def read_ids_from_stdin() -> list[str]:
    """Read whitespace-separated ids from stdin (one per line is typical); blanks skipped."""
    return [tok for tok in sys.stdin.read().split() if tok]


def ids_filter(ids: list[str]) -> dict:
    """Filter selecting the given task/worker ids (``_id`` is the id on the server)."""
    return {"_id": ids[0]} if len(ids) == 1 else {"_id": {"$in": ids}}


def print_filter(query: Any) -> None:
    """``-v``: show the parsed filter as JSON on stderr (datetimes as ISO strings)."""
    print(f"Parsed filter: {json.dumps(query, indent=4, default=_json_default)}", file=sys.stderr)


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


# ----------------------------------------------------------------------------- output


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
    sys.stdout.write(json.dumps(item, default=_json_default, ensure_ascii=False) + "\n")


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
    color_system = "auto" if ansi else None
    return Console(color_system=color_system, highlight=False, soft_wrap=False, width=width)


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
    text = json.dumps(value, default=_json_default, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_text(status: str):
    from rich.text import Text

    return Text(status, style=STATUS_STYLES.get(status, ""))


def _table(title: str):
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
    table = _table(f"{len(items)} task(s)")
    table.add_column("ID", no_wrap=True)
    table.add_column("Name", overflow="fold", min_width=4)
    table.add_column("Status", no_wrap=True)
    table.add_column("Prio", justify="right", no_wrap=True)
    table.add_column("Tries", justify="right", no_wrap=True)
    table.add_column("Args", overflow="fold", ratio=2, min_width=10)
    table.add_column("Summary", overflow="fold", ratio=1, min_width=7)
    for t in items:
        table.add_row(
            t["task_id"],
            t.get("task_name") or "-",
            status_text(t["status"]),
            str(t.get("priority")),
            f"{t.get('retries', 0)}/{t.get('max_retries', 0)}",
            compact_json(t.get("args"), 200),
            compact_json(t.get("summary"), 120),
        )
    return table


def run_editor(path: str, editor: str | None = None) -> None:
    """Open ``path`` in ``editor`` (default ``$VISUAL``, ``$EDITOR``, then the first of
    sensible-editor/vim/nano/vi on PATH) and wait for it. The editor string may contain
    arguments (``"code --wait"``). Raises :class:`CliError` if it cannot be run."""
    import shlex
    import shutil
    import subprocess

    editor = editor or os.environ.get("VISUAL") or os.environ.get("EDITOR")
    if not editor:
        editor = next(
            (e for e in ("sensible-editor", "vim", "nano", "vi") if shutil.which(e)), "vi"
        )
    try:
        rc = subprocess.call(f"{editor} {shlex.quote(str(path))}", shell=True)
    except OSError as exc:
        raise CliError(f"Cannot run editor {editor!r}: {exc}") from None
    if rc != 0:
        raise CliError(f"Editor {editor!r} exited with status {rc}; nothing changed.")


def confirm(message: str, yes: bool) -> None:
    """Ask for confirmation unless ``yes``; abort (exit 1) on no/EOF."""
    if yes:
        return
    try:
        ok = typer.confirm(message, default=False)
    except (EOFError, typer.Abort):
        ok = False
    if not ok:
        print("Aborted.", file=sys.stderr)
        raise typer.Exit(EXIT_RUNTIME)


def ids_to_act_on(ids: list[str] | None, kind: str, verb: str, yes: bool = False) -> list[str]:
    """Ids for ``<kind> <verb> [IDS]... [-y]`` (``task delete``, ``task cancel``, ...).

    ``ids`` from the command line, else whitespace-separated from piped stdin (then ``-y`` is
    required: nobody can answer the prompt). Asks "Are you sure you want to <verb> <kind>s
    [...]?" unless ``yes``. Returns ``[]`` (saying so on stderr) when stdin held no ids.
    Raises a usage error (exit 2) when no ids are given on a terminal, or ids come from stdin
    without ``-y``; a "no" to the prompt exits 1.
    """
    ids = list(ids or [])
    if not ids:
        if stdin_is_tty():
            raise usage_error(f"Missing argument {kind.upper()}_IDS (or pipe ids on stdin).")
        ids = read_ids_from_stdin()
        if not ids:
            print(f"No {kind} ids given; nothing to {verb}.", file=sys.stderr)
            return []
        if not yes:
            raise usage_error("Ids were read from stdin, so confirmation is impossible: pass -y.")
    confirm(f"Are you sure you want to {verb} {kind}s {ids}?", yes)
    return ids


def for_each_id(ids: list[str], kind: str, action: Callable[[str], str]) -> None:
    """Run ``action(id)`` for every id and print the line it returns on stdout.

    A per-id failure does not stop the others: HTTP 404 prints ``Error: <Kind> <id> not
    found.``, a :class:`CliError` raised by ``action`` prints ``Error: <its message>`` (both
    on stderr); after the last id the command exits 1 if any failed. Other errors abort at
    once (``handle_errors``).
    """
    from labtasker.exceptions import LabtaskerHTTPStatusError

    failed = 0
    for item_id in ids:
        try:
            message = action(item_id)
        except LabtaskerHTTPStatusError as exc:
            if exc.status_code != 404:
                raise
            failed += 1
            print(f"Error: {kind.capitalize()} {item_id} not found.", file=sys.stderr)
        except CliError as exc:
            failed += 1
            print(f"Error: {exc}", file=sys.stderr)
        else:
            print(message)
    if failed:
        raise typer.Exit(EXIT_RUNTIME)


def delete_by_ids(
    ids: list[str] | None, kind: str, delete: Callable[[str], None], yes: bool = False
) -> None:
    """Shared body of ``task delete`` / ``worker delete``: ids as in :func:`ids_to_act_on`,
    ``delete(id)`` for each, one line per id; an unknown id is reported and makes the
    command exit 1 after the others."""

    def act(item_id: str) -> str:
        delete(item_id)
        return f"{kind.capitalize()} {item_id} deleted."

    for_each_id(ids_to_act_on(ids, kind, "delete", yes), kind, act)
