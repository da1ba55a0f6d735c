"""The servers a benchmark measures, each started as its own process group and ready when returned.

- the upstream: bench/upstream.py, with nginx in front of it when asked (bench/nginx.py);
- a bare proxy: bench/proxy.py under uvicorn with the gateway's own options;
- a gateway: `gateway serve` on a database seeded by bench/data.py, SQLite or PostgreSQL.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from . import nginx
from .processes import GATEWAY, PYTHON, Child, Children, base_env, free_port


@dataclasses.dataclass
class Upstream:
    kind: str  # "nginx" or "python"
    url: str  # what proxies and gateways call
    python_url: str  # bench/upstream.py itself: /record and /recorded
    children: list[Child]


def start_upstream(children: Children, tmp: Path, kind: str) -> Upstream:
    port = free_port()
    python = children.start(
        "upstream",
        [PYTHON, "-m", "bench.upstream", "--port", str(port)],
        base_env(),
        f"http://127.0.0.1:{port}",
        "/health",
    )
    python.wait_ready()
    assert python.url is not None
    if kind == "python":
        return Upstream(kind, python.url, python.url, [python])
    front = nginx.start(children, tmp / "nginx", python.url)
    assert front.url is not None
    return Upstream(kind, front.url, python.url, [front, python])


def start_proxy(
    children: Children, name: str, upstream: str, client: str, workers: int = 1, wait: bool = True
) -> Child:
    port = free_port()
    # The gateway's own uvicorn options: `gateway serve` calls uvicorn.run(app, host, port, log_level, proxy_headers).
    args = [PYTHON, "-m", "uvicorn", "bench.proxy:app", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--log-level", "warning", "--no-proxy-headers", "--no-access-log", "--no-server-header"]
    if workers > 1:
        args += ["--workers", str(workers)]
    env = base_env(BENCH_UPSTREAM_URL=upstream, BENCH_PROXY_CLIENT=client)
    child = children.start(name, args, env, f"http://127.0.0.1:{port}", ready="/proxy")
    if wait:
        child.wait_ready()
    return child


def start_gateway(
    children: Children, name: str, env: dict[str, str], tmp: Path, workers: int = 1, wait: bool = True
) -> Child:
    """`gateway serve` with `env` (bench.data.gateway_env, on a database already seeded); with
    `wait=False`, call its wait_ready() before using it (starting several at once overlaps their imports)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    home = tmp / name
    home.mkdir(parents=True, exist_ok=True)
    env = {**env, "GATEWAY_HOME": str(home), "GATEWAY_PUBLIC_URL": url}
    args = [GATEWAY, "serve", "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        args += ["--workers", str(workers)]
    child = children.start(name, args, env, url, ready="/v1/integrations")
    if wait:
        child.wait_ready()
    return child
