"""The scripted 1.x workflow, run by the labtasker 1.0.1 client and by ours.

Every test is one step of the workflow, run by the client under test as a child process in
a project directory whose ``./.labtasker/client.toml`` is written the 1.0.1 way; each step
asserts its outcome through the client's output *and* directly over HTTP. The steps of one
client share one queue (made by ``queue create-from-config``) but use their own argument
names, so that a failing step does not cascade ("no more, no less" keeps the loops apart).
"""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import threading

import pytest
from interop_support import (
    EVENTS_MISSING,
    UUID_RE,
    Project,
    parse_json_stream,
    skip_module_without_v1,
    wait_for,
)

skip_module_without_v1()

LS = ("task", "ls", "--no-pager", "--no-ansi", "--fmt", "jsonl")


@pytest.fixture(scope="module")
def project(client, interop_server, tmp_path_factory) -> Project:
    return Project.create(
        client, interop_server.url, tmp_path_factory.mktemp(f"wf-{client.name}"), "wf"
    )


_CREATE_STEP_RAN: set[str] = set()  # projects whose create-from-config step was attempted


@pytest.fixture
def queue(project) -> dict:
    """The project's queue; fails clearly when the create-from-config step did not make it
    (made over HTTP when that step was deselected, e.g. ``-k event``)."""
    if project.queue_name not in _CREATE_STEP_RAN and project.queue() is None:
        project.create_queue_http()
    return project.require_queue()


def submit(project: Project, *args: str) -> str:
    return project.lt("task", "submit", *args).uuid()


def ls(project: Project, *args: str) -> list[dict]:
    return parse_json_stream(project.lt(*LS, *args).stdout)


# ---------------------------------------------------------------------------- queue
def test_queue_create_from_config(project):
    _CREATE_STEP_RAN.add(project.queue_name)
    assert project.queue() is None
    out = project.lt("queue", "create-from-config")
    queue = project.require_queue()
    assert queue["queue_name"] == project.queue_name
    assert out.uuid() == queue["queue_id"]
    again = project.lt("queue", "create-from-config", check=False)
    assert again.returncode != 0, "a second create must fail (409)\n" + again.describe()
    assert "already exists" in (again.stdout + again.stderr).lower(), again.describe()


def test_queue_get(project, queue):
    out = project.lt("queue", "get")
    assert queue["queue_id"] in out.stdout and project.queue_name in out.stdout, out.describe()
    quiet = project.lt("queue", "get", "-q")
    assert quiet.stdout.strip() == queue["queue_id"], quiet.describe()


def test_queue_update_metadata(project, queue):
    project.lt("queue", "update", "--metadata", "{'owner': 'wf', 'n': 1}")
    assert project.require_queue()["metadata"] == {"owner": "wf", "n": 1}


def test_labtasker_root_env_selects_the_config(project, queue, tmp_path):
    """``LABTASKER_ROOT`` points at the client root from any working directory."""
    out = project.lt(
        "queue",
        "get",
        "-q",
        cwd=tmp_path,
        env={"LABTASKER_ROOT": str(project.workdir / ".labtasker")},
    )
    assert out.stdout.strip() == queue["queue_id"], out.describe()


# ---------------------------------------------------------------------------- tasks
def test_task_submit_with_args_option(project, queue):
    task_id = submit(
        project,
        "--task-name",
        "wf-args",
        "--args",
        "{'wf_a': 1, 'wf_b': {'c': 2}, 'wf_s': 'x y'}",
        "--metadata",
        "{'tag': 'wf', 'n': 1}",
        "--priority",
        "15",
    )
    task = project.task(task_id)
    assert task["status"] == "pending"
    assert task["task_name"] == "wf-args"
    assert task["args"] == {"wf_a": 1, "wf_b": {"c": 2}, "wf_s": "x y"}
    assert task["metadata"] == {"tag": "wf", "n": 1}
    assert task["priority"] == 15
    assert task["max_retries"] == 3 and task["retries"] == 0
    assert task["heartbeat_timeout"] == 60  # the CLI's default, as in 1.0.1


