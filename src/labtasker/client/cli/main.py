"""Root of the ``labtasker`` / ``lt`` command-line interface.

Sub-command groups live in sibling modules (``queue``, ``task``, ``worker``) plus the
top-level commands ``init``, ``config``, ``health``, ``help`` and ``loop`` (registered by
``labtasker.client.cli.loop.register``). Usage errors print a single ``Error: ...`` line and
exit with code 2.
"""

from __future__ import annotations

import sys

import typer

from labtasker.__version__ import __version__
from labtasker.client.cli import _coerce

_coerce.install()  # before any command runs: plain option values skip pydantic adapters

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}

# Where the commands live: sub-command groups (``labtasker task ...``) by module, and the
# top-level commands by the module whose ``register(app)`` adds them. A call that names one
# command builds (and imports) only that command; see :func:`app_for`.
_GROUP_MODULES = {"queue": "queue", "task": "task", "worker": "worker", "event": "event_cmd"}
_TOP_MODULES = {
    "init": "init_cmd",
    "config": "config_cmd",
    "health": "config_cmd",
    "loop": "loop",
    "status": "status_cmd",
    "wait": "status_cmd",
    "progress": "status_cmd",
}
_REGISTER_ORDER = ("init_cmd", "config_cmd", "loop", "status_cmd")


def _version_callback(value: bool) -> None:
    if value:
        print(f"Labtasker Version: {__version__}")
        raise typer.Exit(0)


def _root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        is_eager=True,
        callback=_version_callback,
    ),
) -> None:
    """Labtasker: a task queue for ML experiments."""


def help_cmd(ctx: typer.Context) -> None:
    """Show this help message."""
    print(ctx.parent.get_help() if ctx.parent else ctx.get_help())


def _new_root() -> typer.Typer:
    """The root app with its options (``--version``, completion) and no command yet."""
    root = typer.Typer(
        name="labtasker",
        help="Labtasker: a task queue for ML experiments. Submit tasks, then run them with "
        "`labtasker loop`.",
        context_settings=CONTEXT_SETTINGS,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=True,
        # Plain click help: rendering it with Rich costs ~0.3 s of imports on every --help
        # (the sub-command groups inherit this setting).
        rich_markup_mode=None,
    )
    root.callback()(_root)
    return root


def _module(name: str):
    import importlib

    return importlib.import_module(f"labtasker.client.cli.{name}")


def build_app() -> typer.Typer:
    """The whole CLI: every group and top-level command (``labtasker --help`` lists them)."""
    root = _new_root()
    root.command("help")(help_cmd)
    for group, module in _GROUP_MODULES.items():
        root.add_typer(_module(module).app, name=group)
    for module in _REGISTER_ORDER:
        _module(module).register(root)
    return root


_full_app: typer.Typer | None = None


def __getattr__(name: str) -> typer.Typer:
    # ``app`` (the whole CLI) is built on first use, e.g. by a plugin adding a command to it
    global _full_app
    if name == "app":
        if _full_app is None:
            _full_app = build_app()
        return _full_app
    raise AttributeError(name)


def _command_name(info) -> str | None:
    if info.name:
        return info.name
    callback = info.callback
    return typer.main.get_command_name(callback.__name__) if callback is not None else None


def _only(app: typer.Typer, name: str) -> typer.Typer | None:
    """A copy of ``app`` that holds only its command ``name`` (``None``: no such command)."""
    import copy

    infos = [info for info in app.registered_commands if _command_name(info) == name]
    if len(infos) != 1 or any(g.name == name for g in app.registered_groups):
        return None
    trimmed = copy.copy(app)
    trimmed.registered_commands = infos
    trimmed.registered_groups = []
    return trimmed


def app_for(args: list[str]) -> typer.Typer:
    """The app that runs ``args``: when they start with the name of one command
    (``task submit ...``, ``loop ...``), a root holding only that command, so a call imports
    and builds one command instead of all of them (typer turns every registered function into
    a click command on each call); otherwise, and during shell completion, the whole CLI.
    Parsing, help, errors and output of that command are the same either way: it sits at
    the same path (``labtasker task submit``) under the same root options."""
    import os

    # once the whole app exists (a plugin added to it), it is the one that runs
    if _full_app is None and args and not any("_COMPLETE" in key for key in os.environ):
        head = args[0]
        if head in _GROUP_MODULES and len(args) >= 2:
            group = _only(_module(_GROUP_MODULES[head]).app, args[1])
            if group is not None:
                root = _new_root()
                root.add_typer(group, name=head)
                return root
        elif head in _TOP_MODULES:
            root = _new_root()
            _module(_TOP_MODULES[head]).register(root)
            only = _only(root, head)
            if only is not None:
                return only
    return __getattr__("app")


