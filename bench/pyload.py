"""A small closed-loop HTTP/1.1 load generator, for machines without wrk.

N keep-alive connections each send one request, wait for the whole answer, and
send the next, until the duration is up. Raw asyncio streams (uvloop when
installed) keep its own cost low; it runs in its own process so it does not
share the server's interpreter. Prints one JSON line:
{"requests", "duration_s", "errors", "non_2xx", "p50_us", "p99_us"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit


def build_request(url: str, method: str, body: str, headers: list[str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += headers
    payload = body.encode()
    if payload or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(payload)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
    return parts.hostname or "127.0.0.1", parts.port or 80, raw


async def read_response(reader: asyncio.StreamReader) -> tuple[int, list[str]]:
    """Reads one whole answer; returns its status and its head's lines (the body is read and dropped)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, lines


async def connection(
    host: str, port: int, raw: bytes, deadline: float, latencies: list[int], counts: dict[str, int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < deadline:
            started = time.perf_counter_ns()
            writer.write(raw)
            status, _ = await read_response(reader)
            latencies.append(time.perf_counter_ns() - started)
            if not 200 <= status < 300:
                counts["non_2xx"] += 1
    finally:
        writer.close()


async def run(
    url: str, connections: int, duration: float, method: str, body: str, headers: list[str]
) -> dict[str, object]:
    host, port, raw = build_request(url, method, body, headers)
    latencies: list[int] = []
    counts = {"non_2xx": 0}
    started = time.monotonic()
    deadline = started + duration
    results = await asyncio.gather(
        *(connection(host, port, raw, deadline, latencies, counts) for _ in range(connections)), return_exceptions=True
    )
    elapsed = time.monotonic() - started
    latencies.sort()

    def percentile(p: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] / 1000

    return {
        "requests": len(latencies),
        "duration_s": elapsed,
        "errors": sum(1 for r in results if isinstance(r, BaseException)),
        "non_2xx": counts["non_2xx"],
        "p50_us": percentile(50),
        "p99_us": percentile(99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Closed-loop HTTP/1.1 load generator.")
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default="")
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()
    coroutine = run(args.url, args.connections, args.duration, args.method, args.body, args.header)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        result = asyncio.run(coroutine)
    else:
        result = uvloop.run(coroutine)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
