"""The call pipeline: key → spec → params → connection and token → upstream → response."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import time
from typing import Any

from sqlalchemy.exc import DBAPIError

from gateway.core import approvals, connect_sessions, limits, links, waitpoints
from gateway.core.connect import not_set_up
from gateway.core.runtime import Services
from gateway.core.tokens import is_expired
from gateway.core.tools import resolve
from gateway.errors import (
    BadRequest,
    DatabaseTimeout,
    GatewayError,
    IntegrationNotConnected,
    IntegrationNotSetUp,
    InternalError,
    NotFound,
    ServiceUnavailable,
    TokenExpired,
    UpstreamTimeout,
)
from gateway.specs.params import validate as validate_params
from gateway.specs.spec import ApiKeyAuth, CompiledEndpoint, Integration, OAuth2Auth
from gateway.storage import connections, end_users, keys, runs
from gateway.storage.models import ApiKey, Connection, utcnow
from gateway.storage.runs import RunRecord
from gateway.upstream import build as upstream

logger = logging.getLogger(__name__)

# A 401 is retried after a refresh; twice only when the first refresh was another process's.
MAX_REFRESHES = 2


# Statuses whose answer can carry no body (RFC 9110): the gateway's answer always has one.
BODYLESS_STATUSES = frozenset({204, 205, 304})


def answer_status(upstream_status: int) -> int:
    """The HTTP status of the gateway's answer: the upstream's, or 200 when the upstream's
    cannot carry the JSON body every call answers with (its own status stays in `status`)."""
    return 200 if upstream_status in BODYLESS_STATUSES else upstream_status


@dataclasses.dataclass
class CallResult:
    http_status: int
    body: dict[str, Any]
    headers: dict[str, str]


async def load_connection(services: Services, key: ApiKey, integration: Integration, record: RunRecord) -> Connection:
    """The connection the call uses: the one it names (X-Connection-Id), else the default of its
    owner or end user for the integration. The run records which one it was."""
    connection = None
    end_user_key: int | None = None
    if record.end_user_id is not None:
        end_user = end_users.in_cache(
            services.engine, key.user_id, record.end_user_id
        ) or await services.db.run_unsettled(end_users.known, key.user_id, record.end_user_id)
        end_user_key = end_user.id if end_user is not None else -1  # -1: no such end user, no connection
    if end_user_key != -1:
        where = (key.user_id, integration.name, end_user_key, record.connection_id)
        connection = connections.in_cache(services.engine, *where) or await services.db.run_unsettled(
            connections.cached, *where
        )
    if connection is None:
        unavailable = not_set_up(services.settings, integration)
        if unavailable is not None:
            raise unavailable
        if record.connection_id is not None:
            raise NotFound(
                f"There is no {integration.display_name} connection {record.connection_id} for this "
                + ("end user." if record.end_user_id is not None else "account.")
            )
        whose = "this end user" if record.end_user_id is not None else "this account"
        raise IntegrationNotConnected(
            f"{integration.display_name} is not connected for {whose}.",
            action_url=links.integration(services.settings, integration.name),
        )
    record.connection_id = connection.public_id
    if connection.status != "connected":
        raise services.tokens.expired_error(
            integration, f"The {integration.display_name} connection must be reconnected."
        )
    return connection


def auth_parts(
    services: Services, integration: Integration, connection: Connection
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The headers and query pairs that carry the connection's credential, as the spec places it."""
    auth = integration.spec.auth
    secret = services.tokens.access_token(connection)
    if isinstance(auth, ApiKeyAuth):
        value = auth.template.replace("{api_key}", secret)
        if auth.placement == "query":
            return {}, [(auth.name, value)]
        return {auth.name: value}, []
    return {"Authorization": f"Bearer {secret}"}, []


def _base_url(services: Services, endpoint: CompiledEndpoint) -> str:
    integration = endpoint.integration
    return services.settings.overrides(integration.name).base_url or integration.spec.base_url


