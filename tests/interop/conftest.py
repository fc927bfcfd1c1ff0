"""Fixtures of the interoperability tests (``tests/interop``).

The tests need a venv with ``labtasker==1.0.1`` (``scripts/interop.sh`` creates it); every
module skips itself with the reason when it is missing, so the main suite does not depend
on it. The server under test is this checkout's ``labtasker-server`` (run by the interpreter
running pytest, i.e. ``.venv``) on a temporary SQLite file and a free port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import httpx
import pytest
from interop_support import Client, interop_venv, our_bindir


def _server_process_class():
    from support.server import ServerProcess  # tests/ is on sys.path (pyproject pythonpath)

    return ServerProcess


def _reference_server_class():
    """A ``ServerProcess`` running the 1.0.1 server of the interop venv (embedded mode)."""
    base = _server_process_class()

    class ReferenceServer(base):
        def start(self, timeout: float = 60.0):
            self.port = self.port or free_port()
            log = open(self.workdir / f"server-{self.port}.log", "ab")
            self.proc = subprocess.Popen(
                [
                    str(interop_venv() / "bin" / "labtasker-server"),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--db-mode",
                    "embedded",
                    "--db-path",
                    str(self.workdir / "labtasker_db.json"),
                ],
                cwd=self.workdir,
                env={**os.environ, **self.extra_env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"reference server exited: {self.log_text()}")
                try:
                    if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            raise RuntimeError("reference server did not start: " + self.log_text())

    return ReferenceServer


@pytest.fixture(scope="session")
def interop_server(tmp_path_factory):
    """Our server on a fresh SQLite file; timeouts are swept every 0.5 s.

    ``LABTASKER_INTEROP_SERVER=v1`` runs the suite against the 1.0.1 server of the interop
    venv instead: a check of the tests themselves (they encode 1.0.1 behaviour, so apart from
    the documented 1.0.1 bugs they must pass there too).
    """
    workdir = tmp_path_factory.mktemp("interop-server")
    env = {"PERIODIC_TASK_INTERVAL": "0.5"}
    if os.environ.get("LABTASKER_INTEROP_SERVER") == "v1":
        server = _reference_server_class()(db_url="", workdir=workdir, extra_env=env)
    else:
        server = _server_process_class()(
            db_url=f"sqlite:///{workdir / 'labtasker.db'}", workdir=workdir, extra_env=env
        )
    server.start()
    yield server
    server.kill(signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLIENTS = {
    "v1": lambda: Client("v1", interop_venv() / "bin"),
    "ours": lambda: Client("ours", our_bindir()),
}


@pytest.fixture(scope="module", params=list(CLIENTS))
def client(request) -> Client:
    """The client under test: ``v1`` (labtasker 1.0.1 from PyPI) or ``ours`` (this checkout)."""
    return CLIENTS[request.param]()
