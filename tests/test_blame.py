"""The blame policy (who a failed run counts against) and the run history, on a real server:
directly over HTTP, and with real loops on a grid where a few configurations always fail or
one node is broken."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from helpers import API, get_task, submit, wait_for

LABTASKER = str(Path(sys.executable).parent / "labtasker")


def _worker(http, **fields) -> str:
    return http.post(f"{API}/workers", json=fields).json()["worker_id"]


def _worker_row(http, wid) -> dict:
    return http.get(f"{API}/workers/{wid}").json()


def _claim(http, tid, wid) -> str:
    """Claim ``tid`` (the only pending task of its shape) for ``wid``; its run id."""
    key = list(get_task(http, tid)["args"])
    task = http.post(f"{API}/tasks/next", json={"worker_id": wid, "required_fields": key}).json()[
        "task"
    ]
    assert task is not None and task["task_id"] == tid, task
    return task["run_id"]


def _report(http, tid, run_id, status, **summary):
    return http.post(
        f"{API}/tasks/{tid}/status", json={"status": status, "run_id": run_id, "summary": summary}
    )


def _runs(http, tid) -> list[dict]:
    resp = http.get(f"{API}/tasks/{tid}/runs")
    assert resp.status_code == 200, resp.text
    return resp.json()["content"]


def test_blame_policy_and_run_history(queue_env):
    with queue_env.http() as http:
        a = _worker(http, worker_name="a", max_retries=2)
        b = _worker(http, worker_name="b", max_retries=2)
        # c succeeds: the queue's tasks can run, so a's streak below is confirmed (crashed at
        # max_retries; test_a_lone_* below show the unconfirmed case)
        c = _worker(http, worker_name="c")
        ok = submit(http, {"ok": 1})
        assert _report(http, ok, _claim(http, ok, c), "success").status_code == 200
        x = submit(http, {"x": 1}, max_retries=5)
        # a fails x: first failure of x, charged to a
        run1 = _claim(http, x, a)
        assert _report(http, x, run1, "failed", exit_code=1).status_code == 200
        assert _worker_row(http, a)["retries"] == 1
        # the same report again (a retry whose answer was lost): accepted, nothing changes
        assert _report(http, x, run1, "failed", exit_code=1).status_code == 200
        assert _worker_row(http, a)["retries"] == 1 and get_task(http, x)["retries"] == 1
        # a fails x again: charged once per task, not twice
        run2 = _claim(http, x, a)
        assert _report(http, x, run2, "failed").status_code == 200
        assert _worker_row(http, a)["retries"] == 1
        # a fails y (first failure of y): 2 = max_retries -> a crashed
        y = submit(http, {"y": 1}, max_retries=5)
        run_y = _claim(http, y, a)
        assert _report(http, y, run_y, "failed").status_code == 200
        assert _worker_row(http, a)["status"] == "crashed"
        # b fails x too: x is to blame; b is not charged, a's charge for x is taken back and
        # a, crashed only by charges of now-suspect tasks, is active again
        run3 = _claim(http, x, b)
        assert _report(http, x, run3, "failed").status_code == 200
        assert _worker_row(http, b)["retries"] == 0
        assert (_worker_row(http, a)["status"], _worker_row(http, a)["retries"]) == ("active", 1)
        # a success ends a's streak
        z = submit(http, {"z": 1})
        assert _report(http, z, _claim(http, z, a), "success").status_code == 200
        assert _worker_row(http, a)["retries"] == 0
        # the history keeps every run's outcome, newest first
        runs = _runs(http, x)
        assert [r["status"] for r in runs] == ["failed", "failed", "failed"]
        assert [r["run_id"] for r in runs] == [run3, run2, run1]
        assert [r["worker_id"] for r in runs] == [b, a, a]
        assert [r["charged"] for r in runs] == [False, False, False]
        assert runs[2]["summary"] == {"exit_code": 1} and runs[2]["ended"] >= runs[2]["started"]
        assert _runs(http, z)[0]["status"] == "success"
        missing = http.get(f"{API}/tasks/nope/runs")
        assert missing.status_code == 404 and missing.json()["code"] == "task_not_found"
        # a running run shows as running; a requeue by an update ends it as "requeued"
        w = submit(http, {"w": 1})
        run_w = _claim(http, w, b)
        assert _runs(http, w)[0]["status"] == "running" and _runs(http, w)[0]["ended"] is None
        http.put(
            f"{API}/tasks",
            json=[{"task_id": w, "status": "pending", "run_id": run_w}],
            params={"reset_pending": "false"},
        )
        assert _runs(http, w)[0]["status"] == "requeued"


def _loop(queue_env, cmd, extra_env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [LABTASKER, "loop", "--idle-timeout", "0", "-c", cmd],
        env={**queue_env.env(), **(extra_env or {})},
        cwd=queue_env.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def _grid(http, bad_priority: int | None) -> list[str]:
    """200 tasks; 5 of them (lr 1000) always fail: priority ``bad_priority``, or spread in
    FIFO order when ``None``."""
    tasks = []
    for i in range(200):
        bad = i % 40 == 7
        fields = {"args": {"lr": 1000 if bad else i}, "max_retries": 3}
        if bad and bad_priority is not None:
            fields["priority"] = bad_priority
        tasks.append(fields)
    resp = http.post(f"{API}/tasks/batch", json={"tasks": tasks})
    assert resp.status_code == 201, resp.text
    return resp.json()["task_ids"]


def _statuses(http) -> tuple[dict, list[dict]]:
    tasks = http.post(f"{API}/tasks/search", json={"limit": 1000}).json()["content"]
    workers = http.post(f"{API}/workers/search", json={}).json()["content"]
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    return counts, workers


def test_bad_configurations_do_not_take_workers_out_of_service(queue_env):
    """4 loops, 200 tasks of which 5 always fail, first as the top priority, then in FIFO
    order: 195 succeed, 5 fail, no worker is crashed."""
    cmd = "[ %(lr) -lt 1000 ]"  # exit 1 for the bad configurations
    with queue_env.http() as http:
        for bad_priority in (20, None):
            _grid(http, bad_priority)
            loops = [_loop(queue_env, cmd) for _ in range(4)]
            for p in loops:
                p.communicate(timeout=240)
            counts, workers = _statuses(http)
            assert counts == {"success": 195, "failed": 5}, counts
            assert [w["status"] for w in workers if w["status"] != "active"] == [], workers
            for t in http.post(
                f"{API}/tasks/search", json={"status": "failed", "limit": 10}
            ).json()["content"]:
                assert t["retries"] == 3 and t["args"]["lr"] == 1000
            for t in http.post(f"{API}/tasks/search", json={"limit": 1000}).json()["content"]:
                assert http.delete(f"{API}/tasks/{t['task_id']}").status_code == 204


def test_broken_node_is_crashed_while_healthy_nodes_finish_the_grid(queue_env):
    """One loop's every job fails (its node has a "broken driver"): that worker is crashed
    after its max_retries (3) failures once the healthy loops' successes confirm it, while 3
    healthy loops run the whole grid."""
    cmd = '[ -z "$BROKEN_DRIVER" ] || exit 1; sleep 0.2'
    with queue_env.http() as http:
        ids = [submit(http, {"i": i}) for i in range(60)]
        healthy = [_loop(queue_env, cmd) for _ in range(3)]
        broken = _loop(queue_env, cmd, {"BROKEN_DRIVER": "1"})
        _, err = broken.communicate(timeout=120)
        assert broken.returncode == 1 and "crashed" in err, err
        for p in healthy:
            _, herr = p.communicate(timeout=240)
            assert p.returncode == 0, herr
        counts, workers = _statuses(http)
        assert counts == {"success": 60}, counts
        by_status = sorted((w["status"], w["retries"]) for w in workers)
        # crashed at 3 once a healthy job has succeeded; its instant failures may get further
        # before the first success (then it is crashed at that success, at most at 6)
        assert by_status[:3] == [("active", 0)] * 3, by_status
        assert by_status[3][0] == "crashed" and 3 <= by_status[3][1] <= 6, by_status
        crashed = next(w["worker_id"] for w in workers if w["status"] == "crashed")
        failed_runs = [r for tid in ids for r in _runs(http, tid) if r["status"] == "failed"]
        assert {r["worker_id"] for r in failed_runs} == {crashed}
        # one charge per task (a task that failed there before, or a run that ended after the
        # crash, is not charged): the charged runs are the worker's count
        assert len([r for r in failed_runs if r["charged"]]) == by_status[3][1]


def _lone_loop_grid(http, n: int, bad: int) -> list[str]:
    """``n`` tasks of which the first ``bad`` (a cluster, fetched first: priority 10) always
    fail."""
    tasks = [
        {"args": {"lr": 1000 if i < bad else i}, "max_retries": 3, "priority": 10 if i < bad else 0}
        for i in range(n)
    ]
    resp = http.post(f"{API}/tasks/batch", json={"tasks": tasks})
    assert resp.status_code == 201, resp.text
    return resp.json()["task_ids"]


def test_a_lone_loop_is_not_crashed_by_a_cluster_of_bad_configurations(queue_env):
    """One loop (worker max_retries 3) meets 3 bad configurations first: with no other
    worker to confirm that the machine is at fault it goes on; the 6 good tasks succeed and
    the 3 bad ones fail with their own retries spent."""
    with queue_env.http() as http:
        _lone_loop_grid(http, 9, 3)
        loop = _loop(queue_env, "[ %(lr) -lt 1000 ]")
        _, err = loop.communicate(timeout=240)
        assert loop.returncode == 0, err
        counts, workers = _statuses(http)
        assert counts == {"success": 6, "failed": 3}, counts
        assert [w["status"] for w in workers] == ["active"], workers


def test_a_lone_loop_runs_many_bad_configurations_to_failed(queue_env):
    """One loop, 12 tasks of which 6 (interleaved) always fail: after the good ones are done
    only the 6 bad ones are left and fail back to back; each failed here before the loop's
    later successes, so none is charged again: 6 success, 6 failed, worker active, exit 0."""
    with queue_env.http() as http:
        tasks = [{"args": {"lr": 1000 if i % 2 else i}, "max_retries": 3} for i in range(12)]
        assert http.post(f"{API}/tasks/batch", json={"tasks": tasks}).status_code == 201
        loop = _loop(queue_env, "[ %(lr) -lt 1000 ]")
        _, err = loop.communicate(timeout=240)
        assert loop.returncode == 0, err
        counts, workers = _statuses(http)
        assert counts == {"success": 6, "failed": 6}, counts
        assert [w["status"] for w in workers] == ["active"], workers


def test_a_lone_broken_loop_stops_after_twice_its_max_retries(queue_env):
    """One loop whose every job fails (a broken node, nobody else to compare with): its worker
    (max_retries 3) is crashed after 6 tasks failed in a row; those 6 have spent one retry
    each, the other 14 were not touched, none is failed."""
    with queue_env.http() as http:
        _lone_loop_grid(http, 20, 0)
        loop = _loop(queue_env, "exit 1 # %(lr)")
        _, err = loop.communicate(timeout=240)
        assert loop.returncode == 1 and "crashed" in err, err
        counts, workers = _statuses(http)
        assert counts == {"pending": 20}, counts
        assert [(w["status"], w["retries"]) for w in workers] == [("crashed", 6)], workers
        tasks = http.post(f"{API}/tasks/search", json={"limit": 100}).json()["content"]
        assert sorted(t["retries"] for t in tasks) == [0] * 14 + [1] * 6


def test_a_crashed_loop_comes_back_when_the_blame_moves_to_its_tasks(queue_env):
    """A loop's worker is crashed by two bad configurations while another worker succeeds;
    the loop waits instead of exiting, and when one of those tasks fails on the other worker
    too (the task is to blame, the charge is taken back) the loop goes on and runs the rest."""
    with queue_env.http() as http:
        wid = _worker(http, worker_name="a", max_retries=2)
        other = _worker(http, worker_name="elsewhere")
        ok = submit(http, {"ok": 1})
        assert _report(http, ok, _claim(http, ok, other), "success").status_code == 200
        bad = [submit(http, {"v": 1000 + i}, priority=10, max_retries=3) for i in range(2)]
        good = [submit(http, {"v": i}) for i in range(4)]
        loop = subprocess.Popen(
            [
                LABTASKER,
                "loop",
                "--idle-timeout",
                "0",
                "--worker-id",
                wid,
                "-c",
                "[ %(v) -lt 1000 ]",
            ],
            env=queue_env.env(),
            cwd=queue_env.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: _worker_row(http, wid)["status"] == "crashed", timeout=60)
            time.sleep(3)  # the loop has seen the refusal and waits
            assert loop.poll() is None, loop.communicate()[1]
            # the other worker fails one of the bad tasks: the blame moves to it
            task = http.post(
                f"{API}/tasks/next", json={"worker_id": other, "extra_filter": {"task_id": bad[0]}}
            ).json()["task"]
            assert _report(http, bad[0], task["run_id"], "failed").status_code == 200
            assert _worker_row(http, wid)["status"] == "active"
            _, err = loop.communicate(timeout=120)
        finally:
            if loop.poll() is None:
                loop.kill()
        assert loop.returncode == 0, err
        assert "Waiting: if" in err and "active again" in err, err
        assert {get_task(http, t)["status"] for t in good} == {"success"}
        assert {_runs(http, t)[0]["worker_id"] for t in good} == {wid}
        assert {get_task(http, t)["status"] for t in bad} == {"failed"}


def test_a_restarted_loop_on_a_broken_node_is_crashed_each_time(queue_env):
    """A broken node whose loop is started again and again (by hand, cron, a job array): each
    new loop is a new worker on the same host. The failures of the loops before it are not
    evidence against the tasks: each loop is crashed after its own streak (exit 1), and no
    task is run to ``failed``. Before, the fourth loop took every earlier failure as "failed
    on another worker", ran 42 tasks to failed and exited 0."""
    with queue_env.http() as http:
        _lone_loop_grid(http, 20, 0)
        for _ in range(4):
            loop = _loop(queue_env, "exit 1 # %(lr)")
            _, err = loop.communicate(timeout=240)
            assert loop.returncode == 1 and "crashed" in err, err
        counts, workers = _statuses(http)
        assert counts == {"pending": 20}, counts
        assert sorted((w["status"], w["retries"]) for w in workers) == [("crashed", 6)] * 4


