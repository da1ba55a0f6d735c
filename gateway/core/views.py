"""Records as the API shows them: a run and a waitpoint, the same for every edge that presents one."""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.crypto import Box
from gateway.storage import runs
from gateway.storage.models import Run, Waitpoint


def run_view(box: Box, run: Run) -> dict[str, Any]:
    """A run as the API shows it; `result` is the body a direct call would have answered."""
    described: dict[str, Any] = {
        "id": run.id,
        "status": run.status,
        "integration": run.integration,
        "endpoint": run.endpoint,
        "end_user_id": run.end_user_id,
        "connection_id": run.connection_id,
        "queue_name": run.queue_name,
        "http_status": run.http_status,
        "upstream_status": run.upstream_status,
        "error_code": run.error_code,
        "attempts": run.attempts,
        "refreshed": run.refreshed,
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "ended_at": run.ended_at.isoformat() if run.ended_at else None,
        "expires_at": run.expires_at.isoformat() if run.expires_at else None,
    }
    if run.approval:
        described["approval"] = run.approval
    if run.waitpoint_id:
        described["waitpoint_id"] = run.waitpoint_id
    if run.status in runs.TERMINAL:
        described["result"] = runs.result_of(box, run)
    return described


def iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def waitpoint_view(waitpoint: Waitpoint, with_output: bool = True) -> dict[str, Any]:
    described: dict[str, Any] = {
        "id": waitpoint.id,
        "status": waitpoint.status,
        "kind": waitpoint.kind,
        "createdAt": iso(waitpoint.created_at),
        "completedAt": iso(waitpoint.completed_at),
        "timeoutAt": iso(waitpoint.timeout_at),
        "idempotencyKey": waitpoint.idempotency_key,
        "idempotencyKeyExpiresAt": iso(waitpoint.idempotency_expires_at),
        "tags": waitpoint.tags or [],
    }
    if waitpoint.integration:
        described["integration"] = waitpoint.integration
    if waitpoint.end_user_id is not None:
        described["endUserId"] = waitpoint.end_user_id
    if with_output:
        described["output"] = waitpoint.output
        described["error"] = waitpoint.error
    return described
