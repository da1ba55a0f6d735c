"""The /v1 call route (direct and queued, with idempotency) and the public docs routes."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.openapi import describe_endpoint, describe_integration, openapi_document
from gateway.api.parsing import json_object
from gateway.core import approvals, callbacks, limits, links, tools, waitpoints
from gateway.core.callers import api_key
from gateway.core.connect import not_set_up
from gateway.core.execute import answer_status, execute, resolve
from gateway.core.runtime import Services
from gateway.errors import BadRequest, IdempotencyInProgress, IdempotencyMismatch, NotFound
from gateway.jsoncodec import JSONAnswer, dumps
from gateway.specs.params import is_integer
from gateway.specs.params import validate as validate_params
from gateway.specs.spec import RESERVED_NAMES
from gateway.storage import runs
from gateway.storage.models import ApiKey, Run, utcnow
from gateway.storage.runs import RunRecord

CALL_FIELDS = {"params", "queue", "async", "expires", "callback_url"}


def services_of(request: Request) -> Services:
    return request.app.state.services


def _options(body: dict[str, Any], services: Services) -> dict[str, Any]:
    unknown = sorted(set(body) - CALL_FIELDS)
    if unknown:
        raise BadRequest(
            "The body has fields this call does not take.",
            details=[{"field": name, "message": "is not a known field"} for name in unknown],
        )
    queue, is_async = body.get("queue"), body.get("async", False)
    if queue is not None and (not isinstance(queue, str) or not runs.QUEUE_NAME.fullmatch(queue)):
        raise BadRequest("'queue' must be 1-200 characters of letters, digits and . _ : -")
    if not isinstance(is_async, bool):
        raise BadRequest("'async' must be true or false.")
    queued = queue is not None or is_async
    expires, callback_url = body.get("expires"), body.get("callback_url")
    if (expires is not None or callback_url is not None) and not queued:
        raise BadRequest("'expires' and 'callback_url' apply to queued calls: add 'queue' or 'async': true.")
    if expires is not None and (not is_integer(expires) or not 1 <= expires <= runs.MAX_EXPIRES):
        raise BadRequest(f"'expires' must be a whole number of seconds from 1 to {runs.MAX_EXPIRES}.")
    if callback_url is not None:
        callbacks.check_url(services.settings, callback_url)
    expires = int(expires) if expires is not None else None
    return {"queued": queued, "queue": queue, "expires": expires, "callback_url": callback_url}


def _request_hash(integration: str, endpoint: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{integration}/{endpoint}\n{canonical}".encode()).hexdigest()


def _submitted(services: Services, key: ApiKey, run: Run) -> JSONResponse:
    queue_name = run.queue_name or run.id
    in_queue = runs.in_queue(services.engine, key, queue_name, up_to=run.id)
    body = {"id": run.id, "status": run.status, "queue_name": queue_name, "in_queue": in_queue}
    return JSONResponse(body, status_code=202, headers={"X-Run-Id": run.id})


def _replay(services: Services, key: ApiKey, run: Run, request_hash: str) -> Response:
    if run.request_hash != request_hash:
        raise IdempotencyMismatch("This Idempotency-Key was already used with a different request.")
    if run.request is not None:  # a queued submission: its first answer was the 202
        response = _submitted(services, key, run)
    elif run.status not in runs.TERMINAL:
        raise IdempotencyInProgress(
            "A call with this Idempotency-Key is still running.", headers={"Retry-After": "1", "X-Run-Id": run.id}
        )
    else:
        body = runs.result_of(services.box, run) or {}
        status = answer_status(run.http_status or 200)
        response = JSONResponse(body, status_code=status, headers={"X-Run-Id": run.id})
    response.headers["Idempotent-Replayed"] = "true"
    return response


async def _submit(
    services: Services,
    key: ApiKey,
    integration: str,
    endpoint_name: str,
    body: dict[str, Any],
    options: dict[str, Any],
    idempotency: tuple[str, str] | None,
) -> Response:
    endpoint = resolve(services, key, integration, endpoint_name)
    params = validate_params(endpoint, body.get("params", {}))
    record = RunRecord.start()
    record.user_id, record.api_key_id = key.user_id, key.id
    record.integration, record.endpoint = integration, endpoint_name
    record.queue_name = options["queue"] or record.id
    usage = await limits.reserve(
        services.batcher, services.settings, key, services.plans.for_user(services.engine, key.user_id)
    )
    queued = dict(
        expires_at=utcnow() + timedelta(seconds=options["expires"]) if options["expires"] else None,
        callback_url=options["callback_url"],
        idempotency_key=idempotency[0] if idempotency else None,
        request_hash=idempotency[1] if idempotency else None,
    )
    if approvals.needed(key, endpoint):
        held = approvals.hold(services, key, endpoint, params, record, **queued)
        return JSONResponse(held, status_code=202, headers={"X-Run-Id": record.id, **usage.headers()})
    try:
        runs.create_pending(services.engine, services.box, record=record, params=params, **queued)
    except Exception:
        limits.refund(services.batcher, key)
        raise
    services.notify_queue()
    run = runs.get(services.engine, record.id, key.user_id)
    assert run is not None
    response = _submitted(services, key, run)
    response.headers.update(usage.headers())
    return response


async def call_endpoint(request: Request) -> Response:
    services = services_of(request)
    key = await api_key(services, request)
    body = await json_object(request)
    options = _options(body, services)
    integration, endpoint_name = request.path_params["integration"], request.path_params["endpoint"]
    # Counting the call sets its X-RateLimit-* headers; the middleware need not read them again.
    request.scope["state"]["usage_reported"] = True

    idempotency: tuple[str, str] | None = None
    header = request.headers.get("idempotency-key")
    if header is not None:
        if not runs.IDEMPOTENCY_KEY.fullmatch(header):
            raise BadRequest("'Idempotency-Key' must be 1-255 visible ASCII characters.")
        idempotency = (header, _request_hash(integration, endpoint_name, body))
        # A key narrowed since its first call must not get that call's answer back.
        resolve(services, key, integration, endpoint_name)
        existing = runs.by_idempotency_key(services.engine, key.id or 0, header)
        if existing is not None:
            return _replay(services, key, existing, idempotency[1])

    try:
        if options["queued"]:
            return await _submit(services, key, integration, endpoint_name, body, options, idempotency)
        record = RunRecord.start()
        if idempotency is not None:
            # The row exists from the start, so a repeat during the call sees it (409); its lease,
            # extended while this process runs the call, lets a repeat recover the key if it dies.
            record.user_id, record.api_key_id = key.user_id, key.id
            record.integration, record.endpoint = integration[:100], endpoint_name[:100]
            record.worker_id = services.leases.owner
            runs.create_started(
                services.engine,
                record,
                idempotency_key=idempotency[0],
                request_hash=idempotency[1],
                lease=services.leases.lease,
            )
            record.stored = record.keep_result = True
    except IntegrityError:
        # Another request with the same key got there first.
        existing = runs.by_idempotency_key(services.engine, key.id or 0, header or "")
        if existing is None:
            raise
        return _replay(services, key, existing, idempotency[1])  # type: ignore[index]
    if not record.stored:
        result = await execute(services, key, integration, endpoint_name, body.get("params", {}), record)
        return JSONAnswer(result.body, status_code=result.http_status, headers=result.headers)
    services.leases.hold(record.id, services.leases.owner)
    try:
        result = await execute(services, key, integration, endpoint_name, body.get("params", {}), record)
    finally:
        services.leases.release(record.id)
    return JSONAnswer(result.body, status_code=result.http_status, headers=result.headers)


async def start_connection(request: Request) -> Response:
    """Where a person connects an integration, and a waitpoint that completes when they have."""
    services = services_of(request)
    key = await api_key(services, request)
    name = request.path_params["name"]
    tools.check_integration(services, key, name)
    integration = services.registry.get(name)
    assert integration is not None
    unavailable = not_set_up(services.settings, integration)
    if unavailable is not None:
        raise unavailable
    plan = services.plans.for_user(services.engine, key.user_id)
    limits.ensure_can_connect(services.engine, services.settings, plan, key.user_id, name)
    waitpoint = waitpoints.connection_waitpoint(services.engine, key.user_id, name)
    return JSONResponse(
        {
            "integration": name,
            "connect_url": links.integration(services.settings, name),
            "waitpoint": waitpoints.reference(services, waitpoint),
        }
    )


async def list_integrations(request: Request) -> Response:
    services = services_of(request)
    return JSONResponse(
        {"integrations": [describe_integration(services, i, with_endpoints=False) for i in services.registry]}
    )


async def show_integration(request: Request) -> Response:
    services = services_of(request)
    integration = services.registry.get(request.path_params["integration"])
    if integration is None:
        raise NotFound(f"There is no integration named '{request.path_params['integration']}'.")
    return JSONResponse(describe_integration(services, integration, with_endpoints=True))


async def show_endpoint(request: Request) -> Response:
    services = services_of(request)
    name, endpoint_name = request.path_params["integration"], request.path_params["endpoint"]
    endpoint = services.registry.endpoint(name, endpoint_name)
    if endpoint is None:
        raise NotFound(f"There is no endpoint '{name}/{endpoint_name}'.")
    return JSONResponse(describe_endpoint(services, endpoint))


async def openapi(request: Request) -> Response:
    # The same for the process's life (settings and specs are fixed at start), and most of a megabyte.
    state = request.app.state
    if getattr(state, "openapi_body", None) is None:
        state.openapi_body = dumps(openapi_document(services_of(request)))
    return Response(state.openapi_body, media_type="application/json")


class IntegrationName(StringConvertor):
    """A path segment that is not one of the gateway's own /v1 names: /v1/runs/<id> is never a call,
    so a POST there is a 405 naming the methods /v1/runs/<id> takes."""

    regex = "(?!(?:" + "|".join(sorted(RESERVED_NAMES)) + ")(?:/|$))[^/]+"


register_url_convertor("integration", IntegrationName())

routes = [
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/v1/integrations", list_integrations, methods=["GET"]),
    Route("/v1/integrations/{name}/connect", start_connection, methods=["POST"]),
    Route("/v1/{integration:integration}", show_integration, methods=["GET"]),
    Route("/v1/{integration:integration}/{endpoint}", show_endpoint, methods=["GET"]),
]
# The hot route, matched before every other: Starlette tries routes in order (~0.5 µs each).
# No other route takes a POST to /v1/<a>/<b>, so putting it first changes no answer.
call_route = Route("/v1/{integration:integration}/{endpoint}", call_endpoint, methods=["POST"])
