"""Unit tests of the job process wrapper and the heartbeat thread (no server needed)."""

from __future__ import annotations

import io
import os
import sys
import threading
import time

import pytest

from labtasker.client.heartbeat import Heartbeat
from labtasker.client.job import (
    JobProcess,
    default_grace_period,
    describe_exit,
    run_with_subprocess,
    shutdown_watchdog,
)
from labtasker.exceptions import (
    LabtaskerNetworkError,
    LabtaskerRuntimeError,
    LabtaskerTypeError,
    LabtaskerValueError,
    TaskNotOwned,
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ------------------------------------------------------------------------------ job
def test_output_tee_tail_and_stdin(tmp_path):
    echo = io.BytesIO()
    log = tmp_path / "run.log"
    code = (
        "import sys; print('in:', repr(sys.stdin.read())); "
        "print('\\x1b[31mred\\x1b[0m'); print('err', file=sys.stderr); "
        "sys.stdout.write('x' * 5000); sys.exit(7)"
    )
    job = JobProcess([sys.executable, "-c", code], env=dict(os.environ), log_path=log, echo=echo)
    assert job.start().wait(timeout=30) == 7
    text = log.read_text()
    assert "in: ''" in text and "red" in text and "\x1b[" not in text and "err" in text
    assert b"\x1b[31m" in echo.getvalue()  # the terminal copy keeps colours
    tail = job.output_tail()
    assert len(tail) == 2048 and tail.endswith("x" * 100)


def test_shell_mode_and_executable(tmp_path):
    echo = io.BytesIO()
    job = JobProcess(
        "echo $0 && echo $((2+3))", env=dict(os.environ), executable="/bin/bash", echo=echo
    )
    assert job.start().wait(timeout=30) == 0
    assert echo.getvalue().split() == [b"/bin/bash", b"5"]


def test_stop_kills_whole_group_with_grace(tmp_path):
    pidfile = tmp_path / "pids"
    # parent ignores SIGTERM; its child too: only SIGKILL after the grace period works
    script = f"trap '' TERM; (trap '' TERM; sleep 600) & echo $! > {pidfile}; wait"
    job = JobProcess(script, env=dict(os.environ), echo=None).start()
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    t0 = time.monotonic()
    code = job.stop(grace_seconds=0.5)
    assert code == -9 and describe_exit(code).startswith("killed by signal SIGKILL")
    assert 0.4 < time.monotonic() - t0 < 10
    time.sleep(0.2)
    assert not alive(grandchild)


def test_leftover_background_process_is_cleaned_up(tmp_path):
    pidfile = tmp_path / "bg"
    job = JobProcess(f"sleep 600 & echo $! > {pidfile}", env=dict(os.environ), echo=None)
    t0 = time.monotonic()
    assert job.start().wait(timeout=30) == 0
    assert time.monotonic() - t0 < 8  # the pipe held by `sleep` does not hang the runner
    assert not alive(int(pidfile.read_text()))


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for PID 1, not for us)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return alive(pid)  # no /proc
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for_file(path, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} not written"
        time.sleep(0.02)
    return path.read_text()


def test_grace_period_validated_defaulted_and_used_by_stop(tmp_path):
    with pytest.raises(LabtaskerValueError, match="grace_period"):
        JobProcess("true", env={}, grace_period=-1)
    with pytest.raises(LabtaskerValueError, match="grace_period"):
        JobProcess("true", env={}, grace_period=float("inf"))
    with pytest.raises(LabtaskerTypeError, match="grace_period"):
        JobProcess("true", env={}, grace_period="5")
    with pytest.raises(LabtaskerValueError):
        with default_grace_period(-2):
            pass
    assert JobProcess("true", env={}).grace_period == 10.0
    with default_grace_period(0.5):
        assert JobProcess("true", env={}).grace_period == 0.5
        assert JobProcess("true", env={}, grace_period=3).grace_period == 3.0
    assert JobProcess("true", env={}).grace_period == 10.0
    pidfile = tmp_path / "pid"
    job = JobProcess(
        f"trap '' TERM; sleep 600 & echo $! > {pidfile}; wait",
        env=dict(os.environ),
        echo=None,
        grace_period=0.5,
    ).start()
    try:
        grandchild = int(wait_for_file(pidfile))
        t0 = time.monotonic()
        assert job.stop() == -9  # no argument: the job's own grace period
        assert 0.4 < time.monotonic() - t0 < 8
        time.sleep(0.2)
        assert not running(grandchild)
    finally:
        job.stop(0)
        shutdown_watchdog()


