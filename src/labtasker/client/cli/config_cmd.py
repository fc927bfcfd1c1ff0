"""``labtasker config`` (edit/show client.toml) and ``labtasker health``."""

from __future__ import annotations

import sys

import typer

from labtasker.client.cli.errors import CliError, handle_errors
from labtasker.client.cli.prompts import run_editor
from labtasker.client.terminal import stdin_is_tty


def register(app: typer.Typer) -> None:
    """Add ``config`` and ``health`` to the root CLI app."""
    app.command("config")(config)
    app.command("health")(health)


def masked_config_text(text: str) -> str:
    """The TOML text with ``[queue] password`` replaced by ``******`` (comments kept)."""
    import tomlkit

    doc = tomlkit.parse(text)
    queue = doc.get("queue")
    if isinstance(queue, dict) and "password" in queue:
        queue["password"] = "******"
    return tomlkit.dumps(doc)


@handle_errors
def config(
    editor: str | None = typer.Option(
        None, "--editor", help="Editor to use (default: $VISUAL, $EDITOR, then vi)."
    ),
    show: bool = typer.Option(False, "--show", help="Print the configuration (password masked)."),
) -> None:
    """Edit client.toml in an editor (validated before saving), or show it with --show."""
    import os
    import tempfile
    from pathlib import Path

    from labtasker.client.config import get_labtasker_client_config_path, load_client_config
    from labtasker.exceptions import ConfigError

    path = get_labtasker_client_config_path()
    if not path.exists():
        load_client_config(path)  # raises ConfigNotFoundError -> "run labtasker init"
    original = path.read_text(encoding="utf-8")
    if show:
        print(f"# {path}")
        sys.stdout.write(masked_config_text(original))
        return
    fd, tmp_name = tempfile.mkstemp(prefix="labtasker.tmp.", suffix=".toml")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(original)
        while True:
            run_editor(str(tmp), editor)
            edited = tmp.read_text(encoding="utf-8")
            try:
                load_client_config(tmp)
            except ConfigError as exc:
                msg = " ".join(str(exc).replace(str(tmp), "client.toml").split())
                print(f"Error: Invalid configuration file. {msg}", file=sys.stderr)
                if stdin_is_tty() and typer.confirm("Continue editing?", default=True):
                    continue
                raise CliError("Configuration not changed.") from None
            break
        if edited == original:
            print("No changes.")
            return
        path.write_text(edited, encoding="utf-8")
        print("Configuration updated successfully.")
    finally:
        tmp.unlink(missing_ok=True)


@handle_errors
def health() -> None:
    """Check that the configured server and its database are up."""
    from labtasker.client import api
    from labtasker.client.config import get_client_config

    url = get_client_config().endpoint.api_base_url
    resp = api.health_check()
    print(f"Server {url}: {resp.status} (database: {resp.database})")
    if resp.status != "healthy":
        raise typer.Exit(1)
