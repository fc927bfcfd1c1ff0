"""End-to-end tests of the ``labtasker`` CLI: every command runs as a real child process
(``python -m labtasker.client.cli.main``) against the real server fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from support.server import free_port

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    input: str = "",
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    """Run the CLI; stdin is a pipe holding ``input`` (so it is never a TTY)."""
    proc = subprocess.run(
        [sys.executable, "-m", "labtasker.client.cli.main", *args],
        env=env,
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    # Whatever happens, the CLI never shows a Python traceback.
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    return proc


@pytest.fixture
def cli(queue_env):
    """``cli(*args, input=..., extra_env=...)`` runs the CLI on the test queue."""

    def _run(*args: str, input: str = "", extra_env: dict | None = None):
        env = queue_env.env()
        env.update(extra_env or {})
        return run_cli(*args, env=env, cwd=queue_env.workdir, input=input)

    return _run


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"rc={proc.returncode}\nstdout={proc.stdout}\nstderr={proc.stderr}"
    return proc.stdout


def err_line(proc: subprocess.CompletedProcess) -> str:
    """The error output must be exactly one line starting with ``Error:``."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: "), proc.stderr
    return lines[0]


def submit(cli, *args: str) -> str:
    return ok(cli("task", "submit", "-q", *args)).strip()


