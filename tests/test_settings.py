"""Settings come from the environment in one place."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from gateway.settings import from_env


def test_per_integration_overrides_and_paths(tmp_path: Path) -> None:
    settings = from_env(
        {
            "GATEWAY_SECRET_KEY": "new,old",
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
    first = from_env({"GATEWAY_DATA_DIR": str(tmp_path)})
    second = from_env({"GATEWAY_DATA_DIR": str(tmp_path)})
    assert first.secret_key == second.secret_key and len(first.secret_key) > 40
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert "GATEWAY_SECRET_KEY is not set" in caplog.text
    assert first.database_url == f"sqlite:///{tmp_path / 'gateway.db'}"


def test_egress_settings() -> None:
    settings = from_env(
        {
            "GATEWAY_SECRET_KEY": "k",
            "GATEWAY_EGRESS_ALLOW": " 10.0.0.0/8, billing.internal ,,.corp.example",
            "GATEWAY_UPSTREAM_TOTAL_TIMEOUT": "45",
            "GATEWAY_UPSTREAM_MAX_CONNECTIONS_PER_HOST": "20",
            "HTTPS_PROXY": "http://upper.example:3128",
            "https_proxy": "http://proxy.example:3128",
            "HTTP_PROXY": "http://plain.example:3128",
            "NO_PROXY": ".internal,localhost",
            "GATEWAY_CA_BUNDLE": "/etc/ssl/private-ca.pem",
            "GATEWAY_CLIENT_CERT": "/etc/gateway/client.pem",
        }
    )
    assert settings.egress_allow == ("10.0.0.0/8", "billing.internal", ".corp.example")
    assert (settings.upstream_total_timeout, settings.upstream_max_connections_per_host) == (45.0, 20)
    # Lower case wins, as curl reads them.
    assert settings.https_proxy == "http://proxy.example:3128" and settings.http_proxy == "http://plain.example:3128"
    assert settings.no_proxy == ".internal,localhost"
    assert settings.ca_bundle == Path("/etc/ssl/private-ca.pem")
    assert settings.client_cert == Path("/etc/gateway/client.pem") and settings.client_key is None
    defaults = from_env({"GATEWAY_SECRET_KEY": "k"})
    assert defaults.egress_allow == () and defaults.https_proxy is None and defaults.upstream_total_timeout == 120.0
