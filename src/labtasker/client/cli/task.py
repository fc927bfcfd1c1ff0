"""``labtasker task submit|ls|update|cancel|delete`` (``cancel`` is new; the others are 1.0.1's)."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import typer

from labtasker.client.cli.errors import EXIT_RUNTIME, CliError, handle_errors, usage_error
from labtasker.client.cli.options import (
    OutputFormat,
    TaskStatusChoice,
    ansi_option,
    columns_option,
    dict_option,
    filter_option,
    fmt_option,
    ids_argument,
    ids_filter,
    limit_option,
    page_size_option,
    pager_option,
    parse_sort,
    refuse_mistyped_options,
    yes_option,
)
from labtasker.client.cli.output import choose_format, emit_records, print_filter, tasks_table
from labtasker.client.cli.prompts import (
    confirm_bulk,
    delete_by_ids,
    ids_to_act_on,
    read_ids_from_stdin,
)
from labtasker.client.terminal import stderr_is_tty, stdin_is_tty, stdout_is_tty
from labtasker.fields import READ_ONLY_TASK_FIELDS, TASK_FIELD_NAMES
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
    ctx: typer.Context,
    args_pos: list[str] | None = typer.Argument(
        None,
        metavar="[-- ARGS]...",
        help="Task args as options after `--`: `-- --lr 0.1 --model.depth=3`. Values are cast "
        "like Python literals (0.1 a float, True a bool, [1,2] and 30,60 lists); quote to keep "
        "text: --ids \"'30,60'\". Numbers JSON cannot store (1e400) are refused. As in "
        "labtasker 1.0.1, an option this command does not know is an arg even before `--` "
        '(`--bogus=3` gives {"bogus": 3}), except a near miss of its own (`--grd`), which is '
        "refused.",
        show_default=False,
    ),
    task_name: str | None = typer.Option(None, "--task-name", "--name", help="Task name."),
    args: str | None = typer.Option(
        None, "--args", help="Task args as a dict (JSON or Python literal), e.g. '{\"lr\": 0.1}'."
    ),
    metadata: str | None = typer.Option(None, "--metadata", help="Task metadata as a dict."),
    cmd: str | None = typer.Option(
        None,
        "--cmd",
        help="A command recorded with the task (shown by `task ls`; for your own scripts). "
        "`labtasker loop` runs its own command, not this one.",
    ),
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
    grid: list[str] | None = typer.Option(
        None,
        "--grid",
        help="Sweep: KEY=VALUES, repeatable; one task per combination of all --grid keys. "
        "VALUES: `0.1,0.01` (literals, cast like args after --), `range(3)`, "
        "`linspace(0,1,5)`, `logspace(-3,-1,3)` or a JSON list `[[64,64],[128]]`. "
        "Dotted keys nest (`model.depth=2,4`).",
    ),
    zip_: list[str] | None = typer.Option(
        None,
        "--zip",
        help="Sweep: KEY=VALUES, repeatable; these keys vary together (equal lengths), "
        "combined with --grid as a product.",
    ),
    sweep_file: str | None = typer.Option(
        None,
        "--sweep",
        help="Sweep file (W&B format, YAML): method grid|random, parameters (value, values, "
        "distribution, min/max/mu/sigma/q/probabilities, nested parameters), run_cap, seed.",
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of a random sweep (overrides the file's `seed`)."
    ),
    sweep_name: str | None = typer.Option(
        None, "--sweep-name", help="Readable name stored in metadata.sweep.name."
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print how many tasks the sweep makes and the first ones; submit nothing.",
    ),
    unique: bool = typer.Option(
        False,
        "--unique",
        help="Skip tasks whose args equal a task already in the queue (any state); decided "
        "by the server, safe with concurrent submitters.",
    ),
    yes: bool = typer.Option(
        False, "-y", "--yes", help="Submit a sweep of more than 10,000 tasks."
    ),
) -> None:
    """Submit a task. Args come from `--args` or from options after `--`.

    Example: `labtasker task submit --name exp1 -- --lr 0.1 --model.depth 3`

    A sweep (one task per combination; args after `--` are shared by all):
    `labtasker task submit --grid lr=0.1,0.01 --grid seed='range(3)' -- --epochs 10`
    (`--dry-run` to look first, `--unique` to never submit the same args twice).

    Many tasks at once: `labtasker task submit --file tasks.jsonl` (sent in batches of 5,000,
    each all-or-nothing; a progress bar is shown on a terminal).
    """
    from labtasker.client import api
    from labtasker.client.cmdline import parse_extra_opt

    refuse_mistyped_options(ctx, args_pos or [])
    is_sweep = bool(grid or zip_ or sweep_file is not None)
    if not is_sweep and (dry_run or seed is not None or sweep_name is not None):
        raise usage_error("--dry-run, --seed and --sweep-name need --grid, --zip or --sweep.")
    if file is not None:
        if args_pos or args is not None:
            raise usage_error("--file cannot be combined with --args or args after `--`.")
        if is_sweep:
            raise usage_error("--file cannot be combined with --grid, --zip or --sweep.")
        defaults = {
            "task_name": task_name,
            "metadata": dict_option(metadata, "--metadata"),
            "cmd": cmd,
            "heartbeat_timeout": _duration(heartbeat_timeout, "--heartbeat-timeout"),
            "task_timeout": _duration(task_timeout, "--task-timeout"),
            "max_retries": max_retries,
            "priority": priority,
        }
        _submit_file(file, {k: v for k, v in defaults.items() if v is not None}, quiet, unique)
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
            typer.echo(
                f"Warning: {' '.join(dropped)} without a value ignored (as labtasker "
                "1.0.1); give a value, e.g. --flag=true.",
                err=True,
            )
    else:
        parsed_args = dict_option(args, "--args")
    meta = dict_option(metadata, "--metadata")
    options: dict[str, Any] = {
        "task_name": task_name,
        "metadata": meta,
        "cmd": cmd,
        "heartbeat_timeout": _duration(heartbeat_timeout, "--heartbeat-timeout"),
        "task_timeout": _duration(task_timeout, "--task-timeout"),
        "max_retries": max_retries,
        "priority": priority,
    }
    if is_sweep:
        _submit_sweep(
            grid=grid,
            zip_=zip_,
            sweep_file=sweep_file,
            fixed=parsed_args,
            seed=seed,
            name=sweep_name,
            dry_run=dry_run,
            unique=unique,
            yes=yes,
            quiet=quiet,
            options=options,
        )
        return
    if not parsed_args and not cmd:
        raise usage_error("Either --cmd or args (--args or `-- --key value`) must be specified.")
    answer = api._submit_task(args=parsed_args, unique=unique, client=None, **options)
    if (
        isinstance(answer, dict)
        and type(answer.get("task_id")) is str
        and answer.get("created") in (None, True, False)
    ):
        task_id, created = answer["task_id"], answer.get("created")
    else:  # not the expected answer: the model words the error
        resp = api.TaskSubmitResponse.model_validate(answer)
        task_id, created = resp.task_id, resp.created
    if quiet:
        print(task_id)
    elif created is False:
        print(f"Task not submitted: task {task_id} has the same args (--unique).")
    else:
        print(f"Task submitted with ID: {task_id}")


DRY_RUN_ROWS = 10  # tasks shown by --dry-run


def _submit_sweep(
    *, grid, zip_, sweep_file, fixed, seed, name, dry_run, unique, yes, quiet, options
) -> None:
    from labtasker import sweep as sweeps
    from labtasker.client.sweep_submit import submit_sweep

    sw = sweeps.build(grid=grid, zip=zip_, fixed=fixed, sweep=sweep_file, seed=seed)
    for note in sw.notes:
        print(f"Note: {note}", file=sys.stderr)
    total = len(sw)
    if dry_run:
        _print_dry_run(sw, name)
        return
    if total > sweeps.CONFIRM_TASKS and not yes:
        raise usage_error(
            f"The sweep makes {total:,} tasks, more than {sweeps.CONFIRM_TASKS:,}: add --yes "
            "to submit them (or --dry-run to look first)."
        )
    _patient_for_batches()
    with _progress_bar(total) as progress:
        result = submit_sweep(sweep=sw, unique=unique, name=name, progress=progress, **options)
    if quiet:
        out = list(dict.fromkeys(result.task_ids))  # in order, each id once
        sys.stdout.write("".join(f"{tid}\n" for tid in out))
        return
    label = f" '{_plain(result.name)}'" if result.name else ""
    if unique:
        print(
            f"Sweep{label} {result.sweep_id}: {total} task(s), {len(result.created_ids)} "
            f"submitted, {total - len(result.created_ids)} already in the queue (--unique)."
        )
    else:
        print(f"Sweep{label} {result.sweep_id}: {total} task(s) submitted.")


def _plain(value) -> str:
    """A value as one line of plain text: strings unquoted, control characters escaped."""
    import json

    text = json.dumps(value, ensure_ascii=False, default=str)
    return text[1:-1] if isinstance(value, str) else text


def _print_dry_run(sw, name: str | None) -> None:
    from rich.text import Text

    from labtasker.client.cli.output import make_console
    from labtasker.client.cli.output import table as new_table

    total = len(sw)
    # drawn before anything is printed: an invalid draw is reported without a half table
    rows = sw.preview(DRY_RUN_ROWS)
    sizes = (
        " x ".join(f"{'+'.join(f.keys)} {len(f.rows)}" for f in sw.factors)
        if sw.method == "grid"
        else f"random, run_cap {sw.run_cap}, seed {sw.seed}"
    )
    label = f" '{_plain(name or sw.name)}'" if (name or sw.name) else ""
    print(f"Dry run: the sweep{label} makes {total:,} task(s) ({sizes}); nothing submitted.")
    if sw.fixed:
        print(f"Fixed args: {_plain(sw.fixed)}")
    keys = sw.varied
    table = new_table(f"first {min(total, DRY_RUN_ROWS)} of {total:,}")
    table.add_column("#", justify="right", no_wrap=True)
    for key in keys:
        table.add_column(Text(key), overflow="fold")
    for index, args in enumerate(rows):
        cells = []
        for key in keys:
            node = args
            for part in key.split("."):
                node = node[part]
            cells.append(Text(_plain(node)))
        table.add_row(str(index), *cells)
    make_console().print(table)


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


def _patient_for_batches() -> None:
    """Retry the batches of a sweep or file submit for up to a minute: each batch carries its
    own idempotency key, so a retry never stores it twice, and a server restart in the
    middle of a large submit (a few seconds) should not leave it half done. Other commands
    keep the CLI's few quick retries."""
    from labtasker.client import api

    api.set_retry_policy(attempts=30, initial=0.3, max_wait=3.0, jitter=0.2, budget=60.0)


