"""``labtasker init``: create ``.labtasker/client.toml``.

Interactive by default (prompts for what is missing); scripts pass everything as options::

    labtasker init --api-base-url http://host:9321 --queue-name q --password pw --create-queue
"""

from __future__ import annotations

import sys

import typer

from labtasker.client.cli.errors import CliError, handle_errors, usage_error
from labtasker.client.terminal import stdin_is_tty
from labtasker.keys import is_name

DEFAULT_URL = "http://localhost:9321"


def register(app: typer.Typer) -> None:
    """Add ``init`` to the root CLI app."""
    app.command("init")(init)


def _ask_url(interactive: bool, given: str | None) -> str:
    from labtasker.client.config import normalize_url

    if given is not None:
        try:
            return normalize_url(given)
        except ValueError as exc:
            raise usage_error(f"Invalid value for --api-base-url: {exc}") from None
    if not interactive:
        raise usage_error("Missing option --api-base-url (stdin is not a terminal, cannot prompt).")
    while True:
        text = typer.prompt("URL of your Labtasker server", default=DEFAULT_URL)
        try:
            return normalize_url(text)
        except ValueError as exc:
            print(f"Error: {exc}", file=sys.stderr)


def _server_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _ask_name(interactive: bool, given: str | None) -> str:
    if given is not None:
        if not is_name(given):
            raise usage_error(
                f"Invalid value for --queue-name: {given!r} (1-100 letters, digits, '_' or '-')"
            )
        return given
    if not interactive:
        raise usage_error("Missing option --queue-name (stdin is not a terminal, cannot prompt).")
    while True:
        name = typer.prompt("Queue name")
        if is_name(name):
            return name
        print("Error: use 1-100 letters, digits, '_' or '-'.", file=sys.stderr)


def _ask_password(interactive: bool, given: str | None) -> str:
    if given is not None:
        if not 1 <= len(given) <= 100:
            raise usage_error("Invalid value for --password: must be 1-100 characters.")
        return given
    if not interactive:
        raise usage_error("Missing option --password (stdin is not a terminal, cannot prompt).")
    while True:
        pw = typer.prompt("Queue password", hide_input=True, confirmation_prompt=True)
        if 1 <= len(pw) <= 100:
            return pw
        print("Error: the password must be 1-100 characters.", file=sys.stderr)


def _ensure_queue(
    url: str, name: str, password: str, create: bool | None, interactive: bool
) -> bool:
    """Check (or create) the queue. ``False`` when the queue exists with another password
    and the user may try again (interactive); raises ``CliError`` otherwise."""
    from labtasker.client import api
    from labtasker.client.transport import http_client
    from labtasker.exceptions import LabtaskerHTTPStatusError

    with http_client(url, name, password, timeout=10) as client:
        try:
            queue = api.get_queue(client=client)
        except LabtaskerHTTPStatusError as exc:
            if exc.status_code != 401:
                raise
        else:
            print(f"Using existing queue '{queue.queue_name}' (ID: {queue.queue_id}).")
            return True
        if create is None:
            create = (
                typer.confirm(
                    f"Queue '{name}' does not exist (or the password is wrong). "
                    "Would you like to create this queue?",
                    default=True,
                )
                if interactive
                else True
            )
        if not create:
            print(
                f"Warning: queue '{name}' is not accessible with these credentials; create it "
                "later with `labtasker queue create-from-config`.",
                file=sys.stderr,
            )
            return True
        try:
            resp = api.create_queue(name, password, client=client)
        except LabtaskerHTTPStatusError as exc:
            if exc.status_code == 409:
                if interactive:
                    print(
                        f"Error: queue '{name}' already exists and the password is wrong; "
                        "try again.",
                        file=sys.stderr,
                    )
                    return False
                raise CliError(
                    f"Queue '{name}' already exists but the password is wrong."
                ) from None
            raise
        print(f"Queue created with ID: {resp.queue_id}")
        return True


@handle_errors
def init(
    api_base_url: str | None = typer.Option(
        None, "--api-base-url", help=f"Server URL (prompted; default {DEFAULT_URL})."
    ),
    queue_name: str | None = typer.Option(None, "--queue-name", help="Queue name (prompted)."),
    password: str | None = typer.Option(None, "--password", help="Queue password (prompted)."),
    create_queue: bool | None = typer.Option(
        None,
        "--create-queue/--no-create-queue",
        help="Create the queue if it does not exist (default: ask; yes when not interactive).",
        show_default=False,
    ),
    heartbeat_interval: float = typer.Option(
        30.0, "--heartbeat-interval", min=0.001, help="Seconds between task heartbeats."
    ),
) -> None:
    """Create the client configuration (.labtasker/client.toml, or $LABTASKER_ROOT)."""
    from labtasker.client.config import get_labtasker_root, init_root

    root = get_labtasker_root()
    if (root / "client.toml").exists():
        raise CliError(
            f"Labtasker is already initialized at {root}. Edit it with `labtasker config`, or "
            "delete that directory (this also deletes its logs) and run init again."
        )
    interactive = stdin_is_tty()
    while True:  # a mistake on a terminal asks again instead of aborting
        url = _ask_url(interactive, api_base_url)
        reachable = _server_ok(url)
        if reachable:
            break
        if interactive and not typer.confirm(
            f"Cannot reach a Labtasker server at {url}. Continue anyway?", default=False
        ):
            print("Enter the server URL again.", file=sys.stderr)
            api_base_url = None
            continue
        print(
            f"Warning: cannot reach a Labtasker server at {url}; the queue was not checked.",
            file=sys.stderr,
        )
        break
    while True:
        name = _ask_name(interactive, queue_name)
        pw = _ask_password(interactive, password)
        if not reachable or _ensure_queue(url, name, pw, create_queue, interactive):
            break
        queue_name = password = None
    path = init_root(url, name, pw, heartbeat_interval=heartbeat_interval, root=root)
    print(f"Configuration initialized successfully at {path}.")
    if not reachable and create_queue:
        # asked for a queue that could not be created: the configuration is written, but a
        # script must not go on as if the queue existed
        raise CliError(
            f"The queue '{name}' was not created: no Labtasker server answered at {url}. "
            "Create it with `labtasker queue create-from-config` once the server is up."
        )
