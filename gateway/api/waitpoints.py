"""The /v1/waitpoints routes: create, complete (callback URL, API key or public token), wait, read, list."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.parsing import json_object, json_or_empty, query_limit, query_list, query_time
from gateway.core import callers, views, waitpoints
from gateway.core.callers import api_key, bearer
from gateway.core.runtime import Services
from gateway.errors import BadRequest, NotFound, Unauthorized
from gateway.specs.params import CONTROL
from gateway.storage import keys
from gateway.storage.models import ApiKey, Waitpoint, utcnow

CREATE_FIELDS = {"timeout", "idempotencyKey", "idempotencyKeyTTL", "tags"}
MAX_WAIT = 120.0
DEFAULT_WAIT = 30.0
WAIT_TIMEOUT_PATTERN = r"^([0-9]{1,5}(?:\.[0-9]{1,6})?)([smh])?$"
WAIT_TIMEOUT = re.compile(WAIT_TIMEOUT_PATTERN)
PERIODS = {
    "1h": dt.timedelta(hours=1),
    "1d": dt.timedelta(days=1),
    "7d": dt.timedelta(days=7),
    "30d": dt.timedelta(days=30),
}
PUBLIC_PREFIX = "wpt_"
# Completing from a browser on another origin: no cookies are involved, only the token.
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}


def _services(request: Request) -> Services:
    return request.app.state.services


async def _for_key(
    services: Services, key: ApiKey, request: Request, waitpoint_id: str, headers: dict[str, str] | None = None
) -> Waitpoint:
    """The waitpoint, if the key sees it and, acting for an end user (X-End-User-Id), it is theirs."""
    acting = request.headers.get(callers.END_USER_HEADER)
    found = await services.db.run_unsettled(waitpoints.get, waitpoint_id, key.user_id)
    if found is None or not keys.sees(key, found) or (acting is not None and found.end_user_id != acting):
        raise NotFound("There is no such waitpoint.", headers=headers)
    return found


def _tags(value: Any) -> list[str] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) > 20
        or not all(isinstance(t, str) and 1 <= len(t) <= 128 and not CONTROL.search(t) for t in value)
    ):
        raise BadRequest("'tags' must be a list of up to 20 strings of 1-128 characters, without control characters.")
    return sorted(set(value))


async def create(request: Request) -> Response:
    services = _services(request)
    key = await api_key(services, request)
    body = await json_object(request)
    unknown = sorted(set(body) - CREATE_FIELDS)
    if unknown:
        raise BadRequest(
            "The body has fields a waitpoint does not take.",
            details=[{"field": name, "message": "is not a known field"} for name in unknown],
        )
    timeout = waitpoints.parse_duration(body.get("timeout", "10m"), "timeout")
    ttl = waitpoints.parse_duration(body.get("idempotencyKeyTTL", "1h"), "idempotencyKeyTTL")
    idempotency_key = body.get("idempotencyKey")
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 255 or CONTROL.search(idempotency_key)
    ):
        raise BadRequest("'idempotencyKey' must be a string of 1-255 characters, without control characters.")
    end_user = await callers.end_user(services, key, request.headers.get(callers.END_USER_HEADER))
    waitpoint, cached = await services.db.run_unsettled(
        waitpoints.create,
        user_id=key.user_id,
        api_key_id=key.id,
        end_user_id=end_user.external_id if end_user is not None else None,
        timeout=timeout,
        idempotency_key=idempotency_key,
        idempotency_ttl=ttl,
        tags=_tags(body.get("tags")),
    )
    return JSONResponse(
        {
            "id": waitpoint.id,
            "url": waitpoints.urls(services, waitpoint)["url"],
            "isCached": cached,
            "publicAccessToken": PUBLIC_PREFIX + waitpoints.public_signer(services).dumps(waitpoint.id),
        }
    )


async def _completion(services: Services, waitpoint_id: str, output: Any) -> JSONResponse:
    won = await services.db.run_unsettled(waitpoints.complete, waitpoint_id, output)
    current = await services.db.run_unsettled(waitpoints.get, waitpoint_id)
    status = current.status if current else "UNKNOWN"
    if won:
        message = "Completed."
    elif status == "TIMED_OUT":
        message = "The waitpoint had already timed out; nothing changed."
    elif status == "CANCELLED":
        message = "The waitpoint had been cancelled; nothing changed."
    else:
        message = "The waitpoint was already completed; the first completion stands."
    return JSONResponse({"id": waitpoint_id, "completed": won, "status": status, "message": message}, headers=CORS)


async def callback(request: Request) -> Response:
    services = _services(request)
    waitpoint_id = request.path_params["waitpoint_id"]
    if waitpoints.callback_signer(services).loads(request.path_params["token"]) != waitpoint_id:
        raise NotFound("There is no such waitpoint.", headers=CORS)
    if await services.db.run_unsettled(waitpoints.get, waitpoint_id) is None:
        raise NotFound("There is no such waitpoint.", headers=CORS)
    return await _completion(services, waitpoint_id, await json_or_empty(request, CORS))


async def complete(request: Request) -> Response:
    services = _services(request)
    waitpoint_id = request.path_params["waitpoint_id"]
    secret = bearer(request) or ""
    if secret.startswith(PUBLIC_PREFIX):
        if waitpoints.public_signer(services).loads(secret[len(PUBLIC_PREFIX) :]) != waitpoint_id:
            raise Unauthorized("The public access token is not valid for this waitpoint.", headers=CORS)
        if await services.db.run_unsettled(waitpoints.get, waitpoint_id) is None:
            raise NotFound("There is no such waitpoint.", headers=CORS)
    else:
        await _for_key(services, await api_key(services, request), request, waitpoint_id, CORS)
    body = await json_or_empty(request, CORS)
    if not isinstance(body, dict) or set(body) - {"data"}:
        raise BadRequest('Send {"data": <any JSON>} to complete a waitpoint.', headers=CORS)
    return await _completion(services, waitpoint_id, body.get("data", {}))


async def cancel(request: Request) -> Response:
    """Ends a waiting manual or connection waitpoint at once; an approval ends by approving or rejecting its call."""
    services = _services(request)
    found = await _for_key(services, await api_key(services, request), request, request.path_params["waitpoint_id"])
    if found.status == "WAITING" and found.kind not in waitpoints.CANCELLABLE:
        raise BadRequest("An approval's waitpoint ends when its call is approved or rejected; it cannot be cancelled.")
    won = await services.db.run_unsettled(waitpoints.cancel, found.id, found.user_id, by="an API key")
    current = await services.db.run_unsettled(waitpoints.get, found.id) or found
    message = "Cancelled." if won else f"Only a waiting waitpoint can be cancelled; this one is {current.status}."
    return JSONResponse({"id": found.id, "cancelled": won, "status": current.status, "message": message})


async def preflight(request: Request) -> Response:
    return Response(status_code=204, headers=CORS)


def _seconds(value: str | None) -> float:
    """A wait bound in seconds, or as a duration ("30s", "2m", "1h"); more than MAX_WAIT waits MAX_WAIT."""
    match = WAIT_TIMEOUT.fullmatch(value) if value is not None else None
    if value is not None and match is None:
        raise BadRequest("'timeout' must be a number of seconds or a duration such as \"30s\".")
    if match is None:
        return DEFAULT_WAIT
    number, unit = match.groups()
    return min(float(number) * waitpoints.UNITS[unit or "s"], MAX_WAIT)


async def wait(request: Request) -> Response:
    services = _services(request)
    found = await _for_key(services, await api_key(services, request), request, request.path_params["waitpoint_id"])
    current = await waitpoints.wait(services.db, found, _seconds(request.query_params.get("timeout")))
    if current.status == "COMPLETED":
        return JSONResponse({"ok": True, "output": current.output})
    if current.status in ("TIMED_OUT", "CANCELLED"):
        return JSONResponse({"ok": False, "error": current.error})
    return JSONResponse(
        {
            "ok": False,
            "status": "WAITING",
            "waitAgain": True,
            "message": "Still waiting: your poll bound ran out first. Call this URL again.",
            "timeoutAt": views.iso(current.timeout_at),
        },
        status_code=202,
    )


async def show(request: Request) -> Response:
    services = _services(request)
    return JSONResponse(
        views.waitpoint_view(
            await _for_key(services, await api_key(services, request), request, request.path_params["waitpoint_id"])
        )
    )


async def list_waitpoints(request: Request) -> Response:
    services = _services(request)
    key = await api_key(services, request)
    q = request.query_params
    period = q.get("period")
    if period is not None and period not in PERIODS:
        raise BadRequest(f"'period' must be one of {', '.join(PERIODS)}.")
    since = utcnow() - PERIODS[period] if period else query_time(request, "from")
    limit = query_limit(request, 20, 100)
    end_user_id = callers.end_user_filter(key, request.headers.get(callers.END_USER_HEADER), q.get("end_user_id"))
    found = await services.db.run_unsettled(
        waitpoints.search,
        waitpoints.WaitFilter(
            user_id=key.user_id,
            key=key,
            statuses=query_list(request, "status", waitpoints.STATUSES),
            idempotency_key=q.get("idempotencyKey"),
            tags=query_list(request, "tags"),
            since=since,
            until=query_time(request, "to"),
            before_id=q.get("cursor"),
            end_user_id=end_user_id,
            limit=limit + 1,
        ),
    )
    page = found[:limit]
    return JSONResponse(
        {
            "data": [views.waitpoint_view(w, with_output=False) for w in page],
            "nextCursor": page[-1].id if len(found) > limit else None,
        }
    )


routes = [
    Route("/v1/waitpoints", create, methods=["POST"]),
    Route("/v1/waitpoints", list_waitpoints, methods=["GET"]),
    Route("/v1/waitpoints/{waitpoint_id}", show, methods=["GET"]),
    Route("/v1/waitpoints/{waitpoint_id}/wait", wait, methods=["GET"]),
    Route("/v1/waitpoints/{waitpoint_id}/complete", complete, methods=["POST"]),
    Route("/v1/waitpoints/{waitpoint_id}/complete", preflight, methods=["OPTIONS"]),
    Route("/v1/waitpoints/{waitpoint_id}/cancel", cancel, methods=["POST"]),
    Route("/v1/waitpoints/{waitpoint_id}/callback/{token}", callback, methods=["POST"]),
    Route("/v1/waitpoints/{waitpoint_id}/callback/{token}", preflight, methods=["OPTIONS"]),
]