def test_task_submit_positional_args(project, queue):
    task_id = submit(
        project,
        "--task-name",
        "wf-pos",
        "--",
        "--wf_p.b=1",
        "--wf_p.c",
        "0.5",
        "--wf-q",
        "hello",
        "--wf_l=[1, 2]",
    )
    task = project.task(task_id)
    assert task["args"] == {"wf_p": {"b": 1, "c": 0.5}, "wf_q": "hello", "wf_l": [1, 2]}
    assert task["task_name"] == "wf-pos"


def test_task_ls_python_filter(project, queue):
    found = ls(project, "-f", "args.wf_p.b == 1 and args.wf_p.c < 1")
    assert [t["task_name"] for t in found] == ["wf-pos"]
    assert found[0]["args"]["wf_q"] == "hello"
    both = ls(
        project, "-f", "task_name in ['wf-args', 'wf-pos'] and created_at > date('1 hour ago')"
    )
    assert {t["task_name"] for t in both} == {"wf-args", "wf-pos"}
    assert ls(project, "-f", "regex(task_name, '^wf-nothing')") == []


def test_task_ls_dict_filter(project, queue):
    found = ls(project, "-f", "{'args.wf_a': 1, 'metadata.tag': 'wf'}")
    assert [t["task_name"] for t in found] == ["wf-args"]
    ops = ls(project, "-f", "{'args.wf_b.c': {'$gte': 2}, 'task_name': {'$in': ['wf-args']}}")
    assert [t["task_name"] for t in ops] == ["wf-args"]
    by_status = ls(project, "-s", "pending", "--task-name", "wf-pos")
    assert len(by_status) == 1
    ids = project.lt("task", "ls", "--no-pager", "-q", "-f", "{'args.wf_a': 1}")
    assert ids.stdout.split() == [found[0]["task_id"]], ids.describe()


def test_task_update(project, queue):
    [task] = project.tasks(task_name="wf-args")
    # "n": answer 1.0.1's "View result?" question (ours does not ask)
    project.lt(
        "task",
        "update",
        "--task-id",
        task["task_id"],
        "-u",
        "args.wf_b.c=5",
        "-u",
        "priority=20",
        "-u",
        "metadata={'tag': 'new'}",
        input="n\n",
    )
    after = project.task(task["task_id"])
    assert after["args"] == {"wf_a": 1, "wf_b": {"c": 5}, "wf_s": "x y"}  # patched one leaf
    assert after["priority"] == 20
    assert after["metadata"] == {"tag": "new"}  # top-level field replaced
    assert after["status"] == "pending"
    # select by name, positional form
    project.lt("task", "update", "--task-name", "wf-pos", "max_retries=5", input="n\n")
    [pos] = project.tasks(task_name="wf-pos")
    assert pos["max_retries"] == 5


def test_task_update_reset_pending_and_editor(project, queue, tmp_path):
    task_id = project.submit_http(args={"wf_rp": 1}, task_name="wf-rp")
    with project.http() as c:  # claim it: the task is running, held by nobody
        claimed = c.post("/api/v1/queues/me/tasks/next", json={"required_fields": ["wf_rp"]})
    assert claimed.json()["task"]["task_id"] == task_id
    project.lt(
        "task",
        "update",
        "--task-id",
        task_id,
        "--reset-pending",
        "-u",
        "task_name=wf-rp2",
        input="n\n",
    )
    task = project.task(task_id)
    assert (task["status"], task["task_name"], task["retries"], task["worker_id"]) == (
        "pending",
        "wf-rp2",
        0,
        None,
    )
    # no updates given: the tasks open as YAML in $EDITOR (here a script editing the file)
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/priority: 10\\b/priority: 7/' \"$1\"\n")
    editor.chmod(0o755)
    project.lt(
        "task",
        "update",
        "--task-id",
        task_id,
        "--editor",
        str(editor),
        input="n\n",
        env={"EDITOR": str(editor), "VISUAL": str(editor)},
    )
    assert project.task(task_id)["priority"] == 7


