"""Database engines, connection settings, migrations and transactions.

``Database`` wraps one SQLAlchemy engine for reads and one for writes:

* SQLite (the embedded default): WAL journal, ``synchronous=FULL`` (a committed write is on disk
  before the HTTP answer is sent), foreign keys on, a busy timeout. Write transactions start
  with ``BEGIN IMMEDIATE`` and are also serialised by a lock (a thread lock plus a ``flock``
  on ``<file>.lock`` shared by every server process on the file), so a read-modify-write
  never interleaves with another writer and never fails with "database is locked" under load. Reads run in deferred transactions and never block writers.
* PostgreSQL (psycopg 3): one pooled engine; row locks inside write transactions.

The schema is created and upgraded by Alembic at start-up (``migrate``).

**Errors that pass.** A database error that a later attempt may not meet (disk full, database
locked or busy, connection lost, serialization failure or deadlock, PostgreSQL restarting) is
raised from ``write``/``read`` as ``errors.Unavailable`` naming the cause; the transaction was
rolled back, nothing was written. The HTTP layer answers it with ``503`` and ``Retry-After``.
A value the database cannot hold (an integer beyond its column, a float overflow in a
filter's arithmetic) is raised as ``errors.Invalid`` (400), rolled back likewise.

**The clock.** ``now(conn)`` is the database's clock (PostgreSQL ``now()``: the transaction's
start; SQLite: the clock of the host holding the file), so that servers on several hosts
agree on every lease.

**Test-only hooks** (environment of the server process): ``LABTASKER_TEST_FAULT_FILE=<path>``
-- while that file exists, every statement fails with the driver's error that the file names
(``disk_full``, ``locked``, ``connection_lost``), as a disk filling up would.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DataError, DBAPIError, PendingRollbackError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from labtasker.filters.mongo_sql import register_sqlite_functions
from labtasker.server.errors import Invalid, Unavailable

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
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def default_url() -> str:
    """The embedded default: ``sqlite:///<cwd>/labtasker.db``."""
    return f"sqlite:///{Path.cwd() / DEFAULT_DB_FILE}"


def _sqlite_engine(url: str, immediate: bool) -> Engine:
    engine = create_engine(
        url,
        json_serializer=compact_json,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
    )

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


# PostgreSQL SQLSTATEs (and classes, by their first two characters) of errors that pass.
_PG_TRANSIENT = {
    "40001": "serialization failure",
    "40P01": "deadlock",
    "55P03": "lock not available",
    "57014": "statement cancelled",
    "57P01": "PostgreSQL shutting down",
    "57P02": "PostgreSQL crashed",
    "57P03": "PostgreSQL starting up",
    "53100": "disk full",
    "53300": "too many connections",
    "25006": "database is read-only",
}
_PG_TRANSIENT_CLASSES = {
    "08": "connection lost",
    "53": "insufficient resources",
    "58": "database system error",
}
# SQLite's primary result codes (stable C API values; the ``sqlite3`` module names them only
# from Python 3.11 on, and this package supports 3.10).
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY = 5, 6, 8
SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN = 10, 13, 14
_SQLITE_TRANSIENT = {
    SQLITE_FULL: "disk full",
    SQLITE_BUSY: "database locked",
    SQLITE_LOCKED: "database locked",
    SQLITE_IOERR: "disk I/O error",
    SQLITE_CANTOPEN: "cannot open the database file",
    SQLITE_READONLY: "database is read-only",
}
_SQLITE_TRANSIENT_TEXT = {
    "disk is full": "disk full",
    "database is locked": "database locked",
    "disk i/o error": "disk I/O error",
    "unable to open database": "cannot open the database file",
    "readonly database": "database is read-only",
}


def transient_cause(exc: BaseException) -> str | None:
    """A few words naming why the database failed, when ``exc`` is an error that may pass
    (see the module docstring); ``None`` for other errors (bugs, constraint violations)."""
    orig = getattr(exc, "orig", None) or exc
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return _PG_TRANSIENT.get(sqlstate) or _PG_TRANSIENT_CLASSES.get(sqlstate[:2])
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        if code is not None and (code & 0xFF) in _SQLITE_TRANSIENT:
            return _SQLITE_TRANSIENT[code & 0xFF]
        text = str(orig).lower()
        return next((cause for key, cause in _SQLITE_TRANSIENT_TEXT.items() if key in text), None)
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return "connection lost"
    module = type(orig).__module__ or ""
    if module.startswith("psycopg") and type(orig).__name__ == "OperationalError":
        return "cannot reach PostgreSQL"  # no SQLSTATE: the connection failed or broke
    return None


