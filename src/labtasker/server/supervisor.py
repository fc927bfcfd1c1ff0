"""``serve --workers N``: one supervisor process and N server processes forked from it, all
serving one listening socket.

The supervisor imports the application's modules once and then forks, so the server processes
start in milliseconds and share the imported code with it (copy-on-write) instead of each
importing everything again. Each server process builds its own app (database engines,
sweeper, event notifier) after the fork and runs one ``uvicorn.Server`` on the shared socket.

The server processes die with their supervisor, however it ends:

* SIGTERM/SIGINT to the supervisor: forwarded to every server process, which shuts down
  gracefully (open requests finish, up to the graceful-shutdown timeout); the supervisor
  exits once they have.
* ``kill -9`` of the supervisor: on Linux the kernel sends each server process SIGTERM
  (``PR_SET_PDEATHSIG``); on every POSIX system each server process also watches a pipe whose
  write end only the supervisor holds and stops when it reads end-of-file. A server process
  that has not finished its graceful shutdown ``HARD_EXIT_SECONDS`` after that exits anyway.

A server process that dies on its own is replaced; one that dies within ``MIN_UPTIME_SECONDS``
of its start (e.g. the database went away) stops the whole server with exit status 1 instead
of a restart loop.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("labtasker.server")

MIN_UPTIME_SECONDS = 10.0
HARD_EXIT_SECONDS = 15.0
_PR_SET_PDEATHSIG = 1


def serve_processes(
    build_app: Callable[[], Callable[..., Any]],
    *,
    workers: int,
    host: str,
    port: int,
    log_level: str,
    access_log: bool = True,
    graceful_seconds: int = 5,
    options: Mapping[str, Any] | None = None,
) -> int:
    """Bind ``host:port``, fork ``workers`` server processes that each serve the ASGI app
    ``build_app()`` on it, and supervise them until SIGTERM/SIGINT. ``graceful_seconds``: how
    long open requests may take to finish on shutdown (whole seconds, as uvicorn takes it).
    ``options``: further ``uvicorn.Config`` arguments of every server process (``http=`` the
    protocol class with the connection limits; a ``timeout_graceful_shutdown`` there replaces
    ``graceful_seconds``). Returns the exit status (0 after a signal, 1 when a server
    process failed right after its start)."""
    options = dict(options or {})
    graceful_seconds = options.pop("timeout_graceful_shutdown", graceful_seconds)
    import uvicorn

    # a Config only to bind the socket: its app is never loaded
    sock = uvicorn.Config(app=None, host=host, port=port).bind_socket()  # type: ignore[arg-type]
    death_r, death_w = os.pipe()  # the children read EOF here once the supervisor is gone
    supervisor = os.getpid()
    children: dict[int, float] = {}  # pid -> monotonic start time
    stopping = False
    status = 0

    def spawn() -> None:
        gc.collect()
        gc.freeze()  # keep the shared objects' pages out of the collector's writes
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(death_w)
                _die_with(supervisor, death_r, graceful_seconds)
                config = uvicorn.Config(
                    build_app(),
                    log_level=log_level,
                    access_log=access_log,
                    timeout_graceful_shutdown=graceful_seconds,
                    **options,
                )
                uvicorn.Server(config).run(sockets=[sock])
                code = 0
            except BaseException:  # noqa: BLE001 - report, never fall back into the parent's code
                log.exception("server process failed")
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = time.monotonic()

    def stop(signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for _ in range(workers):
            spawn()
        while children:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            started = children.pop(pid, None)
            if started is None or stopping:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            if time.monotonic() - started < MIN_UPTIME_SECONDS:
                log.error(
                    "server process %d exited with %d right after its start; stopping", pid, code
                )
                status = 1
                stop(signal.SIGTERM, None)
                continue
            log.warning("server process %d exited with %d; starting a new one", pid, code)
            spawn()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(death_w)
        os.close(death_r)
        sock.close()
    return status


def _die_with(supervisor: int, death_r: int, graceful_seconds: float) -> None:
    """In a server process: stop (SIGTERM to itself, then a hard exit) when the supervisor
    ends. ``PR_SET_PDEATHSIG`` on Linux; a pipe-EOF watcher thread everywhere."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)  # uvicorn installs its own in Server.run
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor:  # it died before the prctl took effect
        os._exit(0)

    def watch() -> None:
        while True:
            try:
                if os.read(death_r, 1) == b"":
                    break
            except InterruptedError:
                continue
            except OSError:
                break
        log.warning("the supervisor process is gone; stopping server process %d", os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(graceful_seconds + HARD_EXIT_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="labtasker-supervisor-watch", daemon=True).start()
