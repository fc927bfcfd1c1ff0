"""Interaction of the CLI commands: ids from the command line or stdin, confirmation,
the per-id loop and the editor."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import typer

from labtasker.client.cli.errors import EXIT_RUNTIME, CliError, usage_error
from labtasker.client.terminal import stdin_is_tty, stdout_is_tty


def read_ids_from_stdin() -> list[str]:
    """Read whitespace-separated ids from stdin (one per line is typical); blanks skipped."""
    return [tok for tok in sys.stdin.read().split() if tok]


def run_editor(path: str, editor: str | None = None) -> None:
    """Open ``path`` in ``editor`` (default ``$VISUAL``, ``$EDITOR``, then the first of
    sensible-editor/vim/nano/vi on PATH) and wait for it. The editor string may contain
    arguments (``"code --wait"``). Raises :class:`CliError` if it cannot be run, and a usage
    error (exit 2) when no editor was chosen and there is no terminal to run the default one
    in (it would wait forever on a pipe)."""
    import shlex
    import shutil
    import subprocess

    editor = editor or os.environ.get("VISUAL") or os.environ.get("EDITOR")
    if not editor:
        if not (stdin_is_tty() and stdout_is_tty()):
            raise usage_error(
                "Editing needs a terminal: give the changes as key=value "
                "arguments, or name an editor with --editor or $EDITOR."
            )
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


def confirm_bulk(message: str, yes: bool) -> None:
    """Confirmation of a change to many tasks selected by no option: asked on a terminal
    (``message`` says how many), refused without ``-y`` elsewhere (usage error, exit 2)."""
    if yes:
        return
    if not stdin_is_tty():
        raise usage_error(f"{message.rstrip('?')}: this needs confirmation; pass -y.")
    confirm(message, yes)


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
