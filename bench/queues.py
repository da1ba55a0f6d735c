"""Queue throughput on PostgreSQL, submission included: calls POSTed to `gateway serve`, drained by its workers.

`gateway serve --workers 2` runs on a PostgreSQL schema of its own with its queue
workers inside (the default). Each round submits N calls over HTTP, as a client
queues them (`"queue": "<name>"` next to `params`), spread over 20 named queues:
one connection per queue sends that queue's calls one after another, so each queue
has a submission order. A round's time runs from the first submission, as the
gateway received it (the earliest `created_at`), to the last run's end (the latest
`ended_at`). The fast upstream notes (queue, seq) as calls arrive, so the order
guarantee is checked where it matters: per queue, the upstream saw 0, 1, 2...
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from gateway.storage import database as db
from gateway.storage.models import Run

from . import data, servers
from .processes import Children, named_cpu_seconds
from .pyload import build_request, read_response

QUEUES = 20


async def _submit_queue(url: str, secret: str, queue: str, count: int, ids: list[str], failures: list[str]) -> None:
    headers = ["Content-Type: application/json", f"Authorization: Bearer {secret}"]
    host, port, _ = build_request(url, "POST", "", headers)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for seq in range(count):
            body = json.dumps({"params": {"queue": queue, "seq": seq}, "queue": queue})
            writer.write(build_request(url, "POST", body, headers)[2])
            status, head = await read_response(reader)
            if status != 202:
                failures.append(f"{queue}/{seq}: {status}")
                continue
            ids.append(next(line.split(":", 1)[1].strip() for line in head if line.lower().startswith("x-run-id:")))
    finally:
        writer.close()


async def _submit(url: str, secret: str, names: list[str], calls: int) -> tuple[dict[str, list[str]], list[str]]:
    """`calls` calls over `names`, one connection per queue; returns each queue's run ids in submission order."""
    ids: dict[str, list[str]] = {name: [] for name in names}
    failures: list[str] = []
    counts = [calls // len(names) + (1 if i < calls % len(names) else 0) for i in range(len(names))]
    await asyncio.gather(
        *(_submit_queue(url, secret, name, n, ids[name], failures) for name, n in zip(names, counts, strict=True))
    )
    return ids, failures


def submit(url: str, secret: str, names: list[str], calls: int) -> tuple[dict[str, list[str]], list[str]]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(_submit(url, secret, names, calls))
    return uvloop.run(_submit(url, secret, names, calls))


def wait_drained(engine: Any, timeout: float) -> bool:
    """Polls the pending and running calls (the queue's own partial indexes) until there are none."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as c:
            left = c.execute(select(func.count()).where(Run.status.in_(("pending", "running")))).scalar_one()
        if not left:
            return True
        time.sleep(0.05)
    return False


def check_order(recorded: list[list[Any]], calls: int, names: list[str]) -> tuple[bool, str]:
    """Per queue, the upstream must have seen 0, 1, 2... each once."""
    ours = set(names)
    mine = [(q, s) for q, s in recorded if q in ours]
    seen = collections.Counter(mine)
    duplicates = sum(1 for n in seen.values() if n > 1)
    by_queue: dict[str, list[int]] = collections.defaultdict(list)
    for queue, seq in mine:
        by_queue[queue].append(seq)
    out_of_order = [q for q, seqs in by_queue.items() if seqs != list(range(len(seqs)))]
    held = len(seen) == calls and not duplicates and not out_of_order and len(by_queue) == len(names)
    detail = (
        f"{len(seen)} distinct calls seen, {duplicates} run twice, {len(out_of_order)} of {len(by_queue)} "
        "queues out of order"
    )
    return held, detail


def id_inversions(ids: dict[str, list[str]]) -> int:
    """Calls whose run id sorts before an earlier submission's of its queue: workers take a queue's calls by id."""
    return sum(1 for queue_ids in ids.values() for a, b in itertools.pairwise(queue_ids) if b < a)


def drain_round(engine: Any, gateway_url: str, secret: str, python_url: str, names: list[str], calls: int) -> dict:
    started = time.monotonic()
    ids, failures = submit(gateway_url, secret, names, calls)
    submitted_s = time.monotonic() - started
    finished = not failures and wait_drained(engine, timeout=60 + calls / 50)
    wall_s = time.monotonic() - started
    with engine.connect() as c:
        mine = Run.queue_name.in_(names)
        first, last = c.execute(select(func.min(Run.created_at), func.max(Run.ended_at)).where(mine)).one()
        statuses = dict(c.execute(select(Run.status, func.count()).where(mine).group_by(Run.status)).all())
    recorded = httpx.get(f"{python_url}/recorded", timeout=30, trust_env=False).json()
    held, detail = check_order(recorded, calls, names)
    drain_s = (last - first).total_seconds() if first and last else wall_s
    return {
        "calls": calls,
        "submitted_s": round(submitted_s, 2),
        "drain_s": round(drain_s, 3),
        "calls_per_s": round(calls / drain_s, 1) if drain_s else 0.0,
        "finished": finished,
        "failures": failures[:10],
        "statuses": statuses,
        "order_held": held and not failures,
        "order_detail": detail,
        "id_inversions": id_inversions(ids),
    }


def run(
    children: Children,
    schemas: data.Schemas,
    tmp: Path,
    upstream: servers.Upstream,
    *,
    calls: int = 10_000,
    rounds: int = 3,
    processes: int = 2,
    concurrency: int = 8,
    log: Any = print,
) -> dict[str, Any]:
    schema = schemas.make()
    account, _ = data.seed(schema.url)
    env = data.gateway_env(schema.url, upstream.url, GATEWAY_WORKER_CONCURRENCY=str(concurrency))
    gateway = servers.start_gateway(children, "queue-gateway", env, tmp, workers=processes)
    assert gateway.url is not None
    engine = db.make_engine(schema.url)
    try:
        url = f"{gateway.url}/v1/bench/record"
        # Both processes' connection pools and code paths warm before the clock runs.
        _, failures = submit(url, account.secret, [f"warm-q{i}" for i in range(QUEUES)], QUEUES * 10)
        if failures:
            raise RuntimeError(f"queued calls were refused: {', '.join(failures[:5])}")
        wait_drained(engine, timeout=60)
        results = []
        for number in range(1, rounds + 1):
            names = [f"r{number}-q{i}" for i in range(QUEUES)]
            cpu, database = gateway.cpu(), named_cpu_seconds("postgres")
            result = drain_round(engine, url, account.secret, upstream.python_url, names, calls)
            result["cpu_ms_per_call"] = round((gateway.cpu() - cpu) / calls * 1000, 3)
            result["db_cpu_ms_per_call"] = round((named_cpu_seconds("postgres") - database) / calls * 1000, 3)
            log(
                f"queue round {number}: {result['calls_per_s']:,.0f} calls/s, submitted in {result['submitted_s']} s, "
                f"drained in {result['drain_s']} s, order held {result['order_held']}"
            )
            results.append(result)
        memory = gateway.memory()
    finally:
        engine.dispose()
        children.stop(gateway)
    rates = [r["calls_per_s"] for r in results]
    return {
        "calls": calls,
        "queues": QUEUES,
        "processes": processes,
        "concurrency": concurrency,
        "rounds": results,
        "calls_per_s": statistics.median(rates),
        "calls_per_s_min": min(rates),
        "calls_per_s_max": max(rates),
        "finished": all(r["finished"] for r in results),
        "order_held": all(r["order_held"] for r in results),
        "id_inversions": sum(r["id_inversions"] for r in results),
        "cpu_ms_per_call": statistics.median(r["cpu_ms_per_call"] for r in results),
        "db_cpu_ms_per_call": statistics.median(r["db_cpu_ms_per_call"] for r in results),
        "memory_kib": memory,
    }
