"""Leases on running calls: only the calls this process is really running keep theirs.

A queued call its worker claimed, and a direct call with an Idempotency-Key, each hold a lease on
their run row (`lease_until`, `worker_id`). One heartbeat per process extends, by id, the leases of
the calls it holds, every third of a lease. A row nobody holds (its process died, or gave up on its
final write) runs out within one lease and is recovered (worker.py): it blocks its queue, or its
key, for one lease at most.

A call's final write is what must not be lost: the upstream has acted. It is retried with backoff
while the database is unreachable, holding the result in memory and the lease, for as long as a
lease lasts: past that, the call may be recovered by another process, so the result is dropped,
logged (run id and status, never the body) and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError

from gateway.errors import DatabaseTimeout
from gateway.storage import claims
from gateway.storage import database as db

logger = logging.getLogger(__name__)


class Leases:
    def __init__(self, database: db.Database, lease: dt.timedelta) -> None:
        self.db = database
        self.lease = lease
        # The `worker_id` of direct calls run by this process (queued calls carry their worker's).
        self.owner = f"p-{os.getpid()}-{os.urandom(3).hex()}"
        self._held: dict[str, str] = {}
        self._finishing: dict[str, asyncio.Task[bool]] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        # Called with 1 for each result given up (the metric of lost run rows).
        self.on_lost: Callable[[int], None] = lambda rows: None

    def hold(self, run_id: str, owner: str) -> None:
        self._held[run_id] = owner
        self._idle.clear()
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    def holds(self, run_id: str) -> bool:
        return run_id in self._held

    def release(self, run_id: str) -> None:
        """Stops extending the run's lease, unless its final write is still being retried."""
        if run_id not in self._finishing:
            self._drop(run_id)

    def _drop(self, run_id: str) -> None:
        self._held.pop(run_id, None)
        if not self._held:
            self._idle.set()

    async def finish(self, run_id: str, write: Callable[[], bool], what: str, *, wait: bool) -> bool:
        """Writes a held run's final row, and releases it. `write` answers whether the row was still
        this process's to write. A write the database refuses is retried; with `wait` false (a
        caller is waiting for its answer) the retrying goes on after this returns False."""
        try:
            landed = await self.db.run_unsettled(lambda _engine: write())
        except (DBAPIError, DatabaseTimeout):
            pass  # retried below, which logs it
        else:
            self._drop(run_id)
            return self._landed(landed, what)
        if wait:
            return await self._retry(run_id, write, what)
        task = asyncio.get_running_loop().create_task(self._retry(run_id, write, what))
        self._finishing[run_id] = task
        task.add_done_callback(lambda _: self._finishing.pop(run_id, None))
        return False

    async def _retry(self, run_id: str, write: Callable[[], bool], what: str) -> bool:
        try:
            return self._landed(
                await db.write_until_landed(self.db, write, patience=self.lease.total_seconds(), what=what), what
            )
        except (DBAPIError, DatabaseTimeout) as exc:
            logger.error("%s could not be written (%s): it is lost", what, type(exc).__name__)
        except asyncio.CancelledError:
            logger.error("%s was not written before the process stopped: it is lost", what)
            self.on_lost(1)
            raise
        finally:
            self._drop(run_id)
        self.on_lost(1)
        return False

    def _landed(self, landed: bool, what: str) -> bool:
        if not landed:
            # Its lease ran out while this process could not reach the database: recovered elsewhere.
            logger.error("%s was not written: another process recovered the call first; it is lost", what)
            self.on_lost(1)
        return landed

    async def _beat(self) -> None:
        every = self.lease.total_seconds() / 3
        while self._held:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), every)
            by_owner: dict[str, list[str]] = {}
            for run_id, owner in self._held.items():
                by_owner.setdefault(owner, []).append(run_id)
            for owner, ids in by_owner.items():
                try:
                    await self.db.run_unsettled(claims.extend_leases, owner, ids, self.lease)
                except Exception as exc:
                    logger.warning("extending leases failed (%s); retrying", type(exc).__name__)

    async def close(self, grace: float = 10.0) -> None:
        """Gives final writes still being retried `grace` seconds, then stops them and the heartbeat."""
        pending = set(self._finishing.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
        tasks = [*pending, *([self._heartbeat] if self._heartbeat else [])]
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