def get_task(queue_env, task_id: str) -> dict:
    with queue_env.http() as http:
        resp = http.get(f"/api/v1/queues/me/tasks/{task_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()


def ls_yaml(cli, *args: str) -> list[dict]:
    out = ok(cli("task", "ls", "--fmt", "yaml", *args))
    return yaml.safe_load(out) or []


def ls_ids(cli, *args: str) -> list[str]:
    return ok(cli("task", "ls", "-q", *args)).split()


# ---------------------------------------------------------------------- global behaviour


def test_help_version_and_no_args(tmp_path):
    env = {**os.environ, "LABTASKER_ROOT": str(tmp_path / "none")}
    out = ok(run_cli("--help", env=env))
    for cmd in ("init", "config", "health", "loop", "queue", "task", "worker"):
        assert cmd in out
    assert "Usage" in ok(run_cli("-h", env=env))
    assert ok(run_cli("--version", env=env)).startswith("Labtasker Version: ")
    for group in ("task", "queue", "worker"):
        assert "Usage" in ok(run_cli(group, "--help", env=env))
    proc = run_cli(env=env)
    assert "Usage" in proc.stdout and proc.returncode == 2
    assert "Usage" in ok(run_cli("help", env=env))


def test_help_is_fast(tmp_path):
    env = {**os.environ, "LABTASKER_ROOT": str(tmp_path / "none")}
    t0 = time.monotonic()
    ok(run_cli("--help", env=env))
    assert time.monotonic() - t0 < 5
    code = (
        "import sys, labtasker.client.cli.main;"
        "bad = [m for m in ('httpx', 'yaml', 'labtasker.client.api') if m in sys.modules];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "[]", out


def test_missing_config_points_at_init(tmp_path):
    env = {**os.environ, "LABTASKER_ROOT": str(tmp_path / "nothing-here")}
    for args in (("task", "ls"), ("queue", "get"), ("worker", "ls"), ("health",), ("config",)):
        proc = run_cli(*args, env=env, cwd=tmp_path)
        assert proc.returncode == 255, (args, proc.stderr)
        assert "labtasker init" in err_line(proc)


def test_invalid_config_names_file_and_field(tmp_path):
    root = tmp_path / ".labtasker"
    root.mkdir()
    (root / "client.toml").write_text(
        '[endpoint]\napi_base_url = "not a url"\n[queue]\nqueue_name = "q"\npassword = "p"\n'
    )
    env = {**os.environ, "LABTASKER_ROOT": str(root)}
    proc = run_cli("task", "ls", env=env)
    assert proc.returncode == 1
    line = err_line(proc)
    assert "client.toml" in line and "endpoint.api_base_url" in line


def test_unreachable_server_is_one_line_error(queue_env):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = queue_env.root / "client.toml"
    cfg.write_text(cfg.read_text().replace(queue_env.url, f"http://127.0.0.1:{port}"))
    t0 = time.monotonic()
    proc = run_cli("task", "ls", env=queue_env.env())
    assert proc.returncode == 1
    assert "Cannot connect" in err_line(proc)
    assert time.monotonic() - t0 < 20
    proc = run_cli("health", env=queue_env.env())
    assert proc.returncode == 1 and "Cannot connect" in err_line(proc)


def test_bad_credentials(queue_env):
    cfg = queue_env.root / "client.toml"
    cfg.write_text(cfg.read_text().replace(queue_env.password, "wrong-password"))
    for args in (("task", "ls"), ("queue", "get"), ("task", "submit", "--args", "{'a': 1}")):
        proc = run_cli(*args, env=queue_env.env())
        assert proc.returncode == 1
        line = err_line(proc)
        assert "Invalid credentials" in line and "renamed" in line, line


def test_health(cli):
    out = ok(cli("health"))
    assert "healthy" in out


# ---------------------------------------------------------------------- init / config


def test_init_non_interactive_creates_queue_and_root(server, tmp_path):
    root = tmp_path / "root"
    env = {**os.environ, "LABTASKER_ROOT": str(root)}
    name = "init-" + uuid.uuid4().hex[:8]
    args = ("init", "--api-base-url", server.url, "--queue-name", name, "--password", "s3cret")
    out = ok(run_cli(*args, "--heartbeat-interval", "5", env=env))
    assert "Queue created with ID" in out
    assert "Configuration initialized successfully" in out
    text = (root / "client.toml").read_text()
    assert f'queue_name = "{name}"' in text and "heartbeat_interval = 5.0" in text
    assert f'api_base_url = "{server.url}/"' in text
    assert (root / ".gitignore").read_text().split() == ["*.toml", "logs"]
    assert (root / "logs").is_dir()
    # the new config works right away
    assert ok(run_cli("queue", "get", "-q", env=env)).strip()

    # a second init refuses to overwrite
    proc = run_cli(*args, env=env)
    assert proc.returncode == 1 and "already initialized" in err_line(proc)

    # init against an existing queue (right password) reuses it
    root2 = tmp_path / "root2"
    env2 = {**os.environ, "LABTASKER_ROOT": str(root2)}
    out = ok(run_cli(*args, env=env2))
    assert "Using existing queue" in out

    # existing name + wrong password: cannot create, clear error, no config written
    root3 = tmp_path / "root3"
    env3 = {**os.environ, "LABTASKER_ROOT": str(root3)}
    bad = ("init", "--api-base-url", server.url, "--queue-name", name, "--password", "nope")
    proc = run_cli(*bad, env=env3)
    assert proc.returncode == 1 and "already exists" in err_line(proc)
    assert not (root3 / "client.toml").exists()


def test_init_no_create_queue_and_bad_input(server, tmp_path):
    root = tmp_path / "r"
    env = {**os.environ, "LABTASKER_ROOT": str(root)}
    name = "nocreate-" + uuid.uuid4().hex[:8]
    proc = run_cli(
        "init", "--api-base-url", server.url, "--queue-name", name, "--password", "pw",
        "--no-create-queue", env=env,
    )  # fmt: skip
    ok(proc)
    assert "queue create-from-config" in proc.stderr
    with httpx.Client(base_url=server.url, auth=(name, "pw")) as http:
        assert http.get("/api/v1/queues/me").status_code == 401
    # ... and the queue can then be created from the config
    out = ok(run_cli("queue", "create-from-config", env=env))
    assert "Queue created with ID" in out

    env_new = {**os.environ, "LABTASKER_ROOT": str(tmp_path / "r2")}
    proc = run_cli("init", "--api-base-url", "ftp://x", "--queue-name", "a", "--password", "b",
                   env=env_new)  # fmt: skip
    assert proc.returncode == 2 and "--api-base-url" in err_line(proc)
    proc = run_cli("init", "--api-base-url", server.url, "--queue-name", "bad name!",
                   "--password", "b", env=env_new)  # fmt: skip
    assert proc.returncode == 2 and "--queue-name" in err_line(proc)
    # --create-queue with no server to create it on: the config is written, exit 1 saying so
    env_down = {**os.environ, "LABTASKER_ROOT": str(tmp_path / "r3")}
    proc = run_cli("init", "--api-base-url", f"http://127.0.0.1:{free_port()}", "--queue-name",
                   "a", "--password", "b", "--create-queue", env=env_down)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("Error: The queue 'a' was not created")
    assert (tmp_path / "r3" / "client.toml").exists()
    # not a terminal and nothing given: cannot prompt
    proc = run_cli("init", env=env_new)
    assert proc.returncode == 2 and "--api-base-url" in err_line(proc)
    assert not (tmp_path / "r2" / "client.toml").exists()


def test_init_and_config_refuse_a_port_out_of_range(server, tmp_path):
    """A server URL whose port is not 1..65535 is refused: by ``init --api-base-url`` as bad
    input (exit 2, one line naming the option, nothing written), and in a ``client.toml``
    when it is loaded (one line naming the file and the key) -- not a connection attempt to
    some other port (99999 used to become 99999 - 65536)."""
    env = {**os.environ, "LABTASKER_ROOT": str(tmp_path / "r")}
    for url in ("http://localhost:99999", "http://localhost:0", "http://u@localhost:70000/x"):
        proc = run_cli("init", "--api-base-url", url, "--queue-name", "a", "--password", "b",
                       env=env)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        line = err_line(proc)
        assert "--api-base-url" in line and "1 to 65535" in line, line
        assert not (tmp_path / "r" / "client.toml").exists()

    root = tmp_path / "bad"
    root.mkdir()
    (root / "client.toml").write_text(
        '[endpoint]\napi_base_url = "http://localhost:99999"\n'
        '[queue]\nqueue_name = "q"\npassword = "p"\n'
    )
    env = {**os.environ, "LABTASKER_ROOT": str(root)}
    for args in (("task", "ls"), ("queue", "get")):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 1, proc.stderr
        line = err_line(proc)
        assert "Invalid configuration file" in line and "api_base_url" in line, line
        assert "localhost:99999" in line and "1 to 65535" in line, line
        assert "Cannot connect" not in line


def test_config_show_masks_password(cli, queue_env):
    out = ok(cli("config", "--show"))
    assert queue_env.queue_name in out
    assert queue_env.password not in out
    assert "******" in out


def _editor_script(tmp_path: Path, body: str) -> str:
    script = tmp_path / f"editor_{uuid.uuid4().hex[:6]}.py"
    script.write_text(textwrap.dedent(body))
    return f"{sys.executable} {script}"


def test_config_edit(cli, queue_env, tmp_path):
    editor = _editor_script(
        tmp_path,
        """
        import sys, pathlib
        p = pathlib.Path(sys.argv[1])
        p.write_text(p.read_text().replace("heartbeat_interval = 1.0", "heartbeat_interval = 7.5"))
        """,
    )
    out = ok(cli("config", "--editor", editor))
    assert "Configuration updated successfully" in out
    assert "heartbeat_interval = 7.5" in (queue_env.root / "client.toml").read_text()

    before = (queue_env.root / "client.toml").read_text()
    breaker = _editor_script(
        tmp_path,
        """
        import sys, pathlib
        p = pathlib.Path(sys.argv[1])
        p.write_text(p.read_text().replace("heartbeat_interval = 7.5", "heartbeat_interval = -1"))
        """,
    )
    proc = cli("config", "--editor", breaker)
    assert proc.returncode == 1
    assert "Invalid configuration file" in proc.stderr and "heartbeat_interval" in proc.stderr
    assert (queue_env.root / "client.toml").read_text() == before

    # EDITOR from the environment; unchanged file -> "No changes."
    noop = _editor_script(tmp_path, "pass\n")
    assert "No changes" in ok(cli("config", extra_env={"EDITOR": noop, "VISUAL": ""}))


# ---------------------------------------------------------------------- queue


def test_queue_create_get_update_delete(cli, queue_env, server):
    name = "qc-" + uuid.uuid4().hex[:8]
    out = ok(cli("queue", "create", "--queue-name", name, "--password", "pw1",
                 "--metadata", '{"owner": "me", "tags": ["a"]}'))  # fmt: skip
    assert out.startswith("Queue created with ID: ")
    with httpx.Client(base_url=server.url, auth=(name, "pw1")) as http:
        body = http.get("/api/v1/queues/me").json()
        assert body["metadata"] == {"owner": "me", "tags": ["a"]}
    # env vars QUEUE_NAME/PASSWORD, quiet -> bare id
    name2 = "qc-" + uuid.uuid4().hex[:8]
    qid = ok(cli("queue", "create", "-q", extra_env={"QUEUE_NAME": name2, "PASSWORD": "x"}))
    assert len(qid.strip()) == 36
    # duplicate
    proc = cli("queue", "create", "--queue-name", name, "--password", "pw1")
    assert proc.returncode == 1 and "already exists" in err_line(proc)
    # bad metadata
    proc = cli(
        "queue", "create", "--queue-name", "x" + name, "--password", "p", "--metadata", "[1]"
    )
    assert proc.returncode == 2 and "--metadata" in err_line(proc)

    # get (of the configured queue)
    assert ok(cli("queue", "get", "-q")).strip() == queue_env.queue_id
    got = yaml.safe_load(ok(cli("queue", "get")))
    assert got[0]["queue_name"] == queue_env.queue_name
    got = json.loads(ok(cli("queue", "get", "--fmt", "jsonl")))
    assert got["queue_id"] == queue_env.queue_id

    # update metadata: merge, then reset with {}
    out = ok(cli("queue", "update", "--metadata", "{'k': 1}"))
    assert "Metadata: update" in out
    assert get_queue_meta(queue_env) == {"k": 1}
    out = ok(cli("queue", "update", "--metadata", "{}"))
    assert "reset to {}" in out
    assert get_queue_meta(queue_env) == {}
    assert ok(cli("queue", "update", "-q", "--metadata", "{'z': 2}")) == ""

    # rename + new password: old credentials stop working, new ones work
    new_name = queue_env.queue_name + "-r"
    proc = cli("queue", "update", "--new-queue-name", new_name, "--new-password", "newpw")
    ok(proc)
    assert "labtasker config" in proc.stderr
    with httpx.Client(base_url=server.url, auth=(new_name, "newpw")) as http:
        assert http.get("/api/v1/queues/me").status_code == 200
    cfg = queue_env.root / "client.toml"
    cfg.write_text(
        cfg.read_text()
        .replace(f'"{queue_env.queue_name}"', f'"{new_name}"')
        .replace(queue_env.password, "newpw")
    )

    # delete: refused without confirmation, done with -y
    proc = cli("queue", "delete", input="n\n")
    assert proc.returncode == 1
    assert ok(cli("queue", "get", "-q")).strip() == queue_env.queue_id
    assert "Queue deleted." in ok(cli("queue", "delete", "-y", "--cascade"))
    with httpx.Client(base_url=server.url, auth=(new_name, "newpw")) as http:
        assert http.get("/api/v1/queues/me").status_code == 401


def get_queue_meta(queue_env) -> dict:
    with queue_env.http() as http:
        return http.get("/api/v1/queues/me").json()["metadata"]


# ---------------------------------------------------------------------- task submit


def test_task_submit_variants(cli, queue_env):
    proc = cli("task", "submit", "--name", "exp1", "--", "--foo.bar", "hello", "--foo.foo=hi",
               "--lr", "0.1", "-k", "5", "--flag")  # fmt: skip
    out = ok(proc)
    # the value-less flag is dropped (as 1.0.1), with a warning
    assert "Warning: --flag without a value ignored" in proc.stderr
    import re

    m = re.fullmatch(rf"Task submitted with ID: ({UUID_RE})\n", out)
    assert m, out
    task = get_task(queue_env, m.group(1))
    assert task["args"] == {"foo": {"bar": "hello", "foo": "hi"}, "lr": 0.1, "k": "5"}
    assert task["task_name"] == "exp1"
    assert task["heartbeat_timeout"] == 60.0 and task["max_retries"] == 3
    assert task["priority"] == 10

    tid = submit(cli, "--args", '{"a": true, "b": null, "c": {"d": [1, 2]}}',
                 "--metadata", "{'tag': 'x', 'ok': True}", "--cmd", "python run.py",
                 "--priority", "20", "--max-retries", "5", "--task-timeout", "1h",
                 "--heartbeat-timeout", "90")  # fmt: skip
    assert re.fullmatch(UUID_RE, tid)
    task = get_task(queue_env, tid)
    assert task["args"] == {"a": True, "b": None, "c": {"d": [1, 2]}}
    assert task["metadata"] == {"tag": "x", "ok": True}
    assert task["cmd"] == "python run.py"
    assert task["priority"] == 20 and task["max_retries"] == 5
    assert task["task_timeout"] == 3600 and task["heartbeat_timeout"] == 90

    tid = submit(cli, "--cmd", "echo hi")
    assert get_task(queue_env, tid)["metadata"] == {}


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--args", "{'a': 1}", "--", "--b", "2"), "--args"),
        ((), "Either --cmd or args"),
        (("--args", "{'a': oops}"), "--args"),
        (("--args", "[1, 2]"), "--args"),
        (("--metadata", "nope", "--args", "{'a': 1}"), "--metadata"),
        (("--name", "bad name", "--args", "{'a': 1}"), "--task-name"),
        (("--args", "{'bad key': 1}"), "--args"),
        (("--args", "-" * 3000 + "1"), "--args"),  # deeper than Python's parser goes
        (("--", "--a", "1", "stray"), "Unexpected token: stray"),
        (("--cmd", "x", "--task-timeout", "soon"), "--task-timeout"),
        (("--cmd", "x", "--priority", "high"), "--priority"),
        # a mistyped option before `--` would silently become a task arg
        (("--grd", "lr=0.1"), "No such option: --grd (did you mean --grid?)"),
        (("--grid", "lr=0.1,0.2", "--max-retires", "1"), "(did you mean --max-retries?)"),
        (("--args", "{'a': 1}", "--uniqe"), "(did you mean --unique?)"),
    ],
)
def test_task_submit_bad_input(cli, args, needle):
    proc = cli("task", "submit", *args)
    assert proc.returncode == 2, proc.stderr
    assert needle in err_line(proc)