def test_blame_tells_a_predecessor_on_the_same_machine_from_a_worker_beside_it(queue_env):
    """Over HTTP, workers with ``metadata.host`` as ``labtasker loop`` creates them. A task
    that failed on an earlier worker of the same host that has started nothing since (a
    loop before a restart) charges the new worker; one that failed on a worker of the same
    host still at work beside it, or on another host, is the task's fault as before."""
    with queue_env.http() as http:
        a = _worker(http, worker_name="a", metadata={"host": "node1"})
        t1 = submit(http, {"t1": 1}, max_retries=9)
        assert _report(http, t1, _claim(http, t1, a), "failed").status_code == 200
        assert _worker_row(http, a)["retries"] == 1
        # b: the next loop on node1; a has started nothing since b was created
        b = _worker(http, worker_name="b", metadata={"host": "node1"})
        assert _report(http, t1, _claim(http, t1, b), "failed").status_code == 200
        assert (_worker_row(http, a)["retries"], _worker_row(http, b)["retries"]) == (1, 1)
        # c on another host: t1 is to blame; the charges of a and b are taken back
        c = _worker(http, worker_name="c", metadata={"host": "node2"})
        assert _report(http, t1, _claim(http, t1, c), "failed").status_code == 200
        assert [_worker_row(http, w)["retries"] for w in (a, b, c)] == [0, 0, 0]
        # d on node1 beside b, which starts a run after d was created: independent witnesses
        d = _worker(http, worker_name="d", metadata={"host": "node1"})
        t2 = submit(http, {"t2": 1}, max_retries=9)
        assert _report(http, t2, _claim(http, t2, b), "failed").status_code == 200
        assert _worker_row(http, b)["retries"] == 1
        assert _report(http, t2, _claim(http, t2, d), "failed").status_code == 200
        assert [_worker_row(http, w)["retries"] for w in (b, d)] == [0, 0]
        # another GPU of the same host is another machine
        g0 = _worker(http, worker_name="g0", metadata={"host": "node3", "gpus": [0]})
        t3 = submit(http, {"t3": 1}, max_retries=9)
        assert _report(http, t3, _claim(http, t3, g0), "failed").status_code == 200
        g1 = _worker(http, worker_name="g1", metadata={"host": "node3", "gpus": [1]})
        assert _report(http, t3, _claim(http, t3, g1), "failed").status_code == 200
        assert [_worker_row(http, w)["retries"] for w in (g0, g1)] == [0, 0]
