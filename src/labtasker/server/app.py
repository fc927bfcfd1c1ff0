"""The FastAPI application: storage, routes, error mapping, the timeout sweeper and the
event wake-ups (``events.Notifier``)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from labtasker.__version__ import __version__
from labtasker.fsm import InvalidTransition
from labtasker.server.db import Database
from labtasker.server.errors import Conflict, Forbidden, Invalid, NotFound, StorageError
from labtasker.server.events import Notifier
from labtasker.server.events import router as events_router
from labtasker.server.routes import router
from labtasker.server.sql_storage import SqlStorage
from labtasker.server.sweeper import Sweeper

log = logging.getLogger("labtasker.server")

_STATUS = {NotFound: 404, Forbidden: 403, Conflict: 409, Invalid: 400}


def sweep_interval_from_env() -> float:
    """``PERIODIC_TASK_INTERVAL`` in seconds (default 30)."""
    raw = os.environ.get("PERIODIC_TASK_INTERVAL", "30")
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"PERIODIC_TASK_INTERVAL must be a number of seconds, got {raw!r}") from exc
    if value <= 0:
        raise ValueError("PERIODIC_TASK_INTERVAL must be positive")
    return value


def _close_streams_on_exit_signals(notifier: Notifier):
    """Chain SIGINT/SIGTERM (installed by uvicorn before the lifespan starts) so that a
    shutdown also ends the open event streams at once (``Notifier.close_streams``); returns a
    function that puts the previous handlers back. Only in the main thread (where uvicorn
    serves); elsewhere (tests running the app in a thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if not callable(handler):
            continue

        def chained(sig, frame, _previous=handler):
            notifier.close_streams()
            _previous(sig, frame)

        previous[signum] = handler
        signal.signal(signum, chained)

    def restore() -> None:
        for signum, handler in previous.items():
            with contextlib.suppress(ValueError):
                signal.signal(signum, handler)

    return restore


def create_app(db_url: str, sweep_interval: float | None = None) -> FastAPI:
    """Build the app on ``db_url`` (migrated at start-up). ``sweep_interval``: seconds
    between timeout sweeps (default: ``PERIODIC_TASK_INTERVAL`` or 30)."""
    db = Database(db_url)
    db.migrate()
    storage = SqlStorage(db)
    sweeper = Sweeper(storage, sweep_interval or sweep_interval_from_env())
    notifier = Notifier(db)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        notifier.start()
        sweeper.start()
        restore = _close_streams_on_exit_signals(notifier)
        try:
            yield
        finally:
            restore()
            sweeper.stop()
            notifier.stop()
            db.dispose()

    app = FastAPI(title="Labtasker", version=__version__, lifespan=lifespan)
    app.state.db = db
    app.state.storage = storage
    app.state.sweeper = sweeper
    app.state.notifier = notifier
    app.include_router(router)
    app.include_router(events_router)

    @app.exception_handler(StorageError)
    async def _storage_error(_request: Request, exc: StorageError):
        return JSONResponse({"detail": str(exc)}, status_code=_status_of(exc))

    @app.exception_handler(InvalidTransition)
    async def _fsm_error(_request: Request, exc: InvalidTransition):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        log.exception("unexpected error")
        return JSONResponse({"detail": f"Internal server error: {type(exc).__name__}"},
                            status_code=500)

    return app


def _status_of(exc: StorageError) -> int:
    for cls, code in _STATUS.items():
        if isinstance(exc, cls):
            return code
    return 400
