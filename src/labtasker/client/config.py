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
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from labtasker.exceptions import ConfigError, ConfigNotFoundError
from labtasker.keys import MAX_NAME_LENGTH, NAME_PATTERN

CLIENT_CONFIG_FILENAME = "client.toml"
DEFAULT_API_BASE_URL = "http://localhost:9321/"
GITIGNORE_TEXT = "*.toml\nlogs\n"

_URL_RE = re.compile(r"^https?://[^\s/?#]+(:\d+)?(/[^\s]*)?$", re.IGNORECASE)


class _Section(BaseModel):
    # defer_build: validators are built on first use, not at import (the CLI's start-up)
    model_config = ConfigDict(extra="allow", defer_build=True)


class EndpointConfig(_Section):
    """``[endpoint]``: where the server is."""

    api_base_url: str

    @field_validator("api_base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return normalize_url(value)


class QueueConfig(_Section):
    """``[queue]``: the queue this client works on (HTTP Basic credentials)."""

    queue_name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)
    password: str = Field(min_length=1, max_length=100, repr=False)


class TaskConfig(_Section):
    """``[task]``: loop-runner settings."""

    heartbeat_interval: float = Field(30.0, gt=0, description="seconds between heartbeats")


class CliPluginsConfig(_Section):
    """``[cli_plugins]``: which ``labtasker.client.cli`` entry-point plugins to load."""

    default: Literal["all", "selected"] = "all"
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    configs: dict[str, Any] = Field(default_factory=dict)


class ClientConfig(_Section):
    """The whole ``client.toml``. Unknown keys are kept (``extra="allow"``)."""

    display_server_notifications_level: Literal["low", "medium", "high", "none"] = "medium"
    enable_traceback_filter: bool = True
    version_check: bool = True
    endpoint: EndpointConfig
    queue: QueueConfig
    task: TaskConfig = Field(default_factory=TaskConfig)
    cli_plugins: CliPluginsConfig = Field(default_factory=CliPluginsConfig)


def normalize_url(value: str) -> str:
    """Validate an ``http(s)://host[:port][/path]`` URL and return it with a trailing slash.

    Raises ``ValueError`` for anything else.
    """
    value = (value or "").strip()
    if not _URL_RE.match(value):
        raise ValueError(f"not a valid http(s) URL: {value!r} (example: {DEFAULT_API_BASE_URL})")
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
    return (f"Invalid credentials: the server has no {queue} with this password. If the queue "
            f"was renamed or its password changed, update [queue] in {path} (`labtasker "
            "config`); if it does not exist yet, `labtasker queue create-from-config` creates "
            "it (a new, empty queue).")


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


def load_client_config(path: str | Path) -> ClientConfig:
    """Read and validate the TOML file at ``path``.

    Raises :class:`ConfigNotFoundError` if it does not exist and :class:`ConfigError` (naming
    the file and the offending fields) if it cannot be parsed or validated.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigNotFoundError(
            f"Configuration file {path} not found. Run `labtasker init` to create it."
        ) from None
    except OSError as exc:
        raise ConfigError(f"Cannot read configuration file {path}: {exc}") from exc
    try:
        data = _parse_toml(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError, tomlkit's errors
        raise ConfigError(f"Invalid configuration file {path}: TOML syntax error: {exc}") from exc
    try:
        return ClientConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"Invalid configuration file {path}: {_format_validation_error(exc)}"
        ) from exc


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

