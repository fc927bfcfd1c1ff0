"""``labtasker worker create|ls|report|delete``."""

from __future__ import annotations

import typer

from labtasker.client.cli.errors import handle_errors, usage_error
from labtasker.client.cli.options import (
    OutputFormat,
    WorkerReportChoice,
    WorkerStatusChoice,
    ansi_option,
    dict_option,
    filter_option,
    fmt_option,
    ids_argument,
    limit_option,
    page_size_option,
    pager_option,
    parse_sort,
    yes_option,
)
from labtasker.client.cli.output import choose_format, emit_records, print_filter
from labtasker.client.cli.prompts import delete_by_ids


def _ago(value) -> str:
    """``"5m ago"`` for a UTC datetime in the past."""
    from datetime import datetime, timezone

    from labtasker.client.cli.status_cmd import human_seconds

    seconds = (datetime.now(timezone.utc) - value).total_seconds()
    return f"{human_seconds(max(seconds, 0))} ago"


def worker_device(metadata: object) -> str:
    """``host gpu 2 (NVIDIA A100)`` / ``host slot 3`` for a slot worker's metadata, else
    ``-``. Plain text; control characters escaped."""
    if not isinstance(metadata, dict) or "slot" not in metadata:
        return "-"
    host = str(metadata.get("host") or "")
    gpus = metadata.get("gpus")
    if isinstance(gpus, list) and gpus:
        text = "gpu " + ",".join(str(g) for g in gpus)
        names = metadata.get("gpu_names")
        if isinstance(names, list) and any(names):
            text += f" ({', '.join(str(n) for n in dict.fromkeys(names) if n)})"
    else:
        text = f"slot {metadata.get('slot')}"
    text = f"{host} {text}".strip()
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def workers_table(items: list[dict]):
    """Rich table of workers: id, name, status (``gone`` with when it was last seen for a
    worker whose loop ended), failures/max, device, running task(s), metadata, created (UTC).
    "Running" is derived by the server from the tasks, not stored; "Device" is the slot of a
    ``labtasker loop --gpus/--parallel`` worker (from its metadata)."""
    from rich.text import Text

    from labtasker.client.cli.output import compact_json, fmt_time, plain_text, status_text, table

    live = sum(1 for w in items if not w.get("gone_at"))
    rows = table(f"{len(items)} worker(s): {live} live, {len(items) - live} gone")
    rows.add_column("ID", no_wrap=True)
    rows.add_column("Name", overflow="fold", min_width=4)
    rows.add_column("Status", no_wrap=True)
    rows.add_column("Fails", justify="right", no_wrap=True)
    rows.add_column("Device", overflow="fold", min_width=6)
    rows.add_column("Running task", no_wrap=True)
    rows.add_column("Metadata", overflow="fold", ratio=1, min_width=8)
    rows.add_column("Created (UTC)", no_wrap=True, min_width=19)
    for w in items:
        running = w.get("running_task_ids") or []
        gone_at = w.get("gone_at")
        status = (
            Text(f"gone ({w['status']}), seen {_ago(gone_at)}", style="dim")
            if gone_at
            else status_text(w["status"])
        )
        rows.add_row(
            plain_text(w["worker_id"]),
            plain_text(w.get("worker_name") or "-"),
            status,
            f"{w.get('retries', 0)}/{w.get('max_retries', 0)}",
            plain_text(worker_device(w.get("metadata"))),
            plain_text("\n".join(running) if running else "-"),
            plain_text(compact_json(w.get("metadata"))),
            fmt_time(w.get("created_at")),
        )
    return rows


