"""The `gateway` command, run in-process against a temporary database."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from gateway import cli

GATEWAY = str(Path(sys.executable).parent / "gateway")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> Path:
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

    code, out, _ = run(
        capsys, "keys", "create", "--user", "ops@example.com", "--name", "ci", "--integrations", "github", "--json"
    )
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
    bad.write_text(
        "name: broken\ndisplay_name: B\ndescription: d\ndocs_url: x\nreference: r\nbase_url: https://x\n"
        "auth: {type: api_key}\nendpoints:\n  a:\n    description: does something\n    method: GET\n"
        "    path: /a\n    colour: red\n"
    )
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
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env_vars["GATEWAY_HOME"] = str(data)
    process = subprocess.Popen(
        [GATEWAY, "serve", "--port", str(port), "--json"], env=env_vars, stderr=subprocess.PIPE, text=True
    )
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
    # --json: every line is a JSON object, one of them says where the data is.
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert any("GATEWAY_SECRET_KEY is not set" in line["message"] for line in lines)
    assert any(line["message"].startswith(f"data directory {data} (GATEWAY_HOME)") for line in lines)


# No traceback ever reaches a person: one line naming the problem and what to change, a non-zero status.


def gateway(tmp_path: Path, *argv: str, cwd: Path | None = None, **changes: str) -> subprocess.CompletedProcess[str]:
    """The real `gateway` entry point in a process of its own, with its own home, database and secret."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environ.update(
        GATEWAY_HOME=str(tmp_path / "home"),
        GATEWAY_DATABASE_URL=f"sqlite:///{tmp_path / 'cli.db'}",
        GATEWAY_SECRET_KEY="cli-secret",
    )
    environ.update(changes)
    for name in [name for name, value in environ.items() if value == "-"]:
        del environ[name]
    return subprocess.run(
        [GATEWAY, *argv],
        env=environ,
        cwd=cwd or tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


PASSWORD = ("--password", "long enough password")
FAILURES = [
    # (what, argv, environment changes, exit status, words the line must have)
    (
        "unreachable database",
        ["users", "list"],
        {"GATEWAY_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"},
        1,
        ["GATEWAY_DATABASE_URL", "127.0.0.1"],
    ),
    (
        "database password hidden",
        ["users", "list"],
        {"GATEWAY_DATABASE_URL": "postgresql://gw:hunter2@127.0.0.1:1/x"},
        1,
        ["GATEWAY_DATABASE_URL"],
    ),
    (
        "unsupported database",
        ["users", "list"],
        {"GATEWAY_DATABASE_URL": "mysql://x"},
        1,
        ["GATEWAY_DATABASE_URL", "mysql"],
    ),
    ("not a database URL", ["db", "upgrade"], {"GATEWAY_DATABASE_URL": "nonsense"}, 1, ["GATEWAY_DATABASE_URL"]),
    (
        "missing driver",
        ["keys", "list"],
        {"GATEWAY_DATABASE_URL": "postgresql+pg8000://x@127.0.0.1:1/x"},
        1,
        ["GATEWAY_DATABASE_URL", "pg8000"],
    ),
    ("no terminal for a password", ["users", "create", "a@example.com"], {}, 1, ["--password"]),
    ("unknown plan", ["users", "create", "a@example.com", *PASSWORD, "--plan", "gold"], {}, 1, ["gold", "free"]),
    (
        "unknown default plan",
        ["users", "create", "a@example.com", *PASSWORD],
        {"GATEWAY_DEFAULT_PLAN": "gold"},
        1,
        ["GATEWAY_DEFAULT_PLAN"],
    ),
    ("port out of range", ["serve", "--port", "70000"], {}, 2, ["--port", "65535"]),
    ("port zero", ["serve", "--port", "0"], {}, 2, ["--port"]),
    ("no workers", ["serve", "--workers", "0"], {}, 2, ["--workers"]),
    ("no concurrency", ["worker", "--concurrency", "0"], {}, 2, ["--concurrency"]),
    (
        "negative daily limit",
        ["keys", "create", "--user", "a@example.com", "--daily-limit", "-5"],
        {},
        2,
        ["--daily-limit"],
    ),
    ("no command", [], {}, 2, ["COMMAND"]),
    ("bad duration (serve)", ["serve"], {"GATEWAY_UPSTREAM_TIMEOUT": "soon"}, 1, ["GATEWAY_UPSTREAM_TIMEOUT", "30s"]),
    ("bad boolean (worker)", ["worker"], {"GATEWAY_SIGNUP_OPEN": "flase"}, 1, ["GATEWAY_SIGNUP_OPEN", "true"]),
    ("bad level (users list)", ["users", "list"], {"GATEWAY_LOG_LEVEL": "LOUD"}, 1, ["GATEWAY_LOG_LEVEL", "DEBUG"]),
    (
        "bad public URL (keys list)",
        ["keys", "list"],
        {"GATEWAY_PUBLIC_URL": "gateway.example.com"},
        1,
        ["GATEWAY_PUBLIC_URL"],
    ),
    (
        "missing plans file (serve)",
        ["serve"],
        {"GATEWAY_PLANS_FILE": "/nonexistent/plans.yaml"},
        1,
        ["GATEWAY_PLANS_FILE"],
    ),
    ("relative home (db upgrade)", ["db", "upgrade"], {"GATEWAY_HOME": "relative"}, 1, ["GATEWAY_HOME"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(("what", "argv", "changes", "status", "words"), FAILURES, ids=[f[0] for f in FAILURES])
def test_a_failure_is_one_line_naming_what_to_change(
    tmp_path: Path, what: str, argv: list[str], changes: dict[str, str], status: int, words: list[str]
) -> None:
    result = gateway(tmp_path, *argv, **changes)
    line = one_error_line(result)
    assert result.returncode == status and line.startswith("error: "), (result.returncode, line)
    for word in words:
        assert word in line, line
    assert "hunter2" not in line


@pytest.mark.slow
@pytest.mark.parametrize(
    ("what", "argv", "changes", "status", "words"), FAILURES[::4], ids=[f[0] for f in FAILURES[::4]]
)
def test_with_json_a_failure_is_one_json_object(
    tmp_path: Path, what: str, argv: list[str], changes: dict[str, str], status: int, words: list[str]
) -> None:
    result = gateway(tmp_path, *argv, "--json", **changes) if argv else gateway(tmp_path, "--json", **changes)
    error = json.loads(one_error_line(result))
    assert result.returncode == status and set(error) == {"error", "message"}
    assert error["error"] in cli.ERROR_CODES
    for word in words:
        assert word in error["message"]


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = gateway(tmp_path, "serve", "--port", str(port))
    line = one_error_line(result)
    assert result.returncode == 1 and f"127.0.0.1:{port}" in line and "--port" in line


def test_version(tmp_path: Path) -> None:
    result = gateway(tmp_path, "--version")
    assert result.returncode == 0 and result.stdout.strip() == f"gateway {metadata.version('integration-gateway')}"


def test_every_command_takes_json() -> None:
    def leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return [leaf for a in nested for sub in a.choices.values() for leaf in leaves(sub)] if nested else [parser]

    commands = leaves(cli.parser())
    assert len(commands) >= 11
    assert all("--json" in c._option_string_actions for c in commands), [c.prog for c in commands]


def test_the_worker_says_where_its_data_is(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environ.update(GATEWAY_HOME=str(tmp_path), GATEWAY_LOG_LEVEL="INFO")
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        process = subprocess.Popen([GATEWAY, "worker"], env=environ, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while "data directory" not in log.read_text() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            process.terminate()
            process.wait(timeout=30)
    assert f"data directory {tmp_path} (GATEWAY_HOME); database sqlite:///{tmp_path / 'gateway.db'}" in log.read_text()
    assert process.returncode == 0, log.read_text()


# The data directory does not depend on the folder the command is run from.


def test_every_folder_sees_the_same_gateway(tmp_path: Path) -> None:
    xdg, one, two = tmp_path / "xdg", tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    defaults = {"GATEWAY_HOME": "-", "GATEWAY_DATABASE_URL": "-", "GATEWAY_SECRET_KEY": "-", "XDG_DATA_HOME": str(xdg)}
    created = gateway(tmp_path, "users", "create", "ops@example.com", *PASSWORD, cwd=one, **defaults)
    assert created.returncode == 0, created.stderr
    listed = gateway(tmp_path, "users", "list", "--json", cwd=two, **defaults)
    assert listed.returncode == 0 and [u["email"] for u in json.loads(listed.stdout)] == ["ops@example.com"]
    assert not (one / ".gateway").exists() and not (two / ".gateway").exists()
    home = xdg / "integration-gateway"
    assert (home / "gateway.db").exists() and (home / "secret_key").exists()

    # The secret lost, the database kept: refused, never a new secret that cannot read it.
    (home / "secret_key").unlink()
    refused = gateway(tmp_path, "users", "list", cwd=two, **defaults)
    line = one_error_line(refused)
    assert refused.returncode == 1 and "GATEWAY_SECRET_KEY" in line and str(home / "secret_key") in line
    assert not (home / "secret_key").exists()


def test_data_left_in_the_old_place_is_pointed_at_not_replaced(tmp_path: Path) -> None:
    old = tmp_path / ".gateway"
    made = gateway(
        tmp_path,
        "users",
        "create",
        "old@example.com",
        *PASSWORD,
        GATEWAY_HOME=str(old),
        GATEWAY_DATABASE_URL="-",
        GATEWAY_SECRET_KEY="-",
    )
    assert made.returncode == 0, made.stderr
    defaults = {
        "GATEWAY_HOME": "-",
        "GATEWAY_DATABASE_URL": "-",
        "GATEWAY_SECRET_KEY": "-",
        "XDG_DATA_HOME": str(tmp_path / "xdg"),
    }
    refused = gateway(tmp_path, "users", "list", cwd=tmp_path, **defaults)
    line = one_error_line(refused)
    assert refused.returncode == 1 and f"GATEWAY_HOME={old}" in line and "mv" in line
    assert not (tmp_path / "xdg" / "integration-gateway" / "gateway.db").exists()
    kept = gateway(tmp_path, "users", "list", "--json", cwd=tmp_path, **{**defaults, "GATEWAY_HOME": str(old)})
    assert [u["email"] for u in json.loads(kept.stdout)] == ["old@example.com"]
