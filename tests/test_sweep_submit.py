"""Sweeps end to end on a real server (both backends): ``task submit --grid/--zip/--sweep``,
``--dry-run``, ``--unique``, ``labtasker.submit_sweep``, and a submit whose answer is lost
(a proxy drops the server's response after the commit) retried without a second copy."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.http import API

LABTASKER = [sys.executable, "-m", "labtasker.client.cli.main"]


def cli(queue_env, *args, stdin=None):
    return subprocess.run(
        [*LABTASKER, *args],
        env=queue_env.env(),
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
        cwd=queue_env.workdir,
    )


def all_tasks(queue_env, extra_filter=None) -> list[dict]:
    with queue_env.http() as http:
        body = {"limit": 1000, "extra_filter": extra_filter}
        return http.post(f"{API}/tasks/search", json=body).json()["content"]


def test_cli_grid_zip_fixed_and_metadata(queue_env):
    proc = cli(
        queue_env,
        "task",
        "submit",
        "--grid",
        "lr=0.1,0.01",
        "--grid",
        "model.depth=range(2)",
        "--zip",
        "opt=sgd,adam",
        "--zip",
        "mom=[0.9,0.0]",
        "--sweep-name",
        "study-1",
        "--",
        "--epochs",
        "10",
    )
    assert proc.returncode == 0, proc.stderr
    assert "8 task(s) submitted" in proc.stdout
    tasks = all_tasks(queue_env)
    assert len(tasks) == 8
    sweep_ids = {t["metadata"]["sweep"]["id"] for t in tasks}
    assert len(sweep_ids) == 1
    assert sorted(t["metadata"]["sweep"]["index"] for t in tasks) == list(range(8))
    assert {t["metadata"]["sweep"]["name"] for t in tasks} == {"study-1"}
    combos = {
        (t["args"]["lr"], t["args"]["model"]["depth"], t["args"]["opt"], t["args"]["mom"])
        for t in tasks
    }
    assert (0.1, 0, "sgd", 0.9) in combos and (0.01, 1, "adam", 0.0) in combos
    assert ("sgd", 0.0) not in {(c[2], c[3]) for c in combos}  # zipped, not crossed
    assert all(t["args"]["epochs"] == 10 for t in tasks)
    # the sweep's tasks are found by its id
    (sid,) = sweep_ids
    ls = cli(queue_env, "task", "ls", "-q", "-f", f"metadata.sweep.id == '{sid}'")
    assert ls.returncode == 0, ls.stderr
    assert len(ls.stdout.split()) == 8
    # --unique: the same grid again adds nothing, a wider one only the new combinations
    again = cli(
        queue_env,
        "task",
        "submit",
        "--unique",
        "--grid",
        "lr=0.1,0.01,0.001",
        "--grid",
        "model.depth=range(2)",
        "--zip",
        "opt=sgd,adam",
        "--zip",
        "mom=[0.9,0.0]",
        "--",
        "--epochs",
        "10",
    )
    assert again.returncode == 0, again.stderr
    assert "12 task(s), 4 submitted, 8 already in the queue" in again.stdout
    assert len(all_tasks(queue_env)) == 12


def test_cli_dry_run_and_bad_input_submit_nothing(queue_env, tmp_path):
    dry = cli(
        queue_env,
        "task",
        "submit",
        "--dry-run",
        "--grid",
        "lr=logspace(-3,-1,3)",
        "--grid",
        "seed=range(4)",
        "--",
        "--model",
        "resnet18",
    )
    assert dry.returncode == 0, dry.stderr
    assert "makes 12 task(s) (lr 3 x seed 4); nothing submitted" in dry.stdout
    assert "0.001" in dry.stdout and '"model": "resnet18"' in dry.stdout
    assert "first 10 of 12" in dry.stdout
    bayes = tmp_path / "bayes.yaml"
    bayes.write_text("method: bayes\nparameters:\n  lr: {min: 0.1, max: 1.0}\n")
    for args, fragment in [
        (["--grid", "lr="], "--grid 'lr=': no values after '='"),
        (["--zip", "a=1,2", "--zip", "b=1"], "equal lengths: a has 2, b has 1"),
        (["--sweep", str(bayes)], "method 'bayes' is not supported; supported: grid, random"),
        (
            ["--grid", "a=range(200)", "--grid", "b=range(60)"],
            "12,000 tasks, more than 10,000: add --yes",
        ),
        (["--grid", "a=1,2", "--file", "x.jsonl"], "cannot be combined"),
        (["--grid", "a=1e400"], "holds a number JSON cannot store"),
        (["--grid", "a=logspace(0,400,2)"], "10 to the power 400 is too large"),
    ]:
        proc = cli(queue_env, "task", "submit", *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert all_tasks(queue_env) == []


def test_cli_random_sweep_file_is_reproducible(queue_env, tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "name: rnd\nmethod: random\nrun_cap: 20\nseed: 3\ncommand: [python, train.py]\n"
        "parameters:\n"
        "  lr: {distribution: log_uniform_values, min: 0.0001, max: 0.1}\n"
        "  batch: {values: [16, 32, 64]}\n"
        "  model:\n    parameters:\n      depth: {distribution: int_uniform, min: 1, max: 8}\n"
    )
    first = cli(queue_env, "task", "submit", "--sweep", str(path), "--", "--data", "digits")
    assert first.returncode == 0, first.stderr
    assert "'command' in the sweep file is ignored" in first.stderr
    assert "Sweep 'rnd'" in first.stdout and "20 task(s) submitted" in first.stdout
    tasks = all_tasks(queue_env)
    assert len(tasks) == 20 and {t["metadata"]["sweep"]["seed"] for t in tasks} == {3}
    assert all(
        1 <= t["args"]["model"]["depth"] <= 8 and t["args"]["data"] == "digits" for t in tasks
    )
    again = cli(
        queue_env, "task", "submit", "--unique", "--sweep", str(path), "--", "--data", "digits"
    )
    assert again.returncode == 0, again.stderr
    assert "20 task(s), 0 submitted, 20 already in the queue" in again.stdout
    assert len(all_tasks(queue_env)) == 20


def test_cli_sweep_file_exponent_numbers_are_floats(queue_env, tmp_path):
    """W&B-style ``1e-3`` in a sweep file is stored as a number, not as the text "1e-3"."""
    grid = tmp_path / "b.yaml"
    grid.write_text("method: grid\nparameters:\n  lr: {values: [1e-3, 0.01]}\n")
    proc = cli(queue_env, "task", "submit", "--sweep", str(grid))
    assert proc.returncode == 0, proc.stderr
    assert sorted(t["args"]["lr"] for t in all_tasks(queue_env)) == [0.001, 0.01]
    rnd = tmp_path / "r.yaml"
    rnd.write_text(
        "method: random\nrun_cap: 3\n"
        "parameters:\n  lr: {distribution: log_uniform_values, min: 1e-5, max: 1e-1}\n"
    )
    proc = cli(queue_env, "task", "submit", "--sweep", str(rnd))
    assert proc.returncode == 0, proc.stderr
    lrs = [t["args"]["lr"] for t in all_tasks(queue_env) if "sweep" in t["metadata"]]
    assert len(lrs) == 5
    assert sum(isinstance(v, float) and 1e-5 <= v <= 1e-1 for v in lrs) == 5


def test_cli_sweep_file_numbers_beyond_the_float_range_exit_2(queue_env, tmp_path):
    """A sweep file that can only make numbers JSON cannot store is refused like
    ``--grid lr=1e400``: exit 2, one line naming the parameter, no dry-run header printed
    before it, nothing submitted."""
    files = {
        "log_uniform.yaml": (
            "method: random\nrun_cap: 3\n"
            "parameters: {lr: {distribution: log_uniform, min: 0, max: 1000}}\n",
            "parameters.lr: log_uniform takes natural-log exponents",
        ),
        "log_normal.yaml": (
            "method: random\nrun_cap: 3\nparameters: {lr: {distribution: log_normal, mu: 1000}}\n",
            "parameters.lr: log_normal with mu 1000",
        ),
        "inf.yaml": (
            "method: grid\nparameters: {lr: {values: [1, .inf]}}\n",
            "parameters.lr: values: '[1, inf]' holds a number JSON cannot store",
        ),
        "nan.yaml": (
            "method: grid\nparameters: {lr: {values: [1, .nan]}}\n",
            "parameters.lr: values: '[1, nan]' holds a number JSON cannot store",
        ),
        "probabilities.yaml": (
            "method: random\nrun_cap: 3\n"
            "parameters: {lr: {values: [1, 2], probabilities: [0.5, 0.6]}}\n",
            "parameters.lr: 'probabilities' must sum to 1, got 1.1",
        ),
    }
    for name, (text, fragment) in files.items():
        path = tmp_path / name
        path.write_text(text)
        for extra in (["--dry-run"], []):
            proc = cli(queue_env, "task", "submit", *extra, "--sweep", str(path))
            assert proc.returncode == 2, (name, extra, proc.stdout, proc.stderr)
            assert proc.stdout == "", (name, extra, proc.stdout)
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and fragment in lines[0], (name, extra, proc.stderr)
            assert "unexpected" not in proc.stderr
    assert all_tasks(queue_env) == []


def test_python_submit_sweep(queue_env):
    import labtasker

    dry = labtasker.submit_sweep(grid={"lr": [0.1, 0.2], "seed": "range(3)"}, dry_run=True)
    assert dry.total == 6 and not dry.submitted and dry.task_ids == []
    assert all_tasks(queue_env) == []
    made = labtasker.submit_sweep(
        grid={"lr": [0.1, 0.2]}, fixed={"model": "a"}, unique=True, name="py", priority=20
    )
    assert len(made.created_ids) == 2 and made.existing_ids == []
    more = labtasker.submit_sweep(grid={"lr": [0.1, 0.2, 0.3]}, fixed={"model": "a"}, unique=True)
    assert len(more.created_ids) == 1 and sorted(more.existing_ids) == sorted(made.created_ids)
    assert more.task_ids[:2] == made.task_ids
    tasks = all_tasks(queue_env)
    assert len(tasks) == 3
    by_id = {t["task_id"]: t for t in tasks}
    assert by_id[made.task_ids[0]]["priority"] == 20
    assert by_id[made.task_ids[0]]["metadata"]["sweep"] == {
        "id": made.sweep_id,
        "name": "py",
        "index": 0,
    }
    args = [a for a in labtasker.sweep_args(grid={"x": "range(2)"}, zip={"y": [1, 2], "z": "a,b"})]
    assert args == [
        {"x": 0, "y": 1, "z": "a"},
        {"x": 0, "y": 2, "z": "b"},
        {"x": 1, "y": 1, "z": "a"},
        {"x": 1, "y": 2, "z": "b"},
    ]
    with pytest.raises(labtasker.LabtaskerValueError, match="equal lengths"):
        labtasker.submit_sweep(zip={"a": [1, 2], "b": [1]})


class AnswerDroppingProxy:
    """A TCP proxy to the server that, for the first ``drops`` submit requests, lets the
    request through (the server commits) but closes the connection instead of passing the
    answer back -- an answer lost after the commit."""

    def __init__(self, upstream_port: int, drops: int):
        self.upstream_port = upstream_port
        self.drops = drops
        self.dropped = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            state = {"drop": False}
            threading.Thread(target=self._up, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, state), daemon=True).start()

    def _up(self, client, upstream, state) -> None:
        try:
            while data := client.recv(65536):
                if data.startswith(b"POST /api/v1/queues/me/tasks"):
                    with self.lock:
                        if self.dropped < self.drops:
                            self.dropped += 1
                            state["drop"] = True
                upstream.sendall(data)
        except OSError:
            pass

    def _down(self, upstream, client, state) -> None:
        try:
            while data := upstream.recv(65536):
                if state["drop"]:  # the server answered (and committed): lose the answer
                    break
                client.sendall(data)
        except OSError:
            pass
        for sock in (client, upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()


def test_lost_answers_are_retried_without_second_tasks(queue_env, server):
    from support.server import write_client_toml

    import labtasker
    from labtasker.client import api

    proxy = AnswerDroppingProxy(server.port, drops=3)
    try:
        write_client_toml(
            queue_env.root,
            f"http://127.0.0.1:{proxy.port}",
            queue_env.queue_name,
            queue_env.password,
        )
        api.close_httpx_client()
        api.set_retry_policy(attempts=5, initial=0.1, max_wait=0.5, jitter=0.1, budget=30)
        one = labtasker.submit_task(args={"single": 1})
        batch = labtasker.submit_tasks([{"args": {"b": i}} for i in range(5)])
        sweep = labtasker.submit_sweep(grid={"s": "range(4)"})
        assert proxy.dropped == 3  # each of the three submits lost its first answer
    finally:
        api.set_retry_policy()
        api.close_httpx_client()
        proxy.close()
    tasks = all_tasks(queue_env)
    assert len(tasks) == 1 + 5 + 4
    ids = {t["task_id"] for t in tasks}
    assert one.task_id in ids and set(batch) <= ids and set(sweep.task_ids) <= ids


@pytest.mark.parametrize("name", ["examples"])
def test_readme_sweep_file_example_is_valid(name):
    """The sweep file shown in the README expands as the README says."""
    from labtasker.sweep import build

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = text.index("```yaml\n# sweep.yaml") + len("```yaml\n")
    config = text[start : text.index("```", start)]
    import yaml

    sw = build(sweep=yaml.safe_load(config))
    assert len(sw) == 20 and sw.seed == 0
    assert json.dumps(sw.preview(1))
