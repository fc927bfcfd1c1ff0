"""Task data is data on every screen: Rich markup in user values is shown as typed, never
interpreted, and terminal control characters are escaped (tables and the loop's log)."""

from __future__ import annotations

import io

from rich.console import Console

from labtasker.client.cli.output import tasks_table
from labtasker.client.cli.worker import workers_table
from labtasker.client.terminal import escape_control

HOSTILE = "[/oops] [link=http://evil.example]click[/link] \x1b[2J \u009b \u202egnp.exe"


def render(renderable) -> str:
    console = Console(file=io.StringIO(), width=400, color_system="truecolor", force_terminal=True)
    console.print(renderable)
    return console.file.getvalue()


def test_escape_control():
    assert escape_control("a\x1bb\u009bc\u202ed\u2066e\x00f\tg\nh") == (
        "a\\x1bb\\x9bc\\u202ed\\u2066e\\x00f\tg\nh"
    )
    assert escape_control("naïve 密码 ✓") == "naïve 密码 ✓"


def test_tables_show_markup_and_escape_control_characters():
    task = {
        "task_id": "t-1",
        "task_name": "[bold]name[/bold]\x1b]8;;x\x07",
        "status": "pending",
        "priority": 1,
        "retries": 0,
        "max_retries": 3,
        "args": {"s": HOSTILE},
        "summary": {"m": "[/oops]"},
    }
    worker = {
        "worker_id": "w-1",
        "worker_name": "[red]w[/red]",
        "status": "active",
        "retries": 0,
        "max_retries": 3,
        "running_task_ids": [],
        "created_at": None,
        "metadata": {"note": HOSTILE},
    }
    for table in (tasks_table([task]), workers_table([worker])):
        out = render(table)  # "[/oops]" used to raise MarkupError (exit 1 for everyone)
        assert "[/oops]" in out
        assert "\x1b]8;" not in out  # no hyperlink escape sequence
        assert "\x1b[2J" not in out and "\u009b" not in out and "\u202e" not in out
    assert "[bold]name[/bold]" in render(tasks_table([task]))
    assert "[red]w[/red]" in render(workers_table([worker]))


def test_run_directory_names_are_sanitised_and_stay_under_the_log_root(tmp_path):
    from labtasker.client.loop.rundir import make_run_dir
    from labtasker.wire import Task

    for name in ("../../../etc/evil", "a/b\\c", "\x1b[31m..\u202e", "x" * 500, None):
        task = Task.model_construct(task_id="../id", task_name=name)
        path = make_run_dir(tmp_path, task)
        assert path.parent == (tmp_path / "logs" / "run").absolute()
        assert ".." not in path.name and "/" not in path.name and "\x1b" not in path.name
        assert len(path.name) < 200
