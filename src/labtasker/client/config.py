"""Client configuration: ``$LABTASKER_ROOT/client.toml`` (1.0.1's file and keys).

The root directory is ``$LABTASKER_ROOT`` if set, else ``./.labtasker`` relative to the
current working directory; both are resolved when a function is *called*, not at import time,
so changing directory or the environment variable takes effect immediately.

Example file::

    [endpoint]
    api_base_url = "http://localhost:9321/"

    [queue]
    queue_name = "my-queue"
    password = "secret"

    [task]
    heartbeat_interval = 30.0
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labtasker.exceptions import ConfigError, ConfigNotFoundError
from labtasker.keys import MAX_NAME_LENGTH, NAME_PATTERN

if TYPE_CHECKING:
    from pydantic import ValidationError

    from labtasker.client.config_models import (
        ClientConfig as ClientConfig,
    )
    from labtasker.client.config_models import (
        CliPluginsConfig as CliPluginsConfig,
    )
    from labtasker.client.config_models import (
        EndpointConfig as EndpointConfig,
    )
    from labtasker.client.config_models import (
        QueueConfig as QueueConfig,
    )
    from labtasker.client.config_models import (
        TaskConfig as TaskConfig,
    )

_MODEL_NAMES = frozenset(
    {"CliPluginsConfig", "ClientConfig", "EndpointConfig", "QueueConfig", "TaskConfig"}
)


def __getattr__(name: str) -> Any:
    """The pydantic models (``ClientConfig``...), imported on first use."""
    if name in _MODEL_NAMES:
        from labtasker.client import config_models

        return getattr(config_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


CLIENT_CONFIG_FILENAME = "client.toml"
DEFAULT_API_BASE_URL = "http://localhost:9321/"
GITIGNORE_TEXT = "*.toml\nlogs\n"

_URL_RE = re.compile(r"^https?://[^\s/?#]+(:\d+)?(/[^\s]*)?$", re.IGNORECASE)


def normalize_url(value: str) -> str:
    """Validate an ``http(s)://host[:port][/path]`` URL (a port from 1 to 65535) and return it
    with a trailing slash.

    Raises ``ValueError`` for anything else.
    """
    value = (value or "").strip()
    if not _URL_RE.match(value):
        raise ValueError(f"not a valid http(s) URL: {value!r} (example: {DEFAULT_API_BASE_URL})")
    from urllib.parse import urlsplit

    try:
        port = urlsplit(value).port  # ValueError for a port that is not a number or > 65535
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(
            f"not a valid http(s) URL: {value!r} (the port must be a number from 1 to 65535; "
            f"example: {DEFAULT_API_BASE_URL})"
        )
    return value if value.endswith("/") else value + "/"


def get_labtasker_root() -> Path:
    """Absolute path of the client root: ``$LABTASKER_ROOT`` or ``./.labtasker`` (cwd-based)."""
    return Path(os.environ.get("LABTASKER_ROOT") or ".labtasker").expanduser().absolute()


def get_labtasker_client_config_path() -> Path:
    """Absolute path of ``client.toml`` inside :func:`get_labtasker_root`."""
    return get_labtasker_root() / CLIENT_CONFIG_FILENAME


def invalid_credentials_advice(config_path: str | Path | None = None) -> str:
    """What to tell a user whose queue credentials were refused (HTTP 401): the one text of
    the CLI and the loop runner. ``config_path``: the ``client.toml`` to point at (default:
    :func:`get_labtasker_client_config_path`)."""
    path = config_path if config_path is not None else get_labtasker_client_config_path()
    try:
        name = load_client_config(path).queue.queue_name
    except Exception:  # the advice must not fail on a broken file
        name = None
    queue = f"queue '{name}'" if name else "the configured queue"
    return (
        f"Invalid credentials: the server has no {queue} with this password. If the queue "
        f"was renamed or its password changed, update [queue] in {path} (`labtasker "
        "config`); if it does not exist yet, `labtasker queue create-from-config` creates "
        "it (a new, empty queue)."
    )


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item.get("loc", ())) or "(root)"
        parts.append(f"{loc}: {item.get('msg')}")
    return "; ".join(parts)


def _parse_toml(text: str) -> dict[str, Any]:
    """TOML text to plain dicts: the standard library's parser where there is one (Python
    3.11+, a few ms faster to import than tomlkit), else tomlkit (kept for writing files)."""
    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]  # Python 3.11+
    except ImportError:  # Python 3.10
        import tomlkit
        from tomlkit.exceptions import TOMLKitError

        try:
            return tomlkit.parse(text).unwrap()
        except TOMLKitError as exc:
            raise ValueError(str(exc)) from exc
    return tomllib.loads(text)


def _read_toml(path: Path) -> dict[str, Any]:
    """The parsed TOML of the configuration file at ``path`` (errors as in
    :func:`load_client_config`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigNotFoundError(
            f"Configuration file {path} not found. Run `labtasker init` to create it."
        ) from None
    except OSError as exc:
        raise ConfigError(f"Cannot read configuration file {path}: {exc}") from exc
    try:
        return _parse_toml(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError, tomlkit's errors
        raise ConfigError(f"Invalid configuration file {path}: TOML syntax error: {exc}") from exc


def _validate(path: Path, data: dict[str, Any]) -> ClientConfig:
    from pydantic import ValidationError

    from labtasker.client.config_models import ClientConfig

    try:
        return ClientConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"Invalid configuration file {path}: {_format_validation_error(exc)}"
        ) from exc


def load_client_config(path: str | Path) -> ClientConfig:
    """Read and validate the TOML file at ``path``.

    Raises :class:`ConfigNotFoundError` if it does not exist and :class:`ConfigError` (naming
    the file and the offending fields) if it cannot be parsed or validated.
    """
    path = Path(path)
    return _validate(path, _read_toml(path))


@dataclass(frozen=True)
class Connection:
    """What a client call needs from ``client.toml``: the server's base URL (normalized, with
    a trailing slash), the queue's credentials, the notification level and the loop's
    ``heartbeat_interval`` in seconds."""

    api_base_url: str
    queue_name: str
    password: str
    notifications_level: str
    heartbeat_interval: float


_LEVELS = ("low", "medium", "high", "none")
_NAME_RE = re.compile(NAME_PATTERN)


def _plain_connection(data: dict[str, Any]) -> Connection | None:
    """The :class:`Connection` of a file whose values are all plainly valid (the types the
    models declare, within their limits), without pydantic; ``None`` for anything else, which
    then goes through the models (same result for a valid file, same error otherwise)."""
    endpoint, queue, task = data.get("endpoint"), data.get("queue"), data.get("task", {})
    level = data.get("display_server_notifications_level", "medium")
    if not (isinstance(endpoint, dict) and isinstance(queue, dict) and isinstance(task, dict)):
        return None
    if level not in _LEVELS or "cli_plugins" in data:
        return None
    if any(
        type(data.get(k, True)) is not bool for k in ("enable_traceback_filter", "version_check")
    ):
        return None
    url, name, password = (
        endpoint.get("api_base_url"),
        queue.get("queue_name"),
        queue.get("password"),
    )
    interval = task.get("heartbeat_interval", 30.0)
    if type(url) is not str or type(name) is not str or type(password) is not str:
        return None
    if not (
        1 <= len(name) <= MAX_NAME_LENGTH and _NAME_RE.search(name) and 1 <= len(password) <= 100
    ):
        return None
    if type(interval) not in (int, float) or not interval > 0:
        return None
    try:
        url = normalize_url(url)
    except ValueError:
        return None
    return Connection(url, name, password, level, float(interval))


def load_connection(path: str | Path) -> Connection:
    """The :class:`Connection` of the file at ``path``; errors as :func:`load_client_config`
    (which it uses for any file that is not plainly valid)."""
    path = Path(path)
    data = _read_toml(path)
    plain = _plain_connection(data)
    if plain is not None:
        return plain
    cfg = _validate(path, data)
    return Connection(
        cfg.endpoint.api_base_url,
        cfg.queue.queue_name,
        cfg.queue.password,
        cfg.display_server_notifications_level,
        cfg.task.heartbeat_interval,
    )


def get_client_config() -> ClientConfig:
    """Load ``client.toml`` from the current root (see :func:`load_client_config` for errors)."""
    return load_client_config(get_labtasker_client_config_path())


def dump_client_config(cfg: ClientConfig) -> str:
    """Render ``cfg`` as TOML text (tables for the sections, all fields written)."""
    import tomlkit

    data = cfg.model_dump(mode="json", exclude_none=True)
    doc = tomlkit.document()
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    for key, value in scalars.items():
        doc.add(key, value)
    for key, value in tables.items():
        doc.add(tomlkit.nl())
        doc.add(key, value)
    return tomlkit.dumps(doc)


def save_client_config(cfg: ClientConfig, root: str | Path | None = None) -> Path:
    """Write ``cfg`` to ``<root>/client.toml`` (root defaults to :func:`get_labtasker_root`).

    Creates the directory if needed and returns the file path.
    """
    root = Path(root) if root is not None else get_labtasker_root()
    root.mkdir(parents=True, exist_ok=True)
    path = root / CLIENT_CONFIG_FILENAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dump_client_config(cfg), encoding="utf-8")
    try:
        os.chmod(tmp, 0o600)  # the file holds the queue password
    except OSError:
        pass
    os.replace(tmp, path)
    return path


def init_root(
    api_base_url: str,
    queue_name: str,
    password: str,
    *,
    heartbeat_interval: float = 30.0,
    enable_traceback_filter: bool = False,
    root: str | Path | None = None,
) -> Path:
    """Create a client root: ``client.toml``, ``.gitignore`` (``*.toml``, ``logs``), ``logs/``.

    Raises ``pydantic.ValidationError`` (a ``ValueError``) on invalid values. Returns the
    path of the written ``client.toml``.
    """
    from labtasker.client.config_models import (
        ClientConfig,
        EndpointConfig,
        QueueConfig,
        TaskConfig,
    )

    cfg = ClientConfig(
        enable_traceback_filter=enable_traceback_filter,
        endpoint=EndpointConfig(api_base_url=api_base_url),
        queue=QueueConfig(queue_name=queue_name, password=password),
        task=TaskConfig(heartbeat_interval=heartbeat_interval),
    )
    root = Path(root) if root is not None else get_labtasker_root()
    root.mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    gitignore = root / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(GITIGNORE_TEXT, encoding="utf-8")
    return save_client_config(cfg, root)
