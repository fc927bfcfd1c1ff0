"""Database engines, connection settings, migrations and transactions.

``Database`` wraps one SQLAlchemy engine for reads and one for writes:

* SQLite (the embedded default): WAL journal, ``synchronous=FULL`` (a committed write is on disk
  before the HTTP answer is sent), foreign keys on, a busy timeout. Write transactions start
  with ``BEGIN IMMEDIATE`` and are also serialised by a lock (a thread lock plus a ``flock``
  on ``<file>.lock`` shared by every server process on the file), so a read-modify-write
  never interleaves with another writer and never fails with "database is locked" under load. Reads run in deferred transactions and never block writers.
* PostgreSQL (psycopg 3): one pooled engine; row locks inside write transactions.

The schema is created and upgraded by Alembic at start-up (``migrate``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url

from labtasker.filters.mongo_sql import register_sqlite_functions

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the thread lock alone (one process)
    fcntl = None  # type: ignore[assignment]

SQLITE_BUSY_TIMEOUT_MS = 30_000
BEFORE_COMMIT = "labtasker_before_commit"
DEFAULT_DB_FILE = "labtasker.db"


def compact_json(value) -> str:
    """JSON columns as stored: no spaces after separators (SQLite keeps the text as given;
    about 10% of a task's bytes)."""
    return json.dumps(value, separators=(",", ":"))


def normalize_url(url: str) -> str:
    """Map user-facing URLs to SQLAlchemy ones: ``postgresql://`` uses psycopg 3."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def default_url() -> str:
    """The embedded default: ``sqlite:///<cwd>/labtasker.db``."""
    return f"sqlite:///{Path.cwd() / DEFAULT_DB_FILE}"


def _sqlite_engine(url: str, immediate: bool) -> Engine:
    engine = create_engine(url, json_serializer=compact_json,
                           connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                                              "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.close()
        register_sqlite_functions(dbapi_conn)

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class _WriteLock:
    """Serialises SQLite write transactions: a thread lock inside the process and, for a
    database file on POSIX, an exclusive ``flock`` on ``<file>.lock`` across processes
    (``serve --workers N``, or several servers on one file). Waiting on the file lock blocks
    in the kernel and wakes in order, where SQLite's own busy handler would poll with sleeps
    of 1-100 ms."""

    def __init__(self, database: str | None):
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        if database is not None and fcntl is not None:
            self._fd = os.open(database + ".lock", os.O_RDWR | os.O_CREAT, 0o600)

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                self._thread_lock.release()
                raise

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Database:
    """Engines plus transaction helpers; see the module docstring."""

    def __init__(self, url: str):
        self.url = normalize_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        if self.dialect == "sqlite":
            database = make_url(self.url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.write_engine = _sqlite_engine(self.url, immediate=True)
            self.read_engine = _sqlite_engine(self.url, immediate=False)
            self._write_lock: contextlib.AbstractContextManager | None = _WriteLock(
                database if database and database != ":memory:" else None)
        else:
            self.write_engine = create_engine(self.url, json_serializer=compact_json,
                                              pool_size=10, max_overflow=10,
                                              pool_pre_ping=True)
            self.read_engine = self.write_engine
            self._write_lock = None

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: committed on normal exit, rolled back on any exception.

        Callables appended to ``conn.info["before_commit"]`` run last, just before the
        commit (the events log uses this to append its rows at the very end).
        """
        lock = self._write_lock or contextlib.nullcontext()
        with lock, self.write_engine.begin() as conn:
            try:
                yield conn
                for hook in conn.info.get(BEFORE_COMMIT, ()):
                    hook(conn)
            finally:
                conn.info.pop(BEFORE_COMMIT, None)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction with a consistent snapshot; always rolled back."""
        with self.read_engine.connect() as conn:
            with conn.begin() as trans:
                yield conn
                trans.rollback()

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest Alembic revision."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        with self.write() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def ping(self) -> None:
        """Run ``SELECT 1``; raises the driver's error when the database is unreachable."""
        with self.read() as conn:
            conn.exec_driver_sql("SELECT 1")

    def dispose(self) -> None:
        if isinstance(self._write_lock, _WriteLock):
            self._write_lock.close()
        self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            self.read_engine.dispose()