def refuse_plain_http(services: Services, request: upstream.UpstreamRequest) -> None:
    if request.origin.scheme != "https" and not services.settings.allow_http_upstreams:
        raise BadRequest("The integration's base URL is not https; set GATEWAY_ALLOW_HTTP_UPSTREAMS to allow it.")


async def _send(
    services: Services, endpoint: CompiledEndpoint, params: dict[str, Any], connection: Connection, record: RunRecord
) -> upstream.UpstreamResponse:
    auth_headers, auth_query = auth_parts(services, endpoint.integration, connection)
    request = upstream.build_request(
        endpoint,
        params,
        base_url=_base_url(services, endpoint),
        auth_headers=auth_headers,
        auth_query=auth_query,
        connection_extra=connection.extra,
    )
    refuse_plain_http(services, request)
    record.attempts += 1
    started = time.perf_counter()
    try:
        return await upstream.send(services.upstream, request, services.settings.upstream_max_response_bytes)
    finally:
        services.metrics.observe_upstream(endpoint.integration.name, time.perf_counter() - started)


async def call(
    services: Services, key: ApiKey, endpoint: CompiledEndpoint, params: dict[str, Any], record: RunRecord
) -> CallResult:
    """Runs one validated call. Raises GatewayError for what the gateway itself answers."""
    integration = endpoint.integration
    connection = await load_connection(services, key, integration, record)
    oauth = isinstance(integration.spec.auth, OAuth2Auth)
    if oauth and is_expired(connection) and connection.refresh_token:
        connection = await services.tokens.refresh(integration, connection)
        record.refreshed = True

    response = await _send(services, endpoint, params, connection, record)
    record.upstream_status = response.status
    refreshes = 0
    while response.status == 401 and oauth:
        if record.refreshed and services.tokens.obtained(connection):
            # A token fresh from the provider is still refused: only a new connection can help.
            await services.tokens.mark_needs_reconnect(connection)
            raise services.tokens.expired_error(
                integration, f"{integration.display_name} still answered 401 after a token refresh; reconnect."
            )
        if refreshes == MAX_REFRESHES:
            raise services.tokens.expired_error(
                integration, f"{integration.display_name} still answered 401 after a token refresh; retry shortly."
            )
        # The refresh may hand back a token another process refreshed (this process's cache was
        # older): if that one is refused too, the next round refreshes with its refresh token.
        connection = await services.tokens.refresh(integration, connection)
        record.refreshed = True
        refreshes += 1
        response = await _send(services, endpoint, params, connection, record)
        record.upstream_status = response.status
    if not oauth:
        await _track_refusal(services, connection, response.status, response.data)
    if response.status >= 400:
        record.error_message = upstream.error_message(response.data, services.tokens.access_token(connection))

    body: dict[str, Any] = {"status": response.status, "data": response.data}
    if response.headers:
        body["headers"] = dict(response.headers)
    http_status = answer_status(response.status)
    error_when = endpoint.spec.error_when
    if (
        error_when is not None
        and isinstance(response.data, dict)
        and response.data.get(error_when.field, object()) == error_when.equals
    ):
        message = str(response.data.get(error_when.message_field or "", "")) or "the upstream reported an error"
        body["upstream_error"] = message
        record.error_code = "upstream_error"
        record.error_message = message[:500]
        http_status = 502
    return CallResult(http_status=http_status, body=body, headers=_response_headers(response.headers))


# A key refused again and again is marked once a minute, not once per call.
REFUSAL_MARKED_FOR = dt.timedelta(minutes=1)


