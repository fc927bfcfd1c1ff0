"""End-to-end tests of ``labtasker loop`` and ``@labtasker.loop`` against a real server.

Every loop is a real child process (the ``labtasker`` console script or a Python script using
the decorator); jobs are real processes that write what they received into files, which the
tests compare with what was submitted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path

import pytest
from support.http import get_task, submit
from support.wait import wait_for

# Tests of the client against a real server: SQLite only (conftest, ``client_side``).
pytestmark = pytest.mark.client_side

LABTASKER = str(Path(sys.executable).parent / "labtasker")

NASTY = [
    "plain",
    "two words",
    "it's",
    'say "hi"',
    "both ' and \"",
    "$HOME ${PATH}",
    "`id` $(id)",
    "100% %d %(x)",
    "a;b && c || d | e > f < g",
    "line1\nline2",
    "tab\there",
    "  padded  ",
    "",
    "-n",
    "--flag=value",
    "#comment",
    "*.py ?",
    "~",
    "back\\slash\\",
    "unicodé ✓ 日本語 🚀",
    "{}",
    "!",
]

# A job that records its argv and LABTASKER_* environment into <out>/<task_id>.json
RECORDER = textwrap.dedent(
    """
    import json, os, sys
    out = os.environ["OUT_DIR"]
    data = {"argv": sys.argv[1:],
            "env": {k: v for k, v in os.environ.items() if k.startswith("LABTASKER_")},
            "stdin": sys.stdin.read(), "cwd": os.getcwd()}
    print("job output for", os.environ["LABTASKER_TASK_ID"], flush=True)
    with open(os.path.join(out, os.environ["LABTASKER_TASK_ID"] + ".json"), "w") as f:
        json.dump(data, f)
    """
)


# ------------------------------------------------------------------------------ helpers
def run_loop(
    queue_env, *loop_args, timeout=120, extra_env=None, **kw
) -> subprocess.CompletedProcess:
    env = {**queue_env.env(), **(extra_env or {})}
    return subprocess.run(
        [LABTASKER, "loop", *loop_args],
        env=env,
        cwd=queue_env.workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kw,
    )


@pytest.fixture
def recorder(queue_env):
    script = queue_env.workdir / "recorder.py"
    script.write_text(RECORDER)
    out = queue_env.workdir / "out"
    out.mkdir()
    return script, out


def records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


def run_dirs(queue_env) -> list[Path]:
    base = queue_env.root / "logs" / "run"
    return sorted(base.iterdir()) if base.exists() else []


# ------------------------------------------------------------------------------ argv / shell
def test_argv_mode_nasty_values_reach_job_literally(queue_env, recorder):
    script, out = recorder
    http = queue_env.http()
    ids = {submit(http, {"v": v}): v for v in NASTY}
    proc = run_loop(
        queue_env,
        "--",
        sys.executable,
        str(script),
        "%(v)",
        "--opt=%(v)",
        "lit eral",
        extra_env={"OUT_DIR": str(out)},
    )
    assert proc.returncode == 0, proc.stderr
    got = records(out)
    assert set(got) == set(ids)
    for task_id, value in ids.items():
        assert got[task_id]["argv"] == [value, "--opt=" + value, "lit eral"], value
        assert get_task(http, task_id)["status"] == "success"


def test_shell_mode_nasty_values_reach_job_literally(queue_env, recorder):
    script, out = recorder
    http = queue_env.http()
    ids = {submit(http, {"v": v}): v for v in NASTY}
    shell_cmd = f"{sys.executable} {script} %(v) x%(v)y && echo done-$LABTASKER_TASK_ID"
    proc = run_loop(queue_env, "-c", shell_cmd, extra_env={"OUT_DIR": str(out)})
    assert proc.returncode == 0, proc.stderr
    got = records(out)
    assert set(got) == set(ids)
    for task_id, value in ids.items():
        assert got[task_id]["argv"] == [value, "x" + value + "y"], value
    for task_id in ids:  # the literal shell code still ran, in the same shell
        assert f"done-{task_id}" in proc.stdout


def test_structured_values_render_as_json(queue_env, recorder):
    script, out = recorder
    http = queue_env.http()
    tid = submit(
        http,
        {"cfg": {"a": [1, 2], "b": None}, "flag": True, "lr": 0.001, "n": None, "seeds": [7, 8]},
    )
    proc = run_loop(
        queue_env,
        "--",
        sys.executable,
        str(script),
        "%(cfg)",
        "%(flag)",
        "%(lr)",
        "%(n)",
        "%(seeds.1)",
        "%(seeds)",
        extra_env={"OUT_DIR": str(out)},
    )
    assert proc.returncode == 0, proc.stderr
    argv = records(out)[tid]["argv"]
    assert argv == ['{"a": [1, 2], "b": null}', "True", "0.001", "None", "8", "[7, 8]"]


def test_script_path_and_executable(queue_env, recorder):
    script, out = recorder
    http = queue_env.http()
    tid = submit(http, {"word": "two words"})
    job = queue_env.workdir / "job.sh"
    job.write_text(f"{sys.executable} {script} %(word)\n")
    proc = run_loop(
        queue_env,
        "--script-path",
        str(job),
        "--executable",
        "/bin/bash",
        extra_env={"OUT_DIR": str(out)},
    )
    assert proc.returncode == 0, proc.stderr
    assert records(out)[tid]["argv"] == ["two words"]


# ------------------------------------------------------------------------------ selection
def test_required_fields_no_more_no_less(queue_env, recorder):
    script, out = recorder
    http = queue_env.http()
    exact = submit(http, {"prompt": "a cat"})
    nested = submit(http, {"prompt": {"text": "covered subtree"}})
    extra = submit(http, {"prompt": "a dog", "guidance_scale": 7.5})
    other = submit(http, {"other": 1})
    proc = run_loop(
        queue_env, "--", sys.executable, str(script), "%(prompt)", extra_env={"OUT_DIR": str(out)}
    )
    assert proc.returncode == 0, proc.stderr
    assert set(records(out)) == {exact, nested}
    assert get_task(http, extra)["status"] == "pending"
    assert get_task(http, other)["status"] == "pending"
    # The two pending tasks that do not fit are named by their field sets, not "all done".
    assert "No matching task is left" in proc.stderr
    assert "{guidance_scale, prompt}" in proc.stderr
    assert "{other}" in proc.stderr
    assert "all done" not in proc.stderr


def test_extra_filter_metadata_tags(queue_env, recorder):
    script, out = recorder
    http = queue_env.http()
    tagged = submit(http, {"x": 1}, metadata={"tags": ["experimental", "a"]})
    untagged = submit(http, {"x": 2}, metadata={"tags": ["stable"]})
    bare = submit(http, {"x": 3})
    proc = run_loop(
        queue_env,
        "-f",
        '{"metadata.tags": {"$in": ["experimental"]}}',
        "--",
        sys.executable,
        str(script),
        "%(x)",
        extra_env={"OUT_DIR": str(out)},
    )
    assert proc.returncode == 0, proc.stderr
    assert set(records(out)) == {tagged}
    assert get_task(http, untagged)["status"] == "pending"
    assert get_task(http, bare)["status"] == "pending"


# ------------------------------------------------------------------------------ context
def test_env_vars_run_dir_and_files(queue_env, recorder):
    script, out = recorder
    http = queue_env.http()
    tid = submit(http, {"x": "y"}, task_name="my-task")
    proc = run_loop(
        queue_env, "--", sys.executable, str(script), "%(x)", extra_env={"OUT_DIR": str(out)}
    )
    assert proc.returncode == 0, proc.stderr
    rec = records(out)[tid]
    env = rec["env"]
    assert env["LABTASKER_TASK_ID"] == tid
    task = get_task(http, tid)
    worker = http.get(f"/api/v1/queues/me/workers/{env['LABTASKER_WORKER_ID']}")
    assert worker.status_code == 200, worker.text  # the auto-created worker
    assert worker.json()["worker_name"]  # <host>-<pid>
    assert rec["stdin"] == ""  # /dev/null, not a pipe that never closes
    (run_dir,) = run_dirs(queue_env)
    assert env["LABTASKER_LOG_DIR"] == str(run_dir) and os.path.isabs(env["LABTASKER_LOG_DIR"])
    assert run_dir.name.startswith("run_t") and f"_nmy-task_id{tid}_rd" in run_dir.name
    assert len(run_dir.name.rsplit("_rd", 1)[1]) == 8
    info = json.loads((run_dir / "task_info.json").read_text())
    assert info["task_id"] == tid and info["args"] == {"x": "y"} and info["status"] == "running"
    assert info["run_id"]
    assert (run_dir / "task_info.json").read_text().startswith("{\n    ")  # indent 4
    assert f"job output for {tid}" in (run_dir / "run.log").read_text()
    assert json.loads((run_dir / "status.json").read_text()) == {"status": "success"}
    assert json.loads((run_dir / "summary.json").read_text()) == {}
    assert not (run_dir / "heartbeat.lock").exists()
    assert task["status"] == "success"


def test_failure_summary_has_exit_code_and_output(queue_env):
    http = queue_env.http()
    tid = submit(http, {"code": 3}, max_retries=1)
    proc = run_loop(queue_env, "-c", "echo about to fail; echo oops >&2; exit %(code)")
    assert proc.returncode == 0, proc.stderr
    task = get_task(http, tid)
    assert task["status"] == "failed"
    summary = task["summary"]
    exc = summary["labtasker_exception"]
    assert exc["type"] == "LabtaskerJobFailed"
    assert "exit code: 3" in exc["message"]
    assert set(exc) == {"type", "message", "traceback"}
    assert summary["exit_code"] == 3
    assert "about to fail" in summary["output_tail"] and "oops" in summary["output_tail"]
    for run_dir in run_dirs(queue_env):
        assert json.loads((run_dir / "status.json").read_text()) == {"status": "failed"}
        assert json.loads((run_dir / "summary.json").read_text())["exit_code"] == 3


def test_job_killed_by_signal_is_a_failure(queue_env):
    http = queue_env.http()
    tid = submit(http, {"x": 1}, max_retries=1)
    proc = run_loop(queue_env, "-c", "kill -9 $$ # %(x)")
    assert proc.returncode == 0, proc.stderr
    summary = get_task(http, tid)["summary"]
    assert summary["exit_code"] == -9
    assert "SIGKILL" in summary["labtasker_exception"]["message"]


# ------------------------------------------------------------------------------ summaries
def test_summary_json_written_by_job_is_merged(queue_env):
    http = queue_env.http()
    ok = submit(http, {"acc": 0.93})
    proc = run_loop(
        queue_env,
        "-c",
        'printf \'{"accuracy": %s, "nested": {"n_train": 100}}\' %(acc) > "$LABTASKER_LOG_DIR/summary.json"',
    )
    assert proc.returncode == 0, proc.stderr
    task = get_task(http, ok)
    assert task["status"] == "success"
    assert task["summary"]["accuracy"] == 0.93
    assert task["summary"]["nested"] == {"n_train": 100}


def test_summary_json_merged_into_failure_and_invalid_ignored(queue_env):
    http = queue_env.http()
    failing = submit(http, {"k": "fail"}, max_retries=1)
    proc = run_loop(
        queue_env, "-c", 'echo \'{"loss": 9.5}\' > "$LABTASKER_LOG_DIR/summary.json"; exit 4 # %(k)'
    )
    assert proc.returncode == 0, proc.stderr
    summary = get_task(http, failing)["summary"]
    assert summary["loss"] == 9.5 and summary["exit_code"] == 4

    bad = submit(http, {"j": "bad"})
    proc = run_loop(
        queue_env, "-c", 'echo \'{"bad key": 1}\' > "$LABTASKER_LOG_DIR/summary.json" # %(j)'
    )
    assert proc.returncode == 0, proc.stderr
    task = get_task(http, bad)
    assert task["status"] == "success"
    assert "ignored" in task["summary"]["labtasker_warning"]
    assert "bad key" not in task["summary"]


def test_summary_with_nan_or_too_large_still_reports_the_run(queue_env):
    """A job's summary.json holding NaN/Infinity (a diverged run; Python's json writes them)
    reports the run with those numbers as text, and the loop goes on to the next task; a
    summary over the server's size limit reports the outcome with a warning instead, the
    summary kept whole in the run directory. Before, the first crashed the loop (the task
    stayed running) and the second lost the result until the heartbeat timed out."""
    http = queue_env.http()
    diverged = submit(http, {"k": 1})
    proc = run_loop(
        queue_env,
        "-c",
        'echo \'{"loss": NaN, "curve": [1.5, Infinity, -Infinity]}\' '
        '> "$LABTASKER_LOG_DIR/summary.json" # %(k)',
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    task = get_task(http, diverged)
    assert task["status"] == "success", task
    assert task["summary"]["loss"] == "NaN"
    assert task["summary"]["curve"] == [1.5, "Infinity", "-Infinity"]
    assert "summary.loss, summary.curve.1, summary.curve.2" in proc.stderr

    big = submit(http, {"b": 1})
    then = submit(http, {"b": 2})
    proc = run_loop(
        queue_env,
        "-c",
        'python3 -c \'import json, os; json.dump({"x": "a" * 5_000_000}, '
        'open(os.environ["LABTASKER_LOG_DIR"] + "/summary.json", "w"))\' # %(b)',
    )
    assert proc.returncode == 0, proc.stderr
    task = get_task(http, big)
    assert task["status"] == "success", task
    warning = task["summary"]["labtasker_warning"]
    assert "too large" in warning and "x" not in task["summary"]
    kept = Path(warning.rsplit(" is kept in ", 1)[1].split(" on the worker")[0])
    assert len(json.loads(kept.read_text())["x"]) == 5_000_000
    assert get_task(http, then)["status"] == "success"


def test_finish_from_python_child_first_finish_wins(queue_env):
    http = queue_env.http()
    t_ok = submit(http, {"mode": "report-success-then-exit-1"})
    t_fail = submit(http, {"mode": "report-failed-then-exit-0"})
    job = queue_env.workdir / "finisher.py"
    job.write_text(
        textwrap.dedent(
            """
        import sys, labtasker
        mode = sys.argv[1]
        info = labtasker.task_info()
        assert info.args["mode"] == mode and info.run_id
        if mode == "report-success-then-exit-1":
            labtasker.finish("success", summary={"metric": 42})
            labtasker.finish("failed")  # ignored: first finish wins
            sys.exit(1)
        labtasker.finish("failed", summary={"why": "custom"})
        """
        )
    )
    # a worker that survives the three failed runs (the default max_retries would crash it
    # on the third, which ends the loop with exit 1)
    wid = http.post(
        "/api/v1/queues/me/workers", json={"worker_name": "finisher", "max_retries": 10}
    ).json()["worker_id"]
    proc = run_loop(queue_env, "--worker-id", wid, "--", sys.executable, str(job), "%(mode)")
    assert proc.returncode == 0, proc.stderr
    ok = get_task(http, t_ok)
    assert ok["status"] == "success" and ok["summary"] == {"metric": 42}
    failed = get_task(http, t_fail)
    assert failed["summary"]["why"] == "custom"
    assert failed["status"] in ("pending", "failed")  # retried per max_retries
    assert failed["retries"] >= 1


# ------------------------------------------------------------------------------ decorator
DECORATED = textwrap.dedent(
    """
    import json, os, sys
    from typing import Annotated
    import labtasker
    from labtasker import Required

    out = sys.argv[1]
    labtasker.set_prompt_on_task_failure(False)

    @labtasker.loop(extra_filter={"metadata.kind": "deco"}, eta_max="1h")
    def job(lr=Required(resolver=float),
            bs: Annotated[int, Required(alias="cfg.batch_size", resolver=int)] = 0,
            tag="plain"):
        info = labtasker.task_info()
        rec = {"lr": lr, "bs": bs, "tag": tag, "task_id": labtasker.current_task_id(),
               "worker": labtasker.current_worker_id(),
               "log_dir": str(labtasker.get_labtasker_log_dir()),
               "env_task": os.environ.get("LABTASKER_TASK_ID"), "run_id": info.run_id}
        print("deco job", rec["task_id"])
        with open(os.path.join(out, rec["task_id"] + ".json"), "w") as f:
            json.dump(rec, f)
        if lr < 0:
            raise ValueError("negative learning rate")
        if lr == 0.5:
            labtasker.finish("success", summary={"score": 0.5})

    print("imported", flush=True)  # nothing happened at decoration time
    n = job(tag="forwarded")
    print("ran", n)
    """
)


def test_python_decorator_loop_with_required_both_styles(queue_env):
    http = queue_env.http()
    t1 = submit(http, {"lr": "0.1", "cfg": {"batch_size": "32"}}, metadata={"kind": "deco"})
    t2 = submit(http, {"lr": 0.5, "cfg": {"batch_size": 8}}, metadata={"kind": "deco"})
    t_bad = submit(
        http, {"lr": -1, "cfg": {"batch_size": 1}}, metadata={"kind": "deco"}, max_retries=1
    )
    t_more = submit(
        http, {"lr": 1, "cfg": {"batch_size": 1}, "extra": 1}, metadata={"kind": "deco"}
    )
    t_kind = submit(http, {"lr": 1, "cfg": {"batch_size": 1}})
    script = queue_env.workdir / "deco.py"
    script.write_text(DECORATED)
    out = queue_env.workdir / "out"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, str(script), str(out)],
        env=queue_env.env(),
        cwd=queue_env.workdir,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("imported")
    assert "ran 3" in proc.stdout
    got = records(out)
    assert set(got) == {t1, t2, t_bad}
    assert got[t1]["lr"] == 0.1 and got[t1]["bs"] == 32 and got[t1]["tag"] == "forwarded"
    assert got[t2]["bs"] == 8
    for tid, rec in got.items():
        assert rec["env_task"] == tid and rec["worker"] and rec["run_id"]
        assert Path(rec["log_dir"]).is_dir()
        assert "deco job" in (Path(rec["log_dir"]) / "run.log").read_text()
    assert get_task(http, t1)["status"] == "success"
    assert get_task(http, t2)["summary"] == {"score": 0.5}
    bad = get_task(http, t_bad)
    assert bad["status"] == "failed"
    exc = bad["summary"]["labtasker_exception"]
    assert exc["type"] == "ValueError" and "negative learning rate" in exc["message"]
    assert "Traceback" in exc["traceback"]
    assert get_task(http, t_more)["status"] == "pending"
    assert get_task(http, t_kind)["status"] == "pending"


def test_import_labtasker_is_lazy_and_fast(queue_env):
    code = (
        "import sys, time; t = time.perf_counter(); import labtasker; "
        "dt = time.perf_counter() - t; "
        "assert 'httpx' not in sys.modules, 'httpx imported eagerly'; "
        "print(dt); labtasker.Required; labtasker.finish; labtasker.fetch_task; "
        "labtasker.LabtaskerError; labtasker.CmdKeyError; print(labtasker.__version__)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=queue_env.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.split()[0]) < 0.5


def test_job_side_api_and_old_import_paths_stay_cheap():
    """The job-side API (what a job's child process imports) loads no httpx, nor the CLI;
    the 1.0.1-era module ``labtasker.client.runner`` still exports the loop's names."""
    code = (
        "import sys; import labtasker.client.loop.context as c; import labtasker; "
        "labtasker.finish; labtasker.task_info; labtasker.loop; labtasker.is_enabled; "
        "import labtasker.client.loop as lp; lp.LoopOptions; "
        "bad = [m for m in ('httpx', 'typer', 'labtasker.client.api', 'labtasker.client.cli') "
        "if m in sys.modules]; assert not bad, bad; "
        "import labtasker.client.runner as r; "
        "print(r.LoopRunner.__module__, r.finish is labtasker.finish, r.TASK_INFO)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["labtasker.client.loop.runner", "True", "task_info.json"]


# ------------------------------------------------------------------------------ concurrency
def test_two_concurrent_loops_never_run_the_same_task(queue_env):
    http = queue_env.http()
    ids = {submit(http, {"i": i}) for i in range(24)}
    ledger = queue_env.workdir / "ledger.txt"
    cmd = f'echo "$LABTASKER_TASK_ID $LABTASKER_WORKER_ID %(i)" >> {ledger}; sleep 0.05'
    env = queue_env.env()
    procs = [
        subprocess.Popen(
            [LABTASKER, "loop", "-c", cmd],
            env=env,
            cwd=queue_env.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    lines = ledger.read_text().splitlines()
    ran = [line.split()[0] for line in lines]
    assert sorted(ran) == sorted(ids)  # each task exactly once
    assert len({line.split()[1] for line in lines}) == 2  # both loops did work
    for tid in ids:
        assert get_task(http, tid)["status"] == "success"


# ------------------------------------------------------------------------------ stopping
def test_cancelled_task_stops_job_and_loop_continues(queue_env):
    http = queue_env.http()
    victim = submit(http, {"s": 600}, priority=20)
    follower = submit(http, {"s": 0})
    pids = queue_env.workdir / "pids"
    pids.mkdir()
    cmd = f"echo $$ > {pids}/$LABTASKER_TASK_ID; exec sleep %(s)"
    p = subprocess.Popen(
        [LABTASKER, "loop", "-c", cmd],
        env=queue_env.env(),
        cwd=queue_env.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        pid_file = pids / victim
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
        job_pid = int(pid_file.read_text())
        resp = http.post(f"/api/v1/queues/me/tasks/{victim}/status", json={"status": "cancelled"})
        assert resp.status_code == 200, resp.text
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert "no longer ours" in err
    with pytest.raises(ProcessLookupError):
        os.kill(job_pid, 0)
    assert get_task(http, victim)["status"] == "cancelled"
    assert get_task(http, follower)["status"] == "success"


def test_sigint_forwarded_to_job_and_task_handed_back(queue_env):
    http = queue_env.http()
    tid = submit(http, {"s": 600})
    marker = queue_env.workdir / "got-signal"
    job = queue_env.workdir / "trap.sh"
    job.write_text(f"trap 'echo INT > {marker}; exit 5' INT\necho started\nsleep %(s) & wait\n")
    p = subprocess.Popen(
        [LABTASKER, "loop", "--script-path", str(job)],
        env=queue_env.env(),
        cwd=queue_env.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: get_task(http, tid)["status"] == "running")
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert marker.read_text().strip() == "INT"
    task = get_task(http, tid)  # an interrupted run is not a failure of the task
    assert (task["status"], task["retries"]) == ("pending", 0)
    assert task["summary"]["labtasker_interrupted"] == "interrupted by SIGINT"
    assert "labtasker_exception" not in task["summary"]
    assert "interrupted by SIGINT: back to pending" in err


def test_heartbeat_keeps_long_task_alive(queue_env):
    """heartbeat_interval is 1 s, timeout 3 s: a 5 s job must not be reclaimed, its beats
    reach the server. A job shorter than the interval sends none: the claim was its beat
    (the task's last heartbeat is its start time)."""
    http = queue_env.http()
    tid = submit(http, {"s": 5})
    quick = submit(http, {"s": 0})
    proc = run_loop(queue_env, "-c", "sleep %(s)")
    assert proc.returncode == 0, proc.stderr
    task = get_task(http, tid)
    assert task["status"] == "success" and task["retries"] == 0
    beat, start = (datetime.fromisoformat(task[k]) for k in ("last_heartbeat", "start_time"))
    assert (beat - start).total_seconds() >= 3, task
    task = get_task(http, quick)
    assert task["status"] == "success" and task["last_heartbeat"] == task["start_time"], task


# ------------------------------------------------------------------------------ usage errors
@pytest.mark.parametrize(
    "args, message",
    [
        (["-c", "echo %(a b)"], "Command error"),
        (["-c", "echo hi", "--", "echo"], "exactly one command source"),
        (["-c", "  "], "empty"),
        (["--script-path", "/nonexistent/x.sh"], "cannot read"),
        (["--eta-max", "soon", "-c", "echo"], "eta_max"),
        (["-f", "args.x ==", "-c", "echo"], "filter"),
        (["--worker-id", "no-such-worker", "-c", "echo"], "not found"),
        (["--grace-period", "inf", "-c", "echo"], "grace_period must be a finite number"),
        (["--heartbeat-timeout", "nan", "-c", "echo"], "heartbeat_timeout must be"),
        # a mistyped option would otherwise be run as the command, for every task
        (
            ["--paralel", "2", "--", "echo", "%(a)"],
            "No such option: --paralel (did you mean --parallel?)",
        ),
        (["--idle-timout", "60", "--", "echo", "%(a)"], "(did you mean --idle-timeout?)"),
    ],
)
def test_usage_errors_exit_2_without_traceback(queue_env, args, message):
    t0 = time.monotonic()
    proc = run_loop(queue_env, *args, timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()[-1]) < 300  # one line
    assert time.monotonic() - t0 < 20


def test_run_limits_over_the_server_limit_exit_2_before_a_worker_exists(queue_env):
    """``--eta-max``/``--heartbeat-timeout`` longer than the server takes (``MAX_SECONDS``,
    ten years) are refused by the loop itself: exit 2, one line naming the option and the
    limit, and no worker created (the server used to refuse the first fetch: exit 1, "Loop
    stopped: 400 ...", a worker left behind). The limit itself is accepted."""
    from labtasker.wire import MAX_SECONDS  # the limit the server applies

    http = queue_env.http()
    for args, option in (
        (["--eta-max", "99999999999999"], "--eta-max"),
        (["--eta-max", "3651d"], "--eta-max"),
        (["--heartbeat-timeout", "1e12"], "--heartbeat-timeout"),
        (["--heartbeat-timeout", str(MAX_SECONDS + 1)], "--heartbeat-timeout"),
    ):
        proc = run_loop(queue_env, *args, "--", "echo", "%(k)", timeout=60)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {option}: "), proc.stderr
        assert f"more than the limit ({MAX_SECONDS} seconds" in lines[0], proc.stderr
    workers = http.post("/api/v1/queues/me/workers/search", json={}).json()["content"]
    assert workers == []

    tid = submit(http, {"k": 1})
    done = run_loop(queue_env, "--eta-max", str(MAX_SECONDS), "--heartbeat-timeout",
                    str(MAX_SECONDS), "--", "true", "%(k)")  # fmt: skip
    assert done.returncode == 0 and "all done" in done.stderr, done.stderr
    assert get_task(http, tid)["status"] == "success"


# ------------------------------------------------------------------------------ LoopOptions
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"required_fields": "lr"}, "LabtaskerTypeError", "list of strings"),
        ({"required_fields": ["lr", 1]}, "LabtaskerTypeError", "1 is not a string"),
        ({"extra_filter": 5}, "LabtaskerTypeError", "dict or a filter string"),
        ({"extra_filter": "args.x =="}, "QueryTranspilerSyntaxError", ""),
        ({"cmd": ["python", 3]}, "LabtaskerTypeError", "cmd must be"),
        ({"worker_id": 7}, "LabtaskerTypeError", "worker_id"),
        ({"create_worker_kwargs": ["x"]}, "LabtaskerTypeError", "create_worker_kwargs"),
        ({"create_worker_kwargs": {"name": "x"}}, "LabtaskerValueError", "'name'"),
        ({"eta_max": "soon"}, "LabtaskerValueError", "Invalid eta_max"),
        ({"heartbeat_timeout": 0}, "LabtaskerValueError", "heartbeat_timeout"),
        ({"eta_max": "3651d"}, "LabtaskerValueError", "eta_max: 3651d is more than the limit"),
        ({"eta_max": "inf"}, "LabtaskerValueError", "eta_max: inf is more than the limit"),
        ({"heartbeat_timeout": 1e12}, "LabtaskerValueError", "heartbeat_timeout: 1e+12 is more"),
        ({"heartbeat_timeout": "30"}, "LabtaskerTypeError", "heartbeat_timeout"),
        ({"grace_period": -1}, "LabtaskerValueError", "grace_period"),
        ({"grace_period": float("inf")}, "LabtaskerValueError", "grace_period"),
        ({"grace_period": float("nan")}, "LabtaskerValueError", "grace_period"),
        ({"grace_period": True}, "LabtaskerTypeError", "grace_period"),
        ({"idle_timeout": -0.5}, "LabtaskerValueError", "idle_timeout"),
    ],
)
def test_loop_options_reject_bad_values_everywhere(kwargs, error, message):
    """One validation (``LoopOptions``) for the runner, its keyword form and the decorator,
    which validates eagerly: before a function is decorated, without a server."""
    import labtasker
    from labtasker.client.runner import LoopOptions, LoopRunner

    for build in (LoopOptions, LoopRunner, labtasker.loop):
        with pytest.raises(Exception) as info:  # noqa: PT011 - the class is checked below
            build(**kwargs)
        assert type(info.value).__name__ == error, (build, info.value)
        assert message in str(info.value)


def test_loop_options_normalised_frozen_and_shared_by_runner():
    import dataclasses
    import math

    import labtasker
    from labtasker import Required
    from labtasker.client.runner import LoopOptions, LoopRunner
    from labtasker.exceptions import LabtaskerTypeError

    opts = LoopOptions(
        required_fields=["lr", "cfg.bs"],
        extra_filter="args.lr > 0.01",
        cmd=["python", "train.py"],
        create_worker_kwargs={"worker_name": "w", "max_retries": 5},
        eta_max=90,
        heartbeat_timeout=12,
        grace_period=2,
        idle_timeout=math.inf,
    )
    assert opts.required_fields == ("lr", "cfg.bs") and opts.cmd == ("python", "train.py")
    assert isinstance(opts.extra_filter, dict) and opts.extra_filter
    assert (opts.eta_max, opts.heartbeat_timeout, opts.grace_period) == ("90", 12.0, 2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.grace_period = 5  # type: ignore[misc]
    assert dataclasses.replace(opts, grace_period=3).grace_period == 3.0  # validated again
    with pytest.raises(ValueError, match="grace_period"):
        dataclasses.replace(opts, grace_period=-3)
    assert LoopOptions(extra_filter="  ").extra_filter is None

    runner = LoopRunner(opts)
    assert runner.options is opts
    assert (runner.required_fields, runner.cmd) == (["lr", "cfg.bs"], ["python", "train.py"])
    assert (runner.grace_period, runner.idle_timeout, runner.eta_max) == (2.0, math.inf, "90")
    assert runner.create_worker_kwargs == {"worker_name": "w", "max_retries": 5}
    by_keywords = LoopRunner(required_fields=["lr", "cfg.bs"], grace_period=2)
    assert by_keywords.options == LoopOptions(required_fields=("lr", "cfg.bs"), grace_period=2)
    assert LoopRunner().grace_period == 10.0 and LoopRunner().cmd == sys.argv
    with pytest.raises(LabtaskerTypeError, match="not both"):
        LoopRunner(opts, grace_period=1)

    @labtasker.loop(required_fields=["extra"], grace_period=0.5)
    def job(lr=Required(), bs=Required(alias="cfg.bs")):
        pass

    assert job.required_fields == ["extra", "lr", "cfg.bs"]


def test_no_tasks_exits_0_and_uses_given_worker(queue_env):
    http = queue_env.http()
    resp = http.post("/api/v1/queues/me/workers", json={"worker_name": "mine"})
    assert resp.status_code == 201, resp.text
    wid = resp.json()["worker_id"]
    tid = submit(http, {"x": 1})
    seen = queue_env.workdir / "wid.txt"
    proc = run_loop(
        queue_env, "--worker-id", wid, "-c", f"echo $LABTASKER_WORKER_ID > {seen} # %(x)"
    )
    assert proc.returncode == 0, proc.stderr
    assert seen.read_text().strip() == wid
    assert get_task(http, tid)["status"] == "success"
    workers = http.post("/api/v1/queues/me/workers/search", json={}).json()["content"]
    assert [w["worker_id"] for w in workers] == [wid]  # no extra worker was created
    proc = run_loop(queue_env, "-c", "true %(x)")
    assert proc.returncode == 0 and "all done" in proc.stderr


def test_loop_stops_at_once_when_going_on_cannot_help(queue_env):
    """A fetch the server refuses for good (here: a forbidden filter operator, HTTP 400) and a
    crashed worker stop the loop at once with exit 1 and a one-line reason, instead of
    minutes of back-off or a silent exit 0."""
    http = queue_env.http()
    submit(http, {"x": 1})
    t0 = time.monotonic()
    proc = run_loop(queue_env, "-f", '{"args.x": {"$where": 1}}', "--", "true", "%(x)")
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - t0 < 30
    assert "Loop stopped" in proc.stderr and "$where" in proc.stderr
    assert "Traceback" not in proc.stderr
    # a worker that crashes (max_retries 1; alone, so after twice that: two tasks failed)
    wid = http.post(
        "/api/v1/queues/me/workers", json={"worker_name": "fragile", "max_retries": 1}
    ).json()["worker_id"]
    submit(http, {"x": 2})
    submit(http, {"x": 3})
    proc = run_loop(queue_env, "--worker-id", wid, "-c", "exit 3 # %(x)")
    assert proc.returncode == 1, proc.stderr
    assert f"labtasker worker report {wid} active" in proc.stderr
    assert http.get(f"/api/v1/queues/me/workers/{wid}").json()["status"] == "crashed"
    pending = http.post("/api/v1/queues/me/tasks/search", json={"status": "pending"}).json()
    assert pending["content"], "matching tasks were left: the exit must not say 'all done'"


def test_command_without_placeholder_warns(queue_env):
    """A command without %(...) takes tasks of any shape (1.0.1): the loop says so."""
    http = queue_env.http()
    tid = submit(http, {"lr": 0.1})
    proc = run_loop(queue_env, "--", "true")
    assert proc.returncode == 0, proc.stderr
    assert "no %(...) placeholder" in proc.stderr
    assert get_task(http, tid)["status"] == "success"
    proc = run_loop(queue_env, "--", "true", "%(lr)")
    assert "placeholder" not in proc.stderr


LOST_DECORATED = textwrap.dedent(
    """
    import os, sys, time
    import labtasker
    from labtasker import Required

    out = sys.argv[1]

    @labtasker.loop()
    def job(s=Required()):
        tid = labtasker.current_task_id()
        open(os.path.join(out, tid + ".started"), "w").close()
        try:
            for _ in range(int(s * 10)):
                time.sleep(0.1)
        finally:
            open(os.path.join(out, tid + ".ended"), "w").close()

    job()
    """
)


def test_decorated_job_interrupted_when_task_taken_away(queue_env):
    http = queue_env.http()
    victim = submit(http, {"s": 600}, priority=20)
    follower = submit(http, {"s": 0})
    script = queue_env.workdir / "lost.py"
    script.write_text(LOST_DECORATED)
    out = queue_env.workdir / "out"
    out.mkdir()
    p = subprocess.Popen(
        [sys.executable, str(script), str(out)],
        env=queue_env.env(),
        cwd=queue_env.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: (out / f"{victim}.started").exists())
        resp = http.post(f"/api/v1/queues/me/tasks/{victim}/status", json={"status": "cancelled"})
        assert resp.status_code == 200, resp.text
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert (out / f"{victim}.ended").exists()  # the job was interrupted, its finally ran
    assert get_task(http, victim)["status"] == "cancelled"
    assert get_task(http, follower)["status"] == "success"


# ------------------------------------------------------------------------------ one request a task
# ``labtasker loop`` in a child process whose httpx transport notes each request (method and
# path) and prints them as JSON at exit; with ``stop_after_claim``, a SIGINT reaches the loop
# right after its first report that claimed the next task.
COUNTED_LOOP = textwrap.dedent(
    """
    import atexit, json, os, signal, sys
    import httpx

    seen = []
    send = httpx.HTTPTransport.handle_request

    def handle_request(self, request):
        seen.append([request.method, request.url.path])
        return send(self, request)

    httpx.HTTPTransport.handle_request = handle_request
    atexit.register(lambda: print("REQUESTS " + json.dumps(seen), flush=True))
    if os.environ.get("STOP_AFTER_CLAIM"):
        from labtasker.client import api
        combined = api.report_task_and_claim_next

        def report_then_stop(*args, **kwargs):
            answer = combined(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGINT)
            return answer

        api.report_task_and_claim_next = report_then_stop
    from labtasker.client.cli.main import main
    sys.argv = ["labtasker", "loop", *sys.argv[1:]]
    main()
    """
)


def _counted_loop(queue_env, *loop_args, stop_after_claim=False):
    script = queue_env.workdir / "counted_loop.py"
    script.write_text(COUNTED_LOOP)
    env = {**queue_env.env(), **({"STOP_AFTER_CLAIM": "1"} if stop_after_claim else {})}
    proc = subprocess.run(
        [sys.executable, str(script), *loop_args],
        env=env,
        cwd=queue_env.workdir,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REQUESTS "))
    return proc, [tuple(r) for r in json.loads(line.removeprefix("REQUESTS "))]


def test_loop_makes_one_request_per_successful_task(queue_env):
    """Five quick tasks that succeed: each report claims the next task in the same request,
    so the loop sends one claim (the first) and five reports, not six claims and five
    reports; every task succeeds, once."""
    http = queue_env.http()
    tids = [submit(http, {"one_req": i}) for i in range(5)]
    proc, seen = _counted_loop(queue_env, "--", "true", "%(one_req)")
    assert proc.returncode == 0, proc.stderr
    claims = [r for r in seen if r == ("POST", "/api/v1/queues/me/tasks/next")]
    reports = [r for r in seen if r[0] == "POST" and r[1].endswith("/status") and "/tasks/" in r[1]]
    assert (len(claims), len(reports)) == (1, 5), seen
    assert not [r for r in seen if r[1].endswith("/heartbeat")], seen
    for tid in tids:
        task = get_task(http, tid)
        assert (task["status"], task["retries"]) == ("success", 0), task


def test_loop_stopped_after_a_combined_report_hands_the_claimed_task_back(queue_env):
    """A SIGINT that arrives after the report that claimed the next task: the loop exits
    130 without running that task, which is back to pending, its retries untouched."""
    http = queue_env.http()
    tids = [submit(http, {"hand_back": i}) for i in range(3)]
    proc, seen = _counted_loop(queue_env, "--", "true", "%(hand_back)", stop_after_claim=True)
    assert proc.returncode == 130, proc.stderr
    tasks = [get_task(http, tid) for tid in tids]
    assert sorted(t["status"] for t in tasks) == ["pending", "pending", "success"], tasks
    assert all(t["retries"] == 0 for t in tasks), tasks
    # the claimed one was handed back (one update), not left running for its lease to expire
    assert ("PUT", "/api/v1/queues/me/tasks") in seen, seen
    assert seen.count(("POST", "/api/v1/queues/me/tasks/next")) == 1, seen
