"""The pydantic-free paths of a CLI call (``task submit``'s body, the connection settings of
``client.toml``, typer's coercion of option values) give what the pydantic models give, and
leave everything else to the models, whose errors then read as before. Checked against the
models themselves and, end to end, against a real server."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from labtasker.__version__ import __version__
from labtasker.client import api
from labtasker.client.config import ConfigError, load_client_config, load_connection
from labtasker.wire import TaskSubmitRequest

# Tests of the client against a real server: SQLite only (conftest, ``client_side``).
pytestmark = pytest.mark.client_side

BASE = dict(
    task_name=None,
    args={"i": 1},
    metadata=None,
    cmd=None,
    heartbeat_timeout=None,
    task_timeout=None,
    max_retries=3,
    priority=10,
    unique=False,
)

PLAIN = [
    {},
    {"task_name": "exp-1", "metadata": {"tag": "a", "n": {"x": [1, 2.5, None, True]}}},
    {"args": None, "cmd": "python train.py"},
    {"cmd": ["python", "-c", "1"], "heartbeat_timeout": 60, "task_timeout": 3600},
    {"heartbeat_timeout": 1.5, "max_retries": 0, "priority": -3, "unique": True},
    {"priority": 2**31 - 1, "heartbeat_timeout": 10 * 365 * 86400, "task_timeout": 86400},
    {"args": {"a": {"b": {"c": "d"}}, "unicode": "é"}},
]
NOT_PLAIN = [  # the model decides: it converts or refuses
    {"task_timeout": 3.0},
    {"args": {"x": float("nan")}},
    {"args": {"x": (1, 2)}},
    {"args": {"bad key": 1}},
    {"task_name": ""},
    {"task_name": "a b"},
    {"heartbeat_timeout": 0},
    {"max_retries": -1},
    {"priority": True},
    {"priority": 2**31},
    {"max_retries": 2**31},
    {"heartbeat_timeout": 10 * 365 * 86400 + 1},
    {"task_timeout": 10 * 365 * 86400 + 1},
    {"args": {}, "cmd": None},
]


@pytest.mark.parametrize("change", PLAIN)
def test_plain_submit_body_is_the_models_body(change):
    fields = {**BASE, **change}
    model = TaskSubmitRequest(**fields).model_dump(mode="json", exclude_none=True)
    model["client_version"] = __version__
    assert api._plain_submit_body(fields) == model


def test_plain_limits_are_the_models():
    from labtasker import wire

    assert (api._INT32, api._MAX_SECONDS) == (wire.INT32, wire.MAX_SECONDS)


@pytest.mark.parametrize("change", NOT_PLAIN)
def test_other_submit_bodies_go_to_the_model(change):
    assert api._plain_submit_body({**BASE, **change}) is None


VALID = [
    '[endpoint]\napi_base_url = "http://localhost:9321"\n[queue]\nqueue_name = "q-1"\n'
    'password = "pw"\n',
    'display_server_notifications_level = "none"\nversion_check = false\nextra = 1\n'
    '[endpoint]\napi_base_url = " https://h.example:8443/x "\n[queue]\nqueue_name = "q"\n'
    'password = "p"\n[task]\nheartbeat_interval = 5\n',
    # not plain (cli_plugins, a float given as text): the models read these
    '[endpoint]\napi_base_url = "http://h/"\n[queue]\nqueue_name = "q"\npassword = "p"\n'
    '[cli_plugins]\ndefault = "selected"\n',
]
INVALID = [
    '[endpoint]\napi_base_url = "ftp://h"\n[queue]\nqueue_name = "q"\npassword = "p"\n',
    '[endpoint]\napi_base_url = "http://h"\n[queue]\nqueue_name = "a b"\npassword = "p"\n',
    '[endpoint]\napi_base_url = "http://h"\n[queue]\nqueue_name = "q"\npassword = ""\n',
    '[endpoint]\napi_base_url = "http://h"\n[queue]\nqueue_name = "q"\npassword = "p"\n'
    "[task]\nheartbeat_interval = 0\n",
    '[endpoint]\napi_base_url = "http://h"\n',
    'display_server_notifications_level = "loud"\n[endpoint]\napi_base_url = "http://h"\n'
    '[queue]\nqueue_name = "q"\npassword = "p"\n',
]


@pytest.mark.parametrize("text", VALID)
def test_connection_settings_are_the_models(tmp_path, text):
    path = tmp_path / "client.toml"
    path.write_text(text)
    cfg = load_client_config(path)
    conn = load_connection(path)
    assert (
        conn.api_base_url,
        conn.queue_name,
        conn.password,
        conn.notifications_level,
        conn.heartbeat_interval,
    ) == (
        cfg.endpoint.api_base_url,
        cfg.queue.queue_name,
        cfg.queue.password,
        cfg.display_server_notifications_level,
        cfg.task.heartbeat_interval,
    )


@pytest.mark.parametrize("text", INVALID)
def test_invalid_connection_settings_fail_as_the_models(tmp_path, text):
    path = tmp_path / "client.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as model_error:
        load_client_config(path)
    with pytest.raises(ConfigError) as plain_error:
        load_connection(path)
    assert str(plain_error.value) == str(model_error.value)


def _cli(root, *args):
    env = {**os.environ, "LABTASKER_ROOT": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "labtasker.client.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_submit_loads_no_pydantic_and_stores_the_same_task(queue_env):
    """One ``task submit`` against the real server: no pydantic in the process, and the task
    reads back with the given fields; typer's plain coercion of ``--priority``/``--max-retries``
    gives ints, and a bad value is still refused by typer's own message."""
    root = queue_env.root
    code = (
        "import sys, runpy\n"
        "sys.argv = ['labtasker', 'task', 'submit', '--quiet', '--priority', '20', "
        "'--max-retries', '1', '--name', 'plain', '--args', '{\"i\": 7, \"x\": [1.5]}']\n"
        "try:\n    runpy.run_module('labtasker.client.cli.main', run_name='__main__')\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic'))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LABTASKER_ROOT": str(root)},
    )
    assert done.returncode == 0, done.stderr
    task_id, loaded = done.stdout.splitlines()
    assert loaded == "LOADED []"
    with queue_env.http() as http:
        resp = http.get(f"/api/v1/queues/me/tasks/{task_id}")
    assert resp.status_code == 200, resp.text
    task = resp.json()
    assert (task["args"], task["priority"], task["max_retries"], task["task_name"]) == (
        {"i": 7, "x": [1.5]},
        20,
        1,
        "plain",
    )
    bad = _cli(root, "task", "submit", "--priority", "high", "--args", '{"i": 1}')
    assert bad.returncode == 2 and "--priority" in bad.stderr, bad.stderr