async def _track_refusal(services: Services, connection: Connection, status: int, data: Any) -> None:
    """A pasted key its upstream refuses (401) shows that on its integration's page, until a call
    succeeds again. Best effort: the caller gets the upstream's answer whatever happens here."""
    marked = connection.last_error_at
    try:
        if status == 401 and (marked is None or utcnow() - marked > REFUSAL_MARKED_FOR):
            reason = upstream.error_message(data, services.tokens.access_token(connection))
            await services.db.run_unsettled(connections.record_error, connection, f"401 {reason}" if reason else "401")
        elif status < 400 and marked is not None:
            await services.db.run_unsettled(connections.clear_error, connection)
    except (DBAPIError, DatabaseTimeout):
        logger.warning("could not record the upstream's answer %s on connection %s", status, connection.id)


def _response_headers(upstream_headers: dict[str, str]) -> dict[str, str]:
    """The upstream's rate-limit headers renamed: X-RateLimit-* on our answer are the gateway's own limits."""
    renamed = {}
    for name, value in upstream_headers.items():
        if name.startswith(("x-ratelimit-", "ratelimit-")):
            name = "x-upstream-" + name.removeprefix("x-")
        renamed[name] = value
    return renamed


async def admit(
    services: Services,
    key: ApiKey,
    endpoint: CompiledEndpoint,
    params: dict[str, Any],
    record: RunRecord,
    **queued: Any,
) -> tuple[limits.Usage, dict[str, Any] | None]:
    """What a new call must pass before it runs or is queued, however it arrived: the day's limit
    counts it, and a key that needs the person's approval holds it (the second value is then what the
    caller gets back, and the run waits for the decision)."""
    plan = await services.plans.of(services.db, key.user_id)
    usage = await limits.reserve(services.batcher, services.settings, key, plan, end_user_id=record.end_user_key)
    if approvals.needed(key, endpoint):
        held = await services.db.run_unsettled(
            lambda _engine: approvals.hold(services, key, endpoint, params, record, **queued)
        )
        return usage, held
    return usage, None


async def execute(services: Services, key: ApiKey, record: RunRecord, params: Any) -> CallResult:
    """Runs the call `record` names and records it as a run whatever happens; the run id goes in X-Run-Id.

    A direct call (core.submit) and a queued one a worker claimed both run here, so the pipeline,
    refresh-and-retry and history are the same for all; a direct call is also admitted here (limits,
    approval), so that a call turned away is recorded like any other.
    """
    services.batcher.calls += 1
    try:
        return await _execute(services, key, record, params)
    finally:
        services.batcher.calls -= 1