def unavailable(exc: BaseException, cause: str) -> Unavailable:
    """The ``Unavailable`` error for a database error that passes."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0][:200]
    return Unavailable(
        f"Database unavailable ({cause}): {first}; nothing was written, try again", retry_after=1.0
    )


_PG_PROBE = "SELECT txid_current()"  # takes a transaction id: the commit writes WAL
_SQLITE_PROBE = "PRAGMA user_version = 0"

# ---------------------------------------------------------------- test-only fault injection
_FAULTS = {
    "disk_full": lambda: _sqlite_error("database or disk is full", SQLITE_FULL),
    "locked": lambda: _sqlite_error("database is locked", SQLITE_BUSY),
}


def _sqlite_error(message: str, code: int) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]  # an attribute from 3.11 on
    return exc


def _pg_fault(kind: str) -> Exception:
    import psycopg.errors

    if kind == "disk_full":
        return psycopg.errors.DiskFull("could not extend file: No space left on device")
    return psycopg.errors.AdminShutdown("terminating connection due to administrator command")


_WRITES = ("INSERT", "UPDATE", "DELETE")


def _install_fault_hook(engine: Engine, path: str, dialect: str) -> None:
    """While ``path`` exists, fail every statement that writes (and the write probe) with
    the driver's error the file names; reads go on, as on a full disk."""

    @event.listens_for(engine, "before_cursor_execute")
    def _fault(_conn, _cursor, statement, _params, _context, _many):
        head = statement.lstrip().upper()
        if not (head.startswith(_WRITES) or statement in (_PG_PROBE, _SQLITE_PROBE)):
            return
        try:
            with open(path, encoding="utf-8") as f:
                kind = f.read().strip() or "disk_full"
        except OSError:
            return
        if dialect == "sqlite":
            raise _FAULTS.get(kind, _FAULTS["disk_full"])()
        raise _pg_fault(kind)


@contextlib.contextmanager
def _translate_errors() -> Iterator[None]:
    """Translate storage errors raised inside the block; the one place where they are
    translated. Transient errors (disk full, locked, connection lost, pool exhausted) become
    ``unavailable`` (503 with the cause). A value the database cannot hold or compute with
    (an integer beyond its column, a float overflow in a filter's arithmetic) is the
    request's fault: ``Invalid`` (400); the transaction is rolled back, so nothing is
    half-applied."""
    try:
        yield
    except (DataError, OverflowError) as exc:
        raise _out_of_range(exc) from exc
    except DBAPIError as exc:
        cause = transient_cause(exc)
        if cause is None:
            raise
        raise unavailable(exc, cause) from exc
    except PoolTimeout as exc:
        raise unavailable(exc, "all database connections busy") from exc
    except PendingRollbackError as exc:  # the connection broke inside the transaction
        raise unavailable(exc, "connection lost") from exc
    except StatementError as exc:  # a bound value the driver could not convert
        if isinstance(exc.orig, OverflowError):
            raise _out_of_range(exc) from exc
        raise


def _out_of_range(exc: BaseException) -> Invalid:
    reason = (str(getattr(exc, "orig", None) or exc).splitlines() or [type(exc).__name__])[0]
    return Invalid(f"a value is out of range for the database: {reason[:200]}")


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
                database if database and database != ":memory:" else None
            )
        else:
            self.write_engine = create_engine(
                self.url,
                json_serializer=compact_json,
                pool_size=10,
                max_overflow=10,
                pool_pre_ping=True,
            )
            self.read_engine = self.write_engine
            self._write_lock = None
        fault_file = os.environ.get("LABTASKER_TEST_FAULT_FILE")
        if fault_file:
            for engine in {self.write_engine, self.read_engine}:
                _install_fault_hook(engine, fault_file, self.dialect)

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: committed on normal exit, rolled back on any exception.

        Callables appended to ``conn.info["before_commit"]`` run last, just before the
        commit (the events log uses this to append its rows at the very end).
        """
        lock = self._write_lock or contextlib.nullcontext()
        with _translate_errors(), lock, self.write_engine.begin() as conn:
            try:
                yield conn
                for hook in conn.info.get(BEFORE_COMMIT, ()):
                    hook(conn)
            finally:
                conn.info.pop(BEFORE_COMMIT, None)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction with a consistent snapshot; always rolled back."""
        with _translate_errors(), self.read_engine.connect() as conn:
            with conn.begin() as trans:
                yield conn
                trans.rollback()

    def now(self, conn: Connection) -> datetime:
        """The database's clock as an aware UTC datetime (see the module docstring)."""
        if self.dialect != "postgresql":
            # the embedded file lives on this host: its clock is the host's (read directly,
            # never through the test-only offset of ``timeutil.utc_now``), in microseconds
            return datetime.now(timezone.utc)
        value = conn.exec_driver_sql("SELECT now()").scalar_one()
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    def probe_write(self) -> None:
        """Commit a transaction that writes (PostgreSQL: takes a transaction id; SQLite:
        rewrites the header's ``user_version``). Raises ``Unavailable`` naming the cause when
        the database cannot write."""
        with self.write() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(_PG_PROBE)
            else:
                # rewrites the header page with the value it has (0: Alembic does not use it)
                conn.exec_driver_sql(_SQLITE_PROBE)

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
