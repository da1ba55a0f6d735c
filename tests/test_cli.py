"""The `gateway` command, run in-process against a temporary database."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gateway import cli

GATEWAY = str(Path(sys.executable).parent / "gateway")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(__import__("os").environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("GATEWAY_SECRET_KEY", "cli-secret")
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_users_and_keys(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "users", "create", "ops@example.com", "--password", "long enough password", "--json")
    assert code == 0 and json.loads(out)["email"] == "ops@example.com"
    code, _, err = run(capsys, "users", "create", "ops@example.com", "--password", "long enough password")
    assert code == 1 and "already exists" in err

    code, out, _ = run(capsys, "keys", "create", "--user", "ops@example.com", "--name", "ci", "--integrations", "github", "--json")
    created = json.loads(out)
    assert code == 0 and created["key"].startswith("sk_") and created["integrations"] == ["github"]
    code, _, err = run(capsys, "keys", "create", "--user", "ops@example.com", "--integrations", "nope")
    assert code == 1 and "unknown integrations: nope" in err
    code, _, err = run(capsys, "keys", "create", "--user", "ghost@example.com")
    assert code == 1 and "no user" in err

    code, out, _ = run(capsys, "keys", "list", "--json")
    [listed] = json.loads(out)
    assert listed["prefix"] == created["key"][:9] and created["key"] not in out
    code, out, _ = run(capsys, "keys", "revoke", str(created["id"]))
    assert code == 0
    code, _, err = run(capsys, "keys", "revoke", str(created["id"]))
    assert code == 1
    code, out, _ = run(capsys, "keys", "list", "--json")
    assert json.loads(out)[0]["revoked"] is True


def test_integrations_list_and_validate(env: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "integrations", "list", "--json")
    assert code == 0 and "github" in {i["name"] for i in json.loads(out)}
    code, out, _ = run(capsys, "integrations", "validate")
    assert code == 0 and "github" in out

    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\ndisplay_name: B\ndescription: d\ndocs_url: x\nreference: r\nbase_url: https://x\n"
                   "auth: {type: api_key}\nendpoints:\n  a:\n    description: does something\n    method: GET\n"
                   "    path: /a\n    colour: red\n")
    code, out, _ = run(capsys, "integrations", "validate", str(bad))
    assert code == 1
    assert str(bad) in out and "endpoints.a.colour" in out
    code, _, err = run(capsys, "integrations", "validate", str(tmp_path / "missing.yaml"))
    assert code == 1 and "no such file" in err


def test_db_upgrade(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "db", "upgrade", "--json")
    assert code == 0 and json.loads(out)["revision"]


def test_help_and_serve_as_a_real_process(env: Path, tmp_path: Path) -> None:
    assert "serve" in subprocess.run([GATEWAY, "--help"], capture_output=True, text=True, check=True).stdout
    from tests.servers import free_port

    port = free_port()
    data = tmp_path / "data"
    env_vars = {k: v for k, v in __import__("os").environ.items() if not k.startswith("GATEWAY_")}
    env_vars["GATEWAY_DATA_DIR"] = str(data)
    process = subprocess.Popen([GATEWAY, "serve", "--port", str(port)], env=env_vars, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/v1/integrations", timeout=1)
                break
            except httpx.HTTPError:
                __import__("time").sleep(0.1)
        assert response.status_code == 200
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    # Fresh machine: the development secret is generated, kept private, and warned about.
    assert (data / "secret_key").stat().st_mode & 0o777 == 0o600
    assert (data / "gateway.db").exists()
    assert "GATEWAY_SECRET_KEY is not set" in stderr
