"""Bulk submit and streaming listings, client side, against the real server fixture.

``submit_tasks`` uses ``POST /tasks/batch`` when the server has it and falls back to one
request per task otherwise; ``iter_tasks`` follows ``next_cursor`` when the server sends one
and pages by offset otherwise. Tests of the batch route itself are skipped (with the reason)
on a server without it; the fallbacks are tested on any server by hiding the new features
with a wrapping transport.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import httpx
import pytest

from labtasker.client import api
from labtasker.exceptions import LabtaskerHTTPStatusError, LabtaskerValueError

BATCH = "/api/v1/queues/me/tasks/batch"
SEARCH = "/api/v1/queues/me/tasks/search"
SUBMIT = "/api/v1/queues/me/tasks"


class Recorder(httpx.HTTPTransport):
    """The real transport, plus: records every request; optionally answers 405 to the batch
    route (a server without it) and/or drops ``next_cursor`` from search answers."""

    def __init__(
        self, hide_batch: bool = False, hide_cursor: bool = False, refuse_submit: int = -1
    ):
        super().__init__()
        self.hide_batch, self.hide_cursor = hide_batch, hide_cursor
        self.refuse_submit = refuse_submit  # answer 400 to this (0-based) single submit
        self.requests: list[tuple[str, str, dict | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, request.url.path, body))
        if self.hide_batch and request.url.path == BATCH:
            return httpx.Response(405, json={"detail": "Method Not Allowed"}, request=request)
        if request.url.path == SUBMIT and len(self.paths(SUBMIT)) - 1 == self.refuse_submit:
            return httpx.Response(400, json={"detail": "refused"}, request=request)
        response = super().handle_request(request)
        if self.hide_cursor and request.url.path == SEARCH:
            response.read()
            data = response.json()
            data.pop("next_cursor", None)
            return httpx.Response(response.status_code, json=data, request=request)
        return response

    def paths(self, path: str) -> list[dict | None]:
        return [body for _m, p, body in self.requests if p == path]


def client_for(queue_env, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=queue_env.url,
        auth=(queue_env.queue_name, queue_env.password),
        timeout=30,
        transport=transport,
    )


@pytest.fixture
def batch_route(queue_env) -> bool:
    """Whether the server under test has ``POST /tasks/batch``."""
    with queue_env.http() as c:
        r = c.post(BATCH, json={"tasks": []})
    return r.status_code not in (404, 405)


@pytest.fixture
def need_batch(batch_route):
    if not batch_route:
        pytest.skip("server has no POST /api/v1/queues/me/tasks/batch route (404/405)")


def all_tasks(client: httpx.Client) -> list:
    return list(api.iter_tasks(page_size=1000, client=client))


# ----------------------------------------------------------------------------- submit_tasks


def test_submit_tasks_returns_ids_in_order(queue_env):
    tasks = [{"args": {"i": i}, "priority": i % 3, "task_name": f"t{i}"} for i in range(30)]
    tasks.append({"cmd": "echo hi"})
    progress: list[tuple[int, int]] = []
    with client_for(queue_env) as c:
        ids = api.submit_tasks(tasks, progress=lambda d, t: progress.append((d, t)), client=c)
        assert len(ids) == len(set(ids)) == 31
        for i in (0, 7, 29):
            task = api.get_task(ids[i], client=c)
            assert task.args == {"i": i} and task.task_name == f"t{i}"
            assert task.priority == i % 3 and task.status == "pending"
        assert api.get_task(ids[30], client=c).cmd == "echo hi"
    assert progress[-1] == (31, 31)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_submit_tasks_is_exported_at_top_level():
    import labtasker

    assert labtasker.submit_tasks is api.submit_tasks


def test_submit_tasks_validates_everything_before_sending(queue_env):
    rec = Recorder()
    tasks = [{"args": {"i": 0}}, {"args": {"i": 1}}, {"args": {"bad key.": 1}}]
    with client_for(queue_env, rec) as c:
        with pytest.raises(LabtaskerValueError, match=r"tasks\[2\]"):
            api.submit_tasks(tasks, client=c)
        with pytest.raises(LabtaskerValueError, match=r"tasks\[1\]"):
            api.submit_tasks([{"args": {"i": 0}}, {"metadata": {"a": 1}}], client=c)
        with pytest.raises(LabtaskerValueError, match="chunk_size"):
            api.submit_tasks([{"args": {"i": 0}}], chunk_size=5001, client=c)
        assert rec.requests == []
        assert all_tasks(c) == []
        assert api.submit_tasks([], client=c) == []


def test_fallback_one_by_one_without_batch_route(queue_env):
    rec = Recorder(hide_batch=True)
    with client_for(queue_env, rec) as c:
        ids = api.submit_tasks([{"args": {"i": i}} for i in range(5)], client=c)
        assert [api.get_task(t, client=c).args["i"] for t in ids] == list(range(5))
    assert len(rec.paths(BATCH)) == 1  # tried once, then remembered for this call
    assert len(rec.paths(SUBMIT)) == 5


def test_fallback_error_reports_already_submitted(queue_env):
    """Without the batch route a refusal stops the submission; the exception says which
    tasks were accepted before it."""
    rec = Recorder(hide_batch=True, refuse_submit=2)
    with client_for(queue_env, rec) as c:
        with pytest.raises(LabtaskerHTTPStatusError) as info:
            api.submit_tasks([{"args": {"i": i}} for i in range(4)], client=c)
        assert info.value.status_code == 400
        assert info.value.first_index == 2
        done = info.value.submitted_task_ids
        assert [api.get_task(t, client=c).args["i"] for t in done] == [0, 1]
        assert len(all_tasks(c)) == 2


def test_batch_route_chunks_and_order(queue_env, need_batch):
    rec = Recorder()
    with client_for(queue_env, rec) as c:
        ids = api.submit_tasks([{"args": {"i": i}} for i in range(23)], chunk_size=10, client=c)
        assert [len(b["tasks"]) for b in rec.paths(BATCH)] == [10, 10, 3]
        assert rec.paths(SUBMIT) == []
        assert [api.get_task(t, client=c).args["i"] for t in ids] == list(range(23))


def test_batch_route_is_all_or_nothing_and_names_the_index(queue_env, need_batch):
    good = {"args": {"i": 1}}
    with queue_env.http() as c:
        r = c.post(BATCH, json={"tasks": [good, good, good, {"args": {}}, good]})
        assert r.status_code in (400, 422), r.text
        assert "3" in json.dumps(r.json()["detail"])
        r = c.post(BATCH, json={"tasks": [good] * 5001})
        assert r.status_code in (400, 413, 422), r.status_code
    with client_for(queue_env) as c:
        assert all_tasks(c) == []


def test_batch_route_large_submit(queue_env, need_batch):
    with client_for(queue_env) as c:
        ids = api.submit_tasks([{"args": {"i": i}} for i in range(12_000)], client=c)
        assert len(set(ids)) == 12_000
        seen = [t.task_id for t in api.iter_tasks(page_size=1000, client=c)]
    assert sorted(seen) == sorted(ids)
    # a batch's ids are drawn together (sql_storage.new_ids): each still a random
    # version-4 UUID in its canonical text
    parsed = [uuid.UUID(i) for i in ids]
    assert [str(u) for u in parsed] == ids
    assert {u.version for u in parsed} == {4}
    assert {u.variant for u in parsed} == {uuid.RFC_4122}
    assert {i[19] for i in ids} == set("89ab")  # the variant's two free bits vary
    assert len({i[:8] for i in ids}) > 11_900  # no shared prefix across the batch


# ----------------------------------------------------------------------------- iter_tasks


@pytest.mark.parametrize("hide_cursor", [False, True], ids=["server-paging", "offset-paging"])
def test_iter_tasks_streams_every_page(queue_env, hide_cursor):
    with client_for(queue_env) as c:
        ids = api.submit_tasks([{"args": {"i": i, "odd": i % 2}} for i in range(250)], client=c)
    rec = Recorder(hide_cursor=hide_cursor)
    with client_for(queue_env, rec) as c:
        pages = list(api.iter_task_pages(page_size=100, sort=["created_at:asc"], client=c))
        assert [len(p) for p in pages] == [100, 100, 50]
        got = [t.task_id for p in pages for t in p]
        # one batch shares created_at: compare with the order of a single big page
        one_page = api.ls_tasks(limit=1000, sort=["created_at:asc"], client=c).content
        assert got == [t.task_id for t in one_page] and sorted(got) == sorted(ids)
        odd = list(api.iter_tasks(extra_filter={"args.odd": 1}, page_size=40, client=c))
        assert sorted(t.args["i"] for t in odd) == list(range(1, 250, 2))
    bodies = rec.paths(SEARCH)
    if hide_cursor or "cursor" not in json.dumps(bodies):
        offsets = [b.get("offset", 0) for b in bodies[:3]]
        assert offsets == [0, 100, 200]
    else:
        assert "cursor" not in bodies[0]
        assert all(b.get("cursor") for b in bodies[1:3])


def test_iter_tasks_offset_start(queue_env):
    with client_for(queue_env) as c:
        api.submit_tasks([{"args": {"i": i}} for i in range(30)], client=c)
        ids = [
            t.task_id for t in api.ls_tasks(limit=100, sort=["created_at:asc"], client=c).content
        ]
        got = [
            t.task_id
            for t in api.iter_tasks(offset=10, page_size=7, sort=["created_at:asc"], client=c)
        ]
    assert got == ids[10:]


# ----------------------------------------------------------------------------- CLI


def run_cli(queue_env, *args: str, input: str = "") -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "labtasker.client.cli.main", *args],
        env=queue_env.env(),
        cwd=queue_env.workdir,
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_cli_submit_file_jsonl_yaml_and_stdin(queue_env):
    jl = queue_env.workdir / "tasks.jsonl"
    jl.write_text(
        '{"lr": 0.1, "seed": 1}\n\n# a comment\n'
        '{"args": {"lr": 0.2}, "priority": 20, "task_name": "hi"}\n'
    )
    proc = run_cli(queue_env, "task", "submit", "--file", str(jl), "--max-retries", "7")
    assert proc.returncode == 0, proc.stderr
    assert "2 task(s) submitted" in proc.stdout
    ym = queue_env.workdir / "tasks.yaml"
    ym.write_text("- {a: 1}\n- args: {a: 2}\n  metadata: {tag: x}\n")
    proc = run_cli(queue_env, "task", "submit", "-q", "--file", str(ym))
    assert proc.returncode == 0, proc.stderr
    yaml_ids = proc.stdout.split()
    assert len(yaml_ids) == 2
    proc = run_cli(queue_env, "task", "submit", "-q", "--file", "-", input='{"b": 3}\n')
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(queue_env, "task", "submit", "-q", "--file", "-", input="- {c: 4}\n")
    assert proc.returncode == 0, proc.stderr

    with client_for(queue_env) as c:
        tasks = {json.dumps(t.args, sort_keys=True): t for t in all_tasks(c)}
        assert api.get_task(yaml_ids[1], client=c).metadata == {"tag": "x"}
    assert set(tasks) == {
        '{"lr": 0.1, "seed": 1}',
        '{"lr": 0.2}',
        '{"a": 1}',
        '{"a": 2}',
        '{"b": 3}',
        '{"c": 4}',
    }
    assert tasks['{"lr": 0.1, "seed": 1}'].max_retries == 7
    assert tasks['{"lr": 0.2}'].priority == 20 and tasks['{"lr": 0.2}'].task_name == "hi"


def test_cli_submit_yaml_file_reads_exponent_numbers_as_floats(queue_env):
    """A YAML task file is read like a sweep file: ``1e-5`` is a float (YAML 1.2), ``1e``
    stays text and ints stay ints."""
    ym = queue_env.workdir / "exp.yaml"
    ym.write_text("- {lr: 1e-5, big: 1E+3, tag: 1e, n: 3}\n")
    proc = run_cli(queue_env, "task", "submit", "-q", "--file", str(ym))
    assert proc.returncode == 0, proc.stderr
    with client_for(queue_env) as c:
        (task,) = all_tasks(c)
    assert task.args == {"lr": 1e-5, "big": 1000.0, "tag": "1e", "n": 3}
    assert type(task.args["lr"]) is float and type(task.args["n"]) is int


def test_cli_submit_file_errors_name_the_line_and_submit_nothing(queue_env):
    jl = queue_env.workdir / "bad.jsonl"
    jl.write_text('{"a": 1}\n{"args": {"ok": 1}, "bogus": 2}\n')
    proc = run_cli(queue_env, "task", "submit", "--file", str(jl))
    assert proc.returncode == 2 and "bad.jsonl:2" in proc.stderr, proc.stderr
    jl.write_text('{"a": 1}\n{"a": 2\n')
    proc = run_cli(queue_env, "task", "submit", "--file", str(jl))
    assert proc.returncode == 2 and "bad.jsonl:2" in proc.stderr and "JSON" in proc.stderr
    jl.write_text('{"a": 1}\n{"bad key.": 2}\n')
    proc = run_cli(queue_env, "task", "submit", "--file", str(jl))
    assert proc.returncode == 2 and "bad.jsonl:2" in proc.stderr
    proc = run_cli(queue_env, "task", "submit", "--file", str(jl), "--args", "{}")
    assert proc.returncode == 2
    proc = run_cli(queue_env, "task", "submit", "--file", "missing.jsonl")
    assert proc.returncode == 2 and "missing.jsonl" in proc.stderr
    with client_for(queue_env) as c:
        assert all_tasks(c) == []


def test_cli_ls_streams_all_pages(queue_env):
    with client_for(queue_env) as c:
        ids = api.submit_tasks([{"args": {"i": i}} for i in range(230)], client=c)
    proc = run_cli(queue_env, "task", "ls", "--fmt", "jsonl", "--page-size", "50")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sorted(json.loads(line)["task_id"] for line in lines) == sorted(ids)
    proc = run_cli(queue_env, "task", "ls", "-q", "--page-size", "100", "-f", "args.i < 120")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 120
