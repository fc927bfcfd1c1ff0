"""The storage backend under test, scratch databases, a real server process, and queues
with a client root (``.labtasker/client.toml``) pointing at it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# The storage backend under test: LABTASKER_TEST_BACKEND=sqlite (default) or postgresql.
# PostgreSQL scratch databases are created on LABTASKER_TEST_PG_URL and dropped afterwards.
BACKEND = os.environ.get("LABTASKER_TEST_BACKEND", "sqlite")
PG_ADMIN_URL = os.environ.get(
    "LABTASKER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A ``labtasker-server serve`` child process; ``url`` ends without a slash."""

    db_url: str
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        self.port = self.port or free_port()
        env = {**os.environ, **self.extra_env}
        log = open(self.workdir / f"server-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "labtasker.server.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--db-url",
                self.db_url,
            ],
            cwd=self.workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not become healthy: " + self.log_text())

    def log_text(self) -> str:
        path = self.workdir / f"server-{self.port}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def restart(self) -> ServerProcess:
        self.kill(signal.SIGKILL)
        return self.start()


class ScratchDatabases:
    """Creates one empty database per call (a file for SQLite, a database for PostgreSQL)."""

    def __init__(self, tmp_path_factory):
        self.tmp = tmp_path_factory
        self.created: list[str] = []

    def new_url(self) -> str:
        if BACKEND == "sqlite":
            return f"sqlite:///{self.tmp.mktemp('db') / 'labtasker.db'}"
        import psycopg

        name = "lt_test_" + uuid.uuid4().hex[:12]
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name

    def drop_all(self) -> None:
        if not self.created:
            return
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class QueueEnv:
    """A fresh queue on ``server`` plus a client root whose ``client.toml`` points at it."""

    url: str
    queue_name: str
    password: str
    queue_id: str
    root: Path
    workdir: Path

    def http(self) -> httpx.Client:
        """An httpx client authenticated as this queue (HTTP Basic)."""
        return httpx.Client(base_url=self.url, auth=(self.queue_name, self.password), timeout=30)

    def env(self) -> dict[str, str]:
        """Environment for child processes (CLI, loops) that use this queue."""
        env = {**os.environ, "LABTASKER_ROOT": str(self.root)}
        for var in ("LABTASKER_TASK_ID", "LABTASKER_WORKER_ID", "LABTASKER_LOG_DIR"):
            env.pop(var, None)
        return env


def write_client_toml(
    root: Path, url: str, queue_name: str, password: str, heartbeat_interval: float = 1.0
) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "client.toml").write_text(
        f'[endpoint]\napi_base_url = "{url}/"\n\n'
        f'[queue]\nqueue_name = "{queue_name}"\npassword = "{password}"\n\n'
        f"[task]\nheartbeat_interval = {heartbeat_interval}\n"
    )