def test_task_submit_near_miss_names_after_the_separator_are_args(cli, queue_env):
    """After `--` every token is a task arg, even one that looks like a mistyped option."""
    tid = submit(cli, "--", "--max-retires", "1", "--gird", "2")
    assert get_task(queue_env, tid)["args"] == {"max_retires": 1, "gird": 2}


# ---------------------------------------------------------------------- task ls


def test_task_ls_formats_filters_and_paging(cli, queue_env):
    ids = []
    for i in range(7):
        ids.append(submit(cli, "--name", f"t{i}", "--metadata", f"{{'i': {i}, 'even': {i % 2 == 0}}}",
                          "--", f"--x={i}", "--nested.y", str(i * 10)))  # fmt: skip

    # yaml (default when piped): one list item per task, blank line between
    out = ok(cli("task", "ls"))
    tasks = yaml.safe_load(out)
    assert sorted(t["task_id"] for t in tasks) == sorted(ids)
    assert "\n\n- task_id:" in out
    assert list(tasks[0])[:3] == ["task_id", "queue_id", "status"]

    # jsonl: exactly one JSON object per line
    lines = ok(cli("task", "ls", "--fmt", "jsonl")).splitlines()
    assert len(lines) == 7
    assert sorted(json.loads(line)["task_id"] for line in lines) == sorted(ids)

    # table output carries the ids
    table = ok(cli("task", "ls", "--fmt", "table"))
    assert all(i in table for i in ids) and "pending" in table

    # paging: --page-size is the page size (every page is listed), --limit a cap
    assert sorted(ls_ids(cli, "--page-size", "3")) == sorted(ids)
    assert len(ls_ids(cli, "--page-size", "2", "--offset", "2")) == 5
    assert len(ls_ids(cli, "--limit", "2", "--page-size", "1")) == 2

    # selection
    assert ls_ids(cli, "--task-id", ids[3]) == [ids[3]]
    assert ls_ids(cli, "--id", ids[3]) == [ids[3]]
    assert ls_ids(cli, "--name", "t4") == [ids[4]]
    assert ls_ids(cli, "-s", "running") == []
    assert len(ls_ids(cli, "-s", "pending")) == 7
    assert ls_ids(cli, "-f", f'{{"task_id": "{ids[2]}"}}') == [ids[2]]
    assert sorted(ls_ids(cli, "-f", "{'metadata.even': true}")) == sorted(ids[0::2])
    assert sorted(ls_ids(cli, "-f", "args.x >= 5")) == sorted(ids[5:])
    assert sorted(ls_ids(cli, "-f", "args.nested.y < 20 and task_name == 't1'")) == [ids[1]]
    assert len(ls_ids(cli, "-f", 'last_modified > date("1 hour ago")')) == 7
    assert ls_ids(cli, "-f", 'last_modified > date("in 1 hour")') == []

    # -v prints the parsed filter on stderr
    proc = cli("task", "ls", "-v", "-f", "args.x == 1")
    ok(proc)
    assert "Parsed filter" in proc.stderr and '"args.x": 1' in proc.stderr

    # sorting
    assert ls_ids(cli, "-S", "args.x:desc") == ids[::-1]
    assert ls_ids(cli, "-S", "metadata.even:asc", "-S", "args.x:desc") == [
        ids[5], ids[3], ids[1], ids[6], ids[4], ids[2], ids[0]
    ]  # fmt: skip

    # a sort field that is no field orders nothing (as 1.0.1), but a typo is named
    proc = cli("task", "ls", "-q", "-S", "sumary.loss:desc")
    assert sorted(ok(proc).split()) == sorted(ids)
    assert "-S sumary.loss: no such field" in proc.stderr
    assert "Warning" not in cli("task", "ls", "-q", "-S", "args.nope", "-S", "_id").stderr

    # ids piped in
    out = ok(cli("task", "ls", "--piped-in", "-q", input=f"{ids[1]}\n{ids[2]}\n"))
    assert sorted(out.split()) == sorted(ids[1:3])
    # compat options are accepted
    assert len(ls_ids(cli, "--no-pager", "--no-ansi")) == 7
    assert len(ls_ids(cli, "--pager")) == 7