def test_run_with_subprocess_stops_its_tree_when_interrupted(tmp_path):
    """A KeyboardInterrupt (Ctrl+C/SIGTERM of a ``@labtasker.loop``, or the task taken away)
    while ``run_with_subprocess`` waits stops the command's whole process group (SIGKILL
    after the grace period, here 0.5 s, as SIGTERM is ignored) before propagating."""
    import _thread

    pidfile = tmp_path / "pid"

    def interrupt_when_started():
        wait_for_file(pidfile)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_started, daemon=True).start()
    t0 = time.monotonic()
    try:
        with default_grace_period(0.5), pytest.raises(KeyboardInterrupt):
            run_with_subprocess(f"trap '' TERM; sleep 600 & echo $! > {pidfile}; wait")
        took = time.monotonic() - t0
        grandchild = int(pidfile.read_text())
        time.sleep(0.2)
        assert not running(grandchild)
        assert took < 8
    finally:
        shutdown_watchdog()


def test_launch_error():
    with pytest.raises(LabtaskerRuntimeError, match="Could not start job"):
        JobProcess(["/nonexistent/prog"], env=dict(os.environ), echo=None).start()


# ------------------------------------------------------------------------------ heartbeat
class FakeServer:
    """Stands in for the HTTP call only (the thread logic is under test)."""

    def __init__(self, script):
        self.script = list(script)  # items: None (ok) or an exception to raise
        self.calls: list[float] = []

    def __call__(self, task_id, worker_id, run_id):
        assert (task_id, worker_id, run_id) == ("t1", "w1", "r1")
        self.calls.append(time.monotonic())
        item = self.script.pop(0) if self.script else None
        if item is not None:
            raise item


def make(fake, interval=0.2, **kw):
    return Heartbeat("t1", worker_id="w1", run_id="r1", interval=interval, refresh=fake, **kw)


def test_first_beat_after_one_interval_then_periodic():
    """The claim was the first beat: the thread's first comes one interval later."""
    fake = FakeServer([])
    t0 = time.monotonic()
    hb = make(fake).start()
    time.sleep(0.5)
    hb.stop()
    assert 0.19 <= fake.calls[0] - t0 < 0.3
    assert 2 <= len(fake.calls) <= 3
    n = len(fake.calls)
    time.sleep(0.4)
    assert len(fake.calls) == n  # nothing after stop
    assert not hb.running


def test_transient_errors_retried_and_recover():
    fake = FakeServer([LabtaskerNetworkError("down"), RuntimeError("500"), None])
    lost = []
    hb = make(fake, interval=0.3, on_lost=lost.append).start()
    time.sleep(1.5)
    hb.stop()
    assert hb.beats >= 2 and not lost and len(fake.calls) >= 4


def test_task_not_owned_calls_on_lost_once(tmp_path):
    fake = FakeServer([None, TaskNotOwned("gone", status_code=409)])
    lost = []
    lock = tmp_path / "heartbeat.lock"
    hb = make(fake, interval=0.1, on_lost=lost.append, lock_file=lock).start()
    assert lock.exists()
    time.sleep(0.6)
    assert len(lost) == 1 and isinstance(lost[0], TaskNotOwned)
    assert not hb.running and len(fake.calls) == 2
    hb.stop()
    assert not lock.exists()


def test_beats_go_on_while_finishing():
    """A finish() report in flight may be retried for long (database away): the lease is kept
    alive by the beats meanwhile."""
    fake = FakeServer([])
    finishing = threading.Event()
    hb = make(fake, interval=0.1, finishing=finishing.is_set).start()
    time.sleep(0.05)
    finishing.set()
    n = len(fake.calls)
    time.sleep(0.4)
    hb.stop()
    assert len(fake.calls) >= n + 2


def test_not_owned_answer_to_a_finished_task_is_not_a_loss():
    finishing = threading.Event()
    lost = []

    def refresh(task_id, worker_id, run_id):
        finishing.set()  # a finish() in the job reported while this beat was in flight
        raise TaskNotOwned("already reported", status_code=404)

    hb = Heartbeat(
        "t1",
        worker_id="w1",
        run_id="r1",
        interval=0.1,
        refresh=refresh,
        on_lost=lost.append,
        finishing=finishing.is_set,
    ).start()
    time.sleep(0.3)
    assert not lost and not hb.running
    hb.stop()


def test_stop_is_immediate_and_double_start_rejected():
    hb = make(FakeServer([]), interval=60).start()
    with pytest.raises(LabtaskerRuntimeError):
        hb.start()
    t0 = time.monotonic()
    hb.stop()
    assert time.monotonic() - t0 < 1
