"""The /v1 routes for run history, queued calls, queues and callback signing."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.parsing import query_limit, query_list, query_time
from gateway.core import callbacks, callers, views
from gateway.core.callers import api_key
from gateway.core.runtime import Services
from gateway.errors import BadRequest, NotFound
from gateway.storage import keys, runs
from gateway.storage.models import ApiKey, Run

MAX_LIMIT = 100


def _services(request: Request) -> Services:
    return request.app.state.services


async def _run(services: Services, key: ApiKey, run_id: str, request: Request | None = None) -> Run:
    # Database.run settles first: this process's answered calls show, even before their commit.
    run = await services.db.run(runs.get, run_id, key.user_id)
    acting = _end_user_filter(request, key) if request is not None else None
    if run is None or not keys.sees(key, run) or (acting is not None and run.end_user_id != acting):
        raise NotFound("There is no such run.")
    return run


async def list_runs(request: Request) -> Response:
    services = _services(request)
    key = await api_key(services, request)
    q = request.query_params
    limit = query_limit(request, 20, MAX_LIMIT)
    end_user_id = _end_user_filter(request, key)
    found = await services.db.run(
        runs.search,
        runs.RunFilter(
            user_id=key.user_id,
            key=key,
            integration=q.get("integration"),
            endpoint=q.get("endpoint"),
            queue=q.get("queue"),
            statuses=query_list(request, "status", runs.STATUSES),
            since=query_time(request, "from"),
            until=query_time(request, "to"),
            before_id=q.get("cursor"),
            end_user_id=end_user_id,
            limit=limit + 1,
        ),
    )
    page = found[:limit]
    next_cursor = page[-1].id if len(found) > limit else None
    return JSONResponse({"runs": [views.run_view(services.box, r) for r in page], "next_cursor": next_cursor})


def _end_user_filter(request: Request, key: ApiKey) -> str | None:
    """An end user's runs only: named by ?end_user_id=, or by the X-End-User-Id the request acts for
    (then a different ?end_user_id= is refused: a request acting for one end user sees no other's)."""
    named = request.query_params.get("end_user_id") if request.url.path == "/v1/runs" else None
    return callers.end_user_filter(key, request.headers.get(callers.END_USER_HEADER), named)


async def show_run(request: Request) -> Response:
    services = _services(request)
    key = await api_key(services, request)
    run = await _run(services, key, request.path_params["run_id"], request)
    return JSONResponse(views.run_view(services.box, run))


async def cancel_run(request: Request) -> Response:
    services = _services(request)
    key = await api_key(services, request)
    run_id = (await _run(services, key, request.path_params["run_id"], request)).id
    if await services.db.run(runs.cancel, run_id, key.user_id):
        for hook in services.run_finished_hooks:
            cancelled = await services.db.run(runs.get, run_id, key.user_id)
            await hook(services, cancelled)
        return JSONResponse({"removed": True, "message": "The call was removed from its queue."})
    current = await services.db.run(runs.get, run_id, key.user_id)
    status = current.status if current else "gone"
    return JSONResponse({"removed": False, "message": f"Only pending calls can be removed; this one is {status}."})


async def queue_size(request: Request) -> Response:
    services = _services(request)
    key = await api_key(services, request)
    name = request.path_params["name"]
    if not runs.QUEUE_NAME.fullmatch(name):
        raise BadRequest("A queue name is 1-200 characters of letters, digits and . _ : -")
    # The queue of whom the request acts for: the owner's, or the end user's its X-End-User-Id names.
    end_user_id = request.headers.get(callers.END_USER_HEADER)
    if end_user_id is not None:
        callers.check_end_user_id(end_user_id)
    callers.may_act_for(key, end_user_id)
    count = await services.db.run(runs.in_queue, key, name, None, end_user_id)
    return JSONResponse({"queue_name": name, "in_queue": count})


async def callback_secret(request: Request) -> Response:
    services = _services(request)
    key = await api_key(services, request)
    return JSONResponse({"secret": callbacks.secret_for(services.settings, key), "scheme": "t=<unix>,v1=<hex>"})


routes = [
    Route("/v1/runs", list_runs, methods=["GET"]),
    Route("/v1/runs/{run_id}", show_run, methods=["GET"]),
    Route("/v1/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
    Route("/v1/queues/{name}", queue_size, methods=["GET"]),
    Route("/v1/callbacks/secret", callback_secret, methods=["GET"]),
]
