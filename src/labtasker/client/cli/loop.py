"""`labtasker loop`: placeholder, filled in by the loop-runner work."""

import typer


def register(app: typer.Typer) -> None:
    """Add the ``loop`` command to the root CLI app."""
