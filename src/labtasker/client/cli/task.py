"""``labtasker task submit|ls|update|cancel|delete`` (``cancel`` is new; the others are 1.0.1's)."""

from __future__ import annotations

import sys

import typer

from labtasker.client.cli.errors import CliError, handle_errors, usage_error
from labtasker.client.cli.options import (
    OutputFormat,
    TaskStatusChoice,
    ansi_option,
    dict_option,
    filter_option,
    fmt_option,
    ids_argument,
    ids_filter,
    page_size_option,
    pager_option,
    parse_sort,
    yes_option,
)
from labtasker.client.cli.output import choose_format, emit_records, print_filter, tasks_table
from labtasker.client.cli.prompts import (
    delete_by_ids,
    for_each_id,
    ids_to_act_on,
    read_ids_from_stdin,
)
from labtasker.client.terminal import stderr_is_tty, stdin_is_tty, stdout_is_tty
from labtasker.fields import READ_ONLY_TASK_FIELDS
from labtasker.fsm import TERMINAL_TASK_STATES

app = typer.Typer(
    help="Submit, list, update, cancel and delete tasks.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

DEFAULT_LS_SORT = [("priority", -1), ("last_modified", 1), ("created_at", 1)]


def _duration(text: str | None, option: str) -> float | None:
    """Seconds from ``90``, ``1.5``, ``1h30m``...; bad text -> usage error naming ``option``."""
    if text is None:
        return None
    from labtasker.timeutil import parse_positive_duration

    try:
        return parse_positive_duration(text)
    except ValueError as exc:
        raise usage_error(f"Invalid value for {option}: {exc}") from None


@app.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": False})
@handle_errors
def submit(
    args_pos: list[str] | None = typer.Argument(
        None,
        metavar="[-- ARGS]...",
        help="Task args as options after `--`: `-- --lr 0.1 --model.depth=3`.",
        show_default=False,
    ),
    task_name: str | None = typer.Option(None, "--task-name", "--name", help="Task name."),
    args: str | None = typer.Option(
        None, "--args", help="Task args as a dict (JSON or Python literal), e.g. '{\"lr\": 0.1}'."
    ),
    metadata: str | None = typer.Option(None, "--metadata", help="Task metadata as a dict."),
    cmd: str | None = typer.Option(None, "--cmd", help="Command to run for this task."),
    heartbeat_timeout: str | None = typer.Option(
        "60",
        "--heartbeat-timeout",
        help="Fail the task if no heartbeat for this long (seconds or '5min').",
    ),
    task_timeout: str | None = typer.Option(
        None, "--task-timeout", help="Maximum run time (seconds or '2h'); default: no limit."
    ),
    max_retries: int = typer.Option(3, "--max-retries", min=0, help="Failures before 'failed'."),
    priority: int = typer.Option(
        10, "--priority", help="Higher runs first (LOW 0, MEDIUM 10, HIGH 20)."
    ),
    quiet: bool = typer.Option(
        False, "-q", "--quiet", help="Print only the task id(s), one per line."
    ),
    file: str | None = typer.Option(
        None,
        "--file",
        "-F",
        help="Submit many tasks from a file: JSON lines (.jsonl), YAML (.yaml/.yml, a list or "
        "documents) or `-` for stdin. Each record is a task (keys args, task_name, metadata, "
        "cmd, heartbeat_timeout, task_timeout, max_retries, priority) or, without `args` and "
        "`cmd` keys, the args themselves. Options given here are defaults for every record.",
    ),
) -> None:
    """Submit a task. Args come from `--args` or from options after `--`.

    Example: `labtasker task submit --name exp1 -- --lr 0.1 --model.depth 3`

    Many tasks at once: `labtasker task submit --file tasks.jsonl` (sent in batches of 5,000,
    each all-or-nothing; a progress bar is shown on a terminal).
    """
    from labtasker.client import api
    from labtasker.client.cmdline import parse_extra_opt

    if file is not None:
        if args_pos or args is not None:
            raise usage_error("--file cannot be combined with --args or args after `--`.")
        defaults = {
            "task_name": task_name,
            "metadata": dict_option(metadata, "--metadata"),
            "cmd": cmd,
            "heartbeat_timeout": _duration(heartbeat_timeout, "--heartbeat-timeout"),
            "task_timeout": _duration(task_timeout, "--task-timeout"),
            "max_retries": max_retries,
            "priority": priority,
        }
        _submit_file(file, {k: v for k, v in defaults.items() if v is not None}, quiet)
        return
    if args_pos and args is not None:
        raise usage_error("Use either --args or positional args after `--`, not both.")
    if args_pos:
        dropped: list[str] = []
        try:
            parsed_args: dict | None = parse_extra_opt(args_pos, dropped)
        except ValueError as exc:
            raise usage_error(f"Invalid value for [ARGS]: {exc}") from None
        if dropped:
            typer.echo(f"Warning: {' '.join(dropped)} without a value ignored (as labtasker "
                       "1.0.1); give a value, e.g. --flag=true.", err=True)
    else:
        parsed_args = dict_option(args, "--args")
    meta = dict_option(metadata, "--metadata")
    if not parsed_args and not cmd:
        raise usage_error("Either --cmd or args (--args or `-- --key value`) must be specified.")
    resp = api.submit_task(
        task_name=task_name,
        args=parsed_args,
        metadata=meta,
        cmd=cmd,
        heartbeat_timeout=_duration(heartbeat_timeout, "--heartbeat-timeout"),
        task_timeout=_duration(task_timeout, "--task-timeout"),
        max_retries=max_retries,
        priority=priority,
    )
    print(resp.task_id if quiet else f"Task submitted with ID: {resp.task_id}")


PROGRESS_MIN_TASKS = 5000  # show a progress bar from this many tasks on (stderr a terminal)


def _read_records(file: str) -> list[tuple[str, object]]:
    """``[(location, record), ...]`` from a JSON-lines or YAML file (``-``: stdin)."""
    from labtasker.client.taskfile import parse_task_records

    if file == "-":
        return parse_task_records(sys.stdin.read(), "<stdin>")
    try:
        with open(file, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise usage_error(f"Invalid value for --file: {exc.strerror}: {file}") from None
    return parse_task_records(text, file)


def _submit_file(file: str, defaults: dict, quiet: bool) -> None:
    from labtasker.client import api
    from labtasker.client.taskfile import task_requests

    requests = task_requests(_read_records(file), defaults)
    if not requests:
        print("No tasks in the input; nothing submitted.", file=sys.stderr)
        return
    progress = None
    bar = None
    if len(requests) >= PROGRESS_MIN_TASKS and stderr_is_tty():
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn("Submitting"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        job = bar.add_task("submit", total=len(requests))

        def progress(done: int, total: int) -> None:
            bar.update(job, completed=done)

        bar.start()
    try:
        ids = api.submit_tasks(requests, progress=progress)
    finally:
        if bar is not None:
            bar.stop()
    if quiet:
        sys.stdout.write("".join(f"{tid}\n" for tid in ids))
    else:
        print(f"{len(ids)} task(s) submitted.")


def _stream_with_progress(pages, enabled: bool):
    """Flatten pages of tasks; on a terminal, count them on stderr once a second page comes."""
    bar = None
    count = 0
    try:
        for page in pages:
            if enabled and bar is None and count:
                from rich.console import Console
                from rich.progress import Progress, SpinnerColumn, TextColumn

                bar = Progress(
                    SpinnerColumn(),
                    TextColumn("Listing tasks: {task.completed} fetched"),
                    console=Console(stderr=True),
                    transient=True,
                )
                job = bar.add_task("ls", total=None, completed=count)
                bar.start()
            count += len(page)
            if bar is not None:
                bar.update(job, completed=count)
            yield from page
    finally:
        if bar is not None:
            bar.stop()


def _selection(
    task_id: str | None,
    task_name: str | None,
    status: TaskStatusChoice | None,
    extra_filter: str | None,
    piped_ids: list[str] | None,
) -> dict:
    query = filter_option(extra_filter)
    if piped_ids is not None:
        extra = ids_filter(piped_ids)
        query = {"$and": [query, extra]} if query else extra
    return {
        "task_id": task_id,
        "task_name": task_name,
        "status": status.value if status else None,
        "extra_filter": query,
    }


@app.command()
@handle_errors
def ls(
    task_id: str | None = typer.Option(None, "--task-id", "--id", help="Only this task."),
    task_name: str | None = typer.Option(None, "--task-name", "--name", help="Only this name."),
    status: TaskStatusChoice | None = typer.Option(
        None, "-s", "--status", help="Only this status."
    ),
    extra_filter: str | None = typer.Option(
        None,
        "-f",
        "--extra-filter",
        help="Python expression (`args.lr < 0.1 and status == 'failed'`) or a Mongo-style "
        'dict (`{"args.lr": {"$lt": 0.1}}`).',
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only task ids, one per line."),
    fmt: OutputFormat | None = fmt_option(),
    limit: int = page_size_option(),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many tasks first."),
    sort: list[str] | None = typer.Option(
        None,
        "-S",
        "--sort",
        help="Sort key `field:asc|desc`, repeatable (default: priority:desc, "
        "last_modified:asc, created_at:asc).",
    ),
    pager: bool = pager_option(),
    ansi: bool = ansi_option(),
    piped_in: bool = typer.Option(False, "--piped-in", help="Read task ids from stdin."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Show the parsed filter."),
) -> None:
    """List tasks (all pages). Datetimes are UTC."""
    from labtasker.client import api

    if quiet and verbose:
        raise usage_error("-q/--quiet and -v/--verbose cannot be used together.")
    piped_ids = None
    if piped_in:
        if task_id or task_name or status or extra_filter:
            raise usage_error(
                "--piped-in cannot be combined with --task-id, --task-name, --status or "
                "--extra-filter."
            )
        piped_ids = read_ids_from_stdin()
        if not piped_ids:
            return
    sel = _selection(task_id, task_name, status, extra_filter, piped_ids)
    order = parse_sort(sort) or DEFAULT_LS_SORT
    if verbose:
        print_filter(sel["extra_filter"] or {})
    out_fmt = choose_format(fmt)
    pages = api.iter_task_pages(**sel, page_size=limit, offset=offset, sort=order)
    # Progress only where it cannot mix with the listing: stderr is a terminal and the output
    # is either collected for a table or goes to a pipe/file.
    show = stderr_is_tty() and ((out_fmt == "table" and not quiet) or not stdout_is_tty())
    emit_records(
        _stream_with_progress(pages, show),
        out_fmt,
        table_builder=tasks_table,
        quiet_key="task_id",
        quiet=quiet,
        ansi=ansi,
    )


@app.command()
@handle_errors
def update(
    updates_pos: list[str] | None = typer.Argument(
        None, metavar="[UPDATES]...", help="Updates `key=value` (same as -u).", show_default=False
    ),
    task_id: str | None = typer.Option(None, "--task-id", "--id", help="Select this task."),
    task_name: str | None = typer.Option(None, "--task-name", "--name", help="Select by name."),
    status: TaskStatusChoice | None = typer.Option(
        None, "-s", "--status", help="Select by status."
    ),
    extra_filter: str | None = typer.Option(
        None, "-f", "--extra-filter", help="Select by filter (Python expression or dict)."
    ),
    update_opts: list[str] | None = typer.Option(
        None,
        "-u",
        "--update",
        help="Update `key=value`, repeatable: `status=pending`, `args.lr=0.2` (patch one "
        "sub-field), `args={'lr': 0.2}` (replace the whole field).",
    ),
    limit: int = typer.Option(1000, "--limit", min=1, max=1000, help="Update at most this many."),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many selected tasks."),
    reset_pending: bool = typer.Option(
        False,
        "--reset-pending/--no-reset-pending",
        help="Also put the tasks back to pending with retries=0.",
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing on success."),
    editor: str | None = typer.Option(
        None, "--editor", help="Editor for interactive mode (default $VISUAL/$EDITOR)."
    ),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Show the parsed filter."),
) -> None:
    """Update tasks selected by id/name/status/filter (or ids on stdin).

    Without updates, the selected tasks open in an editor as YAML.
    """
    from labtasker.client import api
    from labtasker.client.cmdline import parse_updates
    from labtasker.wire import TaskUpdateRequest

    if updates_pos and update_opts:
        raise usage_error("Give updates either as positional arguments or with -u, not both.")
    if quiet and verbose:
        raise usage_error("-q/--quiet and -v/--verbose cannot be used together.")
    updates = list(updates_pos or update_opts or [])
    fields = parse_updates(updates) if updates else None
    if fields is None and reset_pending is False and quiet:
        raise usage_error("Interactive editing needs no -q; give updates with -u key=value.")

    selected_by_option = any(v is not None for v in (task_id, task_name, status, extra_filter))
    piped_ids = None
    if not selected_by_option and not stdin_is_tty():
        piped_ids = read_ids_from_stdin()
        if not piped_ids:
            print("No task ids read from stdin; nothing to update.", file=sys.stderr)
            return
    sel = _selection(task_id, task_name, status, extra_filter, piped_ids)
    if verbose:
        print_filter(sel["extra_filter"] or {})
    tasks = api.ls_tasks(**sel, limit=limit, offset=offset, sort=[("created_at", 1)]).content
    if not tasks:
        print("No tasks matched.", file=sys.stderr)
        return

    if fields is None and not reset_pending:
        requests = _edit_tasks(tasks, editor)
        if requests is None:
            print("No changes.", file=sys.stderr)
            return
    else:
        requests = [
            TaskUpdateRequest.model_validate({"task_id": t.task_id, **(fields or {})})
            for t in tasks
        ]
    result = api.update_tasks(requests, reset_pending=reset_pending)
    if not quiet:
        print(f"Total {len(result.content)} tasks updated.")




def _edit_tasks(tasks, editor: str | None):
    """Open the tasks as YAML in an editor; return update requests for changed fields
    (``None`` when nothing changed)."""
    import os
    import tempfile

    import yaml

    original = [t.model_dump(mode="json") for t in tasks]
    header = (
        "# Edit the tasks below and save. Read-only fields "
        f"({', '.join(READ_ONLY_TASK_FIELDS)}) are ignored.\n"
        "# Do not add, remove or reorder tasks.\n"
    )
    text = header + yaml.safe_dump(original, sort_keys=False, allow_unicode=True)
    fd, tmp = tempfile.mkstemp(prefix="labtasker.tmp.", suffix=".yaml")
    os.close(fd)
    try:
        return _edit_loop(tmp, text, original, editor)
    finally:
        os.unlink(tmp)


def _edit_loop(tmp: str, text: str, original: list[dict], editor: str | None):
    from labtasker.client.cli.prompts import run_editor
    from labtasker.client.taskfile import edited_task_updates

    while True:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        run_editor(tmp, editor)
        with open(tmp, encoding="utf-8") as fh:
            edited = fh.read()
        if edited == text:
            return None
        try:
            requests, ignored = edited_task_updates(original, edited)
        except ValueError as exc:
            print(f"Error: invalid edit: {' '.join(str(exc).split())}", file=sys.stderr)
            if not typer.confirm("Continue to edit?", default=True):
                raise typer.Exit(1) from None
            text = edited
            continue
        for task_id, fields in ignored.items():
            print(f"Warning: ignoring changes to read-only fields {fields} of task {task_id}",
                  file=sys.stderr)
        return requests or None


@app.command()
@handle_errors
def cancel(
    task_ids: list[str] | None = ids_argument("task", "cancel"),
    yes: bool = yes_option(),
) -> None:
    """Cancel pending or running tasks by id.

    A pending task will not be fetched any more. A running task's `labtasker loop` notices
    at its next heartbeat (within one heartbeat_interval), stops the job and moves on:

    \b
      SIGTERM to the job's process group, SIGKILL after the loop's --grace-period;
      the task stays cancelled, its run is not reported, its worker is not charged.

    Tasks that already ended are left unchanged: one already cancelled is only mentioned,
    a success or failed one is an error (to run it again: task update --id ID
    --reset-pending).

    Exit status: 0 when every task is cancelled (now or before); 1 when an id is unknown
    or a task had already succeeded or failed (the other ids are still cancelled); 2 for ids
    on stdin without -y.

    \b
    Cancel by filter:
      labtasker task ls -q -s pending -f 'args.lr > 0.1' | labtasker task cancel -y
    """
    from labtasker.client import api

    def act(task_id: str) -> str:
        before = api.cancel_task(task_id)
        if before == "cancelled":
            return f"Task {task_id} was already cancelled."
        if before in TERMINAL_TASK_STATES:
            raise CliError(f"Task {task_id} already ended ({before}); not cancelled.")
        return f"Task {task_id} cancelled (was {before})."

    for_each_id(ids_to_act_on(task_ids, "task", "cancel", yes), "task", act)


@app.command()
@handle_errors
def delete(
    task_ids: list[str] | None = ids_argument("task", "delete"),
    yes: bool = yes_option(),
) -> None:
    """Delete tasks by id."""
    from labtasker.client import api

    delete_by_ids(task_ids, "task", api.delete_task, yes)
