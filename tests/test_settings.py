"""Settings come from the environment in one place."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from gateway.settings import from_env
from gateway.storage import database as db


def test_per_integration_overrides_and_paths(tmp_path: Path) -> None:
    settings = from_env(
        {
            "GATEWAY_SECRET_KEY": "new,old",
            "GATEWAY_HOME": str(tmp_path),
            "GATEWAY_PUBLIC_URL": "https://gw.example.com/",
            "GATEWAY_GITHUB_CLIENT_ID": "id",
            "GATEWAY_GITHUB_CLIENT_SECRET": "secret",
            "GATEWAY_GITHUB_BASE_URL": "https://github.example.com/api/v3",
            "GATEWAY_GOOGLE_CALENDAR_TOKEN_URL": "https://t",
            "GATEWAY_INTEGRATIONS_PATH": os.pathsep.join(["/a", "/b"]),
            "GATEWAY_UPSTREAM_TIMEOUT": "2.5",
        }
    )
    assert settings.secret_keys == ("new", "old")
    assert settings.public_url == "https://gw.example.com" and settings.public_https
    assert settings.overrides("github").base_url == "https://github.example.com/api/v3"
    assert settings.overrides("github").client_secret == "secret"
    assert settings.overrides("google-calendar").token_url == "https://t"
    assert settings.overrides("slack").client_id is None
    assert settings.integrations_paths == (Path("/a"), Path("/b"))
    assert settings.upstream_timeout == 2.5
    assert settings.action_url("/dashboard/usage") == "https://gw.example.com/dashboard/usage"


def test_development_secret_is_generated_once_and_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    first = from_env({"GATEWAY_HOME": str(tmp_path)})
    second = from_env({"GATEWAY_HOME": str(tmp_path)})
    assert first.secret_key == second.secret_key and len(first.secret_key) > 40
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert "GATEWAY_SECRET_KEY is not set" in caplog.text
    assert first.database_url == f"sqlite:///{tmp_path / 'gateway.db'}"


# Strict parsing: a value that does not parse names its variable and what it expects.


def _env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"GATEWAY_SECRET_KEY": "k", "GATEWAY_HOME": str(tmp_path), **values}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_UPSTREAM_TIMEOUT", "soon"),
        ("GATEWAY_UPSTREAM_TIMEOUT", "30 parsecs"),
        ("GATEWAY_UPSTREAM_TIMEOUT", "0"),
        ("GATEWAY_UPSTREAM_TIMEOUT", "-1"),
        ("GATEWAY_UPSTREAM_TIMEOUT", "nan"),
        ("GATEWAY_UPSTREAM_CONNECT_TIMEOUT", "2 days"),
        ("GATEWAY_WORKER_LEASE_SECONDS", "500ms"),
        ("GATEWAY_APPROVAL_TTL_SECONDS", "1y"),
        ("GATEWAY_SIGNUP_OPEN", "flase"),
        ("GATEWAY_LOG_JSON", "2"),
        ("GATEWAY_MIGRATE_ON_START", "enabled"),
        ("GATEWAY_UPSTREAM_MAX_CONNECTIONS", "0"),
        ("GATEWAY_UPSTREAM_MAX_RESPONSE_BYTES", "10MB"),
        ("GATEWAY_WORKER_CONCURRENCY", "1.5"),
        ("GATEWAY_PUBLIC_URL", "gateway.example.com"),
        ("GATEWAY_PUBLIC_URL", "ftp://gateway.example.com"),
        ("GATEWAY_PUBLIC_URL", "https://"),
        ("GATEWAY_PUBLIC_URL", "https://gateway.example.com/?x=1"),
        ("GATEWAY_GITHUB_TOKEN_URL", "/oauth/token"),
        ("GATEWAY_LOG_LEVEL", "LOUD"),
        ("GATEWAY_PLANS_FILE", "/nonexistent/plans.yaml"),
        ("GATEWAY_DATABASE_URL", "nonsense"),
        ("GATEWAY_DATABASE_URL", "mysql://x"),
        ("GATEWAY_HOME", "relative/folder"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ValueError) as refused:
        from_env(_env(tmp_path, **{name: value}))
    message = str(refused.value)
    assert name in message and "\n" not in message
    assert "expected" in message or "supports" in message, message


@pytest.mark.parametrize(
    ("value", "seconds"), [("30", 30.0), ("2.5", 2.5), ("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0)]
)
def test_durations_accept_units(tmp_path: Path, value: str, seconds: float) -> None:
    assert from_env(_env(tmp_path, GATEWAY_UPSTREAM_TIMEOUT=value)).upstream_timeout == seconds
    assert from_env(_env(tmp_path, GATEWAY_APPROVAL_TTL_SECONDS="1d")).approval_ttl_seconds == 86400


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True)]
    + [("false", False), ("0", False), ("no", False), ("OFF", False), ("", True)],
)
def test_booleans_are_exactly_these_words(tmp_path: Path, value: str, expected: bool) -> None:
    assert from_env(_env(tmp_path, GATEWAY_SIGNUP_OPEN=value)).signup_open is expected


def test_values_are_normalised(tmp_path: Path) -> None:
    settings = from_env(
        _env(
            tmp_path,
            GATEWAY_LOG_LEVEL="debug",
            GATEWAY_PUBLIC_URL="https://gw.example.com/base/",
            GATEWAY_METRICS_TOKEN="",
        )
    )
    assert settings.log_level == "DEBUG" and settings.public_url == "https://gw.example.com/base"
    assert settings.metrics_token is None


# The data directory: GATEWAY_HOME, else the platform's user data folder; never the current folder.


def test_the_default_home_is_the_user_data_dir_never_the_current_folder(
    tmp_path: Path, user_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = from_env({"GATEWAY_SECRET_KEY": "k"})
    assert settings.home == user_data_dir / "integration-gateway"
    assert settings.database_url == f"sqlite:///{user_data_dir / 'integration-gateway' / 'gateway.db'}"
    assert not (tmp_path / ".gateway").exists()


def test_the_old_name_still_works_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    assert from_env({"GATEWAY_SECRET_KEY": "k", "GATEWAY_DATA_DIR": str(tmp_path)}).home == tmp_path
    assert "GATEWAY_DATA_DIR is deprecated" in caplog.text
    with pytest.raises(ValueError, match="GATEWAY_HOME and GATEWAY_DATA_DIR"):
        from_env({"GATEWAY_SECRET_KEY": "k", "GATEWAY_DATA_DIR": str(tmp_path), "GATEWAY_HOME": str(tmp_path / "x")})


def test_no_new_secret_next_to_a_database_that_holds_data(tmp_path: Path) -> None:
    first = from_env({"GATEWAY_HOME": str(tmp_path)})
    engine = db.make_engine(first.database_url)
    db.upgrade(engine)
    engine.dispose()
    (tmp_path / "secret_key").unlink()
    with pytest.raises(ValueError) as refused:
        from_env({"GATEWAY_HOME": str(tmp_path)})
    assert "GATEWAY_SECRET_KEY" in str(refused.value) and str(tmp_path / "secret_key") in str(refused.value)
    assert not (tmp_path / "secret_key").exists()
    assert (
        from_env({"GATEWAY_HOME": str(tmp_path), "GATEWAY_SECRET_KEY": first.secret_key}).secret_key == first.secret_key
    )


def test_a_server_database_needs_the_secret_from_the_environment(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="GATEWAY_SECRET_KEY"):
        from_env({"GATEWAY_HOME": str(tmp_path), "GATEWAY_DATABASE_URL": "postgresql://gw@db.internal/gw"})
    assert not (tmp_path / "secret_key").exists()


def test_egress_settings(tmp_path: Path) -> None:
    ca, cert = tmp_path / "private-ca.pem", tmp_path / "client.pem"
    ca.write_text("ca"), cert.write_text("cert")
    settings = from_env(
        _env(
            tmp_path,
            GATEWAY_EGRESS_ALLOW=" 10.0.0.0/8, billing.internal ,,.corp.example",
            GATEWAY_UPSTREAM_TOTAL_TIMEOUT="45",
            GATEWAY_UPSTREAM_MAX_CONNECTIONS_PER_HOST="20",
            HTTPS_PROXY="http://upper.example:3128",
            https_proxy="http://proxy.example:3128",
            HTTP_PROXY="http://plain.example:3128",
            NO_PROXY=".internal,localhost",
            GATEWAY_CA_BUNDLE=str(ca),
            GATEWAY_CLIENT_CERT=str(cert),
        )
    )
    assert settings.egress_allow == ("10.0.0.0/8", "billing.internal", ".corp.example")
    assert (settings.upstream_total_timeout, settings.upstream_max_connections_per_host) == (45.0, 20)
    # Lower case wins, as curl reads them.
    assert settings.https_proxy == "http://proxy.example:3128" and settings.http_proxy == "http://plain.example:3128"
    assert settings.no_proxy == ".internal,localhost"
    assert settings.ca_bundle == ca
    assert settings.client_cert == cert and settings.client_key is None
    defaults = from_env(_env(tmp_path))
    assert defaults.egress_allow == () and defaults.https_proxy is None and defaults.upstream_total_timeout == 120.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_EGRESS_ALLOW", "10.0.0.0/33"),
        ("GATEWAY_EGRESS_ALLOW", "10.0.0.0/8, not a host"),
        ("GATEWAY_EGRESS_ALLOW", "http://billing.internal"),
        ("GATEWAY_UPSTREAM_TOTAL_TIMEOUT", "forever"),
        ("GATEWAY_UPSTREAM_MAX_CONNECTIONS_PER_HOST", "0"),
        ("GATEWAY_CA_BUNDLE", "/nonexistent/ca.pem"),
    ],
)
def test_a_bad_egress_value_is_refused_naming_its_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ValueError) as refused:
        from_env(_env(tmp_path, **{name: value}))
    assert name in str(refused.value)
