"""Errors of the CLI: exit codes, ``CliError`` and the decorator that turns any known
exception into one ``Error: ...`` line on stderr and an exit code.

Exit codes: 0 success; 1 runtime problem (server unreachable, refused operation, bad
credentials); 2 bad input (usage errors, invalid values, and a request the server answers
with 400 or 422 other than a forbidden change of state); 255 configuration missing
(like labtasker 1.0.1); 130 interrupted.

Only the standard library and ``typer`` are imported at module level so that
``labtasker --help`` stays fast; everything heavier is imported inside functions.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

import typer

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_NO_CONFIG = 255


class CliError(Exception):
    """Print ``Error: <message>`` on stderr and exit with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_RUNTIME):
        super().__init__(message)
        self.exit_code = exit_code


def usage_error(message: str) -> CliError:
    """A bad-input error (exit 2); ``message`` should name the option."""
    return CliError(message, EXIT_USAGE)


def fail(message: str, exit_code: int = EXIT_RUNTIME) -> None:
    """Print ``Error: <message>`` (one line) on stderr and exit."""
    print(f"Error: {message}", file=sys.stderr)
    raise typer.Exit(exit_code)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) turned into one space."""
    return " ".join(str(text).split())


def _option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def validation_message(exc) -> str:
    parts = []
    for item in exc.errors():
        loc = [str(p) for p in item.get("loc", ())]
        msg = item.get("msg", "invalid")
        if loc:
            name = _option_name(loc[0])
            sub = ".".join(loc[1:])
            parts.append(f"Invalid value for {name}{' (' + sub + ')' if sub else ''}: {msg}")
        else:
            parts.append(f"Invalid value: {msg}")
    return "; ".join(parts) or str(exc)


def _filter_error_message(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or str(exc).splitlines()[0]
    return f"Invalid value for '-f' / '--extra-filter': {one_line(reason)}"


def _http_error_message(exc) -> tuple[str, int]:
    from labtasker.client.config import (
        get_labtasker_client_config_path,
        invalid_credentials_advice,
    )
    from labtasker.client.transport import format_detail
    from labtasker.error_codes import INVALID_TRANSITION

    code = exc.status_code
    detail = one_line(format_detail(exc.detail))
    if code == 401:
        return invalid_credentials_advice(get_labtasker_client_config_path()), EXIT_RUNTIME
    if code == 422:
        return f"Invalid value: {detail}", EXIT_USAGE
    if code == 400 and getattr(exc, "code", None) != INVALID_TRANSITION:
        # the request was refused for what it says (a filter operator the server does not
        # allow, a value over a limit): bad input, as when the client finds it; a change of
        # state that the task's state forbids is a refused operation (exit 1)
        return f"{detail} (HTTP 400)", EXIT_USAGE
    return f"{detail} (HTTP {code})", EXIT_RUNTIME


def convert_exception(exc: BaseException) -> tuple[str, int] | None:
    """Map a known exception to ``(one-line message, exit code)``; ``None`` if unknown."""
    from pydantic import ValidationError

    from labtasker import exceptions as ex

    if isinstance(exc, CliError):
        return str(exc), exc.exit_code
    if isinstance(exc, ex.ConfigNotFoundError):
        from labtasker.client.config import get_labtasker_client_config_path

        return (
            f"Configuration not initialized: {get_labtasker_client_config_path()} does not "
            "exist. Run `labtasker init` (or set LABTASKER_ROOT).",
            EXIT_NO_CONFIG,
        )
    if isinstance(exc, ex.ConfigError):
        return one_line(str(exc)), EXIT_RUNTIME
    if isinstance(exc, ex.LabtaskerHTTPStatusError):
        return _http_error_message(exc)
    if isinstance(exc, ex.LabtaskerNetworkError):
        return one_line(str(exc)), EXIT_RUNTIME
    if isinstance(exc, ex.QueryTranspilerError):
        return _filter_error_message(exc), EXIT_USAGE
    if isinstance(exc, ValidationError):
        return validation_message(exc), EXIT_USAGE
    if isinstance(exc, (ex.LabtaskerValueError, ex.CmdParserError)):
        return one_line(str(exc)), EXIT_USAGE
    if isinstance(exc, ex.LabtaskerError):
        return one_line(str(exc)), EXIT_RUNTIME
    return None


_CLI_RETRY_SET = False


def _cli_retry_policy() -> None:
    """Fail fast in interactive commands: a few quick retries, at most ~5 s."""
    global _CLI_RETRY_SET
    if not _CLI_RETRY_SET:
        from labtasker.client import api

        api.set_retry_policy(attempts=3, initial=0.3, max_wait=2.0, jitter=0.2, budget=5.0)
        _CLI_RETRY_SET = True


def handle_errors(func: Callable) -> Callable:
    """Decorator for commands: turn labtasker/pydantic errors into one-line messages + exit codes.

    Unknown exceptions print ``Error: unexpected <Type>: <msg>`` (exit 1); set
    ``LABTASKER_DEBUG=1`` to get the traceback instead.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            _cli_retry_policy()
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except KeyboardInterrupt:
            print("Interrupted.", file=sys.stderr)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            silence_stdout()
            raise typer.Exit(0) from None
        except Exception as exc:
            converted = convert_exception(exc)
            if converted is None:
                if os.environ.get("LABTASKER_DEBUG"):
                    raise
                converted = (
                    f"unexpected {type(exc).__name__}: {one_line(str(exc))} "
                    "(set LABTASKER_DEBUG=1 for a traceback)",
                    EXIT_RUNTIME,
                )
            message, code = converted
            print(f"Error: {message}", file=sys.stderr)
            raise typer.Exit(code) from None

    return wrapper


def silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so interpreter exit stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
