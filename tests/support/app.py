"""The server app in-process: ``create_app`` on a scratch database, its lifespan running
(sweeper and event wake-ups started), reached through an httpx ``ASGITransport``: no
process, no port. For route tests that need a real server process (signals, several
processes, real sockets) use ``support.server.ServerProcess``."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from labtasker.server.app import create_app
from labtasker.server.settings import ServerSettings

BASE_URL = "http://labtasker.test"


@dataclass
class InProcessApp:
    """The running app and an unauthenticated client; :meth:`queue` makes a queue and a
    client authenticated as it."""

    app: object
    client: httpx.AsyncClient

    async def queue(self) -> tuple[str, httpx.AsyncClient]:
        """A new queue: ``(queue_id, client authenticated as it)`` (closed with the app)."""
        name, password = "q-" + uuid.uuid4().hex[:12], "pw"
        resp = await self.client.post(
            "/api/v1/queues", json={"queue_name": name, "password": password}
        )
        assert resp.status_code == 201, resp.text
        authed = httpx.AsyncClient(
            transport=self.client._transport, base_url=BASE_URL, auth=(name, password)
        )
        self._extra.append(authed)
        return resp.json()["queue_id"], authed

    def __post_init__(self) -> None:
        self._extra: list[httpx.AsyncClient] = []


@contextlib.asynccontextmanager
async def running_app(
    db_url: str, settings: ServerSettings | None = None
) -> AsyncIterator[InProcessApp]:
    """Build the app on ``db_url``, run its lifespan, yield it with a client; clean up."""
    app = create_app(db_url, settings=settings or ServerSettings(sweep_interval=3600))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            running = InProcessApp(app, client)
            try:
                yield running
            finally:
                for extra in running._extra:
                    await extra.aclose()
