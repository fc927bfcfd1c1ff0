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
    page_size_option,
    pager_option,
    parse_sort,
    yes_option,
)
from labtasker.client.cli.output import choose_format, emit_records, print_filter
from labtasker.client.cli.prompts import delete_by_ids


def workers_table(items: list[dict]):
    """Rich table of workers: id, name, status, failures/max, running task(s), metadata,
    created (UTC). "Running" is derived by the server from the tasks, not stored."""
    from labtasker.client.cli.output import compact_json, fmt_time, status_text, table

    rows = table(f"{len(items)} worker(s)")
    rows.add_column("ID", no_wrap=True)
    rows.add_column("Name", overflow="fold", min_width=4)
    rows.add_column("Status", no_wrap=True)
    rows.add_column("Fails", justify="right", no_wrap=True)
    rows.add_column("Running task", no_wrap=True)
    rows.add_column("Metadata", overflow="fold", ratio=1, min_width=8)
    rows.add_column("Created (UTC)", no_wrap=True, min_width=19)
    for w in items:
        running = w.get("running_task_ids") or []
        rows.add_row(
            w["worker_id"],
            w.get("worker_name") or "-",
            status_text(w["status"]),
            f"{w.get('retries', 0)}/{w.get('max_retries', 0)}",
            "\n".join(running) if running else "-",
            compact_json(w.get("metadata")),
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
        3, "--max-retries", min=1, help="Failures after which the worker is marked crashed."
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
    limit: int = page_size_option(),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many workers first."),
    sort: list[str] | None = typer.Option(
        None, "-S", "--sort", help="Sort key `field:asc|desc`, repeatable."
    ),
    pager: bool = pager_option(),
    ansi: bool = ansi_option(),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Show the parsed filter."),
) -> None:
    """List workers (all pages) with the task each is running. Datetimes are UTC."""
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
        page_size=limit,
        offset=offset,
        sort=parse_sort(sort) or [("created_at", 1)],
    )
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

    api.report_worker_status(worker_id, status.value)
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
