"""Human in the loop: calls held until the person approves them in the dashboard.

A key with `require_approval` holds every call to an endpoint that is not
read-only as a pending run with a waitpoint. Approving lets a worker run it
(its result becomes the run's and the waitpoint's); rejecting, or letting it
expire, ends it `failed` with `approval_denied`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from gateway.core import links, waitpoints
from gateway.crypto import Box
from gateway.errors import ApprovalDenied
from gateway.specs.spec import CompiledEndpoint
from gateway.storage import runs
from gateway.storage.models import ApiKey, Run, from_row, is_active, utcnow
from gateway.storage.runs import RunRecord

if TYPE_CHECKING:
    from gateway.core.runtime import Services


def needed(key: ApiKey, endpoint: CompiledEndpoint) -> bool:
    return key.require_approval and not endpoint.read_only


def hold(
    services: Services,
    key: ApiKey,
    endpoint: CompiledEndpoint,
    params: dict[str, Any],
    record: RunRecord,
    **queued: Any,
) -> dict[str, Any]:
    """Stores the call as held and answers what the caller needs to wait for the decision."""

    ttl = dt.timedelta(seconds=services.settings.approval_ttl_seconds)
    waitpoint, _ = waitpoints.create(
        services.engine,
        user_id=key.user_id,
        api_key_id=key.id,
        timeout=ttl,
        kind="approval",
        integration=endpoint.integration.name,
    )
    record.queue_name = record.queue_name or record.id
    expires_at = utcnow() + ttl
    if record.stored:  # an idempotent direct call already wrote its row
        with services.engine.begin() as c:
            c.execute(
                update(Run)
                .where(Run.id == record.id)
                .values(
                    status="pending",
                    queue_name=record.queue_name,
                    request=services.box.encrypt(json.dumps({"params": params})),
                    approval="pending",
                    approval_expires_at=expires_at,
                    waitpoint_id=waitpoint.id,
                )
            )
    else:
        runs.create_pending(
            services.engine,
            services.box,
            record=record,
            params=params,
            approval="pending",
            approval_expires_at=expires_at,
            waitpoint_id=waitpoint.id,
            **queued,
        )
    return {
        "id": record.id,
        "status": "pending",
        "approval": "pending",
        "queue_name": record.queue_name,
        "message": "This key needs the person's approval for this call. Send them to action_url, then wait.",
        "action_url": links.approval(services.settings, record.id),
        "waitpoint": waitpoints.reference(services, waitpoint),
        "expires_at": expires_at.isoformat(),
    }


def pending(engine: Engine, user_id: int) -> list[Run]:
    with engine.connect() as c:
        rows = c.execute(
            select(Run.__table__)
            .where(Run.user_id == user_id, Run.approval.is_not(None))
            .order_by(Run.id.desc())
            .limit(200)
        ).all()
    return [from_row(Run, r._mapping) for r in rows]


def approve(services: Services, run_id: str, user_id: int) -> bool:
    with services.engine.begin() as c:
        approved = (
            c.execute(
                update(Run)
                .where(
                    Run.id == run_id,
                    Run.user_id == user_id,
                    Run.approval == "pending",
                    Run.status == "pending",
                    Run.approval_expires_at > utcnow(),
                )
                .values(approval="approved")
            ).rowcount
            == 1
        )
    if approved:
        services.notify_queue()
    return approved


def _deny(engine: Engine, box: Box, where: list[Any], approval: str, message: str) -> list[Run]:
    error = ApprovalDenied(message)
    body = error.body(None)
    with engine.begin() as c:
        ids = [r[0] for r in c.execute(select(Run.id).where(*where)).all()]
        if ids:
            c.execute(
                update(Run)
                .where(Run.id.in_(ids), Run.approval == "pending", Run.status == "pending")
                .values(
                    approval=approval,
                    status="failed",
                    error_code=error.code,
                    error_message=message,
                    http_status=error.status,
                    ended_at=utcnow(),
                    result=box.encrypt(json.dumps(body)),
                )
            )
    found = [runs.get_any(engine, i) for i in ids]
    return [r for r in found if r is not None and r.approval == approval]


def reject(services: Services, run_id: str, user_id: int) -> Run | None:
    denied = _deny(
        services.engine,
        services.box,
        [Run.id == run_id, Run.user_id == user_id, Run.approval == "pending", Run.status == "pending"],
        "rejected",
        "The person rejected this call.",
    )
    for run in denied:
        waitpoints.complete(services.engine, run.waitpoint_id or "", runs.result_of(services.box, run))
    return denied[0] if denied else None


def expire_due(services: Services) -> list[Run]:
    return _deny(
        services.engine,
        services.box,
        [
            Run.approval == "pending",
            Run.status == "pending",
            is_active(Run.status),
            Run.approval_expires_at <= utcnow(),
        ],
        "expired",
        "Nobody approved this call before its approval expired.",
    )


async def complete_waitpoint(services: Services, run: Run) -> None:
    """A run-finished hook: a held call's waitpoint gets the call's final body."""
    if run.waitpoint_id and run.status in runs.TERMINAL:
        await services.db.run_unsettled(waitpoints.complete, run.waitpoint_id, runs.result_of(services.box, run))
