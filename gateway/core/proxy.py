"""The passthrough proxy: any path of an integration's API, with the connection's credentials.

`{GET,POST,PUT,PATCH,DELETE} /v1/{integration}/proxy/{path}` forwards to the integration's base
URL plus `path`, with the caller's query string and body as they are and the credentials added
exactly as for a spec endpoint. What may go:

- **Where**: the base URL's scheme, host and port; the path stays under the base path. A path with
  a dot segment, an empty segment (`//`), an encoded slash, backslash or dot, a `@`, a backslash or a
  control character is refused before anything is sent, and so is a path under one of the spec's
  `proxy.refused_paths`.
- **Caller headers** pass through, except `REFUSED_HEADERS` (hop-by-hop and framing headers, the
  caller's credentials, cookies, `Host`, `Proxy-*`, the gateway's own `X-Gateway-*`, `X-End-User-Id`
  and `X-Connection-Id`) and any header the spec's auth sets.
- **The answer** is the upstream's own: status, headers (but `DROPPED_ANSWER_HEADERS`) and body,
  streamed. `Link` URLs under the base URL are rewritten to the proxy's, so a client that follows
  them comes back through the gateway instead of calling the provider with its gateway key.

Every proxied request is counted against the daily limits, refreshed and retried once on 401 (its
body is held, bounded by the request size limit, for that), and recorded as a run whose endpoint is
`METHOD /path` (never the query, the body or a credential).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
from sqlalchemy.exc import DBAPIError

from gateway.core import execute, limits, links
from gateway.core.callers import Acting
from gateway.core.runtime import Services
from gateway.core.tokens import is_expired
from gateway.errors import (
    BadRequest,
    GatewayError,
    NotFound,
    ScopeNotAllowed,
    ServiceUnavailable,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.specs.spec import Integration, OAuth2Auth
from gateway.storage import runs
from gateway.storage.models import ApiKey, Connection
from gateway.storage.runs import RunRecord
from gateway.upstream import client as upstream_client
from gateway.upstream.build import UpstreamRequest, parse_base, resolve_base_url
from gateway.upstream.client import CHUNK

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# Request headers a caller may not pass on: hop-by-hop and framing headers (the client sets its
# own), the caller's credentials and cookies for the gateway, and the gateway's own controls.
REFUSED_HEADERS = frozenset(
    {
        "authorization",
        "cookie",
        "host",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
        "x-end-user-id",
        "x-connection-id",
        "x-request-id",
        "accept-encoding",
    }
)
REFUSED_PREFIXES = ("proxy-", "x-gateway-", "x-forwarded-", "forwarded")
# Answer headers not passed back: framing (the gateway frames its own answer; the body arrives
# decoded), cookies the provider sets for itself, and hop-by-hop headers.
DROPPED_ANSWER_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "set-cookie",
        "proxy-authenticate",
        "trailer",
        "upgrade",
        "server",
        "date",
    }
)
FORBIDDEN_IN_QUERY = re.compile(r"[\x00-\x20\x7f]")
FORBIDDEN_IN_PATH = re.compile(r"[\x00-\x20\x7f\\@]|%(?:2[fF]|5[cC]|2[eE]|00|40)")


def target_path(integration: Integration, base_path: str, raw: str) -> str:
    """The upstream path for the part of the address after `/proxy`, as the caller encoded it, or a
    400 before anything is sent."""
    if not raw.startswith("/") or len(raw) > 4096:
        raise BadRequest("The proxied path must start with '/' and be at most 4096 characters.")
    if FORBIDDEN_IN_PATH.search(raw):
        raise BadRequest(
            "The proxied path holds an encoded slash, backslash or dot, a '@', a space or a control character."
        )
    if FORBIDDEN_IN_QUERY.search(unquote(raw)):
        raise BadRequest("The proxied path holds a space or a control character.")
    segments = raw[1:].split("/")
    if any(s in ("", ".", "..") for s in segments[:-1]) or segments[-1] in (".", ".."):
        raise BadRequest("The proxied path may not hold empty, '.' or '..' segments.")
    decoded = unquote(raw)
    for prefix in integration.spec.proxy.refused_paths:
        if decoded == prefix or decoded.startswith(prefix.rstrip("/") + "/"):
            raise NotFound(f"{integration.display_name}'s spec does not let the proxy reach {prefix}.")
    return base_path.rstrip("/") + raw


def caller_headers(headers: list[tuple[str, str]], auth_headers: dict[str, str]) -> dict[str, str]:
    """The caller's headers that go upstream: none the gateway or the spec's auth sets."""
    refused = REFUSED_HEADERS | {name.lower() for name in auth_headers}
    passed: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key in refused or key.startswith(REFUSED_PREFIXES):
            continue
        passed[name] = f"{passed[name]}, {value}" if name in passed else value
    return passed


def request_for(
    services: Services,
    integration: Integration,
    *,
    method: str,
    raw_path: str,
    query_string: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
    auth_headers: dict[str, str],
    auth_query: list[tuple[str, str]],
    connection_extra: dict[str, Any] | None,
) -> UpstreamRequest:
    origin, base_path = parse_base(base_url(services, integration, connection_extra))
    path = target_path(integration, base_path, raw_path)
    if FORBIDDEN_IN_QUERY.search(query_string):
        raise BadRequest("The query string holds a space or a control character.")
    # The spec's headers are defaults: a caller's own Accept (a raw media type, say) wins. Names
    # compare without case, so no header goes twice.
    passed = caller_headers(headers, auth_headers)
    given = {name.lower() for name in passed}
    defaults = {k: v for k, v in integration.spec.headers.items() if k.lower() not in given}
    sent = {**defaults, **passed, **auth_headers}
    # The caller's query as it came (re-encoding could change what the provider reads), then the
    # credential's own pairs (a query-placed API key).
    pairs = [p for p in query_string.split("&") if p]
    pairs += [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in auth_query]
    return UpstreamRequest(
        method=method,
        origin=origin,
        path=path,
        headers=sent,
        query=[],
        content=body or None,
        raw_query="&".join(pairs),
    )


def base_url(services: Services, integration: Integration, connection_extra: dict[str, Any] | None) -> str:
    template = services.settings.overrides(integration.name).base_url or integration.spec.base_url
    return resolve_base_url(template, connection_extra)


def answer_headers(upstream: Any, base_url: str, proxy_url: str) -> list[tuple[str, str]]:
    """The upstream's answer headers for the caller: framing and cookies dropped, `Link` URLs under
    the base URL pointed at the proxy."""
    passed = []
    for name, value in upstream.items():
        key = name.lower()
        if key in DROPPED_ANSWER_HEADERS:
            continue
        if key == "link":
            value = value.replace(base_url.rstrip("/") + "/", proxy_url.rstrip("/") + "/")
        passed.append((name, value))
    return passed


@dataclasses.dataclass
class Forwarded:
    """The upstream's answer, its body not read yet: `body()` streams it (at most `cap` bytes) and,
    whatever happens, closes the upstream request and records the run."""

    status: int
    headers: list[tuple[str, str]]
    body: Callable[[], AsyncIterator[bytes]]


async def forward(
    services: Services,
    key: ApiKey,
    acting: Acting,
    integration: Integration,
    *,
    method: str,
    raw_path: str,
    query_string: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
) -> Forwarded:
    """Counts, authenticates and sends one proxied request; raises GatewayError (with X-Gateway-Error
    and X-Run-Id) for what the gateway itself answers."""
    label = f"{method} {unquote(raw_path)}"[:100]
    record = RunRecord.for_call(key, integration.name, label, acting.end_user_id, acting.connection_id)
    record.end_user_key = acting.end_user.id if acting.end_user is not None else None
    cap = services.settings.proxy_max_response_bytes
    stack = contextlib.AsyncExitStack()
    usage: limits.Usage | None = None
    try:
        if key.require_approval and method != "GET":
            raise ScopeNotAllowed(
                "This API key needs approval for writes, which the proxy cannot hold yet: use a spec endpoint.",
                action_url=links.api_key(services.settings, key.id or 0),
            )
        plan = await services.plans.of(services.db, key.user_id)
        usage = await limits.reserve(services.batcher, services.settings, key, plan, end_user_id=record.end_user_key)
        connection = await execute.load_connection(services, key, integration, record)
        oauth = isinstance(integration.spec.auth, OAuth2Auth)
        if oauth and is_expired(connection) and connection.refresh_token:
            connection = await services.tokens.refresh(integration, connection)
            record.refreshed = True
        send = functools.partial(
            _open, services, stack, integration, record, method, raw_path, query_string, headers, body
        )
        response = await send(connection)
        if response.status == 401 and oauth and not record.refreshed:
            # Once: a refreshed token the provider still refuses is the provider's answer to pass on.
            await stack.aclose()
            stack = contextlib.AsyncExitStack()
            connection = await services.tokens.refresh(integration, connection)
            record.refreshed = True
            response = await send(connection)
        declared = response.content_length
        if declared is not None and declared > cap:
            raise UpstreamResponseTooLarge(
                f"The upstream declared {declared} bytes, past the proxy's {cap}-byte limit.",
                details={"limit_bytes": cap},
            )
    except DBAPIError:
        await stack.aclose()
        raise ServiceUnavailable(
            "The gateway's database is unreachable; nothing was sent. Retry shortly.",
            headers={"Retry-After": "5", "X-Gateway-Error": ServiceUnavailable.code},
        ) from None
    except GatewayError as exc:
        await stack.aclose()
        if usage is not None and record.attempts == 0:
            limits.refund(services.batcher, usage)  # turned away before the upstream saw it
        record.error_code, record.error_message = exc.code, exc.message[:500]
        record.finish("failed", exc.status)
        _record(services, record)
        exc.headers.setdefault("X-Run-Id", record.id)
        exc.headers["X-Gateway-Error"] = exc.code
        raise
    except BaseException:
        await stack.aclose()
        raise
    record.upstream_status = response.status
    shown = answer_headers(
        response.headers, base_url(services, integration, connection.extra), _proxy_url(services, integration)
    )
    shown.append(("X-Run-Id", record.id))
    if usage is not None:
        # The upstream's own X-RateLimit-* are what its SDKs read: the gateway's limits go beside them.
        shown += [(f"X-Gateway-{name[2:]}", value) for name, value in usage.headers().items()]

    async def stream() -> AsyncIterator[bytes]:
        sent = 0
        try:
            async for chunk in response.content.iter_chunked(CHUNK):
                sent += len(chunk)
                if sent > cap:
                    record.error_code = UpstreamResponseTooLarge.code
                    record.error_message = f"cut off past the proxy's {cap}-byte limit"
                    raise ProxyBodyCut(record.error_message)
                yield chunk
            record.finish("completed" if response.status < 400 else "failed", response.status)
        except (GeneratorExit, asyncio.CancelledError):
            # The caller went away mid-answer: nothing of the upstream's is to blame.
            record.error_code, record.error_message = "client_disconnected", "the caller closed the connection"
            record.finish("failed", 499)
            raise
        except BaseException as exc:
            if record.error_code is None:
                record.error_code, record.error_message = "upstream_unreachable", type(exc).__name__
            record.finish("failed", 502)
            raise
        finally:
            await stack.aclose()
            _record(services, record)

    return Forwarded(status=response.status, headers=shown, body=stream)


class ProxyBodyCut(Exception):
    """The answer grew past the cap after its head was sent: the connection is cut, not completed."""


async def _open(
    services: Services,
    stack: contextlib.AsyncExitStack,
    integration: Integration,
    record: RunRecord,
    method: str,
    raw_path: str,
    query_string: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
    connection: Connection,
) -> aiohttp.ClientResponse:
    auth_headers, auth_query = execute.auth_parts(services, integration, connection)
    request = request_for(
        services,
        integration,
        method=method,
        raw_path=raw_path,
        query_string=query_string,
        headers=headers,
        body=body,
        auth_headers=auth_headers,
        auth_query=auth_query,
        connection_extra=connection.extra,
    )
    execute.refuse_plain_http(services, request)
    record.attempts += 1
    try:
        return await stack.enter_async_context(services.upstream.stream(request))  # type: ignore[attr-defined]
    except upstream_client.Timeout as exc:
        raise UpstreamTimeout(f"{exc}.") from None
    except upstream_client.OutboundError as exc:
        raise UpstreamUnreachable(f"{exc}.") from None


def _proxy_url(services: Services, integration: Integration) -> str:
    return services.settings.action_url(f"/v1/{integration.name}/proxy")


def _record(services: Services, record: RunRecord) -> None:
    services.metrics.count_call(record.integration, "proxy", record.error_code or "ok")
    runs.save_direct(services.batcher, services.box, record, None)
