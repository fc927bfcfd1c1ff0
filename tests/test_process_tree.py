"""The loop owns its process tree: when a loop dies -- ``kill -9``, however -- no
process its jobs started survives, thanks to the per-loop job watchdog of
:mod:`labtasker.client.job`; a loop that ends normally leaves no watchdog behind. Real loop,
job and watchdog processes throughout (Linux: ``/proc``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support.http import get_task, submit
from support.wait import descendants, gone, proc_stat, wait_for

pytestmark = [
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="the job watchdog is Linux only"
    ),
    pytest.mark.client_side,  # the client's process tree: SQLite only (conftest)
]

LABTASKER = str(Path(sys.executable).parent / "labtasker")
API = "/api/v1/queues/me"
WATCHDOG_MARK = b"labtasker-job-watchdog"
GRACE = 1.0  # --grace-period of the loops below
SLACK = 2.5  # scheduling slack on a loaded 2-core machine


# ------------------------------------------------------------------------------ helpers
def is_watchdog(pid: int) -> bool:
    try:
        return WATCHDOG_MARK in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def is_sleep(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"sleep")
    except OSError:
        return False


def read_pids(path: Path) -> list[int]:
    """The pids a :data:`TREE` job wrote to ``path`` (shell, background sleep), or []."""
    try:
        return [int(x) for x in path.read_text().split()]
    except (OSError, ValueError):
        return []


def job_tree(pids_file: Path, timeout: float = 60.0) -> tuple[int, int, int]:
    """Wait until a :data:`TREE` job runs both sleeps; (shell, background, foreground)."""

    def ready():
        pids = read_pids(pids_file)
        if len(pids) < 2:
            return None
        shell, background = pids[:2]
        # only the foreground sleep: the ``mv`` that wrote the file may not have exited yet
        others = {p for p in descendants(shell) - {background} if is_sleep(p)}
        return (shell, background, min(others)) if len(others) == 1 else None

    return wait_for(ready, timeout=timeout, what="job tree started")


def kill_leftovers(pids_file: Path, known: set[int] = frozenset()) -> None:
    """Clean-up after a failed test: SIGKILL what is left of a job tree."""
    for pid in set(read_pids(pids_file)) | set(known):
        for p in {pid} | descendants(pid):
            if not gone(p):
                os.kill(p, signal.SIGKILL)


def start_loop(queue_env, *args) -> subprocess.Popen:
    # own session: killing the loop's process group below hits the loop only
    return subprocess.Popen(
        [LABTASKER, "loop", *args],
        env=queue_env.env(),
        cwd=queue_env.workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def kill_and_wait(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


# A shell job with a background and a foreground ``sleep 600`` (children of the shell, i.e.
# grandchildren of the loop); it writes "<shell pid>\n<background pid>\n" to {out}. The
# trailing ``echo`` keeps bash from exec-ing the foreground sleep.
TREE = (
    "echo $$ > {out}.tmp; sleep 600 & echo $! >> {out}.tmp; mv {out}.tmp {out}; "
    "sleep 600; echo unreachable"
)
STUBBORN = "trap '' TERM; " + TREE  # SIG_IGN is inherited: the whole tree ignores SIGTERM


# ------------------------------------------------------------------------------ labtasker loop
@pytest.mark.parametrize("how", ["kill9-loop", "kill9-loop-group"])
@pytest.mark.parametrize("job", [TREE, STUBBORN], ids=["plain", "ignores-term"])
def test_kill9_of_the_loop_leaves_no_job_process(queue_env, job, how):
    """``kill -9`` of ``labtasker loop`` (or of its whole process group, as a closing
    terminal would) while its shell job runs a background and a foreground ``sleep 600``:
    the whole job group -- the shell and both sleeps -- gets SIGTERM from the watchdog at once
    and SIGKILL after ``--grace-period`` when SIGTERM is ignored; then the watchdog exits
    too."""
    pids_file = queue_env.workdir / "pids"
    with queue_env.http() as http:
        tid = submit(http, {"x": 1})
        loop = start_loop(
            queue_env, "--grace-period", str(GRACE), "--executable", "/bin/bash",
            "-c", job.format(out=pids_file) + " # %(x)",
        )  # fmt: skip
        tree: set[int] = set()
        try:
            shell, background, foreground = job_tree(pids_file)
            tree = descendants(loop.pid)
            watchdogs = [p for p in tree if is_watchdog(p)]
            assert {shell, background, foreground} <= tree
            assert get_task(http, tid)["status"] == "running"
            if how == "kill9-loop":
                os.kill(loop.pid, signal.SIGKILL)
            else:
                os.killpg(loop.pid, signal.SIGKILL)
            killed = time.monotonic()
            loop.wait(timeout=10)
            wait_for(
                lambda: gone(shell),
                timeout=SLACK + (GRACE if job is STUBBORN else 0),
                what="the job's shell gone",
            )
            wait_for(
                lambda: gone(background) and gone(foreground),
                timeout=GRACE + SLACK,
                what="the job's grandchildren gone",
            )
            took = time.monotonic() - killed
            assert len(watchdogs) == 1, tree
            wait_for(lambda: gone(watchdogs[0]), timeout=SLACK, what="watchdog exited")
        finally:
            kill_and_wait(loop)
            kill_leftovers(pids_file, tree)
        assert all(gone(p) for p in tree), [p for p in tree if not gone(p)]
        if job is STUBBORN:
            assert took >= GRACE * 0.9, took  # SIGTERM was ignored: SIGKILL after the grace


def test_one_watchdog_per_loop_reaped_when_the_loop_ends(queue_env):
    """Three jobs of one loop share one watchdog (started with the first job); when the loop
    ends normally the watchdog is gone -- reaped by the loop, not left to PID 1."""
    with queue_env.http() as http:
        ids = [submit(http, {"s": 0.7}) for _ in range(3)]
        loop = start_loop(queue_env, "-c", "sleep %(s)")
        seen: set[int] = set()
        try:
            while loop.poll() is None:
                seen |= {p for p in descendants(loop.pid) if is_watchdog(p)}
                time.sleep(0.05)
            err = loop.stderr.read()
        finally:
            kill_and_wait(loop)
        assert loop.returncode == 0, err
        assert all(get_task(http, t)["status"] == "success" for t in ids)
    assert len(seen) == 1, seen
    (watchdog,) = seen
    wait_for(lambda: proc_stat(watchdog) is None, timeout=5, what="watchdog reaped")


# ------------------------------------------------------------------------------ JobProcess API
HOLDER = textwrap.dedent(
    """
    import os, signal, sys, time
    from labtasker.client.job import JobProcess, watchdog_pid

    out = sys.argv[1]
    # a first job starts the watchdog; the test kills it; the next job starts a new one
    assert JobProcess("true", env=dict(os.environ), echo=None).start().wait(30) == 0
    print(watchdog_pid(), flush=True)
    sys.stdin.readline()
    job = JobProcess({tree!r}.format(out=out), env=dict(os.environ), echo=None,
                     grace_period={grace!r}).start()
    print(watchdog_pid(), flush=True)
    time.sleep(600)
    """
)


def test_jobprocess_user_killed_and_watchdog_respawned(tmp_path):
    """A plain Python program running a ``JobProcess`` (e.g. ``labtasker.run_with_subprocess``
    in a ``@labtasker.loop`` job): its watchdog is killed between two jobs, the second job
    starts a new one, and ``kill -9`` of the program still takes the job's tree down."""
    pids_file = tmp_path / "pids"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER.format(tree=TREE, grace=GRACE))
    tree: set[int] = set()
    holder = subprocess.Popen(
        [sys.executable, str(script), str(pids_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first = int(holder.stdout.readline())
        wait_for(lambda: is_watchdog(first), timeout=5, what="first watchdog running")
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: gone(first), timeout=5)
        holder.stdin.write("go\n")
        holder.stdin.flush()
        second = int(holder.stdout.readline())
        assert second != first
        # /proc/<pid>/cmdline is filled in a moment after Popen returns (end of execve)
        wait_for(lambda: is_watchdog(second), timeout=5, what="second watchdog running")
        tree = set(job_tree(pids_file, timeout=30))
        holder.kill()
        holder.wait(timeout=10)
        wait_for(
            lambda: all(gone(p) for p in (*tree, second)),
            timeout=GRACE + SLACK,
            what="job tree and watchdog gone",
        )
    finally:
        kill_and_wait(holder)
        kill_leftovers(pids_file, tree)


# ------------------------------------------------------------------------------ decorator
DECORATED = textwrap.dedent(
    """
    import os, sys
    import labtasker
    from labtasker import Required

    out = sys.argv[1]

    @labtasker.loop(grace_period={grace!r})
    def job(x=Required()):
        labtasker.run_with_subprocess({stubborn!r}.format(out=out), shell_exec="/bin/bash")

    job()
    """
)


@pytest.mark.parametrize("trigger", ["cancel", "kill9"])
def test_decorator_grace_period_applies_to_job_subprocesses(queue_env, trigger):
    """``@labtasker.loop(grace_period=1)`` whose job runs a SIGTERM-ignoring tree with
    ``labtasker.run_with_subprocess``: when the task is cancelled the tree is SIGKILLed after
    1 s, not the default 10 s, and the loop goes on; after ``kill -9`` of the Python loop the
    watchdog does the same."""
    pids_file = queue_env.workdir / "pids"
    script = queue_env.workdir / "deco.py"
    script.write_text(DECORATED.format(grace=GRACE, stubborn=STUBBORN))
    tree: set[int] = set()
    with queue_env.http() as http:
        tid = submit(http, {"x": 1})
        proc = subprocess.Popen(
            [sys.executable, str(script), str(pids_file)],
            env=queue_env.env(),
            cwd=queue_env.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            pids = job_tree(pids_file)
            tree = descendants(proc.pid)
            t0 = time.monotonic()
            if trigger == "cancel":
                resp = http.post(f"{API}/tasks/{tid}/status", json={"status": "cancelled"})
                assert resp.status_code == 200, resp.text
                limit = 1.0 + GRACE + SLACK  # heartbeat interval of the test config + grace
            else:
                proc.kill()
                limit = GRACE + SLACK
            wait_for(lambda: all(gone(p) for p in pids), timeout=limit, what="tree gone")
            took = time.monotonic() - t0
            if trigger == "cancel":
                _, err = proc.communicate(timeout=30)
                assert proc.returncode == 0, err
                assert "no longer ours" in err, err
        finally:
            kill_and_wait(proc)
            kill_leftovers(pids_file, tree)
        assert GRACE * 0.9 <= took, took  # SIGTERM is ignored: only the SIGKILL ends it
        if trigger == "cancel":
            assert get_task(http, tid)["status"] == "cancelled"
