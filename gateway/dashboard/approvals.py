"""Approval pages: calls held for the person's decision (keys with `require_approval`).

The approval page is the one place a run's params are shown: the person must
see what they are approving. They are shown only while the call waits.
"""

from __future__ import annotations

import json

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.core import approvals
from gateway.dashboard.web import action, page, redirect, render, services_of
from gateway.storage import keys, runs
from gateway.storage.models import Run, User, utcnow

MAX_SHOWN_PARAMS = 20_000


def _run(request: Request, user: User) -> Run:
    run = runs.get(services_of(request).engine, request.path_params["run_id"][:40], user.id or 0)
    if run is None or run.approval is None:
        raise HTTPException(404, "There is no call waiting for approval with that id in your account.")
    return run


def waiting(run: Run) -> bool:
    expires = run.approval_expires_at
    return run.approval == "pending" and run.status == "pending" and (expires is None or expires > utcnow())


@page
def approvals_page(request: Request, user: User) -> Response:
    held = approvals.pending(services_of(request).engine, user.id or 0)
    context = {
        "waiting": [r for r in held if waiting(r)],
        "decided": [r for r in held if not waiting(r)][:50],
        "done": {"approved": "Approved. The call runs now.", "rejected": "Rejected. The call will not run."}.get(
            request.query_params.get("done", "")
        ),
    }
    return render(request, "approvals.html", context)


@page
def approval_page(request: Request, user: User) -> Response:
    services = services_of(request)
    run = _run(request, user)
    params_text = None
    if waiting(run):
        params = runs.request_of(services.box, run).get("params", {})
        params_text = json.dumps(params, indent=2, ensure_ascii=False, sort_keys=True)
        if len(params_text) > MAX_SHOWN_PARAMS:
            params_text = params_text[:MAX_SHOWN_PARAMS] + "\n… (cut here; the call sends all of it)"
    context = {
        "run": run,
        "waiting": waiting(run),
        "params_text": params_text,
        "endpoint": services.registry.endpoint(run.integration, run.endpoint),
        "key": keys.get_for_user(services.engine, user.id or 0, run.api_key_id) if run.api_key_id else None,
    }
    return render(request, "approval.html", context)


@action
def approve(request: Request, user: User, form: FormData) -> Response:
    run = _run(request, user)
    if not approvals.approve(services_of(request), run.id, user.id or 0):
        return redirect(f"/dashboard/approvals/{run.id}")
    return redirect("/dashboard/approvals?done=approved")


@action
def reject(request: Request, user: User, form: FormData) -> Response:
    run = _run(request, user)
    if approvals.reject(services_of(request), run.id, user.id or 0) is None:
        return redirect(f"/dashboard/approvals/{run.id}")
    return redirect("/dashboard/approvals?done=rejected")


routes = [
    Route("/dashboard/approvals", approvals_page, methods=["GET"]),
    Route("/dashboard/approvals/{run_id}", approval_page, methods=["GET"]),
    Route("/dashboard/approvals/{run_id}/approve", approve, methods=["POST"]),
    Route("/dashboard/approvals/{run_id}/reject", reject, methods=["POST"]),
]
