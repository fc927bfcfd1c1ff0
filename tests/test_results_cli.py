"""Getting a sweep's results out, through the CLI and the Python API on a real server:
``task ls --fmt csv|json -c``, ``task count``, ``status``, ``wait``, ``task requeue``,
``progress``/``report_progress``, gone workers and ``worker prune``, the loop's "no pending
task has these fields" message and the README's bypass trick."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import pytest
from helpers import API, get_task
from test_cli import ok, run_cli
from test_results_api import _batch, _claim, _report

from labtasker.fields import TASK_FIELD_NAMES

BIN = str(Path(sys.executable).parent)


@pytest.fixture
def cli(queue_env):
    def _run(*args, input: str = "", extra_env: dict | None = None, timeout: float = 120):
        env = {**queue_env.env(), **(extra_env or {})}
        return run_cli(*args, env=env, cwd=queue_env.workdir, input=input, timeout=timeout)

    return _run


def _finished_sweep(http, accs=(0.5, 0.9, 0.7, 0.6, 0.8)) -> list[str]:
    """One task per accuracy, each run to success with ``summary.acc``; ids in that order."""
    ids = _batch(http, [{"args": {"lr": i / 10, "seed": i}} for i in range(len(accs))])
    acc_of = dict(zip(ids, accs, strict=True))
    for _ in ids:
        task = _claim(http)
        _report(http, task, "success", {"acc": acc_of[task["task_id"]]})
    return ids


def test_ls_csv_json_columns_and_limit(cli, queue_env):
    http = queue_env.http()
    ids = _finished_sweep(http)
    by_acc = [t for _, t in sorted(zip((0.5, 0.9, 0.7, 0.6, 0.8), ids, strict=True), reverse=True)]
    # a sort on a JSON path returns every match, not only the first page
    assert (
        ok(cli("task", "ls", "-q", "-S", "summary.acc:desc", "--page-size", "2")).split() == by_acc
    )
    # top 3 as CSV with flattened, chosen columns and the computed duration
    out = ok(
        cli(
            "task",
            "ls",
            "-s",
            "success",
            "-S",
            "summary.acc:desc",
            "--limit",
            "3",
            "-c",
            "task_id,args",
            "-c",
            "summary.acc,duration",
            "--fmt",
            "csv",
        )
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["task_id", "args.lr", "args.seed", "summary.acc", "duration"]
    assert [r["task_id"] for r in rows] == by_acc[:3]
    assert [float(r["summary.acc"]) for r in rows] == [0.9, 0.8, 0.7]
    assert all(float(r["duration"]) >= 0 for r in rows)
    # one JSON array: whole tasks, or flat rows with -c (patterns allowed)
    full = json.loads(ok(cli("task", "ls", "--fmt", "json", "--limit", "2")))
    assert len(full) == 2 and isinstance(full[0]["args"], dict)
    flat = json.loads(
        ok(
            cli(
                "task",
                "ls",
                "--fmt",
                "json",
                "-c",
                "summary.*",
                "-S",
                "summary.acc:asc",
                "--limit",
                "1",
            )
        )
    )
    assert flat == [{"summary.acc": 0.5}]
    header = ok(cli("task", "ls", "--fmt", "csv")).splitlines()[0].split(",")
    assert {"task_id", "args.lr", "summary.acc", "duration"} <= set(header)


def test_ls_warns_of_a_column_no_task_has(cli, queue_env):
    """``-c nosuchcol`` printed an empty column silently; now a warning on stderr names each
    requested column that no listed task has (like ``-S`` for a field that orders nothing),
    in every format, and the listing is printed all the same. Field names (``metadata``,
    empty for every task here) and columns some task has are not warned about."""
    http = queue_env.http()
    ids = _finished_sweep(http, accs=(0.5, 0.9))
    fields = ", ".join([*TASK_FIELD_NAMES, "duration"])

    def warning(column: str, what: str = "no listed task has this field, so its column is empty"):
        return (
            f"Warning: -c {column}: {what} (fields: {fields}; dotted paths into args, "
            "metadata or summary)."
        )

    proc = cli("task", "ls", "--fmt", "table", "-c", "task_id,nosuchcol,args.lr")
    table = ok(proc)
    assert all(i in table for i in ids) and "nosuchcol" in table and "args.lr" in table
    assert proc.stderr.splitlines() == [warning("nosuchcol")]

    proc = cli("task", "ls", "--fmt", "csv", "-c", "task_id,args.lrr", "-c", "sumary.*")
    rows = list(csv.DictReader(io.StringIO(ok(proc))))
    assert [r["task_id"] for r in rows] == ids and list(rows[0]) == ["task_id", "args.lrr"]
    assert proc.stderr.splitlines() == [
        warning("args.lrr"),
        warning("sumary.*", "matches no field of any listed task, so it adds no column"),
    ]

    proc = cli("task", "ls", "--fmt", "jsonl", "-c", "nosuchcol")
    assert [json.loads(line) for line in ok(proc).splitlines()] == [{"nosuchcol": None}] * 2
    assert proc.stderr.splitlines() == [warning("nosuchcol")]

    for fmt in ("table", "csv", "json", "yaml"):
        proc = cli("task", "ls", "--fmt", fmt, "-c", "task_id,metadata,summary.*,args,duration")
        assert ok(proc) and proc.stderr == "", (fmt, proc.stderr)
    # nothing listed: nothing to judge
    proc = cli("task", "ls", "-s", "running", "-c", "nosuchcol", "--fmt", "csv")
    assert ok(proc) == "nosuchcol\n" and proc.stderr == ""


def test_python_api_counts_dataframe_requeue(queue_env, monkeypatch):
    import labtasker

    http = queue_env.http()
    ids = _batch(
        http,
        [{"args": {"lr": lr, "seed": s}, "max_retries": 1} for lr in (0.1, 0.01) for s in range(3)],
    )
    ok_run, failed_run, running = (_claim(http) for _ in range(3))
    _report(http, ok_run, "success", {"acc": 0.75, "curve": {"best": 0.8}})
    _report(http, failed_run, "failed")
    counts = labtasker.count_tasks()
    assert counts.counts() == {
        "pending": 3,
        "running": 1,
        "success": 1,
        "failed": 1,
        "cancelled": 0,
    }
    assert labtasker.count_tasks(by="args.lr", status="pending").total == 3
    df = labtasker.tasks_dataframe(
        status="success", columns=["task_id", "args", "summary.*", "duration"]
    )
    assert list(df.columns) == [
        "task_id",
        "args.lr",
        "args.seed",
        "summary.acc",
        "summary.curve.best",
        "duration",
    ]
    assert df["task_id"].tolist() == [ok_run["task_id"]]
    assert df["summary.curve.best"].tolist() == [0.8]
    everything = labtasker.tasks_dataframe()
    assert len(everything) == len(ids) and str(everything["created_at"].dtype).endswith("UTC]")
    assert labtasker.requeue_tasks(status="failed") == [failed_run["task_id"]]
    assert get_task(http, failed_run["task_id"])["retries"] == 0
    assert labtasker.queue_overview().counts["pending"] == 4
    monkeypatch.setitem(sys.modules, "pandas", None)  # pandas not installed
    with pytest.raises(ImportError, match=r"pip install 'labtasker\[pandas\]'"):
        labtasker.tasks_dataframe()
    assert running["status"] == "running"


def test_task_count_cli(cli, queue_env):
    http = queue_env.http()
    _batch(http, [{"args": {"lr": lr}} for lr in (0.1, 0.1, 0.01)] + [{"args": {"x": 1}}])
    out = ok(cli("task", "count"))
    assert out.split() == [
        "pending",
        "4",
        "running",
        "0",
        "success",
        "0",
        "failed",
        "0",
        "cancelled",
        "0",
        "total",
        "4",
    ]
    answer = json.loads(ok(cli("task", "count", "--by", "args.lr", "--fmt", "json")))
    assert [(g["value"], g["count"]) for g in answer["groups"]] == [(None, 1), (0.01, 1), (0.1, 2)]
    assert "{lr}" in ok(cli("task", "count", "--by", "arg_fields", "-f", "args.lr > 0.05"))
    proc = cli("task", "count", "--by", "nosuch")
    assert proc.returncode == 2 and "--by" in proc.stderr and "Unknown field" in proc.stderr


def test_wait_exit_status(cli, queue_env):
    http = queue_env.http()
    ids = _batch(http, [{"args": {"x": 1}}, {"args": {"x": 1}}])
    proc = cli("wait", "--timeout", "1", "--interval", "0.2")
    assert proc.returncode == 124 and "2 of 2 task(s) still pending" in proc.stderr
    for _ in ids:
        _report(http, _claim(http), "success")
    assert "All 2 task(s) ended: 2 success" in ok(cli("wait"))
    _batch(http, [{"args": {"x": 2}, "max_retries": 1}])
    _report(http, _claim(http), "failed")
    proc = cli("wait")
    assert proc.returncode == 1 and "1 failed" in proc.stdout
    ok(cli("wait", "-q", "-f", "args.x == 1"))  # only the successful ones


def test_requeue_cli(cli, queue_env):
    http = queue_env.http()
    _batch(http, [{"args": {"x": i}, "max_retries": 1} for i in range(3)])
    a, b, c = (_claim(http) for _ in range(3))
    _report(http, a, "failed")
    _report(http, b, "failed")
    _report(http, c, "success")
    assert "2 task(s) requeued." in ok(cli("task", "requeue", "-s", "failed"))
    assert {get_task(http, t["task_id"])["status"] for t in (a, b)} == {"pending"}
    proc = cli("task", "requeue")  # everything ended, asked on no terminal: needs -y
    assert proc.returncode == 2 and "-y" in proc.stderr
    assert get_task(http, c["task_id"])["status"] == "success"
    assert ok(cli("task", "requeue", "-y", "-q")).split() == [c["task_id"]]
    proc = cli("task", "requeue", "-s", "pending")
    assert proc.returncode == 2 and "already queued" in proc.stderr


def test_status_shows_counts_eta_workers_and_progress(cli, queue_env):
    http = queue_env.http()
    _finished_sweep(http, accs=(0.5,))
    _batch(
        http,
        [
            {"args": {"lr": 0.5, "seed": 9}, "task_name": "long"},
            {"args": {"lr": 0.6, "seed": 9}},
            {"args": {"lr": 0.7, "seed": 9}},
        ],
    )
    worker = http.post(f"{API}/workers", json={"worker_name": "gpu0"}).json()["worker_id"]
    task = _claim(http, worker_id=worker)
    resp = http.post(
        f"{API}/tasks/{task['task_id']}/progress",
        json={"step": 1, "total": 4, "metrics": {"loss": 0.25}, "run_id": task["run_id"]},
    )
    assert resp.status_code == 200, resp.text
    out = ok(cli("status"))
    assert "4 task(s)" in out and "1/4 ended" in out and "pending 2" in out
    assert "1 run(s) ended (1 success, 0 failed)" in out and "ETA: " in out
    assert "Workers: 1 live (1 active" in out
    assert task["task_id"] in out and "gpu0" in out and "1/4 (25%) loss=0.25" in out
    data = json.loads(ok(cli("status", "--fmt", "json")))
    assert data["counts"]["running"] == 1 and data["eta_seconds"] > 0
    assert "1/4 (25%) loss=0.25" in ok(cli("task", "ls", "--fmt", "table", "-s", "running"))
    # its loop ends (the worker is gone): no ETA is promised while no active worker is live
    resp = http.post(
        f"{API}/tasks/{task['task_id']}/status",
        json={"status": "success", "run_id": task["run_id"]},
    )
    assert resp.status_code == 200, resp.text
    assert http.post(f"{API}/workers/{worker}/gone").status_code == 200
    out = ok(cli("status"))
    assert "ETA: none, no active worker is live (2 pending or running)" in out, out


def test_human_seconds():
    from labtasker.client.cli.status_cmd import human_seconds

    assert [human_seconds(s) for s in (0.04, 0.86, 9.99, 42.7, 185, 7800)] == [
        "0.0s",
        "0.8s",
        "9.9s",
        "42s",
        "3m05s",
        "2h10m",
    ]


def test_report_progress_in_a_job(queue_env, monkeypatch, tmp_path):
    import labtasker

    http = queue_env.http()
    _batch(http, [{"args": {"x": 1}}])
    task = _claim(http)
    assert labtasker.report_progress(1, total=3) is None  # outside a job: nothing
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "task_info.json").write_text(json.dumps(task))
    monkeypatch.setenv("LABTASKER_TASK_ID", task["task_id"])
    monkeypatch.setenv("LABTASKER_LOG_DIR", str(run_dir))
    monkeypatch.setenv("LABTASKER_PROGRESS_INTERVAL", "60")
    assert labtasker.report_progress(1, total=3, loss=0.5) is True
    assert labtasker.report_progress(2, total=3, loss=0.4) is False  # rate-limited
    assert get_task(http, task["task_id"])["progress"]["step"] == 1
    assert labtasker.report_progress(3, total=3, loss=0.3) is True  # the final one is sent
    snap = get_task(http, task["task_id"])["progress"]
    assert (snap["step"], snap["total"], snap["metrics"]) == (3, 3, {"loss": 0.3})
    with pytest.raises(ValueError, match="metrics"):
        labtasker.report_progress(4, **{"bad key": 1})
    _report(http, task, "success")
    assert labtasker.report_progress(3, total=3) is False  # the run no longer owns the task


def test_loop_exit_0_for_another_commands_near_fields(cli, queue_env):
    """A queue shared by several commands: a loop whose own tasks are all done (or not yet
    submitted) exits 0 when the pending tasks belong to another command with near-miss field
    names; only a placeholder that is a likely typo (close, and its correction gives the
    pending tasks' exact fields, and no task ever had the fields as written) exits 1."""
    from labtasker.client.mismatch import explain_no_match

    http = queue_env.http()
    env = {"PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    _batch(http, [{"args": {"model": "cnn", "steps": s}} for s in (1, 2)])
    ok(cli("loop", "--", "echo", "%(model)", "%(steps)", extra_env=env))
    # the other command's tasks: {model, step} (steps/step is close), still pending
    _batch(http, [{"args": {"model": "cnn", "step": s}} for s in (1, 2)])
    proc = cli("loop", "--", "echo", "%(model)", "%(steps)", extra_env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Did you mean %(step) for %(steps)?" in proc.stderr  # still said, as a warning
    why = explain_no_match(["model", "steps"])
    assert why is not None and not why.likely_typo
    # a second stage whose tasks are not submitted yet: output/input are different names
    _batch(http, [{"args": {"input": "a.txt"}}])
    proc = cli("loop", "--", "echo", "%(output)", extra_env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Did you mean %(input) for %(output)?" in proc.stderr
    # close, but the corrected fields are no pending task's exact fields: not a typo
    why = explain_no_match(["model", "stepp", "extra"])
    assert why is not None and not why.likely_typo
    # a real typo: exit 1
    proc = cli("loop", "--", "echo", "%(model)", "%(stpe)", extra_env=env)
    assert proc.returncode == 1, proc.stderr
    assert "Did you mean %(step) for %(stpe)?" in proc.stderr


def test_loop_gone_workers_mismatch_message_and_bypass(cli, queue_env):
    http = queue_env.http()
    named, unnamed = _batch(
        http,
        [
            {"args": {"prompt": "a", "guidance_scale": 7.5}, "task_name": "cat"},
            {"args": {"prompt": "b", "guidance_scale": 1}},
        ],
    )
    env = {
        "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
        "LABTASKER_PROGRESS_INTERVAL": "0",
    }
    # a typo in a placeholder: not "all done" but what the pending tasks have
    # (exit 1: the loop ran nothing and never will as written)
    proc = cli("loop", "--", "echo", "%(prompt)", "%(guidance)", extra_env=env)
    assert proc.returncode == 1, proc.stderr
    assert "2 pending task(s) have {guidance_scale, prompt}" in proc.stderr
    assert "Did you mean %(guidance_scale) for %(guidance)?" in proc.stderr
    assert "all done" not in proc.stderr
    # the same question when a filter excludes them (what the loop logs, asked directly)
    from labtasker.client.mismatch import explain_no_match

    why = explain_no_match(["prompt", "guidance_scale"], "args.prompt == 'zzz'")
    assert why is not None and not why.likely_typo
    assert why.text == (
        "2 pending task(s) have the fields {guidance_scale, prompt} but none matches "
        "--extra-filter."
    )
    assert explain_no_match(["prompt", "guidance_scale"], "args.prompt == 'a'") is None
    # the bypass trick, argv mode: the field goes into a variable the job ignores; progress
    # from a shell job and from Python
    job = (
        "import labtasker, sys; assert labtasker.report_progress(2, total=2, loss=0.1); "
        "print(sys.argv[1])"
    )
    ok(
        cli(
            "loop",
            "-f",
            "args.prompt == 'a'",
            "--",
            "env",
            "UNUSED=%(guidance_scale)",
            "sh",
            "-c",
            'labtasker progress 1 --total 2 && exec "$0" "$@"',
            sys.executable,
            "-c",
            job,
            "%(prompt)",
            extra_env=env,
        )
    )
    snap = get_task(http, named)
    assert snap["status"] == "success", snap
    assert (snap["progress"]["step"], snap["progress"]["metrics"]) == (2, {"loss": 0.1})
    # the bypass trick, shell mode: the field in a comment
    ok(cli("loop", "-c", "echo %(prompt) # %(guidance_scale)", extra_env=env))
    assert get_task(http, unnamed)["status"] == "success"
    run_dirs = list((queue_env.root / "logs" / "run").iterdir())
    unnamed_dir = next(d for d in run_dirs if unnamed in d.name)
    assert (
        "_nNone" not in unnamed_dir.name and "(None)" not in (unnamed_dir / "run.log").read_text()
    )
    assert any("_ncat_" in d.name for d in run_dirs)
    # each loop marked its worker gone; worker ls tells them apart; prune removes them
    workers = [json.loads(line) for line in ok(cli("worker", "ls", "--fmt", "jsonl")).splitlines()]
    assert len(workers) == 3 and all(w["gone_at"] for w in workers)
    live = http.post(f"{API}/workers", json={"worker_name": "live"}).json()["worker_id"]
    table = ok(cli("worker", "ls", "--fmt", "table"))
    assert "4 worker(s): 1 live, 3 gone" in table and "seen" in table
    assert ok(cli("worker", "ls", "-q", "--live")).split() == [live]
    assert "3 gone worker(s) removed." in ok(cli("worker", "prune"))
    assert ok(cli("worker", "ls", "-q")).split() == [live]


# ------------------------------------------------------------- commands that did the wrong thing


def test_wrong_input_is_one_line_without_server(tmp_path):
    """Bad bytes, out-of-range numbers, top-level typos: refused before any request."""
    env = {**os.environ, "LABTASKER_ROOT": str(tmp_path / "none")}

    def one_line_error(*args):
        proc = run_cli(*args, env=env)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("Error: "), (
            proc.stderr
        )
        return lines[0]

    line = one_line_error("task", "submit", "--", "--x", os.fsdecode(b"a\xffb"))
    assert "argument 5" in line and "a\\xffb" in line and "UTF-8" in line
    line = one_line_error("loop", "--", "echo", os.fsdecode(b"\xff%(x)"))
    assert "argument 4" in line and "UTF-8" in line
    line = one_line_error("task", "submit", "--", "--x", "1e400")
    assert "--x 1e400" in line and "stored as null" in line and "\"'1e400'\"" in line
    line = one_line_error("submit", "--", "--x", "1")
    assert "Did you mean `labtasker task submit -- --x 1`?" in line
    help_text = ok(run_cli("task", "submit", "--help", env={**env, "COLUMNS": "200"}))
    assert "30,60 lists" in " ".join(help_text.split())
    assert "`labtasker loop` runs its own command" in " ".join(help_text.split())
    import subprocess

    out = subprocess.run(
        [os.path.join(BIN, "labtasker-server"), "serve", "--help"],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "80"},
    ).stdout
    assert "postgresql://user@host/db" in out and "--periodic-task-interval" in out
    assert "…" not in out


def test_wrong_things_against_a_server(cli, queue_env, server, tmp_path):
    http = queue_env.http()
    # 1.0.1 casting kept, with a way to keep the text
    tid = ok(cli("task", "submit", "-q", "--", "--a", "30,60", "--b", "'30,60'")).strip()
    assert get_task(http, tid)["args"] == {"a": [30, 60], "b": "30,60"}
    # a bare field name in a filter: point at args.<name>
    proc = cli("task", "ls", "-f", "lr < 0.1")
    assert proc.returncode == 2 and "Did you mean 'args.lr'?" in proc.stderr
    # reporting a worker's current status again says so
    wid = http.post(f"{API}/workers", json={}).json()["worker_id"]
    ok(cli("worker", "report", wid, "suspended"))
    assert f"Worker {wid} is already suspended." in ok(cli("worker", "report", wid, "suspended"))
    # a suspended worker's loop: exit 1, the reason printed once
    _batch(http, [{"args": {"x": 1}}])
    proc = cli("loop", "--worker-id", wid, "--", "echo", "%(x)")
    assert proc.returncode == 1 and proc.stderr.count("refused to give worker") == 1
    # after a rename: exit 1 everywhere, and no advice to create a new queue blindly
    resp = http.put(API, json={"new_queue_name": queue_env.queue_name + "-new"})
    assert resp.status_code == 200, resp.text
    for args in (("task", "ls"), ("loop", "--", "echo", "%(x)")):
        proc = cli(*args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert "renamed" in proc.stderr and "a new, empty queue" in proc.stderr
    # event listen against a server that is down fails at once
    import socket

    with socket.socket() as sock:  # a port nothing listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = tmp_path / "down"
    down.mkdir()
    (down / "client.toml").write_text(
        f'[endpoint]\napi_base_url = "http://127.0.0.1:{port}/"\n'
        '[queue]\nqueue_name = "q"\npassword = "p"\n'
    )
    import time

    t0 = time.monotonic()  # the old listener waited out the whole --timeout before failing
    proc = cli("event", "listen", "--timeout", "120", extra_env={"LABTASKER_ROOT": str(down)})
    assert time.monotonic() - t0 < 60
    assert proc.returncode == 1 and "Cannot connect" in proc.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")
def test_interactive_init_asks_again_after_a_mistake(server, tmp_path):
    from test_cli import run_in_pty

    name = "init-" + os.urandom(4).hex()
    resp = __import__("httpx").post(
        server.url + "/api/v1/queues", json={"queue_name": name, "password": "right"}
    )
    assert resp.status_code == 201
    env = {**os.environ, "LABTASKER_ROOT": str(tmp_path / "root")}
    code, out = run_in_pty(
        ["init"],
        env,
        tmp_path,
        answers=[
            ("server", "http://127.0.0.1:9"),
            ("Continue anyway", "n"),
            ("server", server.url),
            ("Queue name", name),
            ("Queue password", "wrong"),
            ("Repeat", "wrong"),
            ("create this queue", "y"),
            ("Queue name", name),
            ("Queue password", "right"),
            ("Repeat", "right"),
        ],
    )
    assert code == 0, out
    assert "Enter the server URL again" in out and "password is wrong; try again" in out
    assert f"Using existing queue '{name}'" in out
