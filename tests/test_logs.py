"""No secret reaches a log line: one redacting formatter on the one handler every logger writes through."""

from __future__ import annotations

import logging
import os
import re
import signal
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from gateway import logs
from gateway.storage import database as db
from gateway.storage import keys, users
from tests.fakes.provider import CLIENT_SECRET, ProviderState
from tests.processes import GatewayProcess, gateway_env
from tests.servers import free_port
from tests.test_dashboard import Browser

SECRET = "log-test-secret-" + "z" * 32


@pytest.mark.parametrize(
    ("line", "leaked"),
    [
        (
            '127.0.0.1:5 - "GET /oauth/github/callback?code=Abc-123_x&state=St4te.value HTTP/1.1" 303',
            ["Abc-123_x", "St4te.value"],
        ),
        ('"POST /v1/waitpoints/waitpoint_ab12/callback/eyJ.abc-d_e.sig HTTP/1.1" 200', ["eyJ.abc-d_e.sig"]),
        ("Authorization: Bearer wpt_eyJpZCI6.abc.def", ["eyJpZCI6.abc.def"]),
        ("Authorization: Basic ZmFrZTpzZWNyZXQ=", ["ZmFrZTpzZWNyZXQ="]),
        ("refused key sk_4Yq9vT1mZpLx0aBcDeFgHiJk", ["4Yq9vT1mZpLx0aBcDeFgHiJk"]),
        ("token response {'access_token': 'gho_abc', \"refresh_token\": \"ghr_def\"}", ["gho_abc", "ghr_def"]),
        ("POST /token client_secret=shh-1&grant_type=refresh_token&refresh_token=r1", ["shh-1", "=r1"]),
        ("next=%2Foauth%2Fcb%3Fcode%3Dsecretcode%26x%3D1", ["secretcode"]),
        ("database postgresql://gw:hunter2@db.internal/gw is down", ["hunter2"]),
        ("api_key=abc123&apikey=def456", ["abc123", "def456"]),
    ],
)
def test_redaction_rules(line: str, leaked: list[str]) -> None:
    redacted = logs.redact(line)
    assert logs.REDACTED in redacted
    for secret in leaked:
        assert secret not in redacted, redacted


@pytest.mark.parametrize(
    "line",
    [
        'GET /v1/runs?status=completed&integration=github&limit=10 HTTP/1.1" 200',
        "key sk_AbC123 (display prefix) revoked; status_code=401 error_code=token_expired",
        "task_abcdefghijklmnop and idempotencyKey=deploy-42 are not secrets",
        "connecting to http://127.0.0.1:8000/x@y",
    ],
)
def test_what_is_not_a_secret_stays(line: str) -> None:
    assert logs.redact(line) == line


@pytest.mark.parametrize("json_lines", [False, True])
def test_every_logger_we_configure_writes_through_the_redacting_handler(
    json_lines: bool, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    logs.configure("DEBUG", json_lines)
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/oauth/x/callback?code=c0de-value&state=st8", "1.1", 303
    )
    logging.getLogger("uvicorn.error").warning("bad header Authorization: Bearer sk_%s", "q" * 40)
    logging.getLogger("gateway.test").debug("callback /v1/waitpoints/w1/callback/t0ken.sig.x")
    logging.getLogger("sqlalchemy.pool").warning("lost postgresql://u:pw-secret@h/db")
    try:
        raise RuntimeError("upstream said: access_token=at-in-a-traceback")
    except RuntimeError:
        logging.getLogger("gateway.test").exception("failed")
    err = capsys.readouterr().err
    for secret in ("c0de-value", "st8", "q" * 40, "t0ken.sig.x", "pw-secret", "at-in-a-traceback"):
        assert secret not in err
    assert err.count(logs.REDACTED) >= 6 and "Traceback" in err
    for handler in logging.getLogger().handlers:
        assert isinstance(handler.formatter, logs.JsonFormatter if json_lines else logs.PlainFormatter)
    for name in logs.LOGGERS:
        assert not logging.getLogger(name).handlers and logging.getLogger(name).propagate


def _secrets_in(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value in text]


@pytest.mark.slow
def test_no_secret_that_went_over_the_wire_is_in_the_log_of_a_real_gateway(
    tmp_path: Path, provider: ProviderState
) -> None:
    """`gateway serve` as a real process, uvicorn's access log on, DEBUG: an OAuth connection, an API call,
    waitpoints completed by callback URL and by public token; then the whole output is searched for every
    secret that crossed the wire."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    database_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    env = gateway_env(
        database_url,
        provider.url,  # type: ignore[attr-defined]
        SECRET,
        GATEWAY_PUBLIC_URL=url,
        GATEWAY_LOG_LEVEL="DEBUG",
        GATEWAY_HOME=str(tmp_path / "home"),
    )
    server = GatewayProcess(["serve", "--host", "127.0.0.1", "--port", str(port)], env, port)
    secrets: dict[str, str] = {"GATEWAY_SECRET_KEY": SECRET, "client secret": CLIENT_SECRET}
    browser = Browser(SimpleNamespace(url=url))  # type: ignore[arg-type]
    try:
        server.wait_ready()
        email = browser.signup()
        authorize = browser.start_connect("github")
        callback = browser.consent(authorize)
        query = parse_qs(urlsplit(callback).query)
        secrets["OAuth code"], secrets["OAuth state"] = query["code"][0], query["state"][0]
        done = browser.get(callback)
        assert done.status_code == 303 and "done=connected" in done.headers["location"]
        # The same callback again: refused, and logged as such.
        assert browser.get(callback).status_code >= 400
        [access_token] = provider.access_tokens
        [refresh_token] = provider.refresh_tokens
        secrets["access token"], secrets["refresh token"] = access_token, refresh_token

        engine = db.make_engine(database_url)
        user = users.by_email(engine, email)
        assert user is not None and user.id is not None
        _, api_key = keys.create(engine, user.id)
        engine.dispose()
        secrets["API key"] = api_key
        with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {api_key}"}) as client:
            assert client.post("/v1/github/get_authenticated_user", json={"params": {}}).status_code == 200
            by_callback = client.post("/v1/waitpoints", json={}).json()
            by_token = client.post("/v1/waitpoints", json={}).json()
            callback_token = by_callback["url"].rsplit("/", 1)[1]
            secrets["waitpoint callback token"] = callback_token
            secrets["public access token"] = by_token["publicAccessToken"]
            assert client.post(by_callback["url"], json={"ok": True}).json()["completed"] is True
            # A forged callback is refused, and its line is logged too.
            assert client.post(f"{url}/v1/waitpoints/{by_callback['id']}/callback/{callback_token}x").status_code >= 400
            public = {"Authorization": f"Bearer {by_token['publicAccessToken']}"}
            completed = httpx.post(f"{url}/v1/waitpoints/{by_token['id']}/complete", json={"data": 1}, headers=public)
            assert completed.json()["completed"] is True
            # A caller that puts a key where it does not belong.
            client.get("/v1/integrations", params={"api_key": api_key, "token": by_token["publicAccessToken"]})
    finally:
        browser.close()
        # Stopped before reading: the shutdown's lines are part of the log too.
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=30)
        output = server.output()
        server.log.close()
    assert re.search(r"GET /oauth/github/callback\?code=\S+&state=\S+ HTTP/1.1\" 303", output), output[-3000:]
    assert "POST /v1/waitpoints/" in output, "uvicorn's access log was not in play"
    leaked = _secrets_in(output, secrets)
    assert not leaked, f"secrets in the log: {leaked}\n{output[-3000:]}"
