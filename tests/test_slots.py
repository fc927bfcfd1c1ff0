"""Slots: ``labtasker loop --gpus ...`` / ``--parallel N`` and ``@labtasker.loop(gpus=...)``.

No GPU is needed: explicit device lists (the jobs record the environment they got), and for
``--gpus all`` a fake ``nvidia-smi`` on PATH and a fake NVML module. Real server, real loop
processes, real job processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
from helpers import API, alive, descendants, get_task, submit, wait_for

from labtasker.client.loop import slots as slots_mod
from labtasker.client.loop.slots import Device, Slot, allowed_gpus, plan_slots
from labtasker.exceptions import LabtaskerValueError

# Tests of the client against a real server: SQLite only (conftest, ``client_side``).
pytestmark = pytest.mark.client_side

LABTASKER = str(Path(sys.executable).parent / "labtasker")


def start_loop(queue_env, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [LABTASKER, "loop", *args],
        env={**queue_env.env(), **kw.pop("extra_env", {})},
        cwd=queue_env.workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def run_script(queue_env, script, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the Python ``script`` (a decorated loop) to its end in the queue's client root;
    its output captured as text."""
    return subprocess.run(
        [sys.executable, str(script)],
        env=queue_env.env(),
        cwd=queue_env.workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def finish(p: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    try:
        return p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def workers(http) -> list[dict]:
    return http.post(f"{API}/workers/search", json={"limit": 100}).json()["content"]


def all_tasks(http) -> list[dict]:
    return http.post(f"{API}/tasks/search", json={"limit": 1000}).json()["content"]


# ------------------------------------------------------------------------------ planning
def fake_nvml(monkeypatch, devices: list[tuple[str, str]] | None) -> None:
    """Install a fake ``pynvml`` module: ``devices`` = (uuid, name) per index, or None for
    an NVML whose init fails (no driver)."""
    mod = types.ModuleType("pynvml")

    def init():
        if devices is None:
            raise RuntimeError("NVML Shared Library Not Found")

    mod.nvmlInit = init
    mod.nvmlShutdown = lambda: None
    mod.nvmlDeviceGetCount = lambda: len(devices or [])
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    mod.nvmlDeviceGetUUID = lambda h: devices[h][0]
    mod.nvmlDeviceGetName = lambda h: devices[h][1].encode()  # old bindings return bytes
    monkeypatch.setitem(sys.modules, "pynvml", mod)


def fake_smi(tmp_path, monkeypatch, listing: str | None, code: int = 0) -> None:
    """Put a fake ``nvidia-smi`` first on PATH (None: none at all on PATH)."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir(exist_ok=True)
    if listing is not None:
        smi = bindir / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\ncat <<'EOF'\n{listing}EOF\nexit {code}\n")
        smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir) if listing is None else f"{bindir}:/usr/bin:/bin")


SMI_LISTING = (
    "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaa1111-0000-0000-0000-000000000000)\n"
    "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-bbbb2222-0000-0000-0000-000000000000)\n"
)


def test_listed_gpus_must_be_among_cuda_visible_devices(monkeypatch):
    """A shell given GPUs 2,3 (CUDA_VISIBLE_DEVICES=2,3) that asks for --gpus 0,1 would put
    jobs on someone else's GPUs: refused, naming the devices; devices of the set are fine."""
    fake_nvml(monkeypatch, [(f"GPU-{c * 4}", f"Fake GPU {c}") for c in "abcd"])
    with pytest.raises(
        LabtaskerValueError, match=r"device 0, 1 not among CUDA_VISIBLE_DEVICES='2,3'"
    ):
        plan_slots("0,1", environ={"CUDA_VISIBLE_DEVICES": "2,3"})
    assert [s.gpus for s in plan_slots("3,2", environ={"CUDA_VISIBLE_DEVICES": "2,3"})] == [
        "3",
        "2",
    ]
    # UUID entries are resolved through the machine's devices
    assert [s.gpus for s in plan_slots("1", environ={"CUDA_VISIBLE_DEVICES": "GPU-bb"})] == ["1"]
    with pytest.raises(LabtaskerValueError, match="device 2 not among"):
        plan_slots("2", environ={"CUDA_VISIBLE_DEVICES": "GPU-bb"})
    assert [s.gpus for s in plan_slots("0,1", environ={})] == ["0", "1"]


def test_gpus_all_from_nvml_honours_cuda_visible_devices(monkeypatch):
    fake_nvml(monkeypatch, [(f"GPU-{c * 4}", f"Fake GPU {c}") for c in "abcd"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    found = plan_slots("all")
    assert [s.label for s in found] == ["gpu0", "gpu1", "gpu2", "gpu3"]
    assert found[1].devices == (Device(1, "GPU-bbbb", "Fake GPU b"),)
    assert found[1].env() == {
        "CUDA_VISIBLE_DEVICES": "1",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "LABTASKER_SLOT": "1",
        "LABTASKER_GPUS": "1",
    }
    assert found[1].metadata("h") == {
        "host": "h",
        "slot": 1,
        "gpus": [1],
        "gpu_uuids": ["GPU-bbbb"],
        "gpu_names": ["Fake GPU b"],
    }
    assert [s.gpus for s in plan_slots("all", 2)] == ["0,1", "2,3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert [s.gpus for s in plan_slots("all")] == ["3", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-cc,7,0")  # CUDA stops at an invalid entry
    assert [s.gpus for s in plan_slots("all")] == ["2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(LabtaskerValueError, match="no GPU found among CUDA_VISIBLE_DEVICES"):
        plan_slots("all")


def test_gpus_all_falls_back_to_nvidia_smi(tmp_path, monkeypatch):
    fake_nvml(monkeypatch, None)  # NVML present but no driver
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake_smi(tmp_path, monkeypatch, SMI_LISTING)
    found = plan_slots("all")
    assert [(s.label, s.devices[0].name) for s in found] == [
        ("gpu0", "NVIDIA A100-SXM4-40GB"),
        ("gpu1", "NVIDIA A100-SXM4-40GB"),
    ]
    assert found[1].devices[0].uuid.startswith("GPU-bbbb2222")
    # an explicit list gets names/UUIDs where known, and runs on unknown indices too
    assert [s.devices for s in plan_slots("1,5")] == [(found[1].devices[0],), (Device(5),)]
    fake_smi(tmp_path, monkeypatch, "", code=9)  # nvidia-smi fails
    with pytest.raises(LabtaskerValueError, match="no GPU found"):
        plan_slots("all")
    fake_smi(tmp_path, monkeypatch, None)  # no nvidia-smi at all
    with pytest.raises(LabtaskerValueError, match="no GPU found"):
        plan_slots("all")


@pytest.mark.parametrize(
    ("gpus", "per_task", "parallel", "message"),
    [
        ("0,x", 1, None, "'x' is not a device index"),
        ("0,0", 1, None, "listed twice"),
        ("0,1,2", 2, None, "do not split"),
        ("0", 2, None, "needs at least 2 devices"),
        ("0", 1, 2, "not both"),
        (None, 1, 0, "--parallel must be an integer from 1"),
        (None, 2, None, "--gpus-per-task needs --gpus"),
    ],
)
def test_bad_slot_requests_are_one_line_errors(gpus, per_task, parallel, message):
    with pytest.raises(LabtaskerValueError, match=message) as info:
        plan_slots(gpus, per_task, parallel)
    assert "\n" not in str(info.value)


def test_cpu_slots_and_names():
    cpu = plan_slots(None, parallel=2)
    assert [s.label for s in cpu] == ["slot0", "slot1"]
    assert cpu[1].env() == {"LABTASKER_SLOT": "1", "LABTASKER_GPUS": ""}  # CUDA untouched
    assert cpu[1].worker_name("h") == f"h-{os.getpid()}-slot1"
    assert Slot(0, (Device(2), Device(3))).worker_name("my.host") == "my-host-gpu2-3"
    assert allowed_gpus([Device(0)], None) == [Device(0)]
    assert plan_slots(None) == []
    assert slots_mod.parse_gpus(" all ") is None


# ------------------------------------------------------------------------------ CLI slots
RECORD_JOB = (
    's=$(date +%s.%N); echo "hello %(i)"; sleep 0.1; '
    'echo "%(i) $CUDA_VISIBLE_DEVICES $LABTASKER_SLOT $LABTASKER_GPUS $CUDA_DEVICE_ORDER '
    '$s $(date +%s.%N)" >> {rec}'
)


def test_thirty_tasks_on_three_gpu_slots(queue_env):
    """Each task runs once; no two overlapping runs saw the same device; every device used;
    one worker per slot named <host>-gpu<N> with its device; prefixed output; exit 0."""
    rec = queue_env.workdir / "rec.txt"
    with queue_env.http() as http:
        ids = {submit(http, {"i": i}) for i in range(30)}
        p = start_loop(queue_env, "--gpus", "0,1,2", "-c", RECORD_JOB.format(rec=rec))
        out, err = finish(p)
        assert p.returncode == 0, err
        runs = [line.split() for line in rec.read_text().splitlines()]
        assert sorted(int(r[0]) for r in runs) == list(range(30))  # each exactly once
        for i, cvd, slot, gpus, order, _, _ in runs:
            assert cvd in {"0", "1", "2"} and slot == cvd and gpus == cvd, (i, cvd, slot)
            assert order == "PCI_BUS_ID"
            assert f"[gpu{cvd}] hello {i}" in out.splitlines()  # prefixed with its slot
        assert {r[1] for r in runs} == {"0", "1", "2"}  # all devices used
        by_device: dict[str, list[tuple[float, float]]] = {}
        for r in runs:
            by_device.setdefault(r[1], []).append((float(r[5]), float(r[6])))
        for spans in by_device.values():
            spans.sort()
            for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
                assert end <= start, spans  # never two jobs on one device at once
        tasks = all_tasks(http)
        assert {t["task_id"] for t in tasks} == ids
        assert {(t["status"], t["retries"]) for t in tasks} == {("success", 0)}
        host = socket.gethostname()
        got = sorted((w["worker_name"], w["metadata"]["gpus"]) for w in workers(http))
        assert [g[1] for g in got] == [[0], [1], [2]]
        assert all(g[0].endswith(f"-gpu{g[1][0]}") and host[:3] in g[0] for g in got)
        table = subprocess.run(
            [LABTASKER, "worker", "ls", "--fmt", "table"],
            env={**queue_env.env(), "COLUMNS": "250"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert table.returncode == 0, table.stderr
        assert "Device" in table.stdout and "gpu 2" in table.stdout


def test_sigterm_stops_every_slot_and_hands_tasks_back(queue_env):
    pids = queue_env.workdir / "pids"
    pids.mkdir()
    with queue_env.http() as http:
        ids = [submit(http, {"i": i}) for i in range(3)]
        p = start_loop(
            queue_env,
            "--gpus",
            "0,1,2",
            "--grace-period",
            "2",
            "-c",
            f"echo $$ > {pids}/%(i); sleep 600",
        )
        try:
            wait_for(lambda: len(list(pids.iterdir())) == 3, timeout=60, what="3 jobs running")
            jobs = [int(f.read_text()) for f in pids.iterdir()]
            p.send_signal(signal.SIGTERM)
            _, err = finish(p, timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
        assert p.returncode == 128 + signal.SIGTERM, err
        assert not any(alive(j) for j in jobs)
        for tid in ids:
            t = get_task(http, tid)
            assert (t["status"], t["retries"]) == ("pending", 0), t
            assert t["summary"]["labtasker_interrupted"] == "interrupted by SIGTERM"
        assert [w["retries"] for w in workers(http)] == [0, 0, 0]


def test_kill_9_of_the_loop_leaves_no_job_on_any_device(queue_env):
    pids = queue_env.workdir / "pids"
    pids.mkdir()
    with queue_env.http() as http:
        for i in range(3):
            submit(http, {"i": i})
        p = start_loop(
            queue_env,
            "--gpus",
            "0,1,2",
            "--grace-period",
            "1",
            "--executable",
            "/bin/bash",
            "-c",
            f"echo $$ > {pids}/%(i); sleep 600 & sleep 600 & wait",
        )
        try:
            wait_for(lambda: len(list(pids.iterdir())) == 3, timeout=60, what="3 jobs running")
            tree = wait_for(
                lambda: len(d := descendants(p.pid)) >= 9 and d, timeout=30, what="3 job trees"
            )
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
            wait_for(
                lambda: not any(alive(x) for x in tree), timeout=30, what="every job process gone"
            )
        finally:
            if p.poll() is None:
                p.kill()


def test_an_all_failing_slot_is_crashed_alone(queue_env):
    """Jobs on device 1 always fail (a broken GPU): its worker is crashed after its
    max_retries and its slot stops with one line; the two others finish the queue."""
    with queue_env.http() as http:
        ids = [submit(http, {"i": i}, max_retries=10) for i in range(12)]
        p = start_loop(
            queue_env,
            "--gpus",
            "0,1,2",
            "-c",
            '[ "$CUDA_VISIBLE_DEVICES" != 1 ] || exit 3; sleep 0.2 # %(i)',
        )
        _, err = finish(p)
        assert p.returncode == 1, err  # a slot stopped for a reason
        stops = [line for line in err.splitlines() if "slot stopped:" in line]
        assert len(stops) == 1 and stops[0].startswith("[gpu1] "), stops
        assert "worker report" in stops[0]  # says why and how to re-activate
        assert {get_task(http, t)["status"] for t in ids} == {"success"}
        by_gpu = {w["metadata"]["gpus"][0]: w for w in workers(http)}
        assert by_gpu[1]["status"] == "crashed"
        assert (by_gpu[0]["status"], by_gpu[2]["status"]) == ("active", "active")


def test_cli_slot_usage_errors(queue_env):
    no_gpus = {**queue_env.env(), "CUDA_VISIBLE_DEVICES": ""}
    plain = {k: v for k, v in queue_env.env().items() if k != "CUDA_VISIBLE_DEVICES"}
    for args, env, message in [
        (["--gpus", "all"], no_gpus, "no GPU found"),
        (["--gpus", "0"], no_gpus, "device 0 not among CUDA_VISIBLE_DEVICES=''"),
        (["--gpus", "0", "--worker-id", "w1"], plain, "each slot creates its own worker"),
    ]:  # the other bad requests: test_bad_slot_requests_are_one_line_errors
        proc = subprocess.run(
            [LABTASKER, "loop", *args, "-c", "echo %(x)"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2, proc.stderr


# ------------------------------------------------------------------------------ decorator
def test_decorator_runs_one_fresh_process_per_gpu(queue_env):
    """``@labtasker.loop(gpus=[0, 1])``: each slot's process had its CUDA_VISIBLE_DEVICES
    before the function's module was imported."""
    script = queue_env.workdir / "train.py"
    script.write_text(
        textwrap.dedent("""
        import os
        AT_IMPORT = os.environ.get("CUDA_VISIBLE_DEVICES")  # what a framework would see
        import labtasker
        from labtasker import Required

        @labtasker.loop(gpus=[0, 1])
        def train(i=Required()):
            labtasker.finish("success", summary={"cvd": AT_IMPORT, "pid": os.getpid(),
                                                 "slot": os.environ["LABTASKER_SLOT"]})

        if __name__ == "__main__":
            print("ran", train())
    """)
    )
    with queue_env.http() as http:
        ids = [submit(http, {"i": i}) for i in range(6)]
        t0 = time.monotonic()
        proc = run_script(queue_env, script)
        assert proc.returncode == 0, proc.stderr
        assert "ran 6" in proc.stdout, (proc.stdout, time.monotonic() - t0)
        tasks = [get_task(http, t) for t in ids]
        assert {t["status"] for t in tasks} == {"success"}
        gpu_of = {w["worker_id"]: w["metadata"]["gpus"] for w in workers(http)}
        assert sorted(gpu_of.values()) == [[0], [1]]
        pids: dict[str, set] = {}
        for t in tasks:
            s = t["summary"]
            assert s["cvd"] == s["slot"], s
            pids.setdefault(s["cvd"], set()).add(s["pid"])
        assert all(len(v) == 1 for v in pids.values())  # one process per slot
        assert len({p for v in pids.values() for p in v}) == len(pids)
        assert "[gpu" in proc.stderr  # the slots' log lines are prefixed


def test_decorated_slots_without_the_main_guard_say_so(queue_env):
    """A script that calls ``@labtasker.loop(gpus=[0, 1])`` at import, without ``if __name__
    == "__main__":``: each slot process (spawn imports the script again) says in one line
    that the guard is missing and exits 2; no worker is created and no task is taken. Before,
    each slot failed with "device 0 not among CUDA_VISIBLE_DEVICES='1'"."""
    script = queue_env.workdir / "noguard.py"
    script.write_text(
        textwrap.dedent("""
        import labtasker

        @labtasker.loop(gpus=[0, 1])
        def train(i):
            labtasker.finish("success")

        train()
    """)
    )
    with queue_env.http() as http:
        tid = submit(http, {"i": 1})
        proc = run_script(queue_env, script)
        assert proc.returncode != 0
        said = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error: train()")]
        assert len(said) == 2 and 'if __name__ == "__main__":' in said[0], proc.stderr
        assert "not among CUDA_VISIBLE_DEVICES" not in proc.stderr, proc.stderr
        assert "exited with 2" in proc.stderr
        assert workers(http) == []
        assert get_task(http, tid)["status"] == "pending"


def test_decorated_parallel_slots_interrupted_hand_tasks_back(queue_env):
    """``@labtasker.loop(parallel=2)``: SIGTERM to the script reaches both slot processes;
    each job gets KeyboardInterrupt and its task goes back to pending, retries unchanged."""
    started = queue_env.workdir / "started"
    started.mkdir()
    script = queue_env.workdir / "evaluate.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, time
        import labtasker
        from labtasker import Required

        @labtasker.loop(parallel=2)
        def evaluate(i=Required()):
            open(os.path.join({str(started)!r}, str(i)), "w").close()
            time.sleep(600)

        if __name__ == "__main__":
            evaluate()
    """)
    )
    with queue_env.http() as http:
        ids = [submit(http, {"i": i}) for i in range(2)]
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            env=queue_env.env(),
            cwd=queue_env.workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(
                lambda: len(list(started.iterdir())) == 2,
                timeout=90,
                what="both slots running a job",
            )
            slots = descendants(proc.pid)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 128 + signal.SIGTERM, err
        wait_for(lambda: not any(alive(p) for p in slots), timeout=15, what="slot processes gone")
        for tid in ids:
            t = get_task(http, tid)
            assert (t["status"], t["retries"]) == ("pending", 0), t
            assert t["summary"]["labtasker_interrupted"] == "interrupted by SIGTERM"
        assert sorted(w["worker_name"].rsplit("-", 1)[1] for w in workers(http)) == [
            "slot0",
            "slot1",
        ]