@pytest.mark.parametrize(
    "args, needle",
    [
        (("-s", "bogus"), "--status"),
        (("-S", "priority:sideways"), "--sort"),
        (("-S", ":asc"), "--sort"),
        (("-f", "args.x =="), "--extra-filter"),
        (("-f", "nosuchfield == 1"), "--extra-filter"),
        (("-f", "-" * 3000 + "1"), "--extra-filter"),
        # refused by the server (HTTP 400), not by the client: bad input all the same
        (("-f", '{"args.x": {"$where": 1}}'), "$where"),
        (("-q", "-v"), "-q"),
        (("--fmt", "xml"), "--fmt"),
        (("--limit", "0"), "--limit"),
        (("--piped-in", "-s", "pending"), "--piped-in"),
    ],
)
def test_task_ls_bad_input(cli, args, needle):
    proc = cli("task", "ls", *args)
    assert proc.returncode == 2, proc.stderr
    assert needle in err_line(proc)


NOT_A_CONDITION = (
    "Error: Invalid value for '-f' / '--extra-filter': the filter `{}` is not a condition "
    """(e.g. 'args.lr > 0.1' or '{{"args.lr": {{"$gt": 0.1}}}}')."""
)


@pytest.mark.parametrize("literal", ["1", "True", "False", "-1", "(0)"])
def test_a_filter_that_is_a_constant_is_a_usage_error(cli, queue_env, literal):
    """``-f 1`` / ``-f True`` selected every task (``{"$expr": 1}``): each command taking
    ``-f`` refuses it with one line naming it, and changes nothing; a condition still works,
    so does ``{}`` (every task, as in 1.0.1). Over the API the server refuses the constant
    filter a 1.0.1 client sends for ``-f 1`` with a 400 naming ``extra_filter``."""
    tid = submit(cli, "--args", "{'lr': 0.2}")
    before = get_task(queue_env, tid)
    for command in (
        ("task", "ls"),
        ("task", "count"),
        ("task", "update", "-y", "priority=99"),
        ("task", "requeue", "-y"),
        ("worker", "ls"),
        ("wait", "--timeout", "5"),
        ("loop", "-c", "echo %(lr)"),
    ):
        proc = cli(*command, "-f", literal)
        assert proc.returncode == 2, (command, proc.stderr)
        assert err_line(proc) == NOT_A_CONDITION.format(literal), command
        assert proc.stdout == "", command
    assert get_task(queue_env, tid) == before
    assert ls_ids(cli, "-f", "args.lr > 0.1") == [tid]
    assert ls_ids(cli, "-f", "{}") == [tid]
    assert ls_ids(cli, "-f", "args.lr > 0.1 and True") == [tid]

    with queue_env.http() as http:
        for flt in ({"$expr": True}, {"$expr": 1}, {"$expr": False}, {"$expr": "x"}):
            for path in ("tasks/count", "tasks/search", "tasks/next", "tasks/requeue",
                         "workers/search"):  # fmt: skip
                resp = http.post(f"/api/v1/queues/me/{path}", json={"extra_filter": flt})
                assert resp.status_code == 400, (path, resp.text)
                detail = resp.json()["detail"]
                assert detail.startswith("extra_filter: the filter {") and "not a condition" in (
                    detail
                ), detail
        resp = http.post("/api/v1/queues/me/tasks/count", json={"extra_filter": {}})
        assert resp.status_code == 200 and resp.json()["total"] == 1, resp.text
    assert get_task(queue_env, tid) == before


