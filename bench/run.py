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

from . import data, load, memory, nginx, queues, report, servers, targets
from .processes import (
    Child,
    Children,
    children_cpu_seconds,
    machine_busy_seconds,
    named_cpu_seconds,
)

# In the order each round measures them: each reference just before what is compared with it.
TARGETS = ("direct", "proxy-aiohttp", "proxy-client", "gateway", "proxy-aiohttp-2", "gateway-pg-2", "proxy-httpx")
# issue #9's reference: HTTPX's pool makes it the slowest proxy by far, measured only when asked for.
EXTRA_TARGETS = ("proxy-httpx",)
POSTGRES_TARGETS = ("gateway-pg-2",)
PROXY_CLIENTS = {
    "proxy-aiohttp": "aiohttp",
    "proxy-aiohttp-2": "aiohttp",
    "proxy-client": "gateway",
    "proxy-httpx": "httpx",
}


@dataclasses.dataclass
class Options:
    duration: float = 10.0
    warmup: float = 2.0
    connections: list[int] = dataclasses.field(default_factory=lambda: [1, 32, 64])
    targets: list[str] = dataclasses.field(default_factory=list)
    generator: str = "wrk"
    upstream: str = "python"
    scale: bool = False
    queue: bool = False
    queue_calls: int = 10_000
    queue_workers: int = 2
    memory: bool = False
    rounds: int = 3
    skipped: list[str] = dataclasses.field(default_factory=list)


def parse(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny load: 1 s per run at 1 and 32 connections")
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 10, --quick 1)")
    parser.add_argument(
        "--rounds", type=int, help="measurements per figure, whose median is shown (default 3, --quick 1)"
    )
    parser.add_argument("--connections", help="comma-separated connection counts (default 1,32,64, --quick 1,32)")
    default_targets = [t for t in TARGETS if t not in EXTRA_TARGETS]
    parser.add_argument(
        "--targets",
        help=f"comma-separated, from {', '.join(TARGETS)} (default: all but {', '.join(EXTRA_TARGETS)}; "
        "without PostgreSQL, not gateway-pg-2)",
    )
    parser.add_argument("--load", choices=["auto", "wrk", "python"], default="auto", help="load generator")
    parser.add_argument(
        "--upstream",
        choices=["nginx", "python"],
        default="nginx" if nginx.available() else "python",
        help="what answers the small body: nginx (the default when installed) or bench/upstream.py",
    )
    parser.add_argument("--scale", action="store_true", help="also measure the gateway on a data-scale database")
    parser.add_argument("--queue", action="store_true", help="also drain queued calls on PostgreSQL")
    parser.add_argument("--all", action="store_true", help="--scale and --queue (the queue only with PostgreSQL)")
    parser.add_argument("--queue-calls", type=int, help="queued calls a round (default 10000, --quick 500)")
    parser.add_argument("--queue-workers", type=int, default=2, help="`gateway serve --workers` for the queue drain")
    parser.add_argument("--no-memory", action="store_true", help="skip the 50 MB upstream answers")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--markdown", type=Path, help="also write the report as Markdown here")
    parser.add_argument("--max-seconds", type=float, help="stop everything after this long (default: from the plan)")
    args = parser.parse_args(argv)
    skipped = []
    postgres = data.postgres_available()
    if args.targets is None:
        chosen = default_targets
        if not postgres:
            chosen = [t for t in chosen if t not in POSTGRES_TARGETS]
            skipped.append("gateway-pg-2: PostgreSQL is not reachable on 127.0.0.1:5432")
    else:
        chosen = [t for t in args.targets.split(",") if t]
    unknown = set(chosen) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if not postgres and set(chosen) & set(POSTGRES_TARGETS):
        parser.error("gateway-pg-2 needs PostgreSQL on 127.0.0.1:5432 (user postgres, database test)")
    queue = args.queue or args.all
    if queue and not postgres:
        if args.queue:
            parser.error("--queue needs PostgreSQL on 127.0.0.1:5432 (user postgres, database test)")
        queue = False
        skipped.append("queue drain: PostgreSQL is not reachable on 127.0.0.1:5432")
    if args.upstream == "nginx" and not nginx.available():
        parser.error("nginx is not installed (apt-get install nginx), use --upstream python")
    options = Options(
        duration=args.duration or (1.0 if args.quick else 10.0),
        warmup=0.5 if args.quick else 2.0,
        connections=[int(c) for c in (args.connections or ("1,32" if args.quick else "1,32,64")).split(",") if c],
        targets=chosen,
        generator=load.generator(args.load),
        upstream=args.upstream,
        scale=args.scale or args.all,
        queue=queue,
        queue_calls=args.queue_calls or (500 if args.quick else 10_000),
        queue_workers=args.queue_workers,
        memory=not args.no_memory and "gateway" in chosen,
        rounds=args.rounds or (1 if args.quick else 3),
        skipped=skipped,
    )
    return options, args


