"""Settings: environment over ``settings.toml``, one clear message per bad value, and the
protocol file's validation."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pydantic import ValidationError

from reminders.protocols import load_protocols
from reminders.settings import ConfigError, load_settings
from tests.conftest import CONFIG


def test_every_setting_has_a_safe_default() -> None:
    s = load_settings({"REMINDERS_CONFIG_DIR": str(CONFIG)})
    assert s.database_url == "sqlite:///reminders.db"
    assert (s.http_host, s.http_port) == ("127.0.0.1", 8000)
    assert (s.send_window_start, s.send_window_end, s.send_time) == (
        dt.time(9),
        dt.time(20),
        dt.time(10),
    )
    assert (s.clinic_country, s.clinic_timezone, s.default_language) == (
        "TR",
        "Europe/Istanbul",
        "en",
    )
    assert (s.delivery_mode, s.lease_seconds, s.in_doubt_grace_seconds) == ("live", 300, 900)
    assert s.secret_key is None and s.twilio_auth_token is None


def config_dir(tmp_path: Path, toml: str) -> Path:
    (tmp_path / "settings.toml").write_text(toml, encoding="utf-8")
    return tmp_path


def test_the_environment_wins_over_the_settings_file(tmp_path: Path) -> None:
    folder = str(config_dir(tmp_path, 'send_time = "08:30"\nclinic_name = "Ankara Clinic"\n'))
    from_file = load_settings({"REMINDERS_CONFIG_DIR": folder})
    assert (from_file.send_time, from_file.clinic_name) == (dt.time(8, 30), "Ankara Clinic")
    both = load_settings({"REMINDERS_CONFIG_DIR": folder, "REMINDERS_SEND_TIME": "11:15"})
    assert (both.send_time, both.clinic_name) == (dt.time(11, 15), "Ankara Clinic")


def test_an_empty_variable_counts_as_not_given() -> None:
    assert load_settings({"REMINDERS_HTTP_PORT": " "}, config_dir=CONFIG).http_port == 8000


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("REMINDERS_HTTP_PORT", "eighty", "REMINDERS_HTTP_PORT"),
        ("REMINDERS_HTTP_PORT", "0", "REMINDERS_HTTP_PORT: must be greater than 0"),
        ("REMINDERS_CLINIC_TIMEZONE", "Mars/Olympus", "unknown IANA time zone 'Mars/Olympus'"),
        ("REMINDERS_CLINIC_COUNTRY", "XX", "REMINDERS_CLINIC_COUNTRY: unknown country code"),
        ("REMINDERS_DEFAULT_LANGUAGE", "klingon", "REMINDERS_DEFAULT_LANGUAGE: unknown language"),
        ("REMINDERS_SEND_TIME", "25:00", "REMINDERS_SEND_TIME"),
        ("REMINDERS_DELIVERY_MODE", "pigeon", "REMINDERS_DELIVERY_MODE"),
        ("REMINDERS_DISPATCH_INTERVAL", "-1", "REMINDERS_DISPATCH_INTERVAL: must be greater"),
        ("REMINDERS_DISPATCH_AHEAD", "-1", "REMINDERS_DISPATCH_AHEAD: must be 0 or more"),
        ("REMINDERS_SEND_WINDOW_END", "08:00", "REMINDERS_SEND_WINDOW_START must be before"),
        ("REMINDERS_LOG_LEVEL", "verbose", "REMINDERS_LOG_LEVEL: Input should be 'DEBUG'"),
    ],
)
def test_a_bad_value_is_one_message_naming_the_variable(variable, value, message) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings({"REMINDERS_CONFIG_DIR": str(CONFIG), variable: value})
    assert "\n" not in str(caught.value)


def test_log_level_and_format_are_read_in_any_case() -> None:
    s = load_settings(
        {"REMINDERS_LOG_LEVEL": "debug", "REMINDERS_LOG_FORMAT": "Console "}, config_dir=CONFIG
    )
    assert (s.log_level, s.log_format) == ("DEBUG", "console")


def test_a_postgresql_server_that_never_answers_fails_the_connection_in_seconds(
    monkeypatch,
) -> None:
    """A server that accepts TCP but never speaks (a hung host behind a proxy) must not hold a
    job or the start-up for the OS's minutes."""
    import socket
    import time

    from sqlalchemy.exc import OperationalError

    from reminders import db

    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    monkeypatch.setattr(db, "CONNECT_TIMEOUT", 1)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads
        port = silent.getsockname()[1]
        engine = db.make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/test")
        started = time.monotonic()
        with pytest.raises(OperationalError):
            engine.connect()
        assert time.monotonic() - started < 5
        engine.dispose()