def test_task_ls_empty_queue(cli):
    assert ok(cli("task", "ls")) == ""
    assert ok(cli("task", "ls", "--fmt", "jsonl")) == ""
    assert "No results" in ok(cli("task", "ls", "--fmt", "table"))


# ---------------------------------------------------------------------- task update


def _fetch(queue_env) -> dict:
    with queue_env.http() as http:
        resp = http.post("/api/v1/queues/me/tasks/next", json={"worker_id": None})
        assert resp.status_code == 200, resp.text
        return resp.json()["task"]


def test_task_update_fields(cli, queue_env):
    a = submit(cli, "--name", "a", "--args", "{'lr': 0.1, 'model': {'depth': 3, 'width': 8}}")
    b = submit(cli, "--name", "b", "--args", "{'lr': 0.2}", "--metadata", "{'keep': 1}")

    # -u by id: patch one sub-field, replace a scalar
    assert "1 task updated." in ok(
        cli("task", "update", "--id", a, "-u", "args.model.depth=5", "-u", "priority=20")
    )
    task = get_task(queue_env, a)
    assert task["args"] == {"lr": 0.1, "model": {"depth": 5, "width": 8}}
    assert task["priority"] == 20

    # positional updates by name, dash normalisation (task-name -> task_name)
    ok(cli("task", "update", "--name", "b", "task-name=b2", "metadata.new=x"))
    task = get_task(queue_env, b)
    assert task["task_name"] == "b2" and task["metadata"] == {"keep": 1, "new": "x"}

    # replace a whole dict field
    ok(cli("task", "update", "--id", a, "-u", "args={'only': 1}"))
    assert get_task(queue_env, a)["args"] == {"only": 1}

    # by filter
    ok(cli("task", "update", "-f", "{'task_name': 'b2'}", "-u", "max_retries=9"))
    assert get_task(queue_env, b)["max_retries"] == 9

    # ids from stdin (no selection options, stdin piped)
    out = ok(cli("task", "update", "-u", "priority=1", input=f"{a}\n{b}\n"))
    assert "2 tasks updated." in out
    assert get_task(queue_env, a)["priority"] == 1 and get_task(queue_env, b)["priority"] == 1
    # empty stdin and no selection: every task only with -y (never silently "everything")
    proc = cli("task", "update", "-u", "priority=2", input="")
    assert proc.returncode == 2 and "update all 2 task(s)" in proc.stderr, proc.stderr
    assert "pass -y" in proc.stderr
    assert get_task(queue_env, a)["priority"] == 1
    assert "2 tasks updated." in ok(cli("task", "update", "-u", "priority=2", "-y"))
    assert get_task(queue_env, a)["priority"] == 2

    # nothing matched
    proc = cli("task", "update", "--name", "nope", "-u", "priority=3")
    ok(proc)
    assert "No tasks matched" in proc.stderr


def _count(queue_env, extra_filter: dict) -> int:
    with queue_env.http() as http:
        resp = http.post("/api/v1/queues/me/tasks/count", json={"extra_filter": extra_filter})
        assert resp.status_code == 200, resp.text
        return resp.json()["total"]


def test_task_update_reaches_every_match_beyond_one_request(cli, queue_env):
    """``task update`` updates every selected task, however many (the server takes 1,000 per
    request: the CLI used to update the first 1,000 and say so, leaving the rest untouched);
    ``--limit`` above 1,000 works and caps it; ids piped on stdin are looked up and sent in
    batches too (one filter with 2,100 ids is over the server's filter size limit); the
    prompt without a selection states the number that will really be updated."""
    n = 2500
    with queue_env.http() as http:
        for start in range(0, n, 1250):
            tasks = [{"args": {"a": i}} for i in range(start, start + 1250)]
            resp = http.post("/api/v1/queues/me/tasks/batch", json={"tasks": tasks})
            assert resp.status_code == 201, resp.text
    by_a = {}
    for line in ok(cli("task", "ls", "--fmt", "jsonl")).splitlines():
        task = json.loads(line)
        by_a[task["args"]["a"]] = task["task_id"]
    assert len(by_a) == n

    out = ok(cli("task", "update", "-f", "args.a < 2200", "-y", "priority=3"))
    assert out.strip() == "2200 tasks updated."
    assert _count(queue_env, {"priority": 3}) == 2200
    assert _count(queue_env, {"priority": 3, "args.a": {"$gte": 2200}}) == 0

    # --limit over 1000: the first (oldest) 1200 matches
    out = ok(cli("task", "update", "-f", "args.a >= 500", "--limit", "1200", "priority=4"))
    assert out.strip() == "1200 tasks updated."
    assert _count(queue_env, {"priority": 4}) == 1200
    assert _count(queue_env, {"priority": 4, "args.a": {"$gte": 500, "$lt": 1700}}) == 1200

    # ids on stdin, more than one request and one filter hold; an unknown id is named
    ids = [by_a[i] for i in range(100, 2200)] + ["no-such-task"]
    proc = cli("task", "update", "priority=5", input="\n".join(ids) + "\n")
    assert ok(proc).strip() == "2100 tasks updated."
    assert "Not updated (no such task): no-such-task" in proc.stderr
    assert _count(queue_env, {"priority": 5}) == 2100

    # no selection: the prompt (refused without -y off a terminal) says how many, for real
    proc = cli("task", "update", "priority=6", input="")
    assert proc.returncode == 2, proc.stderr
    assert "update all 2500 task(s) of the queue" in err_line(proc)
    proc = cli("task", "update", "--limit", "1500", "priority=6", input="")
    assert proc.returncode == 2, proc.stderr
    assert "update 1500 of the 2500 task(s) of the queue" in err_line(proc)
    assert _count(queue_env, {"priority": 6}) == 0
    out = ok(cli("task", "update", "-y", "priority=6", input=""))
    assert out.strip() == "2500 tasks updated."
    assert _count(queue_env, {"priority": 6}) == n