def test_task_delete(project, queue):
    doomed = project.submit_http(args={"wf_doomed": 1})
    out = project.lt("task", "delete", "-y", doomed)
    assert f"Task {doomed} deleted." in out.stdout, out.describe()
    assert project.task(doomed) is None
    missing = project.lt("task", "delete", "-y", doomed, check=False)
    assert missing.returncode != 0 and "not found" in (missing.stdout + missing.stderr).lower()


# ---------------------------------------------------------------------------- loops
JOB_PY = textwrap.dedent("""\
    import json, os, sys
    with open("job-calls.jsonl", "a") as f:
        f.write(json.dumps({"argv": sys.argv[1:], "task_id": os.environ["LABTASKER_TASK_ID"],
                            "log_dir": os.environ["LABTASKER_LOG_DIR"],
                            "worker_id": os.environ["LABTASKER_WORKER_ID"]}) + "\\n")
    """)


def test_loop_argv_mode(project, queue):
    (project.workdir / "job.py").write_text(JOB_PY)
    # (submitted over HTTP: the submit forms are tested above, and every CLI call costs ~2 s)
    ids = [project.submit_http(args={"lx": i, "ly": {"z": "a b" if i else "%s"}}) for i in range(3)]
    extra = project.submit_http(args={"lx": 9, "ly": {"z": "q"}, "lextra": 1})  # "no more"
    less = project.submit_http(args={"lx": 8})  # "no less": neither is run
    project.lt("loop", "--", "python", "job.py", "--x", "%(lx)", "--z=%(ly.z)", timeout=120)
    calls = [
        json.loads(line) for line in (project.workdir / "job-calls.jsonl").read_text().splitlines()
    ]
    by_task = {c["task_id"]: c["argv"] for c in calls}
    assert set(by_task) == set(ids)
    assert by_task[ids[0]] == ["--x", "0", "--z=%s"]
    assert by_task[ids[1]] == ["--x", "1", "--z=a b"]  # argv mode: one argument, no quoting
    for task_id in ids:
        task = project.task(task_id)
        assert task["status"] == "success", task
        assert task["worker_id"] is None
    assert project.task(extra)["status"] == "pending"
    assert project.task(less)["status"] == "pending"
    assert len({c["worker_id"] for c in calls}) == 1
    assert all(str(project.workdir / ".labtasker" / "logs") in c["log_dir"] for c in calls)


def test_loop_shell_mode(project, queue):
    ids = [project.submit_http(args={"sx": v}) for v in ("hello world", "it's", "$HOME;x")]
    project.lt(
        "loop", "-c", "echo %(sx) >> shell-out.txt && echo done-%(sx) >> shell-out.txt", timeout=120
    )
    lines = (project.workdir / "shell-out.txt").read_text().splitlines()
    # shell mode quotes each value: spaces, quotes and $ reach the command verbatim
    assert sorted(lines) == sorted(
        ["hello world", "it's", "$HOME;x", "done-hello world", "done-it's", "done-$HOME;x"]
    )
    assert [project.task(t)["status"] for t in ids] == ["success"] * 3


def test_failing_job_is_retried_then_failed(project, queue):
    task_id = project.submit_http(args={"fcode": 3}, max_retries=2)
    project.lt(
        "loop",
        "--",
        "python",
        "-c",
        "import sys; sys.exit(int(sys.argv[1]))",
        "%(fcode)",
        timeout=120,
    )
    task = project.task(task_id)
    assert task["status"] == "failed", task
    assert task["retries"] == 2
    assert task["worker_id"] is None
    summary = json.dumps(task["summary"])
    assert "exit code" in summary and "3" in summary, task["summary"]
    # The blame policy: a task that fails again on the same worker counts once for that
    # worker (1.0.1 charged every run), so the loop's worker has 1 charge and is active.
    assert any(w["retries"] == 1 and w["status"] == "active" for w in project.workers())


