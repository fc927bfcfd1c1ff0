"""The FastAPI application: storage, routes, error mapping, the timeout sweeper and the
event wake-ups (``notifier.Notifier``), configured by one ``ServerSettings``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import signal
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from labtasker import error_codes as codes
from labtasker.__version__ import __version__
from labtasker.fsm import InvalidTransition
from labtasker.server.dashboard import install as install_dashboard
from labtasker.server.dashboard import start as dashboard_start
from labtasker.server.db import Database
from labtasker.server.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    StorageError,
    TooLarge,
    Unavailable,
)
from labtasker.server.limits import RequestGuard
from labtasker.server.notifier import Notifier
from labtasker.server.routes import router
from labtasker.server.settings import ServerSettings
from labtasker.server.sql_storage import SqlStorage
from labtasker.server.sse import router as events_router
from labtasker.server.sweeper import TICK_SECONDS, Sweeper

log = logging.getLogger("labtasker.server")

_STATUS = {
    NotFound: 404,
    Forbidden: 403,
    Conflict: 409,
    TooLarge: 413,
    Invalid: 400,
    Unavailable: 503,
}
# ``code`` of the errors FastAPI/Starlette raise themselves (and of our 401)
_HTTP_CODES = {
    401: codes.INVALID_CREDENTIALS,
    404: codes.ROUTE_NOT_FOUND,
    405: codes.ROUTE_NOT_FOUND,
    413: codes.TOO_LARGE,
    429: codes.TOO_MANY_REQUESTS,
}


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


def create_app(
    db_url: str,
    sweep_interval: float | None = None,
    settings: ServerSettings | None = None,
    dashboard: bool = True,
) -> FastAPI:
    """Build the app on ``db_url`` (migrated at start-up). ``settings``: the tunables
    (default: read from the environment, ``ServerSettings.from_env``; ``ValueError`` names a
    bad variable). ``sweep_interval``: seconds between timeout sweeps, overriding
    ``settings.sweep_interval``. ``dashboard``: also serve the dashboard at ``/ui``
    (``labtasker.server.dashboard``)."""
    if settings is None:
        settings = ServerSettings.from_env()
    if sweep_interval:
        settings = dataclasses.replace(settings, sweep_interval=sweep_interval)
    db = Database(db_url)
    db.migrate()
    storage = SqlStorage(
        db, event_log_size=settings.event_log_size, max_task_bytes=settings.max_task_bytes
    )
    sweeper = Sweeper(storage, settings.sweep_interval)
    notifier = Notifier(db)

    async def tick() -> None:  # tells the sweeper that requests are being answered
        while True:
            sweeper.tick()
            await asyncio.sleep(TICK_SECONDS)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        notifier.start()
        dashboard_start(app)
        ticker = asyncio.create_task(tick())
        sweeper.start()
        restore = _close_streams_on_exit_signals(notifier)
        try:
            yield
        finally:
            restore()
            ticker.cancel()
            sweeper.stop()
            notifier.stop()
            storage.analyzer.wait(5.0)
            db.dispose()

    app = FastAPI(title="Labtasker", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.db = db
    app.state.storage = storage
    app.state.sweeper = sweeper
    app.state.notifier = notifier
    app.include_router(router)
    app.include_router(events_router)
    if dashboard:
        install_dashboard(app, settings.ui_secret, settings.ui_session_seconds)
    app.add_middleware(
        RequestGuard, max_body_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout
    )

    # Every error answer is {"detail": <message>, "code": <labtasker.error_codes name>}: 1.0.1
    # clients read "detail" only; ours decide by "code".
    @app.exception_handler(StorageError)
    async def _storage_error(_request: Request, exc: StorageError):
        headers = None
        if isinstance(exc, Unavailable):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        return JSONResponse(
            {"detail": str(exc), "code": exc.code}, status_code=_status_of(exc), headers=headers
        )

    @app.exception_handler(InvalidTransition)
    async def _fsm_error(_request: Request, exc: InvalidTransition):
        return JSONResponse({"detail": str(exc), "code": codes.INVALID_TRANSITION}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, codes.INVALID_REQUEST)
        return JSONResponse(
            {"detail": exc.detail, "code": code},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        return JSONResponse(
            {"detail": jsonable_encoder(exc.errors()), "code": codes.INVALID_REQUEST},
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        log.exception("unexpected error")
        return JSONResponse(
            {
                "detail": f"Internal server error: {type(exc).__name__}",
                "code": codes.INTERNAL_ERROR,
            },
            status_code=500,
        )

    return app


def _status_of(exc: StorageError) -> int:
    for cls, code in _STATUS.items():
        if isinstance(exc, cls):
            return code
    return 400