def test_task_update_running_task_reset(cli, queue_env):
    tid = submit(cli, "--name", "r1", "--args", "{'x': 1}")
    running = _fetch(queue_env)
    assert running["task_id"] == tid and running["status"] == "running"

    ok(cli("task", "update", "--id", tid, "--reset-pending", "-u", "task_name=r2"))
    task = get_task(queue_env, tid)
    assert task["status"] == "pending" and task["worker_id"] is None and task["retries"] == 0
    assert task["task_name"] == "r2"

    _fetch(queue_env)
    ok(cli("task", "update", "--id", tid, "-u", "status=pending"))
    task = get_task(queue_env, tid)
    assert task["status"] == "pending" and task["worker_id"] is None


def test_task_update_editor_mode(cli, queue_env, tmp_path):
    tid = submit(cli, "--name", "ed", "--args", "{'lr': 0.1}")
    editor = _editor_script(
        tmp_path,
        """
        import sys, pathlib
        p = pathlib.Path(sys.argv[1])
        text = p.read_text()
        text = text.replace("lr: 0.1", "lr: 0.5").replace("priority: 10", "priority: 15")
        p.write_text(text)
        """,
    )
    out = ok(cli("task", "update", "--id", tid, "--editor", editor))
    assert "1 task updated." in out
    task = get_task(queue_env, tid)
    assert task["args"] == {"lr": 0.5} and task["priority"] == 15


def test_task_update_editor_reads_1e_5_as_a_number(cli, queue_env, tmp_path):
    """In the editor ``lr: 1e-5`` typed in is a float, as in task and sweep files; a string
    that looks like one (``"1e-5"``) is written quoted, so it stays a string."""
    tid = submit(cli, "--args", "{'lr': 0.1, 'tag': '1e-5'}")
    editor = _editor_script(
        tmp_path,
        """
        import sys, pathlib
        p = pathlib.Path(sys.argv[1])
        p.write_text(p.read_text().replace("lr: 0.1", "lr: 1e-5"))
        """,
    )
    ok(cli("task", "update", "--id", tid, "--editor", editor))
    assert get_task(queue_env, tid)["args"] == {"lr": 1e-5, "tag": "1e-5"}


@pytest.mark.parametrize(
    "args, needle",
    [
        (("--name", "sel", "-u", "nosuch=1"), "unknown field"),
        (("--name", "sel", "-u", "priority"), "key=value"),
        (("--name", "sel", "-u", "args=3"), "must be a dict"),
        (("--name", "sel", "priority=1", "-u", "priority=2"), "not both"),
        (("--name", "sel", "-u", "task_name=bad name"), "--task-name"),
        (("-s", "bogus", "-u", "priority=1"), "--status"),
        (("--name", "sel", "status=wat"), "Invalid update 'status=wat': status must be one of"),
        (("-f", "args.x ==", "-u", "priority=1"), "--extra-filter"),
        (("--name", "sel", "-q", "-v", "-u", "priority=1"), "-q"),
    ],
)
def test_task_update_bad_input(cli, queue_env, args, needle):
    tid = submit(cli, "--name", "sel", "--args", "{'x': 1}")
    before = get_task(queue_env, tid)
    proc = cli("task", "update", *args)
    assert proc.returncode == 2, proc.stderr
    assert needle in err_line(proc)
    assert get_task(queue_env, tid) == before


def test_task_update_refuses_to_leave_a_task_with_neither_args_nor_cmd(cli, queue_env, tmp_path):
    """``task submit`` refuses a task without args and cmd; ``task update args={}`` on a
    task without a cmd made one (accepted silently). Now the CLI refuses it (exit 2, one
    line naming the update), the editor says so and offers to edit again, and the server
    answers 400 naming ``args``; a task with a cmd may still have its args emptied."""
    bare = submit(cli, "--args", "{'x': 1}")
    with_cmd = submit(cli, "--cmd", "echo hi", "--args", "{'y': 2}")
    before = get_task(queue_env, bare)

    proc = cli("task", "update", "-y", "--id", bare, "args={}")
    assert proc.returncode == 2, proc.stderr
    assert err_line(proc) == (
        "Error: Invalid update 'args={}': either cmd or args must be specified, as for "
        f"`task submit` (task {bare} would have neither)."
    )
    proc = cli("task", "update", "-y", "-u", "args={}")  # both tasks selected
    assert proc.returncode == 2 and f"(task {bare} would have neither)" in err_line(proc)
    assert get_task(queue_env, bare) == before

    # patching args or emptying them alongside a cmd stays allowed
    ok(cli("task", "update", "--id", bare, "args={}", "args.z=3"))
    assert get_task(queue_env, bare)["args"] == {"z": 3}
    ok(cli("task", "update", "--id", with_cmd, "args={}"))
    assert get_task(queue_env, with_cmd)["args"] == {}
    proc = cli("task", "update", "--id", with_cmd, "cmd=None")
    assert proc.returncode == 2 and "either cmd or args" in err_line(proc)
    before = get_task(queue_env, bare)

    editor = _editor_script(
        tmp_path,
        """
        import sys, pathlib
        p = pathlib.Path(sys.argv[1])
        import yaml
        tasks = yaml.safe_load(p.read_text())
        tasks[0]["args"] = {}
        p.write_text(yaml.safe_dump(tasks))
        """,
    )
    proc = cli("task", "update", "--id", bare, "--editor", editor, input="n\n")
    assert proc.returncode == 1, proc.stderr
    assert f"Error: invalid edit: task {bare}: either cmd or args must be specified" in proc.stderr
    assert get_task(queue_env, bare) == before

    with queue_env.http() as http:
        body = [{"task_id": bare, "args": {}, "replace_fields": ["args"]}]
        resp = http.put("/api/v1/queues/me/tasks", json=body, params={"reset_pending": False})
        assert resp.status_code == 400, resp.text
        assert "args: either args or cmd must be provided" in resp.json()["detail"]
    assert get_task(queue_env, bare) == before


def test_editing_without_a_terminal_or_an_editor_is_a_usage_error(cli, queue_env):
    """No ``--editor`` and no ``$EDITOR``/``$VISUAL``: the default editor (vim...) would wait
    on a pipe forever, so the command says what to do instead."""
    tid = submit(cli, "--args", "{'x': 1}")
    before = get_task(queue_env, tid)
    no_editor = {"EDITOR": "", "VISUAL": ""}
    proc = cli("task", "update", "--id", tid, extra_env=no_editor)
    assert proc.returncode == 2 and "Editing needs a terminal" in err_line(proc)
    proc = cli("config", extra_env=no_editor)
    assert proc.returncode == 2 and "Editing needs a terminal" in err_line(proc)
    assert get_task(queue_env, tid) == before