def test_failing_job_crashes_worker(project, queue):
    """A worker whose jobs keep failing is refused further tasks; the loop stops: exit 0 with
    1.0.1, exit 1 with a one-line reason with ours (docs/compatibility.md: a crashed worker
    is not "all done")."""
    # alone (no other worker's success confirms the machine is at fault), a worker is
    # crashed after twice its max_retries: 4 tasks failed in a row (README, blame policy)
    ids = [project.submit_http(args={"ccode": i}, max_retries=5) for i in range(4)]
    worker_id = project.lt(
        "worker", "create", "--max-retries", "2", "--worker-name", "wf-crashy"
    ).uuid()
    out = project.lt(
        "loop",
        "--worker-id",
        worker_id,
        "--",
        "python",
        "-c",
        "import sys; sys.exit(1)",
        "%(ccode)",
        timeout=120,
        check=False,
    )
    if project.client.is_v1:
        assert out.returncode == 0, out.describe()
    else:
        assert out.returncode == 1 and f"worker report {worker_id} active" in out.stderr, (
            out.describe()
        )
    [worker] = [w for w in project.workers() if w["worker_id"] == worker_id]
    assert worker["status"] == "crashed" and worker["retries"] == 4
    tasks = [project.task(t) for t in ids]
    assert sum(t["retries"] for t in tasks) == 4
    assert all(t["status"] == "pending" for t in tasks)


# ---------------------------------------------------------------------------- workers
def test_worker_ls(project, queue):
    listed = parse_json_stream(
        project.lt("worker", "ls", "--no-pager", "--no-ansi", "--fmt", "jsonl").stdout
    )
    expected = {w["worker_id"]: w for w in project.workers()}
    assert len(expected) >= 3  # one per loop above
    assert {w["worker_id"] for w in listed} == set(expected)
    for w in listed:
        assert w["status"] == expected[w["worker_id"]]["status"]
    named = parse_json_stream(
        project.lt(
            "worker",
            "ls",
            "--no-pager",
            "--no-ansi",
            "--fmt",
            "jsonl",
            "--worker-name",
            "wf-crashy",
        ).stdout
    )
    assert [w["worker_name"] for w in named] == ["wf-crashy"]


def test_worker_report(project, queue):
    worker_id = project.lt("worker", "create", "--worker-name", "wf-report").uuid()

    def status() -> str:
        return {w["worker_id"]: w for w in project.workers()}[worker_id]["status"]

    out = project.lt("worker", "report", worker_id, "suspended")
    assert f"Worker {worker_id} status updated to suspended." in out.stdout, out.describe()
    assert status() == "suspended"
    # a suspended worker gets no task: the loop ends at once without running anything
    # (exit 0 with 1.0.1; exit 1 with ours, see test_failing_job_crashes_worker)
    task_id = project.submit_http(args={"wr": 1})
    out = project.lt(
        "loop", "--worker-id", worker_id, "--", "python", "-c", "pass", "%(wr)", check=False
    )
    assert out.returncode == (0 if project.client.is_v1 else 1), out.describe()
    assert project.task(task_id)["status"] == "pending"
    project.lt("worker", "report", worker_id, "active")
    assert status() == "active"
    out = project.lt("worker", "delete", "-y", worker_id)
    assert f"Worker {worker_id} deleted." in out.stdout, out.describe()
    assert worker_id not in {w["worker_id"] for w in project.workers()}
    crashed = [w for w in project.workers() if w["worker_name"] == "wf-crashy"]
    if (
        crashed and crashed[0]["status"] == "crashed"
    ):  # re-activating a crashed worker resets its failure count
        project.lt("worker", "report", crashed[0]["worker_id"], "active")
        again = {w["worker_id"]: w for w in project.workers()}[crashed[0]["worker_id"]]
        assert again["status"] == "active" and again["retries"] == 0


