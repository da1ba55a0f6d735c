"""The /v1 routes for run history, queued calls, queues and callback signing."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.parsing import query_limit, query_list, query_time
from gateway.core import callbacks, views
from gateway.core.callers import api_key
from gateway.core.runtime import Services
from gateway.errors import BadRequest, NotFound
from gateway.storage import keys, runs
from gateway.storage.models import ApiKey, Run

MAX_LIMIT = 100


def _services(request: Request) -> Services:
    return request.app.state.services


async def _run(services: Services, key: ApiKey, run_id: str) -> Run:
    # Database.run settles first: this process's answered calls show, even before their commit.
    run = await services.db.run(runs.get, run_id, key.user_id)
    if run is None or not keys.sees(key, run):
        raise NotFound("There is no such run.")
    return run


async def list_runs(request: Request) -> Response:
    services = _services(request)
    key = await api_key(services, request)
    q = request.query_params
    limit = query_limit(request, 20, MAX_LIMIT)
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
            limit=limit + 1,
        ),
    )
    page = found[:limit]
    next_cursor = page[-1].id if len(found) > limit else None
    return JSONResponse({"runs": [views.run_view(services.box, r) for r in page], "next_cursor": next_cursor})


async def show_run(request: Request) -> Response:
    services = _services(request)
    key = await api_key(services, request)
    return JSONResponse(views.run_view(services.box, await _run(services, key, request.path_params["run_id"])))


async def cancel_run(request: Request) -> Response:
    services = _services(request)
    key = await api_key(services, request)
    run_id = (await _run(services, key, request.path_params["run_id"])).id
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
    return JSONResponse({"queue_name": name, "in_queue": await services.db.run(runs.in_queue, key, name)})


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
