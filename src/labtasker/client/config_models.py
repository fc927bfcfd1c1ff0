"""The pydantic models of ``client.toml`` (see :mod:`labtasker.client.config`).

In their own module so that reading the connection settings (every CLI call) does not import
pydantic: :mod:`labtasker.client.config` re-exports these names and imports this module on
first use.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from labtasker.client.config import normalize_url
from labtasker.keys import MAX_NAME_LENGTH, NAME_PATTERN


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