def budget(options: Options) -> float:
    """A generous bound on the whole run, so a hung process cannot keep it going."""
    servers_count = len(options.targets) + (1 if options.scale else 0)
    per_server = 60 + options.warmup + options.rounds * len(options.connections) * (max(options.duration, 1) + 15)
    queue = (options.queue_calls * options.rounds / 20 + 240) if options.queue else 0
    return 120 + servers_count * per_server + (120 if options.scale else 0) + queue


class Run:
    def __init__(self, options: Options, children: Children, schemas: data.Schemas, tmp: Path) -> None:
        self.options = options
        self.children = children
        self.schemas = schemas
        self.tmp = tmp
        self.results: list[load.Measurement] = []
        self.rounds: list[load.Measurement] = []
        self.secrets: dict[str, str] = {}
        self.rss: dict[str, dict[str, int]] = {}
        self.extra: dict[str, Any] = {}
        self.upstream: servers.Upstream | None = None
        self.machine_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def start_upstream(self) -> str:
        if self.upstream is None:
            self.upstream = servers.start_upstream(self.children, self.tmp, self.options.upstream)
        return self.upstream.url

    def start_gateway(
        self, name: str, upstream: str, scale: bool = False, postgres: bool = False, workers: int = 1, wait: bool = True
    ) -> tuple[Child, str]:
        """`gateway serve` on a database of its own, seeded by bench/data.py: SQLite (WAL) in the run's
        folder, or a PostgreSQL schema dropped at the end of the run."""
        url = self.schemas.make().url if postgres else f"sqlite:///{self.tmp / name}.db"
        account, rows = data.seed(url, scale=scale)
        if rows is not None:
            self.extra["scale_rows"] = rows
            self.log(f"data-scale rows: {rows}")
        env = data.gateway_env(url, upstream)
        child = servers.start_gateway(self.children, name, env, self.tmp, workers, wait=wait)
        return child, account.secret

    def measure(
        self, target: str, request: load.Request, server: Child, connections: int, number: int
    ) -> load.Measurement:
        upstream = self.upstream.children if self.upstream else []
        ours = [server, *(c for c in upstream if c is not server)]
        postgres = target in POSTGRES_TARGETS
        cpu, busy, spawned = [c.cpu() for c in ours], machine_busy_seconds(), children_cpu_seconds()
        database = named_cpu_seconds("postgres") if postgres else 0.0
        started = time.monotonic()
        m = load.measure(self.options.generator, target, request, connections, self.options.duration)
        elapsed = time.monotonic() - started
        used = [c.cpu() - before for c, before in zip(ours, cpu, strict=True)]
        if postgres:
            # The database works for this target: its CPU is the target's, not another tenant's.
            used.append(named_cpu_seconds("postgres") - database)
            m.db_cpu_us = used[-1] / m.requests * 1e6 if m.requests else None
        others = machine_busy_seconds() - busy - sum(used) - (children_cpu_seconds() - spawned)
        m.cpu_us = used[0] / m.requests * 1e6 if m.requests else None
        m.others_cpu = max(others, 0.0) / (elapsed * self.machine_cpus)
        m.round = number
        database_note = f" + {m.db_cpu_us:,.0f} µs PostgreSQL" if m.db_cpu_us is not None else ""
        self.log(
            f"{target:<15} c={connections:<3} {m.rps:>9,.0f} req/s  p50 {m.p50_ms:.3f} ms  p99 {m.p99_ms:.3f} ms"
            f"  {m.cpu_us or 0:,.0f} µs CPU/req{database_note}  (others used {m.others_cpu:.0%} of the CPUs)"
        )
        return m

    def start(self, target: str, upstream: str) -> tuple[Child, load.Request]:
        if target == "direct":
            assert self.upstream is not None
            return self.upstream.children[0], load.Request(f"{upstream}/fast")
        if target in PROXY_CLIENTS:
            workers = 2 if target.endswith("-2") else 1
            child = servers.start_proxy(self.children, target, upstream, PROXY_CLIENTS[target], workers, wait=False)
            return child, load.Request(f"{child.url}/proxy")
        postgres = target in POSTGRES_TARGETS
        child, secret = self.start_gateway(
            target,
            upstream,
            scale=target == "gateway-scale",
            postgres=postgres,
            workers=2 if postgres else 1,
            wait=False,
        )
        request = load.Request(f"{child.url}/v1/bench/fast", body=data.CALL_BODY)
        request.headers["Authorization"] = f"Bearer {secret}"
        self.secrets[target] = secret
        return child, request

    def http(self) -> None:
        """Every target runs at once (idle while another is measured); the rounds go target after
        target at each connection count, so that a slower minute on a shared machine falls on all
        of them alike. Each figure is the median of its rounds, each ratio the median of the ratios
        measured side by side in each round."""
        upstream = self.start_upstream()
        started: dict[str, tuple[Child, load.Request]] = {}
        for target in [*self.options.targets, *(["gateway-scale"] if self.options.scale else [])]:
            self.log(f"starting {target}")
            started[target] = self.start(target, upstream)
        for child, _ in started.values():
            child.wait_ready()
        for target, (_, request) in started.items():
            load.check_answer(request)
            load.measure(
                self.options.generator, f"{target} warm-up", request, max(self.options.connections), self.options.warmup
            )
        for number in range(1, self.options.rounds + 1):
            self.log(f"round {number} of {self.options.rounds}")
            for connections in self.options.connections:
                for target, (child, request) in started.items():
                    self.rounds.append(self.measure(target, request, child, connections, number))
        self.results = load.medians(self.rounds)
        for target, (child, _) in started.items():
            self.rss[target if target != "direct" else f"upstream ({self.options.upstream})"] = child.memory()
        if self.options.memory and "gateway" in started:
            self.log("50 MB upstream answers")
            self.extra["big_responses"] = memory.big_responses(started["gateway"][0], self.secrets["gateway"])
            self.rss["gateway"] = started["gateway"][0].memory()
        upstream_children = self.upstream.children if self.upstream else []
        for child, _ in started.values():
            if child not in upstream_children:
                self.children.stop(child)

    def queue(self) -> None:
        self.start_upstream()
        assert self.upstream is not None
        self.log(
            f"queue drain: {self.options.queue_calls} calls a round, {self.options.rounds} rounds, "
            f"`gateway serve --workers {self.options.queue_workers}` on PostgreSQL"
        )
        self.extra["queue"] = queues.run(
            self.children,
            self.schemas,
            self.tmp,
            self.upstream,
            calls=self.options.queue_calls,
            rounds=self.options.rounds,
            processes=self.options.queue_workers,
            log=self.log,
        )


