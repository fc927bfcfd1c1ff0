"""Helpers of the interoperability tests: the two clients, a client project directory, and
checks done directly over HTTP (independent of the client under test).

* ``Client``: a labtasker client installation run as child processes -- ``v1`` is
  ``labtasker==1.0.1`` from PyPI in the interop venv (``$LABTASKER_INTEROP_VENV``, default
  ``<repo>/.venv-interop``), ``ours`` is this checkout installed in the venv running pytest.
  The client's ``bin`` directory is put first on ``PATH`` (as an activated venv would), so
  ``python`` inside ``labtasker loop -- python job.py`` is that venv's interpreter.
* ``Project``: a working directory holding ``.labtasker/client.toml`` written the way
  ``labtasker init`` of 1.0.1 writes it, for one queue on the server under test.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
INTEROP_VENV_VAR = "LABTASKER_INTEROP_VENV"
V1_VERSION = "1.0.1"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
DEMOS = Path(__file__).resolve().parent / "demos"
# Skip reason of the event steps until the server has GET /api/v1/queues/me/events.
EVENTS_MISSING = (
    "server has no events endpoint yet (GET /api/v1/queues/me/events -> 404); event "
    "streaming belongs to another issue -- this step runs automatically once it exists"
)


def interop_venv() -> Path:
    return Path(os.environ.get(INTEROP_VENV_VAR) or REPO / ".venv-interop").absolute()


@functools.lru_cache(maxsize=1)
def v1_unavailable_reason() -> str | None:
    """``None`` when the interop venv holds labtasker 1.0.1, else why the tests are skipped.

    The tests run only when ``$LABTASKER_INTEROP_VENV`` names the venv (``scripts/interop.sh``
    sets it): a venv left in the checkout must not add minutes to every ``scripts/test.sh``.
    """
    if not os.environ.get(INTEROP_VENV_VAR):
        return (
            f"interop tests run via `bash scripts/interop.sh` (or set {INTEROP_VENV_VAR} "
            f"to a venv with labtasker=={V1_VERSION}, e.g. .venv-interop)"
        )
    venv = interop_venv()
    exe = venv / "bin" / "labtasker"
    if not exe.exists():
        return (
            f"interop venv not found ({exe} missing): run `bash scripts/interop.sh` "
            f"(or set {INTEROP_VENV_VAR}) to test against the labtasker {V1_VERSION} client"
        )
    try:
        out = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('labtasker'))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"interop venv {venv} is not usable: {exc}"
    version = out.stdout.strip()
    if version != V1_VERSION:
        return f"interop venv {venv} has labtasker {version or '?'}, not {V1_VERSION}"
    return None


def skip_module_without_v1() -> None:
    """Skip the calling test module when the 1.0.1 client is missing -- or fail it when
    ``LABTASKER_INTEROP_REQUIRED=1`` (``scripts/interop.sh``: a skip there is a failure)."""
    import pytest

    reason = v1_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("LABTASKER_INTEROP_REQUIRED") == "1":
        raise RuntimeError(reason)
    pytest.skip(reason, allow_module_level=True)


def our_bindir() -> Path:
    here = Path(sys.executable).parent
    return here if (here / "labtasker").exists() else REPO / ".venv" / "bin"


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.args)}\nexit {self.returncode}\n--- stdout ---\n"
            f"{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )

    def uuid(self) -> str:
        """The first UUID printed on stdout (task/queue/worker id in any output style)."""
        found = UUID_RE.search(self.stdout)
        assert found, "no id in output\n" + self.describe()
        return found.group(0)


@dataclass
class Client:
    """One labtasker client installation (a venv ``bin`` directory)."""

    name: str  # "v1" | "ours"
    bindir: Path

    @property
    def is_v1(self) -> bool:
        return self.name == "v1"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("LABTASKER_") and k not in ("VIRTUAL_ENV", "PYTHONHOME")
        }
        env.update(
            PATH=f"{self.bindir}{os.pathsep}{env.get('PATH', '')}",
            VIRTUAL_ENV=str(self.bindir.parent),
            PYTHONUNBUFFERED="1",
            COLUMNS="250",  # rich wraps long reprs at 80 columns otherwise
        )
        env.update(extra or {})
        return env

    def run(
        self,
        argv: list[str],
        cwd: Path,
        *,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 180,
        check: bool = True,
    ) -> Result:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=self.env(env),
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        result = Result(argv, proc.returncode, proc.stdout, proc.stderr)
        if check:
            assert result.returncode == 0, f"[{self.name} client] failed\n" + result.describe()
        return result

    def labtasker(self, *args: str, cwd: Path, **kw: Any) -> Result:
        return self.run([str(self.bindir / "labtasker"), *args], cwd, **kw)

    def python(self, *args: str, cwd: Path, **kw: Any) -> Result:
        return self.run([str(self.bindir / "python"), *args], cwd, **kw)

    def popen(self, argv: list[str], cwd: Path, **kw: Any) -> subprocess.Popen:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=self.env(kw.pop("env", None)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kw,
        )


def write_v1_client_toml(
    root: Path, url: str, queue_name: str, password: str, heartbeat_interval: float = 5.0
) -> Path:
    """``<root>/client.toml`` with every key ``labtasker init`` of 1.0.1 writes,
    the version check off (no PyPI calls); heartbeat every 5 s (timeout 15 s: safe on a
    loaded CI machine, still short enough that a lost run would be swept)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / ".gitignore").write_text("*.toml\n.last-version-check\nlogs\n")
    path = root / "client.toml"
    path.write_text(
        'display_server_notifications_level = "medium"\n'
        "enable_traceback_filter = false\n"
        "version_check = false\n"
        "\n[endpoint]\n"
        f'api_base_url = "{url.rstrip("/")}/"\n'
        "\n[queue]\n"
        f'queue_name = "{queue_name}"\n'
        f'password = "{password}"\n'
        "\n[task]\n"
        f"heartbeat_interval = {heartbeat_interval}\n"
        "\n[cli_plugins]\n"
        'default = "all"\n'
        "include = []\n"
        "exclude = []\n"
    )
    return path


