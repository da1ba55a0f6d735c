"""Start real `gateway` processes (serve, worker) with an environment, and stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.fakes.provider import CLIENT_ID, CLIENT_SECRET
from tests.servers import free_port

GATEWAY = str(Path(sys.executable).parent / "gateway")


def gateway_env(database_url: str, provider_url: str, secret: str, **extra: str) -> dict[str, str]:
    # No proxy either: every test server is on loopback.
    proxies = ("http_proxy", "https_proxy", "no_proxy")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k.lower() not in proxies}
    env.update(
        GATEWAY_DATABASE_URL=database_url,
        GATEWAY_SECRET_KEY=secret,
        GATEWAY_ALLOW_HTTP_UPSTREAMS="true",
        GATEWAY_EGRESS_ALLOW="127.0.0.1/32",
        GATEWAY_INTEGRATIONS_PATH=str(Path(__file__).resolve().parent / "integrations"),
        GATEWAY_LOG_LEVEL="WARNING",
    )
    for name in ("GITHUB", "FAKEAPI"):
        env[f"GATEWAY_{name}_CLIENT_ID"] = CLIENT_ID
        env[f"GATEWAY_{name}_CLIENT_SECRET"] = CLIENT_SECRET
        env[f"GATEWAY_{name}_BASE_URL"] = f"{provider_url}/api"
        env[f"GATEWAY_{name}_TOKEN_URL"] = f"{provider_url}/oauth/token"
        env[f"GATEWAY_{name}_AUTHORIZE_URL"] = f"{provider_url}/oauth/authorize"
    env.update(extra)
    return env


class GatewayProcess:
    def __init__(self, args: list[str], env: dict[str, str], port: int | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}" if port else None
        # A file, not a pipe: a pipe nobody reads would block a chatty process.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed when the process is stopped)
        self.process = subprocess.Popen(
            [GATEWAY, *args], env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    @classmethod
    def serve(cls, env: dict[str, str], *extra: str) -> GatewayProcess:
        port = free_port()
        proc = cls(["serve", "--host", "127.0.0.1", "--port", str(port), *extra], env, port)
        try:
            proc.wait_ready()
        except BaseException:
            # Not left running (with --workers, restarting its children forever) when it never got ready.
            proc.kill()
            raise
        return proc

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.output()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v1/integrations", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("gateway did not become ready")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
        self.process.wait(timeout=10)
        self.log.close()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