def _submit_file(file: str, defaults: dict, quiet: bool, unique: bool = False) -> None:
    from labtasker.client import api
    from labtasker.client.taskfile import task_requests

    requests = task_requests(_read_records(file), defaults)
    if not requests:
        print("No tasks in the input; nothing submitted.", file=sys.stderr)
        return
    bodies = [api.task_body(i, r) for i, r in enumerate(requests)]
    _patient_for_batches()
    with _progress_bar(len(bodies)) as progress:
        ids, created = api.submit_bodies(bodies, unique=unique, progress=progress)
    if quiet:
        sys.stdout.write("".join(f"{tid}\n" for tid in ids))
    elif unique:
        made = sum(created)
        print(f"{made} task(s) submitted, {len(ids) - made} already in the queue (--unique).")
    else:
        print(f"{len(ids)} task(s) submitted.")


@contextlib.contextmanager
def _progress_bar(total: int):
    """Yield a ``progress(done, total)`` callback drawing a bar on stderr (a terminal, from
    ``PROGRESS_MIN_TASKS`` tasks on), else ``None``."""
    if total < PROGRESS_MIN_TASKS or not stderr_is_tty():
        yield None
        return
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
    job = bar.add_task("submit", total=total)

    def progress(done: int, _total: int) -> None:
        bar.update(job, completed=done)

    bar.start()
    try:
        yield progress
    finally:
        bar.stop()


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
    columns: list[str] | None = columns_option(),
    limit: int | None = limit_option("task"),
    page_size: int = page_size_option(),
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
    """List tasks (every match, or the first --limit). Datetimes are UTC.

    \b
    Results of a sweep as CSV (for pandas or a spreadsheet), best first:
      labtasker task ls -s success -S summary.accuracy:desc --limit 10 \\
          -c task_id,args,summary.accuracy,duration --fmt csv > top10.csv
    """
    import itertools

    from labtasker.client import api, tabular

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
    order = parse_sort(sort, TASK_FIELD_NAMES) or DEFAULT_LS_SORT
    if verbose:
        print_filter(sel["extra_filter"] or {})
    out_fmt = choose_format(fmt)
    cols = tabular.parse_columns(columns)
    if cols and quiet:
        raise usage_error("-q/--quiet and -c/--columns cannot be used together.")
    if limit is not None:
        page_size = min(page_size, limit)
    pages = api.iter_task_pages(**sel, page_size=page_size, offset=offset, sort=order)
    # Progress only where it cannot mix with the listing: stderr is a terminal and the output
    # is either collected for a table or goes to a pipe/file.
    show = stderr_is_tty() and ((out_fmt == "table" and not quiet) or not stdout_is_tty())
    records = _stream_with_progress(pages, show)
    if limit is not None:
        records = itertools.islice(records, limit)
    emit_records(
        records,
        out_fmt,
        table_builder=tasks_table,
        quiet_key="task_id",
        quiet=quiet,
        ansi=ansi,
        columns=cols,
        row_builder=tabular.task_row,
        fields=TASK_FIELD_NAMES,
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
    limit: int | None = typer.Option(
        None,
        "--limit",
        min=1,
        help="Update at most this many of the selected tasks, oldest first (default: every "
        "selected task).",
        show_default=False,
    ),
    offset: int = typer.Option(
        0, "--offset", min=0, help="Skip this many selected tasks first (oldest first)."
    ),
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
    yes: bool = yes_option(),
) -> None:
    """Update tasks selected by id/name/status/filter (or ids on stdin).

    Every selected task is updated (or the first --limit, oldest first); a large selection
    is read and sent 1000 tasks per request, each request all or nothing. Without updates,
    the selected tasks open in an editor as YAML. Without any selection the change applies
    to every task of the queue: that asks first (saying how many) and needs -y when stdin is
    not a terminal. To run tasks again, `labtasker task requeue` is the simpler command.
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
        piped_ids = read_ids_from_stdin() or None
    if not selected_by_option and piped_ids is None and (fields is not None or reset_pending):
        total = api.count_tasks().total
        n = max(0, total - offset) if limit is None else max(0, min(limit, total - offset))
        if not n:
            print("No tasks matched.", file=sys.stderr)
            return
        what = f"all {n}" if n == total else f"{n} of the {total}"
        confirm_bulk(f"No --id, --name, -s or -f given: update {what} task(s) of the queue?", yes)
    if verbose:
        print_filter(
            _selection(task_id, task_name, status, extra_filter, piped_ids)["extra_filter"] or {}
        )
    tasks = _tasks_to_update(task_id, task_name, status, extra_filter, piped_ids, limit, offset)
    if not tasks:
        if task_id is not None:  # one named task that does not exist: an error, as for cancel
            raise CliError(f"Task {task_id} not found.")
        print("No tasks matched.", file=sys.stderr)
        return
    if piped_ids is not None and limit is None and offset == 0:
        found = {t.task_id for t in tasks}
        missing = [i for i in dict.fromkeys(piped_ids) if i not in found]
        if missing:
            print(f"Not updated (no such task): {' '.join(missing)}", file=sys.stderr)

    if fields is None and not reset_pending:
        requests = _edit_tasks(tasks, editor)
        if requests is None:
            print("No changes.", file=sys.stderr)
            return
    else:
        _refuse_nothing_to_run(tasks, fields or {}, updates)
        requests = [
            TaskUpdateRequest.model_validate({"task_id": t.task_id, **(fields or {})})
            for t in tasks
        ]
    n = _send_updates(requests, reset_pending)
    if not quiet:
        print(f"{n} task{'' if n == 1 else 's'} updated.")


def _refuse_nothing_to_run(tasks, fields: dict, updates: list[str]) -> None:
    """Usage error (exit 2) when the updates would leave a selected task with neither args
    nor a cmd (``args={}`` on a task without a cmd), which ``task submit`` refuses too; the
    server refuses it as well (HTTP 400 naming ``args``)."""
    from labtasker.client.cmdline import NOTHING_TO_RUN, leaves_nothing_to_run

    bare = [t.task_id for t in tasks if leaves_nothing_to_run(t.args, t.cmd, fields)]
    if not bare:
        return
    named = [u for u in updates if u.partition("=")[0].strip() in ("args", "cmd")]
    which = f"task {bare[0]}" if len(bare) == 1 else f"{len(bare)} of the selected tasks"
    raise usage_error(
        f"Invalid update {(named or updates)[-1]!r}: {NOTHING_TO_RUN} ({which} would have neither)."
    )


def _tasks_to_update(task_id, task_name, status, extra_filter, piped_ids, limit, offset):
    """The tasks ``task update`` selected, oldest first, after ``offset``, at most ``limit``
    (``None``: all of them). Read in pages of at most ``MAX_TASK_UPDATES`` tasks, so no
    request grows with the selection; ids from stdin are looked up that many at a time (one
    filter with every id could pass the server's filter size limit)."""
    import itertools

    from labtasker.client import api
    from labtasker.fields import MAX_TASK_UPDATES

    order = [("created_at", 1)]  # ties by task id (the server adds it)
    page_size = min(MAX_TASK_UPDATES, limit or MAX_TASK_UPDATES)
    if piped_ids is None:
        sel = _selection(task_id, task_name, status, extra_filter, None)
        found = api.iter_tasks(**sel, page_size=page_size, offset=offset, sort=order)
        return list(itertools.islice(found, limit))
    ids = list(dict.fromkeys(piped_ids))  # each id once, in the order given
    tasks = []
    for start in range(0, len(ids), MAX_TASK_UPDATES):
        chunk = ids[start : start + MAX_TASK_UPDATES]
        sel = _selection(None, None, None, None, chunk)
        tasks.extend(api.iter_tasks(**sel, page_size=MAX_TASK_UPDATES, sort=order))
    tasks.sort(key=lambda t: (t.created_at, t.task_id))
    end = None if limit is None else offset + limit
    return tasks[offset:end]


def _send_updates(requests, reset_pending: bool) -> int:
    """Send the update requests ``MAX_TASK_UPDATES`` per ``PUT /tasks`` (the most the server
    takes in one); return how many tasks were updated. Each request is all or nothing: when
    one is refused, the error says how many tasks the earlier requests had already updated."""
    from labtasker.client import api
    from labtasker.client.cli.errors import convert_exception
    from labtasker.exceptions import LabtaskerError
    from labtasker.fields import MAX_TASK_UPDATES

    done = 0
    for start in range(0, len(requests), MAX_TASK_UPDATES):
        batch = requests[start : start + MAX_TASK_UPDATES]
        try:
            done += len(api.update_tasks(batch, reset_pending=reset_pending).content)
        except LabtaskerError as exc:
            if not done:
                raise
            message, code = convert_exception(exc) or (str(exc), 1)
            raise CliError(
                f"{message} ({done} of the {len(requests)} selected tasks had been updated "
                "by the requests before this one; the rest were not changed)",
                code,
            ) from None
    return done


def _edit_tasks(tasks, editor: str | None):
    """Open the tasks as YAML in an editor; return update requests for changed fields
    (``None`` when nothing changed)."""
    import os
    import tempfile

    from labtasker import yamlread

    original = [t.model_dump(mode="json") for t in tasks]
    header = (
        "# Edit the tasks below and save. Read-only fields "
        f"({', '.join(READ_ONLY_TASK_FIELDS)}) are ignored.\n"
        "# Do not add, remove or reorder tasks.\n"
    )
    # read back by ``yamlread`` (``1e-5`` typed in is a float; a string "1e-5" stays quoted)
    text = header + yamlread.dump(original, sort_keys=False, allow_unicode=True)
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
            print(
                f"Warning: ignoring changes to read-only fields {fields} of task {task_id}",
                file=sys.stderr,
            )
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
    from labtasker.client.terminal import escape_control

    ids = ids_to_act_on(task_ids, "task", "cancel", yes)
    failed = 0
    for given, before in api.cancel_tasks(ids).items():  # 1,000 ids a request
        task_id = escape_control(given)
        if before == "cancelled":
            print(f"Task {task_id} was already cancelled.")
        elif before is None:
            failed += 1
            print(f"Error: Task {task_id} not found.", file=sys.stderr)
        elif before in TERMINAL_TASK_STATES:
            failed += 1
            print(
                f"Error: Task {task_id} already ended ({before}); not cancelled.", file=sys.stderr
            )
        else:
            print(f"Task {task_id} cancelled (was {before}).")
    if failed:
        raise typer.Exit(EXIT_RUNTIME)


@app.command()
@handle_errors
def delete(
    task_ids: list[str] | None = ids_argument("task", "delete"),
    yes: bool = yes_option(),
) -> None:
    """Delete tasks by id."""
    from labtasker.client import api

    delete_by_ids(task_ids, "task", api.delete_task, yes)


@app.command()
@handle_errors
def count(
    status: TaskStatusChoice | None = typer.Option(
        None, "-s", "--status", help="Only this status."
    ),
    extra_filter: str | None = typer.Option(
        None, "-f", "--extra-filter", help="Only tasks matching this filter."
    ),
    by: str = typer.Option(
        "status",
        "--by",
        help="Group by: status, a task field (task_name, priority, retries ...), a dotted "
        "path (args.lr, metadata.tag, summary.best) or arg_fields (the set of args fields).",
    ),
    fmt: str = typer.Option("text", "--fmt", help="text, json or csv."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Show the parsed filter."),
) -> None:
    """Count tasks per status (or per --by value), answered by one query on the server: the
    counts always add up to the total.

    \b
      labtasker task count                       # per status
      labtasker task count -s failed --by args.lr
    """
    import json

    from labtasker.client import api

    if fmt not in ("text", "json", "csv"):
        raise usage_error(f"Invalid value for --fmt: {fmt!r} (use text, json or csv)")
    query = filter_option(extra_filter)
    if verbose:
        print_filter(query or {})
    from labtasker.exceptions import LabtaskerHTTPStatusError

    try:
        answer = api.count_tasks(extra_filter=query, status=status.value if status else None, by=by)
    except LabtaskerHTTPStatusError as exc:
        detail = str(exc.detail)
        if exc.status_code == 400 and detail.startswith("by:"):
            raise usage_error(f"Invalid value for --by: {detail[3:].strip()}") from None
        raise
    if fmt == "json":
        print(json.dumps(answer.model_dump(mode="json", exclude={"notification"})))
        return
    rows = [(_count_label(g.value), g.count) for g in answer.groups]
    if fmt == "csv":
        from labtasker.client.cli.output import write_csv

        write_csv([{answer.by: label, "count": n} for label, n in rows], [answer.by, "count"])
        return
    width = max([len(label) for label, _ in rows] + [len("total"), len(answer.by)])
    numw = len(str(answer.total))
    if answer.by != "status":
        print(f"{answer.by:<{width}}  count")
    for label, n in rows:
        print(f"{label:<{width}}  {n:>{numw}}")
    print(f"{'total':<{width}}  {answer.total:>{numw}}")
    if answer.truncated:
        print(f"(only the {len(rows)} largest groups are shown)", file=sys.stderr)


def _count_label(value) -> str:
    """A group value as printed by ``task count``: text as is, JSON otherwise, ``(none)`` for
    null or missing; control characters escaped."""
    import json

    if value is None:
        text = "(none)"
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = "{" + ", ".join(value) + "}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False)
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text


@app.command()
@handle_errors
def requeue(
    task_ids: list[str] | None = typer.Argument(
        None,
        help="Ids of the tasks to requeue (or read from stdin when piped).",
        show_default=False,
    ),
    status: TaskStatusChoice | None = typer.Option(
        None,
        "-s",
        "--status",
        help="Only tasks in this status: failed, cancelled, success or running (default: "
        "every ended task -- success, failed and cancelled).",
    ),
    extra_filter: str | None = typer.Option(
        None, "-f", "--extra-filter", help="Only tasks matching this filter."
    ),
    yes: bool = yes_option(),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only the requeued ids."),
) -> None:
    """Put tasks back to pending with their retries reset, to run them again.

    \b
    Re-run the failed ones:   labtasker task requeue -s failed
    Some of them:             labtasker task requeue -s failed -f 'args.lr > 0.01'
    By id:                    labtasker task requeue ID1 ID2

    Their last summary is kept until the next run starts. A requeued running task (-s
    running) is stopped by its loop at the next heartbeat. Without ids, -s or -f every ended
    task of the queue is requeued: that asks first (saying how many) and needs -y when
    stdin is not a terminal.
    """
    from labtasker.client import api

    if status is not None and status.value == "pending":
        raise usage_error(
            "Invalid value for '-s' / '--status': pending tasks are already "
            "queued; use failed, cancelled, success or running."
        )
    ids = list(task_ids or [])
    if not ids and status is None and extra_filter is None and not stdin_is_tty():
        ids = read_ids_from_stdin()
        if not ids and not yes:
            raise usage_error(
                "No task ids on stdin and no -s/-f given; pass -y to requeue "
                "every ended task of the queue."
            )
        if ids and not yes:
            raise usage_error("Ids were read from stdin, so confirmation is impossible: pass -y.")
    query = filter_option(extra_filter)
    value = status.value if status else None
    if not ids and status is None and extra_filter is None and not yes:
        counts = api.count_tasks().counts()
        n = sum(counts.get(s, 0) for s in ("success", "failed", "cancelled"))
        if not n:
            print("No ended task to requeue.", file=sys.stderr)
            return
        confirm_bulk(
            f"Requeue all {n} ended task(s) of the queue (success, failed and "
            "cancelled) to pending?",
            yes,
        )
    done = api.requeue_tasks(task_ids=ids or None, status=value, extra_filter=query)
    if quiet:
        sys.stdout.write("".join(f"{t}\n" for t in done))
        return
    print(f"{len(done)} task(s) requeued." if done else "No matching task to requeue.")
    if ids and len(done) < len(ids):
        skipped = [t for t in ids if t not in set(done)]
        print(
            f"Not requeued (unknown, pending, or running without -s running): {' '.join(skipped)}",
            file=sys.stderr,
        )