def test_task_update_of_an_unknown_id_fails(cli, queue_env):
    proc = cli("task", "update", "--id", "no-such-task", "priority=5")
    assert proc.returncode == 1 and "Task no-such-task not found." in err_line(proc)
    # a selection by name or filter that matches nothing is not an error
    proc = cli("task", "update", "--name", "no-such-name", "priority=5")
    assert proc.returncode == 0 and "No tasks matched." in proc.stderr


# ---------------------------------------------------------------------- task delete


def test_task_delete(cli, queue_env):
    a = submit(cli, "--args", "{'x': 1}")
    b = submit(cli, "--args", "{'x': 2}")
    c = submit(cli, "--args", "{'x': 3}")
    assert ok(cli("task", "delete", a, "-y")).strip() == f"Task {a} deleted."

    # confirmation answered on stdin
    proc = cli("task", "delete", b, input="n\n")
    assert proc.returncode == 1
    assert sorted(ls_ids(cli)) == sorted([b, c])
    assert f"Task {b} deleted." in ok(cli("task", "delete", b, input="y\n"))

    # unknown id
    proc = cli("task", "delete", "no-such-id", "-y")
    assert proc.returncode == 1 and "not found" in err_line(proc)

    # ids from stdin need -y
    proc = cli("task", "delete", input=f"{c}\n")
    assert proc.returncode == 2 and "-y" in err_line(proc)
    assert f"Task {c} deleted." in ok(cli("task", "delete", "-y", input=f"{c}\n"))
    assert ls_ids(cli) == []


# ---------------------------------------------------------------------- task cancel


def _run_to_end(queue_env, task_id: str, status: str) -> None:
    """Claim ``task_id`` (the only pending task) and report ``status`` for that run."""
    with queue_env.http() as http:
        run = http.post("/api/v1/queues/me/tasks/next", json={}).json()["task"]
        assert run["task_id"] == task_id
        resp = http.post(f"/api/v1/queues/me/tasks/{task_id}/status",
                         json={"status": status, "run_id": run["run_id"]})  # fmt: skip
        assert resp.status_code == 200, resp.text


