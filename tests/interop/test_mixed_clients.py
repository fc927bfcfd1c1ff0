"""A queue shared by 1.0.1 and our clients (a lab migrating worker by worker): tasks
submitted by either client are run by the other one's ``labtasker loop``, with one config."""

from __future__ import annotations

import json
import textwrap

from interop_support import (
    DEMOS,
    Client,
    Project,
    interop_venv,
    our_bindir,
    skip_module_without_v1,
)

skip_module_without_v1()

JOB = textwrap.dedent("""\
    import json, os, sys
    with open("mixed-calls.jsonl", "a") as f:
        f.write(json.dumps({"task_id": os.environ["LABTASKER_TASK_ID"], "mx": sys.argv[1],
                            "python": sys.executable}) + "\\n")
    """)


def test_tasks_of_either_client_run_by_the_other(interop_server, tmp_path):
    v1, ours = Client("v1", interop_venv() / "bin"), Client("ours", our_bindir())
    project = Project.create(v1, interop_server.url, tmp_path, "mixed")
    project.create_queue_http()
    by_ours = Project(ours, project.url, project.workdir, project.queue_name, project.password)
    (tmp_path / "job.py").write_text(JOB)

    from_v1 = [
        project.lt("task", "submit", "--", "--mx=0").uuid(),
        project.submit_http(args={"mx": 2}),
    ]
    from_ours = [
        by_ours.lt("task", "submit", "--", "--mx=1").uuid(),
        project.submit_http(args={"mx": 3}),
    ]
    # the 1.0.1 loop takes the tasks with mx < 2 (one of each client), ours the rest
    project.lt("loop", "-f", "args.mx < 2", "--", "python", "job.py", "%(mx)")
    assert sorted(project.task(t)["status"] for t in from_v1 + from_ours) == [
        "pending",
        "pending",
        "success",
        "success",
    ]
    by_ours.lt("loop", "--", "python", "job.py", "%(mx)")

    calls = [json.loads(x) for x in (tmp_path / "mixed-calls.jsonl").read_text().splitlines()]
    ran_by = {c["task_id"]: c["python"] for c in calls}
    assert set(ran_by) == set(from_v1 + from_ours)
    v1_python = str(v1.bindir / "python")
    assert ran_by[from_v1[0]] == ran_by[from_ours[0]] == v1_python
    assert ran_by[from_v1[1]] == ran_by[from_ours[1]] == str(ours.bindir / "python")
    assert all(project.task(t)["status"] == "success" for t in ran_by)
    # both clients list all four tasks
    for p in (project, by_ours):
        ids = p.lt("task", "ls", "--no-pager", "-q", "-s", "success").stdout.split()
        assert sorted(ids) == sorted(ran_by)


def test_job_with_the_other_clients_finish(interop_server, tmp_path):
    """The loop of one client runs a job whose interpreter has the other client installed and
    calls ``labtasker.finish(summary=...)`` (CLI upgraded, job venv not yet -- or back)."""
    v1, ours = Client("v1", interop_venv() / "bin"), Client("ours", our_bindir())
    project = Project.create(v1, interop_server.url, tmp_path, "mixfin")
    project.create_queue_http()
    job = str(DEMOS / "bash_demo" / "job_main.py")
    for loop_client, job_client, lr in ((ours, v1, 0.1), (v1, ours, 0.2)):
        task_id = project.submit_http(args={"lr": lr, "seed": 1, "depth": 2})
        loop_client.labtasker(
            "loop",
            "--",
            str(job_client.bindir / "python"),
            job,
            "--lr",
            "%(lr)",
            "--seed",
            "%(seed)",
            "--depth",
            "%(depth)",
            cwd=tmp_path,
        )
        task = project.task(task_id)
        assert (task["status"], task["retries"]) == ("success", 0), (loop_client.name, task)
        assert task["summary"] == {"accuracy": round(1.0 - lr * 2 / 2, 6)}, task
