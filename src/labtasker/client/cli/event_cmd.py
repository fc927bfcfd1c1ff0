"""``labtasker event listen``: print the queue's state transitions as they happen."""

from __future__ import annotations

import json
import sys

import typer

from labtasker.client.cli.errors import handle_errors
from labtasker.client.cli.output import STATUS_STYLES

app = typer.Typer(
    help="Watch live events of the queue.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def compact_line(ev) -> str:
    """One-line form: ``[seq][timestamp][type][entity_type][entity_id][old -> new]``."""
    e = ev.event
    return (
        f"[{ev.sequence:5d}][{ev.timestamp.isoformat()}][{e.type:<20}]"
        f"[{e.entity_type:<10}][{e.entity_id[:10]:<10}]"
        f"[{e.old_state:<10} -> {e.new_state:<10}]"
    )


@app.command()
@handle_errors
def listen(
    timeout: float = typer.Option(10, "--timeout", help="Seconds to wait for the connection."),
    compact: bool = typer.Option(False, "-c", "--compact", help="One line per event."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also print each event as JSON."),
    raw: bool = typer.Option(False, "--raw", help="Print every SSE message (including pings)."),
) -> None:
    """Print every state transition of tasks and workers until Ctrl+C. Reconnects by itself
    after a network drop, resuming after the last event seen. Exits 1 when the server ends
    the stream because the queue's password changed or the queue was deleted."""
    from rich.console import Console
    from rich.panel import Panel

    from labtasker.client.events import EventListener
    from labtasker.wire import EventResponse

    console = Console(highlight=False)
    print("Attempting to connect to server...", flush=True)
    listener = EventListener(
        on_status=lambda message: print(message, file=sys.stderr, flush=True)
    ).start(timeout=timeout)
    print(f"Connected. Client listener ID: {listener.get_client_id()}", flush=True)
    try:
        for msg in listener.iter_raw_sse():
            if raw:
                print(
                    f"ServerSentEvent(event={msg.event!r}, data={msg.data!r}, id={msg.id!r}, "
                    f"retry={msg.retry!r})",
                    flush=True,
                )
                continue
            if msg.event != "event":
                continue
            ev = EventResponse.model_validate_json(msg.data)
            if compact:
                print(compact_line(ev), flush=True)
            else:
                e = ev.event
                colour = STATUS_STYLES.get(e.new_state, "white")
                console.print(
                    Panel(
                        f"Sequence: {ev.sequence}\nTimestamp: {ev.timestamp.isoformat()}\n"
                        f"Entity Type: {e.entity_type}\nEntity ID: {e.entity_id}\n"
                        f"[{colour}]{e.old_state} -> {e.new_state}[/{colour}]",
                        title=f"{e.entity_type.capitalize()} State Change",
                        expand=False,
                    )
                )
            if verbose:
                print(json.dumps(json.loads(msg.data), indent=4), flush=True)
    except KeyboardInterrupt:
        print("Stopped listening.", file=sys.stderr)
    finally:
        listener.stop()
    if listener.closed_reason is not None:  # said on stderr by on_status already
        raise typer.Exit(1)
