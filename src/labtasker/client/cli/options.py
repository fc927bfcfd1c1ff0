"""Option factories and choices shared by the CLI commands, and parsing of their values.

Factories return a fresh typer ``OptionInfo`` per command for options several commands
declare alike. Status choices are the ``labtasker.fsm`` enums.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import Enum

import typer

from labtasker.client.cli.errors import usage_error
from labtasker.fsm import TaskState, WorkerReportState, WorkerState

# Choices of ``--status`` / ``worker report STATUS`` (typer shows and parses the values).
TaskStatusChoice = TaskState
WorkerStatusChoice = WorkerState
WorkerReportChoice = WorkerReportState


class OutputFormat(str, Enum):
    yaml = "yaml"
    jsonl = "jsonl"
    json = "json"
    csv = "csv"
    table = "table"


def fmt_option():
    """``--fmt yaml|jsonl|json|csv|table`` (``None``: see :func:`choose_format`)."""
    return typer.Option(
        None,
        "--fmt",
        help="Output format: yaml, jsonl (one object per line), json (one array), csv "
        "(flattened columns), table (default: table on a terminal, yaml when piped).",
    )


def page_size_option():
    """``--page-size`` of the listing commands: records fetched per request."""
    return typer.Option(
        100, "--page-size", min=1, max=1000, help="Records fetched per request (1..1000)."
    )


def limit_option(kind: str):
    """``--limit N``: print at most N records (``None``: all of them)."""
    return typer.Option(
        None, "--limit", min=1, help=f"Print at most this many {kind}s (default: all)."
    )


def columns_option():
    """``-c/--columns``: the fields to print (repeatable or comma-separated)."""
    return typer.Option(
        None,
        "-c",
        "--columns",
        help="Fields to print, repeatable or comma-separated: task fields, dotted paths "
        "(args.lr, summary.accuracy; `args` = every args.* field), patterns (summary.*) and "
        "`duration` (seconds of the latest run). Nested values become dotted columns; one "
        "that no listed task has is printed empty, with a warning.",
    )


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


def parse_sort(
    values: list[str] | None, fields: Sequence[str] | None = None
) -> list[tuple[str, int]] | None:
    """``-S field:asc -S other:desc`` -> ``[("field", 1), ("other", -1)]``; bad entry -> exit 2.

    ``fields``: the record's field names. A sort field that is none of them (nor a dotted
    path into one: ``args.lr``) orders nothing -- as in labtasker 1.0.1 it is accepted, but a
    warning on stderr names it, so that a typo (``-S sumary.loss``) does not pass silently."""
    from labtasker.client.sorting import parse_sort_spec

    try:
        spec = parse_sort_spec(values)
    except ValueError as exc:
        raise usage_error(f"Invalid value for '-S' / '--sort': {exc}") from None
    if spec and fields is not None:
        known = set(fields) | {"_id"}
        for field, _ in spec:
            if field.split(".", 1)[0] not in known:
                print(
                    f"Warning: -S {field}: no such field, so it orders nothing (fields: "
                    f"{', '.join(fields)}; dotted paths into args, metadata or summary).",
                    file=sys.stderr,
                )
    return spec


def ids_filter(ids: list[str]) -> dict:
    """Filter selecting the given task/worker ids (``_id`` is the id on the server)."""
    return {"_id": ids[0]} if len(ids) == 1 else {"_id": {"$in": ids}}


def _option_names(ctx: typer.Context) -> list[str]:
    """The long option names of the command being run (``--grid``, ``--max-retries``...)."""
    return [
        name
        for param in ctx.command.params
        for name in (*param.opts, *getattr(param, "secondary_opts", ()))
        if name.startswith("--")
    ]


def _near_miss(token: str, names: list[str]) -> str | None:
    import difflib

    name = token.split("=", 1)[0]
    if name in names:
        return None
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.8)
    return close[0] if close else None


def refuse_mistyped_options(ctx: typer.Context, tokens: list[str]) -> None:
    """Usage error (exit 2) for a token of ``tokens`` -- what a command that passes unknown
    options through (``task submit`` args) received besides its own options -- that was typed
    before ``--`` and is a near miss of one of the command's own long options (``--grd`` for
    ``--grid``, ``--max-retires`` for ``--max-retries``): it would otherwise silently become a
    task arg. Tokens after ``--`` are never refused."""
    argv = sys.argv[1:]
    before = set(argv[: argv.index("--")] if "--" in argv else argv)
    names = _option_names(ctx)
    for token in tokens:
        if token.startswith("--") and token in before:
            guess = _near_miss(token, names)
            if guess is not None:
                raise usage_error(
                    f"No such option: {token.split('=', 1)[0]} (did you mean "
                    f"{guess}?). Task args go after `--`."
                )


def option_as_command_problem(ctx: typer.Context, argv: list[str]) -> str | None:
    """The one-line usage error when the command to run starts with an option (``labtasker
    loop --paralel 2 -- python x.py``): no program name starts with ``-``, so it is a
    mistyped option of the loop, named with the closest real one. ``None`` when ``argv`` is
    fine."""
    if not argv or not argv[0].startswith("-"):
        return None
    guess = _near_miss(argv[0], _option_names(ctx)) if argv[0].startswith("--") else None
    hint = f" (did you mean {guess}?)" if guess else ""
    return f"No such option: {argv[0].split('=', 1)[0]}{hint}. The command to run goes after `--`."