app = typer.Typer(
    help="Create, list, suspend/activate and delete workers.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command()
@handle_errors
def create(
    worker_name: str | None = typer.Option(None, "--worker-name", "--name", help="Worker name."),
    metadata: str | None = typer.Option(None, "--metadata", help="Worker metadata as a dict."),
    max_retries: int = typer.Option(
        3,
        "--max-retries",
        min=1,
        help=(
            "Failures in a row after which the worker is crashed while other workers "
            "succeed (twice as many when none has succeeded meanwhile)."
        ),
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only the worker id."),
) -> None:
    """Register a worker."""
    from labtasker.client import api

    worker_id = api.create_worker(worker_name, dict_option(metadata, "--metadata"), max_retries)
    print(worker_id if quiet else f"Worker created with ID: {worker_id}")


@app.command()
@handle_errors
def ls(
    worker_id: str | None = typer.Option(None, "--worker-id", "--id", help="Only this worker."),
    worker_name: str | None = typer.Option(None, "--worker-name", "--name", help="Only this name."),
    status: WorkerStatusChoice | None = typer.Option(
        None, "-s", "--status", help="Only this status."
    ),
    extra_filter: str | None = typer.Option(
        None, "-f", "--extra-filter", help="Python expression or Mongo-style dict."
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only worker ids."),
    fmt: OutputFormat | None = fmt_option(),
    limit: int | None = limit_option("worker"),
    page_size: int = page_size_option(),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many workers first."),
    sort: list[str] | None = typer.Option(
        None, "-S", "--sort", help="Sort key `field:asc|desc`, repeatable."
    ),
    pager: bool = pager_option(),
    ansi: bool = ansi_option(),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Show the parsed filter."),
    live: bool | None = typer.Option(
        None,
        "--live/--gone",
        help="Only live workers, or only the gone ones (their loop ended). Default: both.",
        show_default=False,
    ),
) -> None:
    """List workers with the task each is running; workers whose loop ended show as gone,
    with when they were last seen (remove them with `labtasker worker prune`). Datetimes are
    UTC."""
    import itertools

    from labtasker.client import api

    if quiet and verbose:
        raise usage_error("-q/--quiet and -v/--verbose cannot be used together.")
    query = filter_option(extra_filter)
    if verbose:
        print_filter(query or {})
    records = api.iter_workers(
        worker_id=worker_id,
        worker_name=worker_name,
        status=status.value if status else None,
        extra_filter=query,
        page_size=min(page_size, limit or page_size),
        offset=offset,
        sort=parse_sort(sort) or [("created_at", 1)],
        gone=None if live is None else not live,
    )
    if limit is not None:
        records = itertools.islice(records, limit)
    emit_records(
        records,
        choose_format(fmt),
        table_builder=workers_table,
        quiet_key="worker_id",
        quiet=quiet,
        ansi=ansi,
    )


@app.command()
@handle_errors
def report(
    worker_id: str = typer.Argument(..., help="Worker id."),
    status: WorkerReportChoice = typer.Argument(
        ...,
        help="active: re-activate (from crashed this also resets its failure count); "
        "suspended: stop it from fetching new tasks (its running task is not stopped).",
    ),
) -> None:
    """Suspend or re-activate a worker. A worker becomes crashed by itself after
    max_retries failed runs; it must then be re-activated by hand."""
    from labtasker.client import api
    from labtasker.client.cli.errors import CliError
    from labtasker.exceptions import LabtaskerRuntimeError

    try:
        api.report_worker_status(worker_id, status.value)
    except LabtaskerRuntimeError:  # a transition the state machine refuses: say which
        current = api.get_worker(worker_id).status
        if current == status.value:
            print(f"Worker {worker_id} is already {current}.")
            return
        raise CliError(
            f"Worker {worker_id} is {current}; it cannot be set to {status.value} "
            f"(only `labtasker worker report {worker_id} active` applies)."
        ) from None
    print(f"Worker {worker_id} status updated to {status.value}.")


@app.command()
@handle_errors
def delete(
    worker_ids: list[str] | None = ids_argument("worker", "delete"),
    cascade_update: bool = typer.Option(
        True,
        "--cascade-update/--no-cascade-update",
        help="Clear worker_id on the tasks of deleted workers.",
    ),
    yes: bool = yes_option(),
) -> None:
    """Delete workers by id."""
    from labtasker.client import api

    delete_by_ids(
        worker_ids, "worker", lambda wid: api.delete_worker(wid, cascade_update=cascade_update), yes
    )


@app.command()
@handle_errors
def prune(
    gone_for: str | None = typer.Option(
        None,
        "--gone-for",
        help="Only workers gone for at least this long (seconds or '1h', '2d').",
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only the removed ids."),
) -> None:
    """Remove the workers that have gone (their loop ended) and run no task. Live workers
    are never removed; nor is their history in the tasks."""
    from labtasker.client import api

    seconds = 0.0
    if gone_for is not None:
        from labtasker.timeutil import parse_duration

        try:
            seconds = parse_duration(gone_for)
        except ValueError as exc:
            raise usage_error(f"Invalid value for --gone-for: {exc}") from None
    removed = api.prune_workers(gone_for=seconds)
    if quiet:
        for worker_id in removed:
            print(worker_id)
    else:
        print(f"{len(removed)} gone worker(s) removed.")
