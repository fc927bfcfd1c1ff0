"""Fixtures of the interoperability tests (``tests/interop``).

The tests need a venv with ``labtasker==1.0.1`` (``scripts/interop.sh`` creates it); every
module skips itself with the reason when it is missing, so the main suite does not depend
on it. The server under test is this checkout's ``labtasker-server`` (run by the interpreter
running pytest, i.e. ``.venv``) on a temporary SQLite file and a free port.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
from pathlib import Path

import pytest
from interop_support import Client, interop_venv, our_bindir


def _server_process_class():
    # tests/conftest.py is shadowed as module "conftest" by this file: load it by path.
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("_labtasker_tests_conftest", path)
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while executing
        spec.loader.exec_module(module)
    return module.ServerProcess


@pytest.fixture(scope="session")
def interop_server(tmp_path_factory):
    """Our server on a fresh SQLite file; timeouts are swept every 0.5 s."""
    workdir = tmp_path_factory.mktemp("interop-server")
    server = _server_process_class()(
        db_url=f"sqlite:///{workdir / 'labtasker.db'}", workdir=workdir,
        extra_env={"PERIODIC_TASK_INTERVAL": "0.5"})
    server.start()
    yield server
    server.kill(signal.SIGTERM)


CLIENTS = {
    "v1": lambda: Client("v1", interop_venv() / "bin"),
    "ours": lambda: Client("ours", our_bindir()),
}


@pytest.fixture(scope="module", params=list(CLIENTS))
def client(request) -> Client:
    """The client under test: ``v1`` (labtasker 1.0.1 from PyPI) or ``ours`` (this checkout)."""
    return CLIENTS[request.param]()