@dataclass
class Project:
    """A client working directory with ``./.labtasker/client.toml`` for one queue."""

    client: Client
    url: str
    workdir: Path
    queue_name: str
    password: str

    @classmethod
    def create(cls, client: Client, url: str, workdir: Path, tag: str) -> Project:
        workdir.mkdir(parents=True, exist_ok=True)
        name = f"{tag}-{client.name}-{uuid.uuid4().hex[:8]}"
        project = cls(client, url, workdir, name, "pw-" + uuid.uuid4().hex[:10])
        write_v1_client_toml(workdir / ".labtasker", url, name, project.password)
        return project

    # --------------------------------------------------------------- client runs
    def lt(self, *args: str, **kw: Any) -> Result:
        """Run ``labtasker ARGS`` of the client under test in the project directory."""
        return self.client.labtasker(*args, cwd=kw.pop("cwd", self.workdir), **kw)

    def py(self, *args: str, **kw: Any) -> Result:
        return self.client.python(*args, cwd=kw.pop("cwd", self.workdir), **kw)

    # --------------------------------------------------------------- HTTP checks
    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=(self.queue_name, self.password), timeout=30)

    def create_queue_http(self) -> str:
        resp = httpx.post(
            self.url + "/api/v1/queues",
            json={"queue_name": self.queue_name, "password": self.password},
            timeout=30,
        )
        assert resp.status_code == 201, resp.text
        return resp.json()["queue_id"]

    def queue(self) -> dict | None:
        with self.http() as c:
            resp = c.get("/api/v1/queues/me")
        return resp.json() if resp.status_code == 200 else None

    def require_queue(self) -> dict:
        queue = self.queue()
        assert queue is not None, (
            f"queue {self.queue_name} does not exist (the create-from-config step failed?)"
        )
        return queue

    def task(self, task_id: str) -> dict | None:
        with self.http() as c:
            resp = c.get(f"/api/v1/queues/me/tasks/{task_id}")
        if resp.status_code == 404:
            return None
        assert resp.status_code == 200, resp.text
        return resp.json()

    def tasks(self, extra_filter: dict | None = None, **fields: Any) -> list[dict]:
        out: list[dict] = []
        with self.http() as c:
            while True:
                body = {
                    "extra_filter": extra_filter,
                    "offset": len(out),
                    "limit": 1000,
                    "sort": [["created_at", 1]],
                    **fields,
                }
                resp = c.post("/api/v1/queues/me/tasks/search", json=body)
                assert resp.status_code == 200, resp.text
                page = resp.json()["content"]
                out.extend(page)
                if len(page) < 1000:
                    return out

    def workers(self) -> list[dict]:
        with self.http() as c:
            resp = c.post("/api/v1/queues/me/workers/search", json={"limit": 1000})
        assert resp.status_code == 200, resp.text
        return resp.json()["content"]

    def submit_http(self, **body: Any) -> str:
        with self.http() as c:
            resp = c.post("/api/v1/queues/me/tasks", json=body)
        assert resp.status_code == 201, resp.text
        return resp.json()["task_id"]

    def events_supported(self) -> bool:
        """Whether ``GET /api/v1/queues/me/events`` exists (only the status is read)."""
        with (
            self.http() as c,
            c.stream("GET", "/api/v1/queues/me/events", timeout=httpx.Timeout(10, read=10)) as resp,
        ):
            return resp.status_code != 404


def parse_json_stream(text: str) -> list[dict]:
    """Objects of ``task ls --fmt jsonl`` output: one compact object per line (ours) or
    indented multi-line objects separated by blank lines (1.0.1)."""
    decoder = json.JSONDecoder()
    items, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return items
        obj, pos = decoder.raw_decode(text, pos)
        items.append(obj)


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
