"""``labtasker-server``: run the labtasker API server."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Annotated, Any

import typer

from labtasker.server.db import DEFAULT_DB_FILE, default_url
from labtasker.server.errors import Unavailable

# Plain click help (rich_markup_mode=None): it wraps at word boundaries at any width, where
# Rich's option panels cut words and URLs at 80 columns.
app = typer.Typer(
    help="Labtasker server.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root() -> None:
    """Labtasker server."""


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="API_HOST", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, envvar="API_PORT", help="Port to listen on.")
    ] = 9321,
    db_url: Annotated[
        str | None,
        typer.Option(
            envvar="LABTASKER_DB_URL",
            help=f"Database URL. Default: embedded SQLite file ./{DEFAULT_DB_FILE} in the current "
            "directory (sqlite:///PATH). PostgreSQL: postgresql://user@host/db.",
        ),
    ] = None,
    periodic_task_interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between timeout sweeps (env PERIODIC_TASK_INTERVAL, default 30)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            envvar="LABTASKER_SERVER_WORKERS",
            help="Server processes sharing the port and the database, forked from one "
            "supervisor; they all stop when it stops, even on kill -9. One process uses at "
            "most one CPU core and serves some hundred claims per second; more pays off "
            "only when the server process is CPU-bound (many busy workers) and the "
            "machine has a free core beside the workers, the database and the jobs - on "
            "SQLite writes are serialised across processes, so expect about 1.3x with 2. "
            "Each extra process adds about 20 MB (shared pages counted once).",
        ),
    ] = 1,
    ui: Annotated[
        bool,
        typer.Option(
            "--ui/--no-ui",
            envvar="LABTASKER_UI",
            help="Serve the dashboard at /ui (log in with a queue name and password; / "
            "redirects browsers there). Sessions are signed with LABTASKER_UI_SECRET, or a "
            "key generated once and kept in the database.",
        ),
    ] = True,
    max_body_bytes: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Largest request body in bytes, checked from Content-Length and while "
            "reading; larger answers 413 (env MAX_BODY_BYTES, default 64 MiB).",
        ),
    ] = None,
    max_task_bytes: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Largest args + metadata + summary of one task as JSON, in bytes; larger "
            "answers 413 (env MAX_TASK_BYTES, default 4 MiB).",
        ),
    ] = None,
    max_connections: Annotated[
        int,
        typer.Option(
            min=1,
            envvar="LABTASKER_MAX_CONNECTIONS",
            help="Open connections per server process. A new connection beyond it makes room "
            "by closing the one that has waited longest for its client (an unfinished "
            "request head or body, or an idle keep-alive connection); only when every "
            "connection has a request in progress is the new one answered 503 "
            "server_busy.",
        ),
    ] = 1000,
    header_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a connection has to send a complete request head, from its opening "
            "and again after each answer; bytes trickling in do not extend it. Beyond, "
            "408 (when part of a head arrived) and the connection is closed (env "
            "HEADER_TIMEOUT, default 10)."
        ),
    ] = None,
    body_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a request has to send its whole body once the server starts reading "
            "it; beyond, 408 and the connection is closed. Event streams and other "
            "requests without a body are not affected (env BODY_TIMEOUT, default 30)."
        ),
    ] = None,
) -> None:
    """Serve the REST API and the dashboard (http://HOST:PORT/ui). The database is created
    and migrated at start-up."""
    import uvicorn

    from labtasker.server.app import create_app
    from labtasker.server.settings import ServerSettings

    url = db_url or default_url()
    try:
        settings = ServerSettings.from_env()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=str(exc).split()[0]) from exc
    if max_body_bytes is not None:
        settings = dataclasses.replace(settings, max_body_bytes=max_body_bytes)
    if max_task_bytes is not None:
        settings = dataclasses.replace(settings, max_task_bytes=max_task_bytes)
    if header_timeout is not None:
        settings = dataclasses.replace(settings, header_timeout=header_timeout)
    if body_timeout is not None:
        settings = dataclasses.replace(settings, body_timeout=body_timeout)
    for chosen, hint in (
        (settings.header_timeout, "--header-timeout / HEADER_TIMEOUT"),
        (settings.body_timeout, "--body-timeout / BODY_TIMEOUT"),
    ):
        if not (chosen > 0 and math.isfinite(chosen)):
            raise typer.BadParameter(
                f"must be a positive number of seconds, got {chosen:g}", param_hint=hint
            )
    from labtasker.server.connections import protocol_class

    uvicorn_options: dict[str, Any] = {
        "http": protocol_class(settings.header_timeout, max_connections),
        "timeout_graceful_shutdown": 5,
    }
    interval = periodic_task_interval or settings.sweep_interval
    if interval <= 0:
        raise typer.BadParameter("must be positive", param_hint="--periodic-task-interval")
    logging.basicConfig(level=log_level.upper(), format="[%(asctime)s][%(levelname)s] %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # no "setup plugin" lines
    _check_database(url)
    if workers > 1:
        from labtasker.server.db import normalize_url
        from labtasker.server.supervisor import serve_processes

        typer.echo(
            f"labtasker-server: database {normalize_url(url).split('@')[-1]}, {workers} processes",
            err=True,
        )
        if ui:
            typer.echo(
                f"labtasker-server: dashboard at http://{_url_host(host)}:{port}/ui", err=True
            )
        status = serve_processes(
            lambda: create_app(url, interval, settings, dashboard=ui),
            workers=workers,
            host=host,
            port=port,
            log_level=log_level.lower(),
            options=uvicorn_options,
        )
        raise typer.Exit(status)
    application = create_app(url, interval, settings, dashboard=ui)
    typer.echo(f"labtasker-server: database {application.state.db.url.split('@')[-1]}", err=True)
    if ui:
        typer.echo(f"labtasker-server: dashboard at http://{_url_host(host)}:{port}/ui", err=True)
    uvicorn.run(application, host=host, port=port, log_level=log_level.lower(), **uvicorn_options)


def _check_database(url: str) -> None:
    """Open and migrate the database once before serving; a bad URL, a missing driver or an
    unreachable database ends ``serve`` with a one-line message (exit 2 for a URL the server
    cannot use, 1 for a database it cannot reach) instead of a traceback."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from labtasker.server.db import Database, normalize_url

    def fail(message: str, code: int) -> typer.Exit:
        typer.echo(f"Error: {message}", err=True)
        return typer.Exit(code)

    try:
        backend = make_url(normalize_url(url)).get_backend_name()
    except ArgumentError as exc:
        raise fail(f"invalid --db-url {url!r}: {exc}", 2) from None
    if backend not in ("sqlite", "postgresql"):
        raise fail(
            f"unsupported database {backend!r} in --db-url: use sqlite:///PATH or "
            "postgresql://user@host/db",
            2,
        )
    try:
        db = Database(url)
    except ModuleNotFoundError as exc:
        hint = " (pip install 'labtasker[postgres]')" if backend == "postgresql" else ""
        raise fail(f"the database driver is not installed: {exc}{hint}", 2) from None
    try:
        db.migrate()
    except (SQLAlchemyError, OSError, Unavailable) as exc:
        cause = exc.__cause__ if isinstance(exc, Unavailable) and exc.__cause__ else exc
        first = str(getattr(cause, "orig", None) or cause).strip().splitlines()
        raise fail(
            f"cannot open the database {db.url.split('@')[-1]}: "
            f"{first[0] if first else type(exc).__name__}",
            1,
        ) from None
    finally:
        db.dispose()


def _url_host(host: str) -> str:
    """``host`` as it goes into a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@app.command("copy-db")
def copy_db(
    source: Annotated[
        str, typer.Option("--from", help="Database to copy, e.g. sqlite:///path/labtasker.db.")
    ],
    target: Annotated[
        str,
        typer.Option(
            "--to", help="Empty database to fill, e.g. postgresql://postgres@127.0.0.1/labtasker."
        ),
    ],
) -> None:
    """Copy every queue, task, worker and event from one database into an empty one
    (e.g. move from the embedded SQLite file to PostgreSQL). Stop the server first."""
    from labtasker.server.copydb import CopyError, copy_database

    try:
        counts = copy_database(source, target)
    except CopyError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None
    except Exception as exc:  # connection errors and the like: one line, no traceback
        typer.echo(f"Error: {type(exc).__name__}: {str(exc).splitlines()[0]}", err=True)
        raise typer.Exit(1) from None
    typer.echo("Copied " + ", ".join(f"{n} {name}" for name, n in counts.items()) + ".")


def main() -> None:
    app()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
