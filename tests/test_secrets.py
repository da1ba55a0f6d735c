"""Secrets never sit in the database in clear, nor in logs, run records or error bodies."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.storage import keys
from gateway.storage.models import ApiKey, Connection
from tests.conftest import Gateway
from tests.fakes.provider import CLIENT_SECRET


def raw_database_bytes(gateway: Gateway) -> bytes:
    path = Path(gateway.settings.database_url.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_raw_database_holds_no_secret_in_clear(gateway: Gateway, provider, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    user_id = gateway.user()
    gateway.connect(user_id, provider)
    secret = gateway.key(user_id)
    first = provider.access_tokens.copy()
    provider.expire_access_tokens()  # forces a refresh: new tokens get stored too
    assert gateway.call(secret, "github", "get_authenticated_user").status_code == 200
    provider.reject_all_refreshes = True
    provider.expire_access_tokens()
    failed = gateway.call(secret, "github", "get_authenticated_user")
    assert failed.json()["error"] == "token_expired"

    secrets = [secret, CLIENT_SECRET, *first, *provider.access_tokens, *provider.refresh_tokens]
    assert len(secrets) >= 6
    raw = raw_database_bytes(gateway)
    for value in secrets:
        assert value.encode() not in raw, "a secret is stored in clear"
        assert value not in caplog.text, "a secret reached a log line"
        assert value not in failed.text

    with gateway.engine.connect() as c:
        stored = c.execute(select(Connection.access_token, Connection.refresh_token)).first()
        key_hash = c.execute(select(ApiKey.key_hash, ApiKey.prefix)).first()
    assert all(v.startswith("gAAAA") for v in stored)  # Fernet tokens
    assert key_hash.key_hash == keys.hash_key(secret)
    assert secret.startswith(key_hash.prefix) and len(key_hash.prefix) < 12


def test_api_keys_have_256_bits_and_the_right_shape() -> None:
    secret = keys.generate()
    assert secret.startswith("sk_")
    assert len(secret) - 3 >= 43  # 32 bytes in url-safe base64


def test_rotated_secret_keys_still_decrypt(gateway: Gateway, provider) -> None:
    from gateway.crypto import Box

    old = Box(("old-secret",))
    rotated = Box(("new-secret", "old-secret"))
    token = old.encrypt("tok")
    assert rotated.decrypt(token) == "tok"
    assert Box(("new-secret",)).decrypt(rotated.rotate(token)) == "tok"
