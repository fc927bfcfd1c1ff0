"""``labtasker queue create|create-from-config|get|update|delete``."""

from __future__ import annotations

import sys

import typer

from labtasker.client.cli.errors import handle_errors
from labtasker.client.cli.options import OutputFormat, dict_option
from labtasker.client.cli.output import (
    choose_format,
    fmt_time,
    make_console,
    model_to_dict,
    plain_text,
    write_jsonl_item,
    write_yaml_item,
)
from labtasker.client.cli.prompts import confirm

app = typer.Typer(
    help="Manage the queue (the tenant that owns tasks and workers).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _unauthenticated_client():
    """An httpx client for the configured server without queue credentials (used with the
    process's retry policy, like the default client)."""
    from labtasker.client.config import get_client_config
    from labtasker.client.transport import LabtaskerClient

    cfg = get_client_config()
    return LabtaskerClient.connect(cfg.endpoint.api_base_url).http


def _print_queue(queue, fmt: OutputFormat | None) -> None:
    item = model_to_dict(queue)
    item.pop("notification", None)
    chosen = choose_format(fmt)
    if chosen == "jsonl":
        write_jsonl_item(item)
    elif chosen == "yaml":
        write_yaml_item(item)
    else:
        from rich.table import Table

        table = Table(show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column()
        for key, value in item.items():
            if key in ("created_at", "last_modified"):
                value = fmt_time(value) + " UTC"
            table.add_row(plain_text(key), plain_text(value))
        make_console().print(table)


@app.command()
@handle_errors
def create(
    queue_name: str = typer.Option(
        ..., "--queue-name", prompt="Queue name", envvar="QUEUE_NAME", help="Name of the queue."
    ),
    password: str = typer.Option(
        ...,
        "--password",
        prompt="Password",
        hide_input=True,
        confirmation_prompt=True,
        envvar="PASSWORD",
        help="Password of the queue.",
    ),
    metadata: str | None = typer.Option(
        None, "--metadata", help='Queue metadata as a dict, e.g. \'{"owner": "me"}\'.'
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only the queue id."),
) -> None:
    """Create a new queue on the configured server."""
    from labtasker.client import api

    meta = dict_option(metadata, "--metadata")
    with _unauthenticated_client() as client:
        resp = _create(api, queue_name, password, meta, client)
    print(resp.queue_id if quiet else f"Queue created with ID: {resp.queue_id}")


def _create(api, name, password, meta, client):
    from labtasker.client.cli.errors import CliError
    from labtasker.exceptions import LabtaskerHTTPStatusError

    try:
        return api.create_queue(name, password, meta, client=client)
    except LabtaskerHTTPStatusError as exc:
        if exc.status_code == 409:
            raise CliError(f"Queue '{name}' already exists.") from None
        raise


@app.command("create-from-config")
@handle_errors
def create_from_config(
    metadata: str | None = typer.Option(None, "--metadata", help="Queue metadata as a dict."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only the queue id."),
) -> None:
    """Create the queue named in client.toml, with the password from client.toml."""
    from labtasker.client import api
    from labtasker.client.config import get_client_config

    cfg = get_client_config()
    meta = dict_option(metadata, "--metadata")
    with _unauthenticated_client() as client:
        resp = _create(api, cfg.queue.queue_name, cfg.queue.password, meta, client)
    print(resp.queue_id if quiet else f"Queue created with ID: {resp.queue_id}")


@app.command()
@handle_errors
def get(
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only the queue id."),
    fmt: OutputFormat | None = typer.Option(
        None, "--fmt", help="Output format (default: table on a terminal, yaml otherwise)."
    ),
) -> None:
    """Show the queue of client.toml (id, name, times in UTC, metadata)."""
    from labtasker.client import api

    queue = api.get_queue()
    if quiet:
        print(queue.queue_id)
    else:
        _print_queue(queue, fmt)


@app.command()
@handle_errors
def update(
    new_queue_name: str | None = typer.Option(None, "--new-queue-name", help="Rename the queue."),
    new_password: str | None = typer.Option(
        None, "--new-password", help="New password (use --prompt-password to type it hidden)."
    ),
    prompt_password: bool = typer.Option(
        False, "--prompt-password", help="Ask for the new password (hidden, confirmed)."
    ),
    metadata: str | None = typer.Option(
        None, "--metadata", help="Metadata keys to merge, as a dict; '{}' clears the metadata."
    ),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing on success."),
) -> None:
    """Rename the queue, change its password or update its metadata.

    client.toml is not changed: after a rename or password change, update it with
    `labtasker config`.
    """
    from labtasker.client import api

    if prompt_password and new_password is None:
        new_password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    meta = dict_option(metadata, "--metadata")
    if not quiet:
        print("Updating queue with:")
        print(f"  New Queue Name: {new_queue_name if new_queue_name else '(no change)'}")
        print(f"  New Password: {'******' if new_password else '(no change)'}")
        if meta is None:
            meta_label = "(no change)"
        elif meta == {}:
            meta_label = "reset to {}"
        else:
            meta_label = f"update {meta}"
        print(f"  Metadata: {meta_label}")
    queue = api.update_queue(new_queue_name, new_password, meta)
    if not quiet:
        _print_queue(queue, None)
        if new_queue_name or new_password:
            print(
                "Note: client.toml still holds the old credentials; run `labtasker config` "
                "to update them.",
                file=sys.stderr,
            )


@app.command()
@handle_errors
def delete(
    cascade: bool = typer.Option(
        False,
        "--cascade/--no-cascade",
        help="Also delete the queue's tasks and workers; without it, a queue that still has "
        "any is not deleted.",
    ),
    yes: bool = typer.Option(False, "-y", "--yes", help="Do not ask for confirmation."),
) -> None:
    """Delete the queue of client.toml."""
    from labtasker.client import api
    from labtasker.client.config import get_client_config

    name = get_client_config().queue.queue_name
    confirm(f"Are you sure you want to delete current queue '{name}' with cascade={cascade}?", yes)
    api.delete_queue(cascade_delete=cascade)
    print("Queue deleted.")
