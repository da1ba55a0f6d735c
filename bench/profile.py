"""Where one gateway call's time goes: the app driven in-process over ASGI, under cProfile.

`python -m bench.profile [--requests N] [--scale] [--postgres] [--queued]` starts the fast
upstream, prepares the benchmark's database (SQLite, or a PostgreSQL schema of its own),
runs the real app (create_app from the same environment `gateway serve` reads, lifespan
and queue worker included) and sends it N sequential calls without a network in front,
so every microsecond left is the gateway's own or its HTTP client's. With --queued the
calls are submissions to 20 named queues (202 at once), drained by the app's own worker
meanwhile, as in the benchmark's queue drain. It prints the wall time per call without the profiler, then, per call,
the gateway's own functions (cumulative) and the heaviest functions overall (own time).
cProfile roughly doubles the cost of small Python functions: read the figures as shares.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import logs
from gateway.app import create_app
from gateway.settings import from_env

from . import data
from .processes import ROOT, Children
from .run import Options, Run


def _scope(secret: str, path: str, length: int) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {secret}".encode()),
            (b"content-length", str(length).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


async def call(app: Any, secret: str, state: dict[str, Any], path: str, body: bytes) -> int:
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app({**_scope(secret, path, len(body)), "state": dict(state)}, receive, send)
    return status


def _calls(queued: bool) -> tuple[str, int, Callable[[int], bytes]]:
    """The path, the expected status, and the n-th call's body."""
    if not queued:
        return "/v1/bench/fast", 200, lambda n: data.CALL_BODY.encode()

    def submission(n: int) -> bytes:
        queue = f"q{n % 20}"
        return json.dumps({"params": {"queue": queue, "seq": n}, "queue": queue}).encode()

    return "/v1/bench/record", 202, submission


async def drive(
    app: Any, secret: str, requests: int, profiler: cProfile.Profile, queued: bool = False
) -> dict[str, float]:
    path, expected, body = _calls(queued)
    state: dict[str, Any] = {}
    async with app.router.lifespan_context(app) as lifespan_state:
        state.update(lifespan_state or {})
        for n in range(200):
            assert await call(app, secret, state, path, body(n)) == expected
        started, cpu = time.perf_counter(), time.process_time()
        for n in range(requests):
            await call(app, secret, state, path, body(n))
        plain = (time.perf_counter() - started) / requests
        plain_cpu = (time.process_time() - cpu) / requests
        profiler.enable()
        started = time.perf_counter()
        for n in range(requests):
            await call(app, secret, state, path, body(n))
        profiled = (time.perf_counter() - started) / requests
        profiler.disable()
    return {"plain_us": plain * 1e6, "plain_cpu_us": plain_cpu * 1e6, "profiled_us": profiled * 1e6}


def _name(key: tuple[str, int, str]) -> str:
    filename, line, function = key
    for marker in ("/site-packages/", str(ROOT) + "/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
    return f"{filename}:{line}({function})"


def summarise(profiler: cProfile.Profile, requests: int, top: int) -> dict[str, list[tuple[str, float, float]]]:
    stats = pstats.Stats(profiler, stream=io.StringIO())
    entries = stats.stats  # type: ignore[attr-defined]
    rows = [(_name(key), tt / requests * 1e6, ct / requests * 1e6) for key, (_, _, tt, ct, _) in entries.items()]
    own = sorted(rows, key=lambda r: -r[1])[:top]
    gateway = sorted((r for r in rows if r[0].startswith("gateway/")), key=lambda r: -r[2])[:top]
    return {"own": own, "gateway_cumulative": gateway}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--scale", action="store_true", help="on the data-scale database")
    parser.add_argument("--postgres", action="store_true", help="on PostgreSQL (127.0.0.1:5432, database test)")
    parser.add_argument("--queued", action="store_true", help="queued submissions instead of direct calls")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    options = Options(1, 1, [1], generator="python", upstream="python", rounds=1)
    with (
        tempfile.TemporaryDirectory(prefix="gateway-profile-") as tmp,
        data.Schemas() as schemas,
        Children() as children,
    ):
        run = Run(options, children, schemas, Path(tmp))
        upstream = run.start_upstream()
        url = schemas.make().url if args.postgres else f"sqlite:///{tmp}/profile.db"
        account, _ = data.seed(url, scale=args.scale)
        settings = from_env(data.gateway_env(url, upstream, GATEWAY_HOME=tmp))
        logs.configure(settings.log_level, settings.log_json)
        app = create_app(settings)
        profiler = cProfile.Profile()
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            timing = asyncio.run(drive(app, account.secret, args.requests, profiler, args.queued))
        else:
            timing = uvloop.run(drive(app, account.secret, args.requests, profiler, args.queued))
    summary = summarise(profiler, args.requests, args.top)
    print(
        f"{args.requests} sequential {'submissions' if args.queued else 'calls'} in-process: {timing['plain_us']:.0f} µs per call, "
        f"{timing['plain_cpu_us']:.0f} µs of this process's CPU ({timing['profiled_us']:.0f} µs under cProfile)\n"
    )
    print("gateway functions, cumulative µs per call (under cProfile)")
    for name, _, cumulative in summary["gateway_cumulative"]:
        print(f"{cumulative:9.1f}  {name}")
    print("\nheaviest functions, own µs per call (under cProfile)")
    for name, own, _ in summary["own"]:
        print(f"{own:9.1f}  {name}")
    if args.json:
        args.json.write_text(json.dumps({"timing": timing, **summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
