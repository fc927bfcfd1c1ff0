"""``labtasker status``, ``labtasker wait`` and ``labtasker progress``: watching a sweep.

* ``status``: the queue at a glance (counts per status with a progress bar, runs finished
  recently, throughput and ETA, workers, running tasks with their progress), from one
  ``GET /overview`` request.
* ``wait``: block until no matching task is pending or running; exit 0 when all ended in
  success, 1 when any failed or was cancelled, 124 on timeout (like ``timeout(1)``).
* ``progress``: from inside a job, store the run's latest progress on its task.
"""

from __future__ import annotations

import sys
import time

import typer

from labtasker.client.cli.errors import handle_errors, usage_error
from labtasker.client.terminal import stderr_is_tty, stdout_is_tty
from labtasker.fsm import TASK_STATES

EXIT_TIMEOUT = 124


def human_seconds(seconds: float) -> str:
    """``0.8s``, ``42s``, ``3m05s``, ``2h10m``, ``3d04h`` (rounded down; a tenth of a second
    below 10 s, so that a mean of fast runs is not shown as ``0s``)."""
    if seconds < 10:
        return f"{int(max(0.0, seconds) * 10) / 10:.1f}s"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s" if sec else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def bar(done: int, total: int, width: int = 30, fancy: bool = False) -> str:
    """A text progress bar ``[#######-------]``."""
    filled = int(width * done / total) if total else 0
    full, empty = ("█", "░") if fancy else ("#", "-")
    return f"[{full * filled}{empty * (width - filled)}]"


