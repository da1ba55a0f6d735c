"""Workers: claim queued calls, run them through the same pipeline, recover lost leases.

Several workers (in `gateway serve` processes or `gateway worker` processes,
on several machines) share one database. A claim is one atomic statement
(`FOR UPDATE SKIP LOCKED` on PostgreSQL), a running call holds a lease that
its worker extends, and a lease that runs out means the worker died.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import os
import time
from typing import Any

from sqlalchemy.exc import DBAPIError

from gateway.core import approvals, callbacks, views, waitpoints
from gateway.core.execute import execute
from gateway.core.runtime import Services
from gateway.errors import DatabaseTimeout, GatewayError, Unauthorized
from gateway.storage import claims, keys, runs
from gateway.storage.models import Run, utcnow
from gateway.storage.runs import RunRecord

logger = logging.getLogger(__name__)

HOUSEKEEPING_EVERY = 1.0
# Purging scans old rows: once a minute is plenty for "kept until expires".
PURGE_EVERY = 60.0
# A submission in this process wakes its worker at once; polling only finds other processes' work.
IDLE_POLL = 1.0


def sweep(services: Services) -> None:
    """Ends what has run out of time, whether or not anyone is looking: waitpoints, approvals, and
    direct calls with an Idempotency-Key whose process stopped extending their lease."""
    waitpoints.expire_due(services.engine)
    for run in approvals.expire_due(services):
        waitpoints.complete(services.engine, run.waitpoint_id or "", runs.result_of(services.box, run))
    for run in claims.expired_leases(services.engine, queued=False):
        if not services.leases.holds(run.id) and claims.recover(
            services.engine, services.box, run, _retry_safe(services, run)
        ):
            logger.warning("run %s lost its process; its Idempotency-Key was recovered", run.id)


def _retry_safe(services: Services, run: Run) -> bool:
    endpoint = services.registry.endpoint(run.integration, run.endpoint)
    return endpoint is not None and endpoint.retry_safe


async def sweeper(services: Services, every: float = 1.0) -> None:
    while True:
        try:
            await services.db.run(lambda _engine: sweep(services))
        except Exception:
            logger.exception("sweeping timed-out waitpoints and approvals failed; retrying")
        await asyncio.sleep(every)


class Worker:
    """Runs up to `concurrency` queued calls at once. One dispatcher claims work for every free
    slot in a single statement; the process's heartbeat (leases.py) extends the leases of the
    calls this worker is running, and of no other."""

    def __init__(self, services: Services, concurrency: int = 8) -> None:
        self.services = services
        self.concurrency = concurrency
        self.lease = services.leases.lease
        self.id = f"w-{os.getpid()}-{os.urandom(3).hex()}"
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._purged = -PURGE_EVERY
        # When claims were made whose answer was lost: their rows may be running under this worker.
        self._unconfirmed: list[dt.datetime] = []

    def wake(self) -> None:
        """Safe from any thread: a call queued by a dashboard action runs in a database thread."""
        loop = self._loop
        if loop is None or asyncio._get_running_loop() is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._dispatch()), asyncio.create_task(self._housekeeping())]

    async def stop(self, grace: float = 10.0) -> None:
        """Lets calls in flight finish for `grace` seconds; the rest keep their lease and are recovered."""
        self._stopping = True
        self._stop.set()
        self._wake.set()
        pending: set[asyncio.Task[None]] = set()
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=grace)
        for task in [*pending, *self._tasks]:
            task.cancel()
        for task in [*pending, *self._tasks, *self._background]:
            with contextlib.suppress(BaseException):
                await task

    async def _dispatch(self) -> None:
        # The dispatcher never dies: an error is logged and the loop goes on, or the queue would stall.
        while not self._stopping:
            try:
                free = self.concurrency - len(self._running)
                # Cleared before claiming: a call finishing or queued meanwhile sets it again.
                self._wake.clear()
                now = utcnow()
                try:
                    claimed = (
                        await self.services.db.run_unsettled(claims.claim_many, self.id, self.lease, free, now)
                        if free
                        else []
                    )
                except (DBAPIError, DatabaseTimeout):
                    self._unconfirmed.append(now)  # committed or not: housekeeping finds out
                    raise
                for run in claimed:
                    self.services.leases.hold(run.id, self.id)
                    task = asyncio.create_task(self._run(run))
                    self._running.add(task)
                if free and len(claimed) == free:
                    continue  # there may be more: the next claim finds out once a slot frees
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL)
            except (DBAPIError, DatabaseTimeout) as exc:
                logger.warning("the database is unreachable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1.0)
            except Exception:
                logger.exception("claiming queued calls failed; retrying")
                await asyncio.sleep(0.5)

    async def _run(self, run: Run) -> None:
        try:
            await self.process(run)
        except Exception:
            logger.exception("queued call %s failed in the worker", run.id)
        finally:
            self.services.leases.release(run.id)
            self._running.discard(asyncio.current_task())  # type: ignore[arg-type]
            # A free slot, and finishing a call may unblock the next one in its queue.
            self._wake.set()

    async def process(self, run: Run) -> None:
        services = self.services
        record = RunRecord.claimed(run, self.id)
        try:
            key = await services.db.run_unsettled(keys.cached_by_id, run.api_key_id) if run.api_key_id else None
            if key is None or key.revoked_at is not None:
                error = Unauthorized("The API key that queued this call was revoked.")
                record.error_code, record.error_message = error.code, error.message
                record.finish("failed", error.status)
                write = functools.partial(runs.save, services.engine, services.box, record, error.body(None))
                await services.leases.finish(run.id, write, f"the result of {record.summary()}", wait=True)
            else:
                request = runs.request_of(services.box, run)
                with contextlib.suppress(GatewayError):
                    await execute(services, key, record, request.get("params", {}))
        except (DBAPIError, DatabaseTimeout) as exc:
            # Before the call was sent (execute handles its own): it goes back to the head of its queue.
            logger.warning("queued call %s: the database failed (%s); queued again", run.id, type(exc).__name__)
            abandon = functools.partial(runs.abandon, services.engine, record)
            await services.leases.finish(run.id, abandon, f"requeueing run {run.id}", wait=True)
        except Exception:
            logger.exception("queued call %s failed in the worker", run.id)
        # The row this worker wrote; re-read only when the call ended some other way.
        await self.after(run, record.finished)

    async def after(self, run: Run, finished: Run | None = None) -> None:
        """Callbacks and waitpoints for a finished run, off the queue's critical path."""
        if finished is None:
            finished = await self.services.db.run(runs.get_any, run.id)
        if finished is None or finished.status not in runs.TERMINAL:
            return
        hooks = self.services.run_finished_hooks
        for hook in hooks:
            try:
                await hook(self.services, finished)
            except Exception:
                logger.exception("a run-finished hook failed for %s", run.id)
        if finished.callback_url and finished.api_key_id:
            key = await self.services.db.run_unsettled(keys.by_id, finished.api_key_id)
            # A key narrowed since it queued the call is told nothing more about it.
            if key is not None and keys.sees(key, finished):
                secret = callbacks.secret_for(self.services.settings, key)
                payload = views.run_view(self.services.box, finished)
                task = asyncio.create_task(
                    callbacks.deliver(self.services.upstream, secret, finished.callback_url, payload)
                )
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _housekeeping(self) -> None:
        while not self._stopping:
            try:
                for run in await self.services.db.run(lambda _engine: self.housekeep()):
                    task = asyncio.create_task(self.after(run))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
            except (DBAPIError, DatabaseTimeout) as exc:
                logger.warning("queue housekeeping could not reach the database (%s); retrying", type(exc).__name__)
            except Exception:
                logger.exception("queue housekeeping failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), HOUSEKEEPING_EVERY)

    def housekeep(self) -> list[Run]:
        """One round, in a database thread; returns the runs it failed, for `after` on the loop."""
        services = self.services
        failed: list[Run] = []
        if self._unconfirmed:
            if claims.unclaim(services.engine, self.id, self._unconfirmed):
                logger.warning("queued calls claimed as the database failed went back to their queues")
                self.wake()
            self._unconfirmed = []
        sweep(services)
        for run in claims.expired_leases(services.engine, queued=True):
            if services.leases.holds(run.id):
                continue  # this process is still writing its result
            retry = _retry_safe(services, run)
            if claims.recover(services.engine, services.box, run, retry):
                logger.warning("run %s lost its worker; %s", run.id, "queued again" if retry else "failed")
                if not retry:
                    failed.append(run)
        now = time.monotonic()
        if now - self._purged >= PURGE_EVERY:
            self._purged = now
            claims.purge(services.engine)
        return failed