def render(options: Options, run: Run, machine: dict[str, Any], markdown: bool) -> str:
    out = []
    source = "wrk" if options.generator == "wrk" else "bench/pyload.py"
    upstream = "nginx" if options.upstream == "nginx" else "bench/upstream.py"
    out.append(
        f"{machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_gib']} GiB, Python {machine['python']}; "
        f"upstream {upstream}; load from {source}, {options.duration:g} s per measurement after a "
        f"{options.warmup:g} s warm-up, median of {options.rounds} round{'s' if options.rounds > 1 else ''}; "
        "loopback only."
    )
    out.append("")
    bullet = "- " if markdown else ""
    if run.results:
        out.append(report.table(run.results, run.rounds, markdown=markdown))
        out.append("")
        others = [m.others_cpu for m in run.results if m.others_cpu is not None]
        if others:
            note = " (the machine was shared: CPU µs/req compares better than req/s)" if max(others) > 0.1 else ""
            out.append(
                f"Other processes used {min(others):.0%} to {max(others):.0%} of the CPUs during the measurements{note}."
            )
            out.append("")
    out.append(targets.render(targets.evaluate(run.rounds, run.rss, run.extra), markdown))
    out.append("")
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
    out += [bullet + f"skipped: {reason}" for reason in options.skipped]
    return "\n".join(out).rstrip()


def main(argv: list[str] | None = None) -> int:
    options, args = parse(argv)
    limit = args.max_seconds or budget(options)

    def out_of_time(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"the benchmark ran past its {limit:.0f} s limit")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(int(limit))
    machine = report.machine()
    try:
        # Schemas before Children: the processes stop before their schemas are dropped.
        with (
            tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp,
            data.Schemas() as schemas,
            Children() as children,
        ):
            run = Run(options, children, schemas, Path(tmp))
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
            "results": report.rows(run.results, run.rounds),
            "rounds": report.rows(run.rounds),
            "targets": [dataclasses.asdict(t) for t in targets.evaluate(run.rounds, run.rss, run.extra)],
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
