"""nginx as the fast upstream: the small JSON answer from C, so the upstream's own cost is not Python's.

nginx answers `/fast` itself (`return 200`, the body of bench/upstream.py) and passes
every other path (`/big`, `/record`, `/recorded`, `/health`) to bench/upstream.py
unbuffered, so the gateway keeps one base URL. It runs in the foreground as a child
of the benchmark, with its configuration, pid file, logs and temporary paths in a
folder of its own, on a free loopback port: no system configuration is read or written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .processes import Child, Children, base_env, free_port
from .upstream import FAST_BODY

CONFIG = """\
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 4096; }}

http {{
    access_log off;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    # A load generator's connection lives for a whole measurement: never close it after N requests.
    keepalive_requests 100000000;
    keepalive_timeout 300s;

    upstream python {{
        server 127.0.0.1:{python_port};
        keepalive 32;
    }}

    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;

        location = /fast {{
            default_type application/json;
            return 200 '{body}';
        }}

        location / {{
            proxy_pass http://python;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Stream big answers through as they come: no temporary files, no whole-body buffer.
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


def available() -> bool:
    return shutil.which("nginx") is not None


def config(folder: Path, port: int, python_port: int) -> str:
    return CONFIG.format(folder=folder, port=port, python_port=python_port, body=FAST_BODY.decode())


def start(children: Children, folder: Path, python_url: str) -> Child:
    """nginx on a free port in front of bench/upstream.py at `python_url`; ready when it returns."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    python_port = int(python_url.rsplit(":", 1)[1])
    conf = folder / "nginx.conf"
    conf.write_text(config(folder, port, python_port))
    nginx = shutil.which("nginx") or "nginx"
    child = children.start(
        "nginx",
        [nginx, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")],
        base_env(),
        f"http://127.0.0.1:{port}",
        ready="/health",
    )
    child.wait_ready()
    return child