async def _execute(services: Services, key: ApiKey, record: RunRecord, params: Any) -> CallResult:
    usage: limits.Usage | None = None
    try:
        endpoint = resolve(services, key, record.integration, record.endpoint)
        validated = validate_params(endpoint, params)
        if not record.from_queue:
            # Queued calls were admitted when they were accepted.
            usage, held = await admit(services, key, endpoint, validated, record)
            if held is not None:
                return CallResult(http_status=202, body=held, headers={"X-Run-Id": record.id, **usage.headers()})
        result = await call(services, key, endpoint, validated, record)
    except (DBAPIError, DatabaseTimeout) as exc:
        logger.error("call %s: the database failed (%s)", record.id, type(exc).__name__)
        _count(services, record, "service_unavailable")
        if record.stored:
            # The upstream has not acted (a 401 at most): free the key, or requeue the call.
            await services.leases.finish(
                record.id,
                functools.partial(runs.abandon, services.engine, record),
                f"giving up run {record.id}",
                wait=record.from_queue,
            )
        raise ServiceUnavailable(
            "The gateway's database is unreachable; nothing was recorded. Retry shortly.",
            headers={"Retry-After": "5", "X-Run-Id": record.id},
        ) from None
    except GatewayError as exc:
        if usage is not None:
            if record.attempts == 0:
                # The gateway turned the call away before the upstream saw it: it does not count.
                limits.refund(services.batcher, usage)
                usage.remaining = None if usage.remaining is None else usage.remaining + 1
            for name, value in usage.headers().items():
                exc.headers.setdefault(name, value)
        if isinstance(exc, (IntegrationNotConnected, TokenExpired)) and not isinstance(exc, IntegrationNotSetUp):
            # Something an agent can wait on while its person fixes the connection.
            try:
                if record.end_user_id is not None:
                    # An end user fixes it on their own connect page, not in the owner's dashboard.
                    end_user = await services.db.run_unsettled(end_users.known, key.user_id, record.end_user_id)
                    if end_user is not None:
                        exc.action_url = await connect_sessions.link_for(services, key, end_user, record.integration)
                waitpoint = await services.db.run_unsettled(
                    waitpoints.connection_waitpoint, key.user_id, record.integration, record.end_user_id
                )
                exc.extra["waitpoint"] = waitpoints.reference(services, waitpoint)
            except (DBAPIError, DatabaseTimeout) as db_error:
                logger.warning("call %s: no connection waitpoint (%s)", record.id, type(db_error).__name__)
        record.error_code, record.error_message = exc.code, exc.message[:500]
        record.finish("timeout" if isinstance(exc, UpstreamTimeout) else "failed", exc.status)
        await _save(services, key, record, exc.body(None))
        exc.headers.setdefault("X-Run-Id", record.id)
        raise
    except Exception:
        logger.exception("call %s failed inside the gateway", record.id)
        record.error_code, record.error_message = "internal_error", "internal error"
        record.finish("failed", 500)
        error = InternalError("The gateway failed to complete this call.", headers={"X-Run-Id": record.id})
        await _save(services, key, record, error.body(None))
        raise error from None
    ok = result.http_status < 400
    if record.error_code is None and not ok:
        record.error_code = "upstream_error"
    record.finish("completed" if ok else "failed", result.http_status)
    await _save(services, key, record, result.body)
    result.headers["X-Run-Id"] = record.id
    if usage is not None:
        result.headers.update(usage.headers())
    return result


def _count(services: Services, record: RunRecord, outcome: str) -> None:
    # Only names from the registry become labels: bad input must not grow the metrics.
    known = services.registry.endpoint(record.integration, record.endpoint) is not None
    labels = (record.integration, record.endpoint) if known else ("unknown", "unknown")
    services.metrics.count_call(*labels, outcome)


async def _save(services: Services, key: ApiKey, record: RunRecord, body: dict[str, Any]) -> None:
    _count(services, record, record.error_code or "ok")
    if record.stored:
        # A queued call's result, or one an Idempotency-Key replays: retried until it lands, and a
        # caller waiting for a direct call gets its answer meanwhile (leases.py).
        write = functools.partial(runs.save, services.engine, services.box, record, body)
        await services.leases.finish(record.id, write, f"the result of {record.summary()}", wait=record.from_queue)
    else:
        runs.save_direct(services.batcher, services.box, record, body)
    if keys.touch_due(services.engine, key.id or 0):
        # When a key was last used must never fail its answer.
        with contextlib.suppress(DBAPIError, DatabaseTimeout):
            await services.db.run_unsettled(keys.touch, key.id or 0)
    if record.attempts and record.connection_id and connections.touch_due(services.engine, record.connection_id):
        # Nor when a connection was (the call reached its upstream with it).
        with contextlib.suppress(DBAPIError, DatabaseTimeout):
            await services.db.run_unsettled(connections.touch, record.connection_id)


async def try_key(
    services: Services, endpoint: CompiledEndpoint, params: dict[str, Any], secret: str, extra: dict[str, Any] | None
) -> upstream.UpstreamResponse:
    """One call with a pasted key that is not stored yet (a spec's `auth.verify`): built and sent as
    every call is, and recorded nowhere."""
    unsaved = Connection(
        user_id=0, integration=endpoint.integration.name, access_token=services.box.encrypt(secret), extra=extra
    )
    return await _send(services, endpoint, params, unsaved, RunRecord.start())