# ---------------------------------------------------------------------------- events
def test_event_listen_compact(project, queue):
    if not project.events_supported():
        pytest.skip(EVENTS_MISSING)
    listener = project.client.popen(
        [str(project.client.bindir / "labtasker"), "event", "listen", "--compact"],
        cwd=project.workdir,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(listener.stdout.readline, "")), daemon=True
    )
    reader.start()
    try:
        wait_for(lambda: any("Connected" in x for x in lines), 30, what="listener connection")
        task_id = submit(project, "--", "--ev", "1")
        project.lt("loop", "--", "python", "-c", "pass", "%(ev)")

        def mine() -> list[str]:
            return [" ".join(x.split()) for x in list(lines) if task_id[:8] in x]

        wanted = ("created -> pending", "pending -> running", "running -> success")
        wait_for(
            lambda: all(any(w in m for m in mine()) for w in wanted),
            30,
            what=f"transitions {wanted} of task {task_id} in {lines}",
        )
    finally:
        listener.send_signal(signal.SIGINT)
        try:
            listener.wait(10)
        except subprocess.TimeoutExpired:
            listener.kill()
            listener.wait(10)


# ---------------------------------------------------------------------------- Python API
API_SCRIPT = textwrap.dedent("""\
    import json
    import labtasker
    from labtasker import Required

    submitted = [labtasker.submit_task(task_name=f"api-{i}",
                                       args={"api_lr": i / 10, "api_model": {"depth": i}},
                                       metadata={"api": True}).task_id
                 for i in range(3)]
    seen = []

    def run():
        @labtasker.loop(create_worker_kwargs={"worker_name": "api-worker"})
        def job(api_lr=Required(), depth=Required(alias="api_model.depth")):
            info = labtasker.task_info()
            seen.append({"task_id": info.task_id, "lr": api_lr, "depth": depth,
                         "name": info.task_name})
            if depth == 2:
                labtasker.finish("success", summary={"acc": 0.5})

        job()

    run()
    listed = labtasker.ls_tasks(extra_filter="metadata.api == True", limit=10)
    by_dict = labtasker.ls_tasks(extra_filter={"args.api_model.depth": {"$gte": 1}})
    print("RESULT " + json.dumps({
        "submitted": submitted,
        "seen": seen,
        "listed": {t.task_id: [t.status, t.summary] for t in listed.content},
        "by_dict": sorted(t.task_id for t in by_dict.content),
    }))
    """)


def test_python_api_loop_required_submit_ls(project, queue):
    (project.workdir / "api_job.py").write_text(API_SCRIPT)
    out = project.py("api_job.py", timeout=120)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    submitted = result["submitted"]
    assert all(UUID_RE.fullmatch(t) for t in submitted)
    seen = {s["task_id"]: s for s in result["seen"]}
    assert set(seen) == set(submitted)
    for i, task_id in enumerate(submitted):
        assert seen[task_id] == {"task_id": task_id, "lr": i / 10, "depth": i, "name": f"api-{i}"}
        assert result["listed"][task_id][0] == "success"
        assert project.task(task_id)["status"] == "success"
    assert result["listed"][submitted[2]][1] == {"acc": 0.5}
    assert result["by_dict"] == sorted(submitted[1:])
    assert any(w["worker_name"] == "api-worker" for w in project.workers())


CONNECT_EVENTS_SCRIPT = textwrap.dedent("""\
    import json
    import time
    import labtasker

    listener = labtasker.connect_events(timeout=10)
    task_id = labtasker.submit_task(args={"ce": 1}).task_id
    transitions = []
    deadline = time.monotonic() + 30
    while not transitions and time.monotonic() < deadline:
        event = listener.get_event(timeout=1)  # None: timeout or a keep-alive ping
        if event is not None and getattr(event.event, "entity_id", None) == task_id:
            transitions.append([event.event.old_state, event.event.new_state])
    listener.stop()
    print("RESULT " + json.dumps(transitions))
    """)


def test_python_api_connect_events(project, queue):
    if not project.events_supported():
        pytest.skip(EVENTS_MISSING)
    (project.workdir / "ce_job.py").write_text(CONNECT_EVENTS_SCRIPT)
    out = project.py("ce_job.py", timeout=60)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    assert json.loads(line[len("RESULT ") :]) == [["created", "pending"]]


# ---------------------------------------------------------------------------- cleanup
def test_queue_delete(project, queue):
    out = project.lt("queue", "delete", "-y", "--cascade")
    assert "Queue deleted." in out.stdout, out.describe()
    assert project.queue() is None
