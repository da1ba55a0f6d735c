"""Driving a target with load: wrk when it is installed, bench/pyload.py otherwise.

Both are closed loops (each connection waits for its answer before the next
request) and both run as their own process, so they never share the server's
interpreter; on a 2-core machine they still share its CPUs.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import subprocess
import tempfile

from .processes import PYTHON, ROOT

# wrk's `done` hook prints the figures we need on one line we can find again.
WRK_SCRIPT = """\
wrk.method = {method}
wrk.body = {body}
{headers}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH_RESULT %d %d %d %d %d %d %d %.1f %.1f\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclasses.dataclass
class Request:
    url: str
    method: str = "POST"
    body: str = '{"params":{}}'
    headers: dict[str, str] = dataclasses.field(default_factory=lambda: {"Content-Type": "application/json"})


@dataclasses.dataclass
class Measurement:
    target: str
    connections: int
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    errors: int  # sockets that failed plus answers that were not 2xx
    generator: str
    # CPU the server process used per answered request: what contention on a shared machine changes least.
    cpu_us: float | None = None
    # Share of the machine's CPU used by processes other than the server, the upstream and the load
    # generator while measuring: on a shared machine, the figures are only comparable when this is low.
    others_cpu: float | None = None
    # PostgreSQL's CPU per answered request (its server and every backend), on PostgreSQL targets.
    db_cpu_us: float | None = None
    round: int = 0  # which round measured it (0 for a median over rounds)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "rps": round(self.rps, 1)}


def medians(measurements: list[Measurement]) -> list[Measurement]:
    """One Measurement per (target, connections): the median of each figure over its rounds."""
    groups: dict[tuple[str, int], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.target, m.connections), []).append(m)
    out = []
    for (target, connections), ms in groups.items():
        middle = sorted(ms, key=lambda m: m.rps)[len(ms) // 2]
        cpu = [m.cpu_us for m in ms if m.cpu_us is not None]
        others = [m.others_cpu for m in ms if m.others_cpu is not None]
        db_cpu = [m.db_cpu_us for m in ms if m.db_cpu_us is not None]
        out.append(
            Measurement(
                target,
                connections,
                middle.requests,
                middle.duration_s,
                statistics.median(m.p50_ms for m in ms),
                statistics.median(m.p99_ms for m in ms),
                sum(m.errors for m in ms),
                middle.generator,
                statistics.median(cpu) if cpu else None,
                max(others) if others else None,
                statistics.median(db_cpu) if db_cpu else None,
            )
        )
    return out


def generator(preferred: str = "auto") -> str:
    if preferred == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if preferred == "wrk" and not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed (apt-get install wrk), use --load python")
    return preferred


def _lua(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid Lua string literal for these ASCII values


def run_wrk(target: str, request: Request, connections: int, duration: float) -> Measurement:
    headers = "\n".join(f"wrk.headers[{_lua(k)}] = {_lua(v)}" for k, v in request.headers.items())
    script = WRK_SCRIPT.format(method=_lua(request.method), body=_lua(request.body), headers=headers)
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        seconds = max(1, round(duration))
        # One thread: at these rates one wrk thread is far from its limit, and it leaves the CPUs to the servers.
        args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", lua.name, request.url]
        done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed on {request.url}: {done.stdout[-1000:]} {done.stderr[-1000:]}")
    fields = line.split()[1:]
    requests, duration_us, *errors = (int(f) for f in fields[:7])
    p50_us, p99_us = float(fields[7]), float(fields[8])
    return Measurement(
        target, connections, requests, duration_us / 1e6, p50_us / 1000, p99_us / 1000, sum(errors), "wrk"
    )


def run_python(target: str, request: Request, connections: int, duration: float) -> Measurement:
    args = [PYTHON, "-m", "bench.pyload", request.url, "--connections", str(connections), "--duration", str(duration)]
    args += ["--method", request.method, "--body", request.body]
    for name, value in request.headers.items():
        args += ["--header", f"{name}: {value}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=duration + 30, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"the Python load generator failed on {request.url}: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Measurement(
        target,
        connections,
        result["requests"],
        result["duration_s"],
        result["p50_us"] / 1000,
        result["p99_us"] / 1000,
        result["errors"] + result["non_2xx"],
        "python",
    )


def measure(kind: str, target: str, request: Request, connections: int, duration: float) -> Measurement:
    run = run_wrk if kind == "wrk" else run_python
    return run(target, request, connections, duration)


def check_answer(request: Request, expect_status: int = 200) -> None:
    """One request before measuring: a target answering errors would measure nothing."""
    import httpx

    response = httpx.request(
        request.method, request.url, content=request.body.encode(), headers=request.headers, timeout=10, trust_env=False
    )
    if response.status_code != expect_status:
        raise RuntimeError(f"{request.url} answered {response.status_code}: {response.text[:500]}")
