"""Layering rules, checked on a fresh interpreter per module: importing a module must not
load the layers it may not depend on (storage knows no web framework, the filters know
neither server nor client, the client library knows nothing of the CLI, the job-side API is
cheap to import).

Each rule lists the modules it applies to; modules that do not exist (yet) are skipped, so
the rules can name the packages that are being introduced."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

RULES = [
    # (module, forbidden prefixes)
    ("labtasker.server.sql_storage", ("fastapi", "starlette", "labtasker.client")),
    ("labtasker.server.eventlog", ("fastapi", "starlette")),
    ("labtasker.server.notifier", ("fastapi", "starlette")),
    ("labtasker.server.claim", ("fastapi", "starlette")),
    ("labtasker.server.copydb", ("fastapi", "starlette")),
    ("labtasker.filters", ("labtasker.server", "labtasker.client")),
    ("labtasker.filters.mongo_sql", ("labtasker.server", "labtasker.client")),
    ("labtasker.filters.pyquery", ("labtasker.server", "labtasker.client")),
    ("labtasker.wire", ("labtasker.server", "labtasker.client", "fastapi")),
    ("labtasker.fsm", ("labtasker.server", "labtasker.client", "fastapi")),
    ("labtasker.client.api", ("labtasker.client.cli", "labtasker.server", "typer")),
    ("labtasker.client.transport", ("labtasker.client.cli", "labtasker.server", "typer")),
    ("labtasker.client.runner", ("labtasker.client.cli", "labtasker.server", "typer")),
    ("labtasker.client.loop", ("labtasker.client.cli", "labtasker.server", "typer")),
    ("labtasker.client.loop.runner", ("labtasker.client.cli", "labtasker.server", "typer")),
    ("labtasker.client.loop.context", ("httpx", "labtasker.client.cli", "labtasker.server")),
    ("labtasker", ("httpx", "fastapi", "sqlalchemy", "labtasker.client", "labtasker.server")),
]


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("module, forbidden", RULES, ids=[m for m, _ in RULES])
def test_module_does_not_load_forbidden_layers(module, forbidden):
    if not _exists(module):
        pytest.skip(f"{module} does not exist in this tree")
    code = (f"import sys, json, {module}\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    loaded = json.loads(out)
    bad = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden)]
    assert not bad, f"importing {module} loads {bad}"