def _seconds_option(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    from labtasker.timeutil import parse_duration

    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise usage_error(f"Invalid value for {option}: {exc}") from None
    if value <= 0:
        raise usage_error(f"Invalid value for {option}: must be > 0 seconds")
    return value


def register(app: typer.Typer) -> None:
    """Add ``status``, ``wait`` and ``progress`` to the root CLI app."""
    app.command("status")(status)
    app.command("wait")(wait)
    app.command("progress", context_settings={"ignore_unknown_options": True})(progress)


@handle_errors
def status(
    window: str = typer.Option(
        "10m", "--window", "-w", help="How far back 'recent' reaches (ETA, throughput)."
    ),
    fmt: str = typer.Option("text", "--fmt", help="text or json."),
) -> None:
    """The queue at a glance: counts per status with a progress bar, runs finished in the
    last --window, throughput and ETA, live workers and what they run (with progress).

    The ETA is (pending + running) / recent throughput; it is blank until a run ended
    within the window."""
    import json

    from labtasker.client import api
    from labtasker.client.cli.output import json_default, progress_text

    if fmt not in ("text", "json"):
        raise usage_error(f"Invalid value for --fmt: {fmt!r} (use text or json)")
    seconds = _seconds_option(window, "--window") or 600.0
    ov = api.queue_overview(window_seconds=seconds)
    if fmt == "json":
        print(json.dumps(ov.model_dump(mode="json"), default=json_default, indent=2))
        return
    c = ov.counts
    ended = c.get("success", 0) + c.get("failed", 0) + c.get("cancelled", 0)
    lines = [f"Queue {ov.queue_name}: {ov.total} task(s)"]
    if ov.total:
        pct = 100.0 * ended / ov.total
        lines.append(
            f"{bar(ended, ov.total, fancy=stdout_is_tty())} {pct:3.0f}%  {ended}/{ov.total} ended"
        )
    lines.append("  " + "   ".join(f"{s} {c.get(s, 0)}" for s in TASK_STATES))
    span = human_seconds(ov.window_seconds)
    if ov.finished_recently:
        mean = (
            f", mean run {human_seconds(ov.mean_run_seconds)}"
            if ov.mean_run_seconds is not None
            else ""
        )
        lines.append(
            f"Last {span}: {ov.finished_recently} run(s) ended ({ov.succeeded_recently} "
            f"success, {ov.failed_recently} failed), {ov.throughput_per_minute:.2f}/min{mean}"
        )
    else:
        lines.append(f"Last {span}: no run ended")
    left = c.get("pending", 0) + c.get("running", 0)
    w = ov.workers
    if not left:
        lines.append("ETA: nothing left to run")
    elif not w.get("active", 0):
        lines.append(f"ETA: none, no active worker is live ({left} pending or running)")
    elif ov.eta_seconds is not None:
        lines.append(f"ETA: {human_seconds(ov.eta_seconds)} ({left} pending or running)")
    else:
        lines.append(f"ETA: unknown until a run ends ({left} pending or running)")
    live = w.get("active", 0) + w.get("suspended", 0) + w.get("crashed", 0)
    lines.append(
        f"Workers: {live} live ({w.get('active', 0)} active, "
        f"{w.get('suspended', 0)} suspended, {w.get('crashed', 0)} crashed), "
        f"{w.get('gone', 0)} gone"
    )
    print("\n".join(lines))
    if ov.running:
        from labtasker.client.cli.output import make_console, plain_text, table

        running = table(f"Running ({len(ov.running)})")
        for name in ("Task", "Name", "Worker", "For", "Progress"):
            running.add_column(name, overflow="fold")
        now = ov.now
        for r in ov.running:
            running.add_row(
                r.task_id,
                plain_text(r.task_name),
                plain_text(r.worker_name or r.worker_id),
                human_seconds((now - r.start_time).total_seconds()) if r.start_time else "-",
                plain_text(progress_text(r.progress)),
            )
        make_console().print(running)


@handle_errors
def wait(
    extra_filter: str | None = typer.Option(
        None, "-f", "--extra-filter", help="Only these tasks (Python expression or dict)."
    ),
    timeout: str | None = typer.Option(
        None, "--timeout", help="Give up after this long (seconds or '2h'): exit 124."
    ),
    interval: float = typer.Option(
        2.0, "--interval", min=0.1, help="Seconds between two looks at the queue."
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing."),
) -> None:
    """Wait until no matching task is pending or running (for Slurm and CI scripts).

    Exit status: 0 when every matching task ended in success; 1 when any failed or was
    cancelled; 124 on --timeout. A progress bar is shown when stderr is a terminal.

    \b
      labtasker task submit --file sweep.jsonl && sbatch workers.sh
      labtasker wait --timeout 12h && labtasker task ls --fmt csv > results.csv
    """
    from labtasker.client import api
    from labtasker.client.cli.options import filter_option

    query = filter_option(extra_filter)
    limit = _seconds_option(timeout, "--timeout")
    deadline = None if limit is None else time.monotonic() + limit
    api.set_retry_policy()  # a wait may outlive a server restart: retry as the loop does
    progress = None
    if not quiet and stderr_is_tty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        progress = Progress(
            TextColumn("Waiting"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
            transient=True,
        )
        job = progress.add_task("", total=None)
        progress.start()
    try:
        while True:
            counts = api.count_tasks(extra_filter=query).counts()
            total = sum(counts.values())
            left = counts.get("pending", 0) + counts.get("running", 0)
            if progress is not None:
                progress.update(
                    job,
                    total=total,
                    completed=total - left,
                    description=f"{counts.get('running', 0)} running, "
                    f"{counts.get('failed', 0)} failed",
                )
            if not left:
                break
            if deadline is not None and time.monotonic() >= deadline:
                if not quiet:
                    print(
                        f"Timed out: {left} of {total} task(s) still pending or running.",
                        file=sys.stderr,
                    )
                raise typer.Exit(EXIT_TIMEOUT)
            pause = interval if deadline is None else min(interval, deadline - time.monotonic())
            time.sleep(max(pause, 0.0))
    finally:
        if progress is not None:
            progress.stop()
    failed, cancelled = counts.get("failed", 0), counts.get("cancelled", 0)
    if not quiet:
        if not total:
            print("No task matches; nothing to wait for.", file=sys.stderr)
        else:
            print(
                f"All {total} task(s) ended: {counts.get('success', 0)} success, "
                f"{failed} failed, {cancelled} cancelled."
            )
    if failed or cancelled:
        raise typer.Exit(1)


@handle_errors
def progress(
    step: float = typer.Argument(..., help="Steps done so far (e.g. the epoch)."),
    metrics: list[str] | None = typer.Argument(
        None, help="Metrics as key=value (numbers, true/false or text).", show_default=False
    ),
    total: float | None = typer.Option(None, "--total", help="Steps in all (e.g. epochs)."),
    force: bool = typer.Option(
        False, "--force", help="Send even if the last report was under the rate limit ago."
    ),
) -> None:
    """Report the running task's progress from a shell job: `labtasker progress 3 --total 10
    loss=0.42`. Stored as the task's latest snapshot (shown by `task ls`, `status`); also a
    heartbeat. At most one report per 2 s is sent (others are skipped, except the final
    step). Outside a labtasker job it does nothing (says so on stderr)."""
    from labtasker.client.progress import send
    from labtasker.literals import python_literal_or_text

    values = {}
    for item in metrics or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise usage_error(f"Invalid metric {item!r}: use key=value (like loss=0.42)")
        values[key] = python_literal_or_text(raw)
    step_value = int(step) if float(step).is_integer() else step
    total_value = int(total) if total is not None and float(total).is_integer() else total
    sent = send(step_value, total_value, values, force=force)
    if sent is None:
        print(
            "Not inside a labtasker job (LABTASKER_TASK_ID is not set); nothing reported.",
            file=sys.stderr,
        )