def test_task_cancel(cli, queue_env):
    won = submit(cli, "--args", "{'x': 1}")
    _run_to_end(queue_env, won, "success")
    lost = submit(cli, "--args", "{'x': 2}", "--max-retries", "1")
    _run_to_end(queue_env, lost, "failed")
    a = submit(cli, "--args", "{'x': 3}")
    b = submit(cli, "--args", "{'x': 4}")
    c = submit(cli, "--args", "{'x': 5}")

    assert ok(cli("task", "cancel", a, "-y")).strip() == f"Task {a} cancelled (was pending)."
    assert get_task(queue_env, a)["status"] == "cancelled"
    # again: nothing to do, not an error
    assert ok(cli("task", "cancel", a, "-y")).strip() == f"Task {a} was already cancelled."

    # ended tasks and unknown ids are errors, the others are still cancelled
    proc = cli("task", "cancel", won, b, lost, "no-such-id", "-y")
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [f"Task {b} cancelled (was pending)."]
    assert proc.stderr.splitlines() == [
        f"Error: Task {won} already ended (success); not cancelled.",
        f"Error: Task {lost} already ended (failed); not cancelled.",
        "Error: Task no-such-id not found.",
    ]
    assert [get_task(queue_env, t)["status"] for t in (won, lost, b)] == [
        "success", "failed", "cancelled"]  # fmt: skip

    # confirmation answered on stdin
    proc = cli("task", "cancel", c, input="n\n")
    assert proc.returncode == 1 and get_task(queue_env, c)["status"] == "pending"
    # ids from stdin need -y; an empty stdin cancels nothing
    proc = cli("task", "cancel", input=f"{c}\n")
    assert proc.returncode == 2 and "-y" in err_line(proc)
    proc = cli("task", "cancel", "-y", input="\n")
    assert proc.returncode == 0 and "nothing to cancel" in proc.stderr
    assert get_task(queue_env, c)["status"] == "pending"
    pending = ok(cli("task", "ls", "-q", "-s", "pending"))
    assert pending.split() == [c]
    assert ok(cli("task", "cancel", "-y", input=pending)).strip() == (
        f"Task {c} cancelled (was pending).")  # fmt: skip
    assert ls_ids(cli, "-s", "pending") == []


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_task_cancel_stops_the_running_job_of_a_loop(cli, queue_env):
    """A real `labtasker loop` runs `sleep 600`; `task cancel` makes the loop kill the job
    within a few heartbeat intervals (1 s in the test client.toml), the task stays
    cancelled (not reported failed), the worker is not charged and the loop moves on."""
    interval = 1.0
    victim = submit(cli, "--priority", "20", "--", "--s", "600")
    follower = submit(cli, "--", "--s", "0")
    pids = queue_env.workdir / "pids"
    pids.mkdir()
    loop = subprocess.Popen(
        [sys.executable, "-m", "labtasker.client.cli.main", "loop",
         "-c", f"echo $$ > {pids}/$LABTASKER_TASK_ID; exec sleep %(s)"],
        env=queue_env.env(), cwd=queue_env.workdir, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (pids / victim).exists() or not (pids / victim).read_text().strip():
            assert time.monotonic() < deadline and loop.poll() is None, "job did not start"
            time.sleep(0.05)
        job_pid = int((pids / victim).read_text())
        time.sleep(2 * interval)  # a few heartbeats went through: the job is healthy
        assert _alive(job_pid)
        running = get_task(queue_env, victim)
        assert running["status"] == "running" and running["worker_id"]

        started = time.monotonic()
        proc = cli("task", "cancel", victim, "-y")
        t0 = time.monotonic()
        assert ok(proc).strip() == f"Task {victim} cancelled (was running)."
        while _alive(job_pid) and time.monotonic() - t0 < 30:
            time.sleep(0.05)
        gone_after = time.monotonic() - t0
        _, err = loop.communicate(timeout=60)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    print(
        f"job gone {gone_after:.2f} s after `task cancel` returned "
        f"({t0 - started:.2f} s for the command itself)"
    )
    assert not _alive(job_pid)
    assert gone_after < 3 * interval + 1, gone_after
    assert loop.returncode == 0, err
    assert "no longer ours" in err
    task = get_task(queue_env, victim)
    assert (task["status"], task["retries"], task["worker_id"]) == ("cancelled", 0, None)
    assert "labtasker_exception" not in task["summary"]
    assert get_task(queue_env, follower)["status"] == "success"  # the loop moved on
    with queue_env.http() as http:
        worker = http.get(f"/api/v1/queues/me/workers/{running['worker_id']}").json()
    assert (worker["status"], worker["retries"]) == ("active", 0)


def test_pipe_ls_into_update_and_delete(cli, queue_env):
    ids = [submit(cli, "--args", f"{{'x': {i}}}") for i in range(3)]
    failed_ids = ok(cli("task", "ls", "-q", "-f", "args.x >= 1"))
    ok(cli("task", "update", "-u", "priority=42", input=failed_ids))
    assert [get_task(queue_env, i)["priority"] for i in ids] == [10, 42, 42]
    ok(cli("task", "delete", "-y", input=failed_ids))
    assert ls_ids(cli) == [ids[0]]


# ---------------------------------------------------------------------- workers


def test_worker_commands(cli, queue_env):
    out = ok(cli("worker", "create"))
    assert out.startswith("Worker created with ID: ")
    w1 = out.split(": ")[1].strip()
    w2 = ok(cli("worker", "create", "-q", "--name", "gpu-0", "--metadata", "{'gpu': 0}",
                "--max-retries", "5")).strip()  # fmt: skip

    workers = yaml.safe_load(ok(cli("worker", "ls")))
    assert {w["worker_id"] for w in workers} == {w1, w2}
    w2_doc = next(w for w in workers if w["worker_id"] == w2)
    assert w2_doc["worker_name"] == "gpu-0" and w2_doc["metadata"] == {"gpu": 0}
    assert w2_doc["max_retries"] == 5
    assert ok(cli("worker", "ls", "-q", "--name", "gpu-0")).split() == [w2]
    assert ok(cli("worker", "ls", "-q", "--id", w1)).split() == [w1]
    assert len(ok(cli("worker", "ls", "--fmt", "jsonl", "--page-size", "1")).splitlines()) == 2
    assert len(ok(cli("worker", "ls", "--fmt", "jsonl", "--limit", "1")).splitlines()) == 1
    assert w1 in ok(cli("worker", "ls", "--fmt", "table", "--pager"))
    assert ok(cli("worker", "ls", "-q", "-f", "{'metadata.gpu': 0}")).split() == [w2]

    # suspend / reactivate
    out = ok(cli("worker", "report", w1, "suspended"))
    assert out.strip() == f"Worker {w1} status updated to suspended."
    assert ok(cli("worker", "ls", "-q", "-s", "suspended")).split() == [w1]
    # suspending a suspended worker is a no-op that says so
    assert (
        ok(cli("worker", "report", w1, "suspended")).strip() == f"Worker {w1} is already suspended."
    )
    ok(cli("worker", "report", w1, "active"))
    proc = cli("worker", "report", w1, "sleeping")
    assert proc.returncode == 2 and "STATUS" in err_line(proc).upper()
    proc = cli("worker", "report", "no-such-worker", "active")
    assert proc.returncode == 1 and "not found" in err_line(proc).lower()

    # delete
    assert ok(cli("worker", "delete", w1, "-y")).strip() == f"Worker {w1} deleted."
    proc = cli("worker", "delete", "no-such-worker", "-y")
    assert proc.returncode == 1 and "not found" in err_line(proc)
    ok(cli("worker", "delete", "-y", "--no-cascade-update", input=w2 + "\n"))
    assert ok(cli("worker", "ls")) == ""
    assert "No results" in ok(cli("worker", "ls", "--fmt", "table"))


def test_worker_bad_input(cli):
    proc = cli("worker", "create", "--metadata", "{'a':")
    assert proc.returncode == 2 and "--metadata" in err_line(proc)
    proc = cli("worker", "create", "--max-retries", "0")
    assert proc.returncode == 2 and "--max-retries" in err_line(proc)
    proc = cli("worker", "ls", "-s", "sleepy")
    assert proc.returncode == 2 and "--status" in err_line(proc)


# ---------------------------------------------------------------------- terminal (pty) mode


def run_in_pty(args: list[str], env: dict, cwd: Path, answers=(), timeout: float = 60):
    """Run the CLI on a pseudo-terminal, answering prompts: ``answers`` is a list of
    ``(prompt substring, reply)``. Returns ``(exit code, output)``."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            os.chdir(cwd)
            os.execve(sys.executable, [sys.executable, "-m", "labtasker.client.cli.main", *args],
                      {**env, "COLUMNS": "160"})  # fmt: skip
        finally:
            os._exit(127)
    pending = list(answers)
    buf, seen = b"", 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            buf += data
        if pending and pending[0][0].encode() in buf[seen:]:
            seen = buf.index(pending[0][0].encode(), seen) + len(pending[0][0])
            time.sleep(0.2)
            os.write(fd, pending.pop(0)[1].encode() + b"\n")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), buf.decode(errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")
def test_interactive_init_and_table_on_terminal(server, tmp_path):
    root = tmp_path / "tty-root"
    env = {**os.environ, "LABTASKER_ROOT": str(root)}
    name = "tty-" + uuid.uuid4().hex[:8]
    code, out = run_in_pty(
        ["init"],
        env,
        tmp_path,
        answers=[
            ("server", "not-a-url"),
            ("server", server.url),
            ("Queue name", "bad name"),
            ("Queue name", name),
            ("Queue password", "pw"),
            ("Repeat", "pw"),
            ("create this queue", "y"),
        ],
    )
    assert code == 0, out
    assert "not a valid http(s) URL" in out
    assert "Queue created with ID" in out and "Configuration initialized successfully" in out
    assert "Traceback" not in out
    assert f'queue_name = "{name}"' in (root / "client.toml").read_text()

    tid = ok(run_cli("task", "submit", "-q", "--name", "on-tty", "--args", "{'lr': 0.1}",
                     env=env)).strip()  # fmt: skip
    code, out = run_in_pty(["task", "ls"], env, tmp_path)
    assert code == 0, out
    assert tid in out and "on-tty" in out and "pending" in out
    assert "Status" in out and "Args" in out  # a table, not YAML
    assert "task_id:" not in out
