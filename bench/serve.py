"""Start a labtasker server for the benchmark, with a bench-only ``X-Process-Time`` header.

Run by path with the interpreter of the implementation under test::

    python bench/serve.py current --port P --db-url sqlite:///x.db
    python bench/serve.py ref101  --port P --db-path x.json     # labtasker 1.0.1 (embedded)
    python bench/serve.py v2      --port P --db-path x.db       # labtasker 2.x

labtasker 2.x is started through its own ``labtasker-server serve --connection http`` command
(settings, filesystem detection, database ownership lock, migrations), with the bearer token
from ``LABTASKER_SERVER_TOKEN``; only its call of ``uvicorn.run`` is intercepted to wrap the
application and turn the access log off, as for the others.

The header (milliseconds from the first ASGI event to the response start) is added by a pure
ASGI wrapper around the unmodified application, so server files stay untouched. Access logs
are off for both implementations.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def with_process_time(app):
    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        start = time.perf_counter()

        async def timed_send(message):
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - start) * 1000.0
                headers = list(message.get("headers", []))
                headers.append((b"x-process-time", f"{ms:.3f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        return await app(scope, receive, timed_send)

    return wrapped


def current_app(args):
    from labtasker.server.app import create_app

    return create_app(args.db_url, args.sweep_interval)


def ref101_app(args):
    os.environ["DB_USER"] = "admin"
    os.environ["DB_PASSWORD"] = "admin"
    os.environ["API_HOST"] = "127.0.0.1"
    os.environ["API_PORT"] = str(args.port)
    os.environ["PERIODIC_TASK_INTERVAL"] = str(args.sweep_interval)
    from labtasker.server.config import get_server_config, init_server_config
    from labtasker.server.database import DBService, set_db_service
    from labtasker.server.embedded_db import MongoClient, ServerStore

    init_server_config(None)
    config = get_server_config()
    store = ServerStore(persistence_path=args.db_path)
    set_db_service(DBService(db_name=config.db_name, client=MongoClient(_store=store)))
    from labtasker.server.endpoints import app

    return app


def v2_serve(args) -> None:
    import uvicorn
    from labtasker_server import cli

    real_run = uvicorn.run

    def run(app, **kwargs):
        kwargs["access_log"] = False
        print(f"bench server v2 on {args.port}", file=sys.stderr, flush=True)
        real_run(with_process_time(app), **kwargs)

    cli.uvicorn.run = run  # type: ignore[attr-defined]
    sys.argv = [
        "labtasker-server",
        "serve",
        "--connection",
        "http",
        "--database",
        args.db_path,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
    ]
    cli.app()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("impl", choices=["current", "ref101", "v2"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db-url")
    parser.add_argument("--db-path")
    parser.add_argument("--sweep-interval", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.impl == "v2":
        return v2_serve(args)
    import uvicorn

    if args.workers > 1:  # several server processes (labtasker-server serve --workers N)
        from labtasker.server.db import Database
        from labtasker.server.supervisor import serve_processes

        db = Database(args.db_url)
        db.migrate()
        db.dispose()
        print(
            f"bench server {args.impl} on {args.port}, {args.workers} processes",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(
            serve_processes(
                lambda: with_process_time(current_app(args)),
                workers=args.workers,
                host="127.0.0.1",
                port=args.port,
                log_level="warning",
                access_log=False,
            )
        )
    app = current_app(args) if args.impl == "current" else ref101_app(args)

    print(f"bench server {args.impl} on {args.port}", file=sys.stderr, flush=True)
    uvicorn.run(
        with_process_time(app),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
