"""``labtasker loop``: run a command for every matching task.

Examples::

    labtasker loop -- python train.py --lr '%(lr)' --name '%(run.name)'   # argv mode
    labtasker loop -c 'python train.py --lr %(lr) > out-%(lr).txt'          # shell mode
    labtasker loop --script-path job.sh                                     # shell mode
    echo 'python eval.py %(ckpt)' | labtasker loop                          # shell mode
    labtasker loop --gpus 0,1,2,3 -- python train.py --lr '%(lr)'           # a slot per GPU
    labtasker loop --parallel 4 -- python eval.py --ckpt '%(ckpt)'          # 4 CPU slots

In argv mode each element is one argument of the program, whatever the substituted values
contain; in shell mode each value is quoted for its place (``template.py``). The ``%(...)`` fields become the
loop's required fields ("no more, no less": only tasks whose args have exactly these fields
are run). See :mod:`labtasker.client.template` and :mod:`labtasker.client.loop`.

A command without any ``%(...)`` takes pending tasks of any argument shape (as 1.0.1); the
loop warns about it.

With ``--gpus``/``--parallel`` the loop runs several slots, each a worker of its own, under one
supervisor (:mod:`labtasker.client.loop.supervisor`, :mod:`labtasker.client.loop.slots`); the
exit status is then 0 when every slot ran out of matching tasks, 1 if any slot stopped for a
reason (the others went on), 128 + N on signal N.

Exit status: 0 when no matching task is left (after ``--idle-timeout``) or "Exit" was chosen
after a failure; 2 on usage or set-up errors (one-line message); 1 when going on cannot help
(the worker is suspended or crashed; the server refuses the fetch for good: a bad filter, a
deleted queue, a changed password -- HTTP 400/401/404/422, at once; the loop ran no task and a
placeholder looks like a typo of the pending tasks' fields) or after repeated
internal errors (network, server errors: back-off up to 60 s, 10 in a row); 128 + N when stopped by
signal N (SIGINT, SIGTERM, SIGHUP: the running job's process group gets the same signal,
then SIGKILL after ``--grace-period`` seconds; its task goes back to pending with its retries
unchanged and the worker not charged, before the loop exits). If the loop
itself dies (``kill -9``), its job watchdog stops the running job's process group the same way
(Linux; see :mod:`labtasker.client.job`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from labtasker.client.terminal import stdin_is_tty
from labtasker.exceptions import (
    CmdSyntaxError,
    LabtaskerError,
    LabtaskerNetworkError,
    LoopStopped,
    QueryTranspilerError,
)

HELP = (
    "Fetch matching tasks one by one and run COMMAND for each.\n\n"
    "`%(field)` placeholders choose the tasks: only tasks whose args have exactly these "
    "fields are run (a command without any takes tasks of any shape). Exit status: 0 when no "
    "matching task is left; 1 when going on cannot help (worker suspended or crashed, queue "
    "deleted, invalid filter, no task run and a placeholder looks like a typo) or after "
    "repeated network/server errors; 2 on usage errors; "
    "128+N when stopped by signal N (forwarded to the job, SIGKILL after --grace-period; the "
    "interrupted task goes back to pending, its retries unchanged)."
)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


def _run_limit_problem(eta_max: str | None, heartbeat_timeout: float | None) -> str | None:
    """``--eta-max`` or ``--heartbeat-timeout`` over the server's limit on durations
    (``timeutil.MAX_SECONDS``, ten years), named by its option; found here, before the loop
    creates a worker, instead of the server refusing the first fetch. Other bad values
    (not a duration, not positive) are left to ``LoopOptions`` to word."""
    import math

    from labtasker.timeutil import over_max_seconds, parse_duration

    if eta_max is not None:
        try:
            seconds = parse_duration(eta_max)
        except ValueError:
            seconds = None
        problem = None if seconds is None else over_max_seconds("--eta-max", seconds, eta_max)
        if problem:
            return problem
    if heartbeat_timeout is not None and math.isfinite(heartbeat_timeout):
        return over_max_seconds("--heartbeat-timeout", heartbeat_timeout, f"{heartbeat_timeout:g}")
    return None


def register(app: typer.Typer) -> None:
    """Add the ``loop`` command to the root CLI app."""

    @app.command(
        "loop",
        help=HELP,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def loop_command(
        ctx: typer.Context,
        cmd: list[str] | None = typer.Argument(
            None,
            help="Command in argv mode, usually after `--`: each element is one argument; "
            "`%(a.b)` is replaced by the task's args.a.b without any quoting.",
            show_default=False,
        ),
        command: str | None = typer.Option(
            None,
            "--command",
            "--cmd",
            "-c",
            help="Command as a shell string, run with /bin/sh -c. Each value is quoted for where "
            "it stands (bare, or inside your \"...\" or '...'), so it stays literal text.",
        ),
        script_path: Path | None = typer.Option(
            None, "--script-path", help="File whose content is the shell command to run."
        ),
        executable: str | None = typer.Option(
            None, "--executable", help="Shell used for shell commands (default /bin/sh)."
        ),
        extra_filter: str | None = typer.Option(
            None,
            "--extra-filter",
            "-f",
            help="Only fetch tasks matching this filter: a Mongo-style dict such as "
            '\'{"metadata.tags": {"$in": ["exp"]}}\' or a Python expression such as '
            "'args.lr < 0.1'.",
        ),
        worker_id: str | None = typer.Option(
            None,
            "--worker-id",
            envvar="LABTASKER_WORKER_ID",
            help="Use this existing worker (default: create one named <host>-<pid> for this loop).",
        ),
        eta_max: str | None = typer.Option(
            None,
            "--eta-max",
            help="Maximum run time of each task run, e.g. '2h', '1h30m', '90' (seconds), at "
            "most 10 years; the server then fails the run (retry rules apply). For these runs "
            "only; the task's own task_timeout is kept.",
        ),
        heartbeat_timeout: float | None = typer.Option(
            None,
            "--heartbeat-timeout",
            help="Seconds without heartbeat before the server fails the run and puts the task "
            "back (default 3 x heartbeat_interval of client.toml; at least 2 x the interval, "
            "at most 10 years).",
        ),
        grace_period: float = typer.Option(
            10.0,
            "--grace-period",
            min=0,
            help="Seconds a job gets to exit after SIGTERM (or the forwarded SIGINT) before "
            "its whole process group is killed with SIGKILL. Applies when the loop is "
            "interrupted, when the task is taken away (cancelled, reset, deleted, timed out) "
            "and, on Linux, when the loop itself is killed (kill -9): a small watchdog process "
            "then stops the job.",
        ),
        idle_timeout: float = typer.Option(
            0.0,
            "--idle-timeout",
            min=0,
            help="When no pending task matches, keep polling for up to this many seconds "
            "before exiting (default 0: exit at once).",
        ),
        no_prompt: bool = typer.Option(
            False,
            "--no-prompt",
            help="On a terminal, report a failed run at once instead of asking Report/Ignore "
            "and Continue/Exit (10 s each); without a terminal it is never asked.",
        ),
        gpus: str | None = typer.Option(
            None,
            "--gpus",
            help="Run one slot per listed GPU, e.g. '0,1,2,3', or 'all' (found with NVML or "
            "`nvidia-smi -L`, within CUDA_VISIBLE_DEVICES if set). Each slot is a worker of "
            "its own (<host>-gpu<N>) whose jobs get CUDA_VISIBLE_DEVICES=<N>, "
            "CUDA_DEVICE_ORDER=PCI_BUS_ID, LABTASKER_SLOT and LABTASKER_GPUS.",
        ),
        gpus_per_task: int = typer.Option(
            1, "--gpus-per-task", min=1, help="Devices per slot with --gpus (2: slots 0,1 | 2,3)."
        ),
        parallel: int | None = typer.Option(
            None,
            "--parallel",
            min=1,
            help="Run N slots without GPUs (CPU jobs), each a worker of its own.",
        ),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    ) -> None:
        from labtasker.client.loop.options import LoopOptions
        from labtasker.client.loop.runner import LoopRunner, ensure_logging
        from labtasker.client.template import CommandTemplate

        argv = list(cmd or []) + list(ctx.args)
        from labtasker.client.cli.options import option_as_command_problem

        problem = option_as_command_problem(ctx, argv)
        if problem:
            raise _fail(problem)
        sources = [
            name
            for name, given in (
                ("CMD", argv),
                ("--command", command is not None),
                ("--script-path", script_path is not None),
            )
            if given
        ]
        if len(sources) > 1:
            raise _fail(f"give exactly one command source, got {' and '.join(sources)}")
        shell_text: str | None = None
        if command is not None:
            shell_text = command
        elif script_path is not None:
            try:
                shell_text = script_path.read_text(encoding="utf-8")
            except OSError as exc:
                raise _fail(f"cannot read --script-path {script_path}: {exc.strerror}") from None
            except UnicodeDecodeError as exc:
                raise _fail(
                    f"--script-path {script_path} is not valid UTF-8 (byte "
                    f"0x{exc.object[exc.start]:02x} at position {exc.start})"
                ) from None
        elif not argv:
            if sys.stdin is not None and not stdin_is_tty():
                try:
                    raw = getattr(sys.stdin, "buffer", None)
                    shell_text = raw.read().decode("utf-8") if raw else sys.stdin.read()
                except UnicodeDecodeError as exc:
                    raise _fail(
                        f"the command read from stdin is not valid UTF-8 (byte "
                        f"0x{exc.object[exc.start]:02x} at position {exc.start})"
                    ) from None
            else:
                raise _fail("Command cannot be empty. Use `labtasker loop -- CMD...` or -c.")
        if shell_text is not None and not shell_text.strip():
            raise _fail("Command cannot be empty.")
        try:
            template = (
                CommandTemplate.from_shell(shell_text)
                if shell_text is not None
                else CommandTemplate.from_argv(argv)
            )
        except CmdSyntaxError as exc:
            raise _fail(f"Command error with exception {exc}") from None
        problem = _run_limit_problem(eta_max, heartbeat_timeout)
        if problem:
            raise _fail(problem)

        ensure_logging(verbose)
        if not template.required_fields():
            typer.echo(
                "Warning: the command has no %(...) placeholder, so this loop takes pending tasks "
                "of any argument shape (as labtasker 1.0.1). Use %(field) in the command to run "
                "only the tasks whose args are exactly those fields.",
                err=True,
            )
        if executable and not template.shell:
            typer.echo("Warning: --executable only applies to shell commands; ignored.", err=True)
        try:
            if no_prompt:
                from labtasker.client.loop.prompt import set_prompt_on_task_failure

                set_prompt_on_task_failure(False)
            options = LoopOptions(
                required_fields=template.required_fields(),
                extra_filter=extra_filter,
                cmd=sys.argv if shell_text is None else shell_text,
                worker_id=worker_id,
                eta_max=eta_max,
                heartbeat_timeout=heartbeat_timeout,
                grace_period=grace_period,
                idle_timeout=idle_timeout,
            )
        except QueryTranspilerError as exc:
            # one line naming the option, as every command taking -f says it
            from labtasker.client.cli.errors import convert_exception

            message, code = convert_exception(exc) or (str(exc), 2)
            raise _fail(message, code) from None
        except (LabtaskerError, ValueError) as exc:
            raise _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        from labtasker.client.loop.slots import plan_slots

        try:
            slots = plan_slots(gpus, gpus_per_task, parallel)
        except LabtaskerError as exc:
            raise _fail(str(exc)) from None
        if slots and worker_id:
            raise _fail(
                "--worker-id (or $LABTASKER_WORKER_ID) cannot be used with --gpus/--parallel: "
                "each slot creates its own worker"
            )
        import logging

        logging.getLogger("labtasker.loop").info("Got command: %s", template)
        if slots:
            raise typer.Exit(_run_slots(options, slots, template, executable))
        runner = LoopRunner(options)
        try:
            runner.setup()
        except LabtaskerNetworkError as exc:
            raise _fail(f"cannot reach the server: {exc}", 1) from None
        except LabtaskerError as exc:
            # the exit status and wording of every other command (credentials, config: 1;
            # bad values: 2)
            from labtasker.client.cli.errors import convert_exception

            message, code = convert_exception(exc) or (str(exc).splitlines()[0], 1)
            raise _fail(message, code) from None
        try:
            signum = runner.run(runner.command_executor(template, executable))
        except LoopStopped as exc:
            raise _fail(str(exc).splitlines()[0], 1) from None
        except LabtaskerError as exc:
            raise _fail(f"loop stopped after repeated internal errors: {exc}", 1) from None
        if signum:
            raise typer.Exit(128 + signum)


def _run_slots(options, slots, template, executable) -> int:
    """``labtasker loop --gpus/--parallel``: one supervised slot per device set."""
    from labtasker.client.loop.supervisor import Supervisor

    supervisor = Supervisor(
        options,
        slots,
        lambda runner, output: runner.command_executor(template, executable, echo=output),
    )
    try:
        supervisor.setup()
    except LabtaskerNetworkError as exc:
        raise _fail(f"cannot reach the server: {exc}", 1) from None
    except LabtaskerError as exc:
        raise _fail(str(exc).splitlines()[0]) from None
    return supervisor.run()
