"""The dashboard: a live view of one queue in the browser, served by the API server at
``/ui`` (pages: ``views.py``; sessions: ``session.py``; templates and our own JS/CSS ship as
package data in ``templates/`` and ``static/``). Nothing is loaded from another site."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from labtasker.server.dashboard.session import DEFAULT_SESSION_SECONDS, SECRET_NAME, Sessions
from labtasker.server.dashboard.views import _LoginRequired, login_redirect, router

STATIC_DIR = Path(__file__).parent / "static"


def install(
    app: FastAPI, secret: str | None = None, max_age: float = DEFAULT_SESSION_SECONDS
) -> None:
    """Serve the dashboard from ``app``. ``secret`` signs the session cookies (the app passes
    ``ServerSettings.ui_secret``, i.e. ``LABTASKER_UI_SECRET``); without one, a key generated
    once and kept in the database (so every server process on it accepts the same cookies),
    fetched at start-up. ``max_age``: seconds a log-in lasts."""
    app.state.dashboard = True
    app.state.dashboard_secret = secret
    app.state.dashboard_max_age = max_age
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
    app.add_exception_handler(_LoginRequired, login_redirect)


def start(app: FastAPI) -> None:
    """At start-up (lifespan): fetch or create the signing key."""
    if not getattr(app.state, "dashboard", False):
        return
    secret = app.state.dashboard_secret or app.state.storage.server_secret(SECRET_NAME)
    app.state.dashboard_sessions = Sessions(secret, app.state.dashboard_max_age)
