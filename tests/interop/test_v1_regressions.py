"""Incompatibilities with the labtasker 1.0.1 client that the interop job found (and that
were fixed in the server and our client, commit 089fc2d). Each test states what 1.0.1
expects, so that they stay fixed. Intentional differences are listed in
``docs/compatibility.md`` instead.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from interop_support import (
    Client,
    Project,
    interop_venv,
    parse_json_stream,
    skip_module_without_v1,
)

skip_module_without_v1()


@pytest.fixture(scope="module")
def v1_project(interop_server, tmp_path_factory) -> Project:
    project = Project.create(
        Client("v1", interop_venv() / "bin"),
        interop_server.url,
        tmp_path_factory.mktemp("regressions"),
        "regr",
    )
    project.create_queue_http()
    return project


def test_worker_fsm_error_is_recognised_by_v1(v1_project):
    """I1. ``POST /workers/{id}/status`` with an FSM-invalid transition (suspended ->
    suspended): the 1.0.1 client recognises FSM errors only by ``InvalidStateTransition`` in
    the 400 body and then raises ``LabtaskerRuntimeError("FSM invalid transition ...")``."""
    script = textwrap.dedent("""\
        import json, labtasker
        wid = labtasker.create_worker(worker_name="fsm")
        labtasker.report_worker_status(wid, "suspended")
        try:
            labtasker.report_worker_status(wid, "suspended")
            print("RESULT " + json.dumps("no error"))
        except Exception as exc:
            print("RESULT " + json.dumps(type(exc).__name__ + ": " + str(exc)[:300]))
        """)
    (v1_project.workdir / "fsm.py").write_text(script)
    out = v1_project.py("fsm.py")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result.startswith("LabtaskerRuntimeError: FSM invalid transition"), result


def test_task_timeout_is_whole_seconds(v1_project):
    """I2. 1.0.1's ``Task.task_timeout`` is ``Optional[int]``: one task showing ``90.5``
    made the 1.0.1 ``task ls`` of the whole queue exit 2 and its fetch fail. A fractional
    ``task_timeout`` is refused at submit (422, as the 1.0.1 server did); a fractional
    per-run ``eta_max`` is shown rounded up to whole seconds."""
    with v1_project.http() as c:
        refused = c.post(
            "/api/v1/queues/me/tasks", json={"args": {"frac": 1}, "task_timeout": 90.5}
        )
    assert refused.status_code == 422, refused.text
    task_id = v1_project.submit_http(args={"frac": 1}, task_timeout=90)
    try:
        with v1_project.http() as c:
            fetched = c.post(
                "/api/v1/queues/me/tasks/next",
                json={"required_fields": ["frac"], "eta_max": "90.5"},
            )
        assert fetched.json()["task"]["task_id"] == task_id
        assert fetched.json()["task"]["task_timeout"] == 91
        out = v1_project.lt(
            "task", "ls", "--no-pager", "--no-ansi", "--fmt", "jsonl", "-f", "{'args.frac': 1}"
        )
        [task] = parse_json_stream(out.stdout)
        assert (task["task_id"], task["status"], task["task_timeout"]) == (task_id, "running", 91)
    finally:
        with v1_project.http() as c:
            c.delete(f"/api/v1/queues/me/tasks/{task_id}")


def test_v1_gets_no_unknown_fields(v1_project):
    """I3. The new fields (``run_id`` on tasks, ``running_task_ids`` on workers,
    ``next_cursor`` on searches) made the 1.0.1 client print ``UserWarning: Unknown fields
    provided to Task: run_id; ... version mismatch`` for every listing, fetch and loop
    iteration. 1.0.x clients (``client_version`` < 1.1 in the body) no longer get them;
    newer clients still do."""
    v1_project.submit_http(args={"warn": 1})
    with v1_project.http() as c:
        assert c.post("/api/v1/queues/me/workers", json={"worker_name": "warn"}).status_code == 201
        for version, has_run_id in ((None, True), ("1.1.0", True), ("1.0.1", False)):
            body = {"extra_filter": {"args.warn": 1}}
            if version:
                body["client_version"] = version
            [task] = c.post("/api/v1/queues/me/tasks/search", json=body).json()["content"]
            assert ("run_id" in task) is has_run_id, (version, task)
    tasks = v1_project.lt("task", "ls", "--no-pager", "-q")
    workers = v1_project.lt("worker", "ls", "--no-pager", "-q")
    loop = v1_project.lt("loop", "--", "python", "-c", "pass", "%(warn)")
    for out in (tasks, workers, loop):
        assert "Unknown fields" not in out.stderr, out.describe()
    [task] = v1_project.tasks({"args.warn": 1})
    assert task["status"] == "success"
