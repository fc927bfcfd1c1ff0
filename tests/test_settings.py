"""Server settings: the tunables are read from the environment once, in one place
(``labtasker.server.settings``), with a one-line error naming a bad variable."""

from __future__ import annotations

import pytest

from labtasker.server.settings import ServerSettings, sweep_interval_from_env


def test_defaults_without_variables():
    s = ServerSettings.from_env({})
    assert (s.sweep_interval, s.event_poll_interval, s.sse_ping_interval, s.event_log_size) == (
        30.0,
        2.0,
        15.0,
        100_000,
    )
    assert (s.ui_secret, s.ui_session_seconds) == (None, 12 * 3600)
    assert (s.header_timeout, s.body_timeout) == (10.0, 30.0)


def test_every_variable_is_read():
    s = ServerSettings.from_env(
        {
            "PERIODIC_TASK_INTERVAL": "0.5",
            "EVENT_POLL_INTERVAL": "7",
            "SSE_PING_INTERVAL": "3.5",
            "EVENT_LOG_SIZE": "12",
            "LABTASKER_UI_SECRET": "k",
            "LABTASKER_UI_SESSION_SECONDS": "60",
            "HEADER_TIMEOUT": "2.5",
            "BODY_TIMEOUT": "45",
        }
    )
    assert s == ServerSettings(
        sweep_interval=0.5,
        event_poll_interval=7.0,
        sse_ping_interval=3.5,
        event_log_size=12,
        ui_secret="k",
        ui_session_seconds=60.0,
        header_timeout=2.5,
        body_timeout=45.0,
    )


@pytest.mark.parametrize(
    "name, raw, message",
    [
        ("PERIODIC_TASK_INTERVAL", "soon", "PERIODIC_TASK_INTERVAL must be a number of seconds"),
        ("PERIODIC_TASK_INTERVAL", "0", "PERIODIC_TASK_INTERVAL must be positive"),
        ("EVENT_POLL_INTERVAL", "-1", "EVENT_POLL_INTERVAL must be positive"),
        ("SSE_PING_INTERVAL", "nan", "SSE_PING_INTERVAL must be positive"),
        ("EVENT_LOG_SIZE", "1e3", "EVENT_LOG_SIZE must be a whole number"),
        ("EVENT_LOG_SIZE", "-5", "EVENT_LOG_SIZE must be 0 or more"),
        ("LABTASKER_UI_SESSION_SECONDS", "0", "LABTASKER_UI_SESSION_SECONDS must be positive"),
        ("HEADER_TIMEOUT", "0", "HEADER_TIMEOUT must be positive"),
        ("BODY_TIMEOUT", "soon", "BODY_TIMEOUT must be a number of seconds"),
    ],
)
def test_bad_values_name_the_variable(name, raw, message):
    with pytest.raises(ValueError, match=message):
        ServerSettings.from_env({name: raw})


def test_sweep_interval_alone():
    assert sweep_interval_from_env({"PERIODIC_TASK_INTERVAL": "4"}) == 4.0
    assert sweep_interval_from_env({}) == 30.0


def test_create_app_holds_the_settings(tmp_path):
    from labtasker.server.app import create_app

    settings = ServerSettings(
        event_poll_interval=9.0, event_log_size=3, ui_secret="s3", ui_session_seconds=99.0
    )
    app = create_app(f"sqlite:///{tmp_path / 'lt.db'}", 5.0, settings)
    try:
        assert app.state.settings.event_poll_interval == 9.0
        assert app.state.settings.sweep_interval == 5.0  # the argument overrides
        assert app.state.sweeper.interval == 5.0
        assert app.state.storage.event_log_size == 3
        assert (app.state.dashboard_secret, app.state.dashboard_max_age) == ("s3", 99.0)
    finally:
        app.state.db.dispose()
