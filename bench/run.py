"""`python -m bench`: the gateway's own cost, next to a direct call and a bare proxy, in one run.

Everything listens on 127.0.0.1 and every process this starts is stopped at the
end, on failure, on Ctrl-C and when the run's own time limit (--max-seconds) is up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from gateway.storage import database as db

from . import data, load, memory, queues, report
from .processes import (
    GATEWAY,
    PYTHON,
    Child,
    Children,
    base_env,
    children_cpu_seconds,
    free_port,
    machine_busy_seconds,
)

TARGETS = ("direct", "proxy-httpx", "proxy-client", "gateway")


@dataclasses.dataclass
class Options:
    duration: float
    warmup: float
    connections: list[int]
    targets: list[str]
    generator: str
    scale: bool
    queue: bool
    queue_calls: int
    queue_workers: int
    memory: bool
    rounds: int


def parse(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny load: 1 s per run, 500 queued calls")
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 10, --quick 1)")
    parser.add_argument(
        "--rounds", type=int, help="measurements per figure, whose median is shown (default 3, --quick 1)"
    )
    parser.add_argument("--connections", default="1,32,64", help="comma-separated connection counts")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, from {', '.join(TARGETS)}")
    parser.add_argument("--load", choices=["auto", "wrk", "python"], default="auto", help="load generator")
    parser.add_argument("--scale", action="store_true", help="also measure the gateway on a data-scale database")
    parser.add_argument("--queue", action="store_true", help="also drain queued calls with PostgreSQL workers")
    parser.add_argument("--all", action="store_true", help="--scale and --queue")
    parser.add_argument("--queue-calls", type=int, help="queued calls to drain (default 10000, --quick 500)")
    parser.add_argument("--queue-workers", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the 50 MB upstream answers")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--markdown", type=Path, help="also write the report as Markdown here")
    parser.add_argument("--max-seconds", type=float, help="stop everything after this long (default: from the plan)")
    args = parser.parse_args(argv)
    duration = args.duration or (1.0 if args.quick else 10.0)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    options = Options(
        duration=duration,
        warmup=1.0 if args.quick else 2.0,
        connections=[int(c) for c in args.connections.split(",") if c],
        targets=targets,
        generator=load.generator(args.load),
        scale=args.scale or args.all,
        queue=args.queue or args.all,
        queue_calls=args.queue_calls or (500 if args.quick else 10_000),
        queue_workers=args.queue_workers,
        memory=not args.no_memory and "gateway" in targets,
        rounds=args.rounds or (1 if args.quick else 3),
    )
    return options, args


def budget(options: Options) -> float:
    """A generous bound on the whole run, so a hung process cannot keep it going."""
    servers = len(options.targets) + (1 if options.scale else 0)
    per_server = 60 + options.warmup + options.rounds * len(options.connections) * (max(options.duration, 1) + 15)
    return 120 + servers * per_server + (120 if options.scale else 0) + (options.queue_calls / 20 + 180) * options.queue


class Run:
    def __init__(self, options: Options, children: Children, tmp: Path) -> None:
        self.options = options
        self.children = children
        self.tmp = tmp
        self.results: list[load.Measurement] = []
        self.rounds: list[load.Measurement] = []
        self.secrets: dict[str, str] = {}
        self.rss: dict[str, dict[str, int]] = {}
        self.extra: dict[str, Any] = {}
        self.upstream: Child | None = None
        self.machine_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def start_upstream(self) -> str:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        self.upstream = self.children.start(
            "upstream", [PYTHON, "-m", "bench.upstream", "--port", str(port)], base_env(), url
        )
        self.upstream.wait_ready("/health")
        return url

    def start_proxy(self, name: str, upstream: str, client: str) -> Child:
        port = free_port()
        # The gateway's own uvicorn options: `gateway serve` calls uvicorn.run(app, host, port, log_level, proxy_headers).
        args = [PYTHON, "-m", "uvicorn", "bench.proxy:app", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--log-level", "warning", "--no-proxy-headers"]
        env = base_env(BENCH_UPSTREAM_URL=upstream, BENCH_PROXY_CLIENT=client)
        child = self.children.start(name, args, env, f"http://127.0.0.1:{port}")
        child.wait_ready("/proxy")
        return child

    def start_gateway(self, name: str, upstream: str, scale: bool) -> tuple[Child, str]:
        database = self.tmp / f"{name}.db"
        engine = db.make_engine(f"sqlite:///{database}")
        try:
            account = data.prepare(engine)
            if scale:
                started = time.monotonic()
                counts = data.fill(engine, account)
                self.extra["scale_rows"] = {**counts, "seconds": round(time.monotonic() - started, 1)}
                self.log(f"data-scale rows: {self.extra['scale_rows']}")
        finally:
            engine.dispose()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = data.gateway_env(f"sqlite:///{database}", upstream, GATEWAY_HOME=str(self.tmp), GATEWAY_PUBLIC_URL=url)
        child = self.children.start(name, [GATEWAY, "serve", "--host", "127.0.0.1", "--port", str(port)], env, url)
        child.wait_ready("/v1/integrations")
        return child, account.secret

    def measure(self, target: str, request: load.Request, server: Child, connections: int) -> load.Measurement:
        ours = [server] if server is self.upstream or self.upstream is None else [server, self.upstream]
        cpu, busy, spawned = [c.cpu() for c in ours], machine_busy_seconds(), children_cpu_seconds()
        started = time.monotonic()
        m = load.measure(self.options.generator, target, request, connections, self.options.duration)
        elapsed = time.monotonic() - started
        used = [c.cpu() - before for c, before in zip(ours, cpu, strict=True)]
        others = machine_busy_seconds() - busy - sum(used) - (children_cpu_seconds() - spawned)
        m.cpu_us = used[0] / m.requests * 1e6 if m.requests else None
        m.others_cpu = max(others, 0.0) / (elapsed * self.machine_cpus)
        self.log(
            f"{target:<14} c={connections:<3} {m.rps:>9,.0f} req/s  p50 {m.p50_ms:.3f} ms  p99 {m.p99_ms:.3f} ms"
            f"  {m.cpu_us or 0:,.0f} µs CPU/req  (others used {m.others_cpu:.0%} of the CPUs)"
        )
        return m

    def http(self) -> None:
        """Every target runs at once (idle while another is measured); the rounds go target after
        target at each connection count, so that a slower minute on a shared machine falls on all
        of them alike. Each figure is the median of its rounds."""
        upstream = self.start_upstream()
        assert self.upstream is not None
        servers: dict[str, tuple[Child, load.Request]] = {}
        for target in [*self.options.targets, *(["gateway-scale"] if self.options.scale else [])]:
            self.log(f"starting {target}")
            if target == "direct":
                servers[target] = (self.upstream, load.Request(f"{upstream}/fast"))
            elif target.startswith("proxy-"):
                child = self.start_proxy(target, upstream, "httpx" if target == "proxy-httpx" else "gateway")
                servers[target] = (child, load.Request(f"{child.url}/proxy"))
            else:
                child, secret = self.start_gateway(target, upstream, scale=target == "gateway-scale")
                request = load.Request(f"{child.url}/v1/bench/fast", body=data.CALL_BODY)
                request.headers["Authorization"] = f"Bearer {secret}"
                servers[target] = (child, request)
                self.secrets[target] = secret
        for target, (_, request) in servers.items():
            load.check_answer(request)
            load.measure(
                self.options.generator, f"{target} warm-up", request, max(self.options.connections), self.options.warmup
            )
        for round_number in range(1, self.options.rounds + 1):
            self.log(f"round {round_number} of {self.options.rounds}")
            for connections in self.options.connections:
                for target, (child, request) in servers.items():
                    self.rounds.append(self.measure(target, request, child, connections))
        self.results = load.medians(self.rounds)
        for target, (child, _) in servers.items():
            self.rss[target if child is not self.upstream else "upstream"] = child.memory()
        if self.options.memory and "gateway" in servers:
            self.log("50 MB upstream answers")
            self.extra["big_responses"] = memory.big_responses(servers["gateway"][0], self.secrets["gateway"])
            self.rss["gateway"] = servers["gateway"][0].memory()
        for child, _ in servers.values():
            if child is not self.upstream:
                self.children.stop(child)

    def queue(self) -> None:
        upstream = self.upstream.url if self.upstream else self.start_upstream()
        self.log(f"draining {self.options.queue_calls} queued calls with {self.options.queue_workers} workers")
        self.extra["queue"] = queues.run(
            self.children, upstream or "", calls=self.options.queue_calls, workers=self.options.queue_workers
        )


def render(options: Options, run: Run, machine: dict[str, Any], markdown: bool) -> str:
    out = []
    source = "wrk" if options.generator == "wrk" else "bench/pyload.py"
    out.append(
        f"{machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_gib']} GiB; load from {source}, "
        f"{options.duration:g} s per measurement after a {options.warmup:g} s warm-up, median of "
        f"{options.rounds} round{'s' if options.rounds > 1 else ''}; loopback only."
    )
    out.append("")
    if run.results:
        out.append(report.table(run.results, markdown=markdown))
        out.append("")
        spread = report.ratio_spread(run.rounds)
        if spread:
            out += [("- " if markdown else "") + line for line in spread]
            out.append("")
        others = [m.others_cpu for m in run.results if m.others_cpu is not None]
        if others:
            note = " (the machine was shared: CPU µs/req compares better than req/s)" if max(others) > 0.1 else ""
            out.append(
                f"Other processes used {min(others):.0%} to {max(others):.0%} of the CPUs during the measurements{note}."
            )
            out.append("")
    bullet = "- " if markdown else ""
    out += [bullet + line for line in report.memory_lines(run.rss)]
    if "scale_rows" in run.extra:
        rows = run.extra["scale_rows"]
        out.append(
            bullet + f"data-scale database: {rows['users']:,} users, {rows['api_keys']:,} API keys, "
            f"{rows['connections']:,} connections, {rows['runs']:,} runs, {rows['daily_usage']:,} daily-usage rows "
            f"(bulk-inserted in {rows['seconds']} s)"
        )
    if "big_responses" in run.extra:
        out += [bullet + line for line in report.big_response_lines(run.extra["big_responses"])]
    if "queue" in run.extra:
        out += [bullet + line for line in report.queue_lines(run.extra["queue"])]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    options, args = parse(argv)
    limit = args.max_seconds or budget(options)

    def out_of_time(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"the benchmark ran past its {limit:.0f} s limit")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(int(limit))
    machine = report.machine()
    try:
        with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp, Children() as children:
            run = Run(options, children, Path(tmp))
            if options.targets:
                run.http()
            if options.queue:
                run.queue()
    finally:
        signal.alarm(0)
    print(render(options, run, machine, markdown=False))
    if args.markdown:
        args.markdown.write_text(render(options, run, machine, markdown=True) + "\n")
    if args.json:
        document = {
            "machine": machine,
            "options": dataclasses.asdict(options),
            "results": report.rows(run.results),
            "rounds": report.rows(run.rounds),
            "rss_kib": run.rss,
            **run.extra,
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    failed = [m for m in run.results if m.errors]
    big = run.extra.get("big_responses")
    queue = run.extra.get("queue")
    if failed or (big and not big["capped"]) or (queue and not (queue["finished"] and queue["order_held"])):
        print("bench: some checks failed (errors, response cap or queue order): see above", file=sys.stderr)
        return 1
    return 0