def _plugin_entry_points_present() -> bool:
    """Cheap pre-check for ``_load_plugins``: does any installed distribution declare an entry
    point of group ``labtasker.client.cli``? Reads the ``entry_points.txt`` files on
    ``sys.path`` directly instead of importing ``importlib.metadata`` (tens of ms, more
    with many packages). Errs on the side of ``True`` for layouts it cannot read (eggs,
    zips)."""
    import os

    marker = "[labtasker.client.cli]"
    for entry in sys.path:
        if not entry:
            entry = "."
        try:
            names = os.listdir(entry)
        except OSError:
            if os.path.isfile(entry):  # zip archive on sys.path
                return True
            continue
        for name in names:
            if name.endswith((".dist-info", ".egg-info")):
                try:
                    with open(os.path.join(entry, name, "entry_points.txt"), "rb") as fh:
                        if marker.encode() in fh.read():
                            return True
                except OSError:
                    continue
            elif name.endswith(".egg"):
                return True
    return False


def _load_plugins() -> None:
    """Import CLI plugins (entry points of group ``labtasker.client.cli``), as in 1.0.1.

    Filtered by ``[cli_plugins]`` of ``client.toml`` when it exists; a plugin that fails to
    import is skipped with a warning.
    """
    if not _plugin_entry_points_present():
        return
    from importlib.metadata import entry_points

    try:
        eps = list(entry_points(group="labtasker.client.cli"))
    except Exception:  # pragma: no cover - broken metadata
        return
    if not eps:
        return
    from fnmatch import fnmatch

    default, include, exclude = "all", [], []
    try:
        from labtasker.client.config import get_client_config

        plugins_cfg = get_client_config().cli_plugins
        default, include, exclude = plugins_cfg.default, plugins_cfg.include, plugins_cfg.exclude
    except Exception:
        pass
    import importlib

    for ep in eps:
        package = ep.value.split(":")[0].split(".")[0]
        if default == "selected":
            wanted = any(fnmatch(package, pat) for pat in include)
        else:
            wanted = not any(fnmatch(package, pat) for pat in exclude)
        if not wanted:
            continue
        try:
            importlib.import_module(ep.value.split(":")[0])
        except Exception as exc:
            print(f"Warning: failed to load CLI plugin {ep.name!r}: {exc}", file=sys.stderr)


# Sub-commands that people type at the top level: ``labtasker submit`` -> ``task submit``.
_GROUP_COMMANDS = {
    "task": ("submit", "ls", "update", "cancel", "delete", "count", "requeue"),
    "worker": ("create", "report", "prune"),
    "queue": ("create", "create-from-config", "get"),
    "event": ("listen",),
}


def _did_you_mean(message: str, args: list[str]) -> str:
    """Add "Did you mean `labtasker task submit`?" to a "No such command" message."""
    if not message.startswith("No such command") or not args:
        return message
    word = next((a for a in args if not a.startswith("-")), "")
    groups = [g for g, cmds in _GROUP_COMMANDS.items() if word in cmds]
    if groups:
        rest = " ".join(args[args.index(word) + 1 :])
        hint = f"labtasker {groups[0]} {word}{' ' + rest if rest else ''}"
        return f"{message} Did you mean `{hint}`?"
    return message


def _non_utf8_argument(args: list[str]) -> str | None:
    """A one-line error for the first argument that is not valid UTF-8 (Python keeps such
    bytes as lone surrogates), naming it; ``None`` if all are fine."""
    for index, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as exc:
            raw = arg.encode("utf-8", "surrogateescape")
            shown = raw.decode("ascii", "backslashreplace")
            return (
                f"Invalid value for argument {index} ('{shown}'): not valid UTF-8 "
                f"(byte 0x{raw[exc.start]:02x} at position {exc.start}); labtasker "
                "stores text as UTF-8."
            )
    return None


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI and exit with its status code."""
    args = list(sys.argv[1:] if argv is None else argv)
    bad = _non_utf8_argument(args)
    if bad is not None:
        print(f"Error: {bad}", file=sys.stderr)
        sys.exit(2)
    _load_plugins()
    try:
        rv = app_for(args)(args=argv, prog_name="labtasker", standalone_mode=False)
    except typer.TyperException as exc:  # click-style usage errors (typer vendors click)
        if type(exc).__name__ == "NoArgsIsHelpError":
            print(exc.format_message())
            sys.exit(2)
        message = " ".join(exc.format_message().split()).replace("Value error, ", "")
        message = _did_you_mean(message, args)
        print(f"Error: {message}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:
        from labtasker.client.cli.errors import silence_stdout

        silence_stdout()
        sys.exit(0)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
