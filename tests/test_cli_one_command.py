"""A call that names one command (``labtasker task submit ...``, ``labtasker loop ...``) runs
on a root that holds only that command (``labtasker.client.cli.main.app_for``): its help, its
usage errors and its exit codes are those of the whole CLI, and the process imports only
that command's module. Every command of the whole CLI is compared."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

from labtasker.client.cli import main

# Tests of the client against a real server: SQLite only (conftest, ``client_side``).
pytestmark = pytest.mark.client_side


def _paths() -> list[tuple[str, ...]]:
    """Every command of the whole CLI as the words that name it (``("task", "submit")``)."""
    root = typer.main.get_command(main.build_app())
    out = []
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        sub = getattr(command, "commands", None)
        if sub is None:
            out.append((name,))
        else:
            out.extend((name, child) for child in sub)
    return out


PATHS = _paths()


def _run(app: typer.Typer, args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, prog_name="labtasker")
    return result.exit_code, result.output


def test_every_command_is_found():
    assert {("task", "submit"), ("task", "ls"), ("loop",), ("queue", "create")} <= set(PATHS)


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_one_command_root_behaves_as_the_whole_cli(path, monkeypatch):
    # as in a fresh process: the whole app not built yet (once built, say by a plugin adding
    # to it, every call runs on it)
    monkeypatch.setattr(main, "_full_app", None)
    whole = main.build_app()
    one = main.app_for(list(path))
    if path != ("help",):  # `help` prints the root's listing: it runs on the whole CLI
        commands = typer.main.get_command(one).commands  # type: ignore[attr-defined]
        assert list(commands) == [path[0]], "not a root holding only the named command"
    for tail in (["--help"], ["--no-such-option"], ["--help", "x"]):
        assert _run(one, [*path, *tail]) == _run(whole, [*path, *tail]), tail


def test_a_submit_imports_only_its_command(queue_env):
    """A real ``task submit`` against the server: no other command module is imported."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['labtasker', 'task', 'submit', '--quiet', '--', '--lr', '0.1']\n"
        "try:\n    runpy.run_module('labtasker.client.cli.main', run_name='__main__')\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "print('LOADED', sorted(m for m in sys.modules if m.startswith('labtasker.client.cli.')"
        " and m.split('.')[-1] in ('loop', 'queue', 'worker', 'event_cmd', 'status_cmd',"
        " 'init_cmd', 'config_cmd')))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LABTASKER_ROOT": str(queue_env.root)},
    )
    assert done.returncode == 0, done.stderr
    task_id, loaded = done.stdout.splitlines()
    assert loaded == "LOADED []"
    with queue_env.http() as http:
        resp = http.get(f"/api/v1/queues/me/tasks/{task_id}")
    assert resp.status_code == 200 and resp.json()["args"] == {"lr": 0.1}, resp.text
