"""Layering rules, checked on a fresh interpreter per module: importing a module must not
load the layers it may not depend on.

* storage (and everything it imports) knows no web framework;
* the filters know neither the server nor the client;
* the client library (transport, API, loop, jobs) knows nothing of the CLI, nor the server;
* the job-side context is cheap to import (no httpx);
* the vocabulary modules import no framework at all; ``import labtasker`` imports nothing;
* the shared readers of literal text and sweeps import neither the client nor the server.

A rule names modules or whole packages (``pkg.*``: the package and every module below it);
modules that do not exist in this tree are left out, so a rule may name a package that is
being introduced."""

from __future__ import annotations

import importlib.util
import json
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

WEB = ("fastapi", "starlette", "uvicorn")
RULES = {
    "storage knows no HTTP": (
        [
            "labtasker.server.sql_storage",
            "labtasker.server.eventlog",
            "labtasker.server.notifier",
            "labtasker.server.claim",
            "labtasker.server.copydb",
            "labtasker.server.sweeper",
            "labtasker.server.settings",
        ],
        (*WEB, "labtasker.client"),
    ),
    "filters know neither server nor client": (
        ["labtasker.filters.*"],
        ("labtasker.server", "labtasker.client", *WEB),
    ),
    "the client library knows no CLI": (
        [
            "labtasker.client.transport",
            "labtasker.client.api",
            "labtasker.client.events",
            "labtasker.client.heartbeat",
            "labtasker.client.job",
            "labtasker.client.taskfile",
            "labtasker.client.loop.*",
        ],
        ("labtasker.client.cli", "labtasker.server", "typer", *WEB),
    ),
    "the job-side context imports no httpx": (
        ["labtasker.client.loop.context"],
        ("httpx", "labtasker.client.cli", "labtasker.server"),
    ),
    "the vocabulary imports no framework": (
        ["labtasker.fsm", "labtasker.fields", "labtasker.keys", "labtasker.wire"],
        ("labtasker.server", "labtasker.client", "httpx", "sqlalchemy", *WEB),
    ),
    # the shared readers of text (literals, sweeps) serve the client and the filters alike
    "the shared literal and sweep readers know neither client nor server": (
        ["labtasker.literals", "labtasker.sweep"],
        (
            "labtasker.server",
            "labtasker.client",
            "labtasker.filters",
            "httpx",
            "pydantic",
            "sqlalchemy",
            *WEB,
        ),
    ),
    # CLI start-up: the entry point loads typer and the command modules, nothing heavy (the
    # commands import what they use); httpx's own command-line tool stays out of the client
    "the CLI entry point is light": (
        ["labtasker.client.cli.main"],
        ("pydantic", "httpx", "rich", "yaml", "sqlalchemy", "pandas", "labtasker.server", *WEB),
    ),
    # a `task submit` sends a plain body: the wire models (and pydantic) load on first use
    "the client API and its configuration load no pydantic": (
        ["labtasker.client.api", "labtasker.client.config"],
        ("pydantic", "labtasker.wire"),
    ),
    "the client API loads no CLI toolkits": (
        ["labtasker.client.api"],
        ("click", "pygments", "rich", "sqlalchemy", "pandas", *WEB),
    ),
    "import labtasker is cheap": (
        ["labtasker"],
        ("httpx", "sqlalchemy", "pydantic", "labtasker.client", "labtasker.server", *WEB),
    ),
}


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _expand(names: list[str]) -> list[str]:
    out = []
    for name in names:
        if name.endswith(".*"):
            package = name[:-2]
            if not _exists(package):
                continue
            out.append(package)
            spec = importlib.util.find_spec(package)
            for info in pkgutil.walk_packages(spec.submodule_search_locations, package + "."):
                out.append(info.name)
        elif _exists(name):
            out.append(name)
    return out


def _loaded_by(module: str) -> list[str]:
    # a None entry in sys.modules blocks an import (see labtasker.client); it loads nothing
    code = (
        f"import sys, json, {module}\n"
        "print(json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"import {module} failed: {done.stderr[-2000:]}"
    return json.loads(done.stdout)


@pytest.mark.parametrize("rule", list(RULES))
def test_layering(rule):
    names, forbidden = RULES[rule]
    modules = _expand(names)
    if not modules:
        pytest.skip(f"none of {names} exists in this tree")
    with ThreadPoolExecutor(max_workers=4) as pool:
        loaded = dict(zip(modules, pool.map(_loaded_by, modules), strict=True))
    broken = {}
    for module, mods in loaded.items():
        bad = [m for m in mods if any(m == f or m.startswith(f + ".") for f in forbidden)]
        if bad:
            broken[module] = bad[:8]
    assert not broken, f"{rule}: {broken}"
