"""Where a loaded `gateway serve` spends its CPU, in µs per request: py-spy samples times CPU per request.

`python -m bench.hotspots [--connections 32] [--duration 10] [--scale] [--postgres]` starts
the fast upstream and one gateway process exactly as `python -m bench` does (on SQLite, or
on a PostgreSQL schema of its own with --postgres), drives it with wrk (or
bench/pyload.py), samples it with py-spy (`pip install py-spy`), and reads its CPU time
from /proc. A function's share of the samples times the CPU per request is its cost
per request. py-spy pauses the gateway for each sample (250 a second), which costs it a little throughput.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from . import data, load, nginx
from .processes import Children
from .run import Options, Run

# Own time grouped by where the code lives.
LAYERS = (
    ("sqlalchemy/", "SQLAlchemy"),
    ("sqlmodel/", "SQLModel"),
    ("pydantic", "pydantic"),
    ("httpx/", "HTTPX"),
    ("starlette/", "Starlette"),
    ("uvicorn/", "uvicorn"),
    ("cryptography/", "cryptography"),
    ("jsonschema", "jsonschema"),
    ("prometheus_client/", "prometheus_client"),
    ("gateway/", "gateway"),
    ("asyncio/", "asyncio"),
)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return found


def parse(raw: str) -> list[tuple[list[str], int]]:
    samples = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples.append((stack.split(";"), int(count)))
    return samples


def layer(frame: str) -> str:
    return next((name for marker, name in LAYERS if marker in frame), "other")


def breakdown(samples: list[tuple[list[str], int]], cpu_us: float, top: int) -> str:
    total = sum(n for _, n in samples) or 1
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    for frames, n in samples:
        # "function (file:line)" → "function (file)": one entry per function, not per line.
        names = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in frames]
        for name in set(names):
            if "gateway/" in name:
                inclusive[name] += n
        own[names[-1]] += n
        layers[layer(frames[-1])] += n

    def us(n: int) -> str:
        return f"{n / total * cpu_us:8.0f} µs  {100 * n / total:5.1f}%"

    out = [f"{total} samples; {cpu_us:.0f} µs of gateway CPU per request", "", "by layer (own time):"]
    out += [f"{us(n)}  {name}" for name, n in layers.most_common()]
    out += ["", "gateway functions (inclusive):"]
    out += [f"{us(n)}  {name}" for name, n in inclusive.most_common(top)]
    out += ["", "functions (own time):"]
    out += [f"{us(n)}  {name}" for name, n in own.most_common(top)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotspots", description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--scale", action="store_true", help="on the data-scale database")
    parser.add_argument("--postgres", action="store_true", help="on PostgreSQL (127.0.0.1:5432, database test)")
    parser.add_argument("--upstream", choices=["nginx", "python"], default="nginx" if nginx.available() else "python")
    parser.add_argument("--load", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw samples here")
    args = parser.parse_args(argv)
    spy = py_spy()
    generator = load.generator(args.load)
    options = Options(args.duration, 2, [args.connections], generator=generator, upstream=args.upstream, rounds=1)
    with (
        tempfile.TemporaryDirectory(prefix="gateway-hotspots-") as tmp,
        data.Schemas() as schemas,
        Children() as children,
    ):
        run = Run(options, children, schemas, Path(tmp))
        upstream = run.start_upstream()
        gateway, secret = run.start_gateway("gateway", upstream, scale=args.scale, postgres=args.postgres)
        request = load.Request(f"{gateway.url}/v1/bench/fast", body=data.CALL_BODY)
        request.headers["Authorization"] = f"Bearer {secret}"
        load.check_answer(request)
        load.measure(generator, "warm-up", request, args.connections, options.warmup)
        raw = Path(tmp) / "samples.txt"
        record = [spy, "record", "--pid", str(gateway.pid), "--duration", str(args.duration), "--rate", "250"]
        # Blocking mode: py-spy pauses the process for each sample, so every stack is whole.
        record += ["--format", "raw", "--output", str(raw)]
        measured: list[load.Measurement] = []
        before = gateway.cpu()
        driver = threading.Thread(
            target=lambda: measured.append(
                load.measure(generator, "gateway", request, args.connections, args.duration + 1)
            )
        )
        driver.start()
        subprocess.run(record, capture_output=True, check=True, timeout=args.duration + 60)
        driver.join()
        cpu_us = (gateway.cpu() - before) / measured[0].requests * 1e6
        samples = parse(raw.read_text())
        if args.raw:
            args.raw.write_text(raw.read_text())
    m = measured[0]
    print(f"c={m.connections}: {m.rps:,.0f} req/s, p50 {m.p50_ms:.3f} ms, p99 {m.p99_ms:.3f} ms, errors {m.errors}")
    print(breakdown(samples, cpu_us, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