def test_codes_are_put_in_canonical_form() -> None:
    s = load_settings(
        {"REMINDERS_CLINIC_COUNTRY": "de", "REMINDERS_DEFAULT_LANGUAGE": "pt-br"},
        config_dir=CONFIG,
    )
    assert (s.clinic_country, s.default_language) == ("DE", "pt_BR")


def test_an_unknown_key_in_the_settings_file_is_named(tmp_path: Path) -> None:
    folder = str(config_dir(tmp_path, 'send_tme = "08:30"\n'))
    with pytest.raises(ConfigError, match=r"settings\.toml: unknown setting\(s\) send_tme"):
        load_settings({"REMINDERS_CONFIG_DIR": folder})


def test_a_settings_file_that_is_not_toml_is_named(tmp_path: Path) -> None:
    folder = str(config_dir(tmp_path, "send_time = \n"))
    with pytest.raises(ConfigError, match=r"settings\.toml"):
        load_settings({"REMINDERS_CONFIG_DIR": folder})


def test_settings_cannot_change_once_read() -> None:
    s = load_settings({}, config_dir=CONFIG)
    with pytest.raises(ValidationError):
        s.http_port = 1  # type: ignore[misc]


def test_secrets_do_not_show_when_settings_are_printed() -> None:
    s = load_settings(
        {"TWILIO_AUTH_TOKEN": "tok-123456", "REMINDERS_API_TOKEN": "api-987"}, config_dir=CONFIG
    )
    assert "tok-123456" not in repr(s) and "api-987" not in str(s)
    assert s.twilio_auth_token is not None
    assert s.twilio_auth_token.get_secret_value() == "tok-123456"


def protocols_file(tmp_path: Path, body: str) -> Path:
    (tmp_path / "protocols.yaml").write_text(body, encoding="utf-8")
    return tmp_path


def test_the_shipped_protocols_match_the_product_defaults() -> None:
    found = {
        code: (p.min_interval_days, p.target_interval_days, p.max_interval_days)
        for code, p in load_protocols(CONFIG).items()
    }
    assert found == {
        "chronic_migraine": (84, 90, 120),
        "cervical_dystonia": (84, 90, 120),
        "upper_limb_spasticity": (84, 90, 120),
        "myofascial_pain": (84, 90, 120),
        "tmj_bruxism": (90, 120, 180),
        "bladder_dysfunction": (84, 180, 270),
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "protocols:\n  x:\n    indication: x\n    min_interval_days: 90\n"
            "    target_interval_days: 80\n    max_interval_days: 120\n"
            "    steps: [{name: due, anchor: window_open, offset_days: 0}]\n",
            "protocol x: .*min_interval_days <= target_interval_days",
        ),
        (
            "protocols:\n  x:\n    indication: x\n    min_interval_days: 84\n"
            "    target_interval_days: 90\n    max_interval_days: 120\n"
            "    steps: [{name: due, anchor: someday, offset_days: 0}]\n",
            r"protocol x: steps\.0\.anchor",
        ),
        ("protocols: [1, 2]\n", "needs a 'protocols' mapping"),
        ("protocols: {x: [\n", r"protocols\.yaml"),
    ],
)
def test_a_bad_protocol_file_names_the_protocol_and_field(tmp_path, body, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_protocols(protocols_file(tmp_path, body))


def test_a_missing_protocol_file_names_the_config_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="REMINDERS_CONFIG_DIR"):
        load_protocols(tmp_path)
