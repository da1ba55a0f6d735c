"""Queue throughput: `gateway worker` processes drain queued calls from PostgreSQL.

The calls are enqueued with gateway.storage.runs.create_pending before the workers
start, spread round-robin over named queues, each carrying its place in its
queue. The fast upstream notes (queue, seq) as calls arrive, so the order
guarantee is checked where it matters: per queue, the upstream saw 0, 1, 2...
"""

from __future__ import annotations

import collections
import secrets
import time
from typing import Any

import httpx
from sqlalchemy import create_engine, func, select, text

from gateway.crypto import Box
from gateway.storage import database as db
from gateway.storage import runs
from gateway.storage.models import Run
from gateway.storage.runs import RunRecord

from . import data
from .processes import GATEWAY, Children

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class Schema:
    """A schema of its own in the local `test` database, dropped afterwards (as tests/conftest.py does)."""

    def __init__(self, url: str = PG_URL) -> None:
        self.name = "bench_" + secrets.token_hex(6)
        self.admin = create_engine(url)
        with self.admin.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{self.name}"'))
        self.url = f"{url}?options=-csearch_path%3D{self.name}"

    def drop(self) -> None:
        with self.admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{self.name}" CASCADE'))
        self.admin.dispose()


def enqueue(engine: Any, account: data.Account, calls: int, queues: int) -> list[str]:
    box = Box((data.SECRET,))
    ids = []
    for n in range(calls):
        queue, seq = f"q{n % queues}", n // queues
        record = RunRecord.start()
        record.user_id, record.api_key_id = account.user_id, account.key_id
        record.integration, record.endpoint, record.queue_name = "bench", "record", queue
        runs.create_pending(engine, box, record=record, params={"queue": queue, "seq": seq})
        ids.append(record.id)
    return ids


def check_order(recorded: list[list[Any]], calls: int, queues: int) -> tuple[bool, str]:
    seen = collections.Counter((q, s) for q, s in recorded)
    duplicates = sum(1 for n in seen.values() if n > 1)
    by_queue: dict[str, list[int]] = collections.defaultdict(list)
    for queue, seq in recorded:
        by_queue[queue].append(seq)
    out_of_order = [q for q, seqs in by_queue.items() if seqs != sorted(seqs)]
    held = len(seen) == calls and not duplicates and not out_of_order and len(by_queue) == queues
    detail = (
        f"{len(seen)} distinct calls seen, {duplicates} run twice, {len(out_of_order)} of {len(by_queue)} "
        "queues out of order"
    )
    return held, detail


def id_order_matches_submission(engine: Any, ids: list[str]) -> int:
    """Calls whose run id sorts before an earlier submission's in the same queue: the order workers use is the id's."""
    with engine.connect() as c:
        queue_of = dict(c.execute(select(Run.id, Run.queue_name).where(Run.id.in_(ids))).all())
    last: dict[str, str] = {}
    inversions = 0
    for run_id in ids:
        queue = queue_of[run_id]
        if queue in last and run_id < last[queue]:
            inversions += 1
        last[queue] = max(run_id, last.get(queue, run_id))
    return inversions


def run(
    children: Children,
    upstream_url: str,
    *,
    calls: int = 10_000,
    queues: int = 50,
    workers: int = 2,
    concurrency: int = 8,
    timeout: float = 600.0,
) -> dict[str, Any]:
    schema = Schema()
    engine = db.make_engine(schema.url)
    try:
        account = data.prepare(engine)
        started = time.monotonic()
        ids = enqueue(engine, account, calls, queues)
        enqueue_s = time.monotonic() - started
        # What autovacuum does after a burst of inserts (the local test server runs without it): with
        # the empty table's statistics the claim query's plan is O(pending rows) per claim.
        with engine.begin() as c:
            c.execute(text("ANALYZE runs"))
        env = data.gateway_env(schema.url, upstream_url, GATEWAY_WORKER_CONCURRENCY=str(concurrency))
        started = time.monotonic()
        processes = [children.start(f"worker-{i}", [GATEWAY, "worker"], env) for i in range(workers)]
        deadline = started + timeout
        done = 0
        while time.monotonic() < deadline:
            for process in processes:
                if process.process.poll() is not None:
                    raise RuntimeError(f"{process.name} exited:\n{process.output()[-3000:]}")
            with engine.connect() as c:
                done = c.execute(select(func.count()).where(Run.status.in_(runs.TERMINAL))).scalar_one()
            if done >= calls:
                break
            time.sleep(0.25)
        wall_s = time.monotonic() - started
        peaks = {p.name: p.memory() for p in processes}
        cpu_s = sum(p.cpu() for p in processes)
        for process in processes:
            children.stop(process)
        with engine.connect() as c:
            statuses = dict(c.execute(select(Run.status, func.count()).group_by(Run.status)).all())
            first, last = c.execute(select(func.min(Run.started_at), func.max(Run.ended_at))).one()
            by_worker = dict(c.execute(select(Run.worker_id, func.count()).group_by(Run.worker_id)).all())
        recorded = httpx.get(f"{upstream_url}/recorded", timeout=30, trust_env=False).json()
        held, detail = check_order(recorded, calls, queues)
        drain_s = (last - first).total_seconds() if first and last else wall_s
        return {
            "calls": calls,
            "queues": queues,
            "workers": workers,
            "concurrency": concurrency,
            "enqueue_s": round(enqueue_s, 2),
            "drain_s": round(drain_s, 2),
            "wall_s": round(wall_s, 2),
            "calls_per_s": round(calls / drain_s, 1) if drain_s else 0.0,
            "finished": done >= calls,
            "statuses": statuses,
            "by_worker": len(by_worker),
            "order_held": held,
            "order_detail": detail,
            "id_inversions": id_order_matches_submission(engine, ids),
            "worker_memory_kib": peaks,
            # Start-up (imports, migrations check) included: divide by many calls.
            "worker_cpu_ms_per_call": round(cpu_s / calls * 1000, 2),
        }
    finally:
        engine.dispose()
        schema.drop()
