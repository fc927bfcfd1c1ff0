"""Shared fixtures: a real ``labtasker-server`` process on 127.0.0.1 on a scratch database of
the backend under test, per-test queues with a client root (``.labtasker/client.toml``)
pointing at it, and the app in-process (``asgi_app``). The machinery behind them is the
``support`` package; import it from there (``from support.server import ServerProcess``).
"""

from __future__ import annotations

import signal
import uuid

import httpx
import pytest
from support.server import (  # noqa: F401  (PG_ADMIN_URL, free_port: names tests used from here)
    BACKEND,
    PG_ADMIN_URL,
    QueueEnv,
    ScratchDatabases,
    ServerProcess,
    free_port,
    write_client_toml,
)

# Fixtures through which a test reaches the storage backend under test.
BACKEND_FIXTURES = frozenset({"server", "queue_env", "scratch_dbs"})


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "backend: runs on every storage backend although it uses no backend fixture"
    )
    config.addinivalue_line(
        "markers",
        "client_side: runs on SQLite only although it uses a server: it tests the client "
        "(loop, slots, process tree, CLI parsing), whose requests the storage tests already "
        "cover on every backend",
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item (``item.rep_setup``/``rep_call``), so that a
    fixture's teardown can tell whether its test failed (the dashboard tests then save a
    screenshot)."""
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report


def pytest_collection_modifyitems(config, items):
    """On a non-default backend run only the tests that touch storage (those using a backend
    fixture, or marked ``backend``): the others (parsers, templates, the embedded demo...)
    do not depend on the backend and already ran on SQLite. Tests marked ``client_side``
    use a server but test the client: they run on SQLite only too."""
    if BACKEND == "sqlite":
        return
    keep, skip = [], []
    for item in items:
        touches = BACKEND_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        touches = (touches or item.get_closest_marker("backend")) and not (
            item.get_closest_marker("client_side")
        )
        (keep if touches else skip).append(item)
    if skip:
        config.hook.pytest_deselected(items=skip)
        items[:] = keep


@pytest.fixture(scope="session")
def scratch_dbs(tmp_path_factory):
    dbs = ScratchDatabases(tmp_path_factory)
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def server(tmp_path_factory, scratch_dbs) -> ServerProcess:
    """One real server for the whole session on a scratch database of the backend under test
    (an SQLite file by default); the timeout sweep runs every 0.5 s."""
    workdir = tmp_path_factory.mktemp("server")
    srv = ServerProcess(
        db_url=scratch_dbs.new_url(), workdir=workdir, extra_env={"PERIODIC_TASK_INTERVAL": "0.5"}
    )
    srv.start()
    yield srv
    srv.kill(signal.SIGTERM)


@pytest.fixture
def queue_env(server, tmp_path, monkeypatch) -> QueueEnv:
    """A new queue and a client root in ``tmp_path/.labtasker``; cwd and LABTASKER_ROOT set."""
    name = "q-" + uuid.uuid4().hex[:12]
    password = "pw-" + uuid.uuid4().hex[:8]
    resp = httpx.post(  # a generous timeout: the password KDF is slow on a loaded machine
        server.url + "/api/v1/queues",
        json={"queue_name": name, "password": password},
        timeout=60,
    )
    assert resp.status_code == 201, resp.text
    root = tmp_path / ".labtasker"
    write_client_toml(root, server.url, name, password)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABTASKER_ROOT", str(root))
    for var in ("LABTASKER_TASK_ID", "LABTASKER_WORKER_ID", "LABTASKER_LOG_DIR"):
        monkeypatch.delenv(var, raising=False)
    return QueueEnv(server.url, name, password, resp.json()["queue_id"], root, tmp_path)


@pytest.fixture(scope="session")
def anyio_backend():
    """Async tests (``@pytest.mark.anyio``) run on asyncio."""
    return "asyncio"


@pytest.fixture(scope="module")
async def asgi_app(scratch_dbs):
    """The app in-process on a scratch database of the backend under test, lifespan running,
    behind an httpx ``ASGITransport`` (``support.app.InProcessApp``: ``.client``,
    ``await .queue()`` for a fresh queue per test). One app per test module. For
    ``@pytest.mark.anyio`` tests of routes."""
    from support.app import running_app

    async with running_app(scratch_dbs.new_url()) as running:
        yield running


@pytest.fixture(scope="module")
async def asgi_queue(asgi_app):
    """``(queue_id, client authenticated as it)``: one queue on ``asgi_app`` shared by the
    tests of a module (a queue costs two Argon2 computations); tests keep to their own tasks."""
    return await asgi_app.queue()
