"""The MCP server at /mcp: the key's endpoints as tools, and tools to find, connect and wait for integrations.

Built on the SDK's low-level `Server` behind a stateless streamable-HTTP
manager. Every HTTP request is authenticated on its own with its API key, so a
key revoked mid-conversation stops working at its next request, the tool list
is the key's own, and any gateway process can answer any request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import metadata
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import mcp_types as types
from jsonschema import Draft202012Validator
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.agents.results import call_result, error_result, tool_result
from gateway.core import callers, connect_sessions, limits, links, proxy, tools, waitpoints
from gateway.core.callers import OWNER, Acting, api_key
from gateway.core.connect import not_set_up
from gateway.core.runtime import Services
from gateway.core.submit import Submission, submit
from gateway.errors import BadRequest, GatewayError, NotFound, ServiceUnavailable, UpstreamResponseTooLarge
from gateway.settings import Settings
from gateway.specs.registry import Registry
from gateway.specs.spec import CompiledEndpoint, Integration
from gateway.storage import connections, keys
from gateway.storage.models import ApiKey, Connection, utcnow
from gateway.upstream.build import decode_body

WAIT_DEFAULT = 60
WAIT_MAX = 300
# Progress notifications while waiting keep the stream busy and reset clients' request timeouts.
PROGRESS_EVERY = 5.0
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")

INSTRUCTIONS = """\
Tools named <integration>_<endpoint> call the APIs this person connected, through their API key.
Call list_integrations to see what is connected, and search_tools to find a tool by words.
A failed call returns isError with lines 'error:', 'message:' and often 'action_url:': show the
person the action_url (to connect or reconnect an integration), call wait_for_connection, then retry."""

INTEGRATION_ARG = {"type": "string", "minLength": 1, "description": "The integration's name, for example github."}


def _meta_tool(
    name: str,
    title: str,
    description: str,
    properties: dict[str, Any],
    required: list[str],
    read_only: bool = True,
) -> types.Tool:
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    hints = types.ToolAnnotations(
        title=title, read_only_hint=read_only, idempotent_hint=read_only, open_world_hint=not read_only
    )
    return types.Tool(name=name, description=description, input_schema=schema, annotations=hints)


META_TOOLS = {
    tool.name: tool
    for tool in (
        _meta_tool(
            "list_integrations",
            "List integrations",
            "List the integrations this API key may use, with the person's connection status for each: "
            "not_connected, connected (with the account and scopes) or needs_reconnect. Start here.",
            {},
            [],
        ),
        _meta_tool(
            "connect_integration",
            "Connect an integration",
            "Get the link the person must open to connect (or reconnect) an integration. "
            "Show it to them, then call wait_for_connection.",
            {"integration": INTEGRATION_ARG},
            ["integration"],
        ),
        _meta_tool(
            "wait_for_connection",
            "Wait for a connection",
            f"Wait until the person connects an integration, up to timeout_seconds (default {WAIT_DEFAULT}, "
            f"at most {WAIT_MAX}). Only a connection made after this call starts counts, so call it right "
            "after showing the person the link; then retry the call that failed.",
            {
                "integration": INTEGRATION_ARG,
                "timeout_seconds": {"type": "number", "minimum": 1, "maximum": WAIT_MAX, "default": WAIT_DEFAULT},
            },
            ["integration"],
        ),
        _meta_tool(
            "search_tools",
            "Search tools",
            "Find tools by words over their names and descriptions, best match first (for example "
            "'create issue'). Returns each tool's name, description and input schema; call it by that name.",
            {
                "query": {"type": "string", "minLength": 1, "description": "Words describing what you want to do."},
                "integration": {**INTEGRATION_ARG, "description": "Only tools of this integration."},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 10},
            },
            ["query"],
        ),
        _meta_tool(
            "proxy_request",
            "Call any API path",
            "Call any path of an integration's API with the person's connection, when no tool covers it "
            "(for example GET /repos/{owner}/{repo}/pulls on github). Answers the provider's status, data "
            "and rate-limit and pagination headers. Prefer a tool when one exists: tools validate their params.",
            {
                "integration": INTEGRATION_ARG,
                "method": {"type": "string", "enum": list(proxy.METHODS), "default": "GET"},
                "path": {
                    "type": "string",
                    "pattern": "^/",
                    "maxLength": 2000,
                    "description": "The path under the API's base URL, starting with '/'.",
                },
                "query": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Query pairs."},
                "body": {"description": "A JSON body, sent as application/json."},
            },
            ["integration", "path"],
            read_only=False,
        ),
    )
}
META_VALIDATORS = {name: Draft202012Validator(tool.input_schema) for name, tool in META_TOOLS.items()}


# A tool call's options ride in its request's `_meta` under this prefix (docs/agents.md): its
# arguments are all the endpoint's params, and any name could be one.
META_PREFIX = "gateway/"
META_OPTIONS = frozenset(
    {"idempotency_key", *(field.alias or name for name, field in Submission.model_fields.items())} - {"params"}
)


def submission_of(settings: Settings, arguments: dict[str, Any], meta: dict[str, Any] | None) -> Submission:
    """A tool call as a submission: its arguments are the params, `_meta`'s `gateway/<option>` its options."""
    options = {name.removeprefix(META_PREFIX): v for name, v in (meta or {}).items() if name.startswith(META_PREFIX)}
    unknown = sorted(set(options) - META_OPTIONS)
    if unknown:
        raise BadRequest(
            f"The call's _meta has {META_PREFIX} keys a tool call does not take.",
            details=[{"field": f"_meta.{META_PREFIX}{name}", "message": "is not a known key"} for name in unknown],
        )
    key = options.pop("idempotency_key", None)
    body = {"params": arguments, **options}
    return Submission.of(body, settings, key, key_name=f"{META_PREFIX}idempotency_key")


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding check, allowing the public URL's host and loopback.

    A rebinding attack always carries the attacker's host name, so loopback
    names are safe to allow; they cover a proxy on the same machine that does
    not pass the public Host header on.
    """
    url = urlsplit(settings.public_url)
    host = url.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    names = dict.fromkeys((host, *LOOPBACK))
    hosts = [pattern for name in names for pattern in (name, f"{name}:*")]
    origins = [f"{url.scheme}://{host}", f"{url.scheme}://{host}:*"]
    origins += [f"{scheme}://{name}{port}" for name in LOOPBACK for scheme in ("http", "https") for port in ("", ":*")]
    return TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=list(dict.fromkeys(origins)))


@dataclasses.dataclass(frozen=True)
class Caller:
    services: Services
    key: ApiKey
    request_id: str | None
    # The end user this MCP client is bound to (X-End-User-Id, or ?end_user_id= on the /mcp URL):
    # its tools call with that end user's connections only.
    acting: Acting = OWNER

    @classmethod
    def of(cls, ctx: ServerRequestContext[Any, Any]) -> Caller:
        request = ctx.request
        if not isinstance(request, Request):
            raise RuntimeError("the MCP server only serves HTTP requests that came through McpEndpoint")
        state = request.state
        return cls(request.app.state.services, state.api_key, getattr(state, "request_id", None), state.acting)

    @property
    def end_user_key(self) -> int | None:
        return self.acting.end_user.id if self.acting.end_user is not None else None


MetaTool = Callable[[Caller, dict[str, Any], ServerRequestContext[Any, Any]], Awaitable[dict[str, Any]]]


class McpEndpoint:
    """The ASGI app at /mcp: authenticates each HTTP request's API key, then hands the request to the SDK."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.tools = tools.by_name(registry)
        self.server: Server[Any] = Server(
            "integration-gateway",
            version=_version(),
            instructions=INSTRUCTIONS,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            get_tool_input_schema=self._input_schema,
        )
        self.meta: dict[str, MetaTool] = {
            "list_integrations": self._list_integrations,
            "connect_integration": self._connect_integration,
            "wait_for_connection": self._wait_for_connection,
            "search_tools": self._search_tools,
            "proxy_request": self._proxy_request,
        }
        self.manager: StreamableHTTPSessionManager | None = None
        self.routes = [Route("/mcp", self)]

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        # A manager runs only once; a new one per lifespan lets the app start again.
        manager = StreamableHTTPSessionManager(
            app=self.server, stateless=True, security_settings=transport_security(self.settings)
        )
        async with manager.run():
            self.manager = manager
            try:
                yield
            finally:
                self.manager = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        # Raised before the SDK answers, so the app's handlers give the usual JSON error.
        services = request.app.state.services
        request.state.api_key = key = await api_key(services, request)
        named = request.headers.get(callers.END_USER_HEADER) or request.query_params.get("end_user_id")
        bound = {callers.END_USER_HEADER: named} if named is not None else {}
        connection_id = request.headers.get(callers.CONNECTION_HEADER)
        if connection_id is not None:
            bound[callers.CONNECTION_HEADER] = connection_id
        request.state.acting = await callers.acting(services, key, bound)
        if self.manager is None:
            raise ServiceUnavailable("The MCP server is not running.")
        await self.manager.handle_request(scope, receive, send)

    def _endpoints(self, caller: Caller, integration: str | None = None) -> list[CompiledEndpoint]:
        found = tools.allowed(caller.services.registry, caller.key, integration)
        return [e for e in found if self.tools.get(e.tool_name) is e and e.tool_name not in META_TOOLS]

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        if name in META_TOOLS:
            return META_TOOLS[name].input_schema
        endpoint = self.tools.get(name)
        return endpoint.params_schema if endpoint else None

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        endpoints = self._endpoints(Caller.of(ctx))
        listed = [types.Tool.model_validate(tools.mcp_tool(e)) for e in endpoints]
        return types.ListToolsResult(tools=[*META_TOOLS.values(), *listed])

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller = Caller.of(ctx)
        arguments = params.arguments or {}
        endpoint = self.tools.get(params.name)
        try:
            if params.name in self.meta:
                _validate(params.name, arguments)
                return tool_result(await self.meta[params.name](caller, arguments, ctx))
            if endpoint is None:
                raise NotFound(f"There is no tool named '{params.name}'. Call search_tools to find one.")
            submission = submission_of(caller.services.settings, arguments, params.meta)
            result = await submit(
                caller.services, caller.key, endpoint.integration.name, endpoint.name, submission, caller.acting
            )
        except GatewayError as exc:
            integration = endpoint.integration.name if endpoint else arguments.get("integration")
            return error_result(exc, caller.request_id, integration if isinstance(integration, str) else None)
        return call_result(endpoint, result)

    def _integration(self, caller: Caller, name: str) -> Integration:
        return tools.check_integration(caller.services, caller.key, name)

    def _connectable(self, caller: Caller, name: str) -> Integration:
        """An integration a person can connect: waiting for one nobody can connect would be in vain."""
        integration = self._integration(caller, name)
        unavailable = not_set_up(caller.services.settings, integration)
        if unavailable is not None:
            raise unavailable
        return integration

    async def _list_integrations(
        self, caller: Caller, arguments: dict[str, Any], ctx: ServerRequestContext[Any, Any]
    ) -> dict[str, Any]:
        services = caller.services
        mine = await services.db.run_unsettled(connections.list_for, caller.key.user_id, caller.end_user_key)
        listed = []
        for integration in services.registry:
            if not keys.allows(caller.key, integration.name):
                continue
            held = connections.choose([c for c in mine if c.integration == integration.name])
            described = connection_view(services.settings, integration, held)
            if "action_url" in described and caller.acting.end_user is not None and held is None:
                described["action_url"] = await self._end_user_link(caller, integration)
            listed.append(described)
        return {"integrations": listed}

    async def _end_user_link(self, caller: Caller, integration: Integration) -> str:
        assert caller.acting.end_user is not None
        return await connect_sessions.link_for(caller.services, caller.key, caller.acting.end_user, integration.name)

    async def _connect_integration(
        self, caller: Caller, arguments: dict[str, Any], ctx: ServerRequestContext[Any, Any]
    ) -> dict[str, Any]:
        services, integration = caller.services, self._connectable(caller, arguments["integration"])
        connection = await self._connection(caller, integration)
        described = connection_view(services.settings, integration, connection)
        if caller.acting.end_user is not None:
            # The end user's own connect page; the owner's plan limit counts the owner's connections.
            described["action_url"] = await self._end_user_link(caller, integration)
        else:
            # One more connection than the plan allows is refused here too, not only in the dashboard.
            plan = await services.plans.of(services.db, caller.key.user_id)
            await services.db.run(
                limits.ensure_can_connect, services.settings, plan, caller.key.user_id, integration.name
            )
            described["action_url"] = links.integration(
                services.settings, integration.name, reconnect=connection is not None
            )
        described["next_step"] = (
            f"Ask the person to open action_url to connect {integration.display_name}, then call "
            f"wait_for_connection with {json.dumps({'integration': integration.name})}."
        )
        return described

    async def _wait_for_connection(
        self, caller: Caller, arguments: dict[str, Any], ctx: ServerRequestContext[Any, Any]
    ) -> dict[str, Any]:
        services, integration = caller.services, self._connectable(caller, arguments["integration"])
        timeout = float(arguments.get("timeout_seconds", WAIT_DEFAULT))
        message = f"Waiting for the person to connect {integration.display_name}"
        user_id, since = caller.key.user_id, utcnow()
        started = time.monotonic()
        # Waits in steps, with a progress notification between them; `since` keeps one start for all.
        while (left := timeout - (time.monotonic() - started)) > 0:
            step = min(PROGRESS_EVERY, left)
            if await waitpoints.wait_for_connection(
                services.db, user_id, integration.name, step, since=since, end_user=caller.acting.end_user
            ):
                return {
                    "completed": True,
                    **connection_view(services.settings, integration, await self._connection(caller, integration)),
                }
            await ctx.session.report_progress(time.monotonic() - started, timeout, message)
        current = await self._connection(caller, integration)
        waited = {
            "completed": False,
            "waited_seconds": timeout,
            **connection_view(services.settings, integration, current),
        }
        if current is not None and current.status == "connected":
            waited["next_step"] = "It was already connected before the wait started; retry the call."
        else:
            waited["next_step"] = "Ask the person to open action_url, then call wait_for_connection again."
        return waited

    async def _connection(self, caller: Caller, integration: Integration) -> Connection | None:
        return await caller.services.db.run_unsettled(
            connections.get, caller.key.user_id, integration.name, caller.end_user_key
        )

    async def _proxy_request(
        self, caller: Caller, arguments: dict[str, Any], ctx: ServerRequestContext[Any, Any]
    ) -> dict[str, Any]:
        """The passthrough proxy for an agent: the answer read whole (within the call's cap) and decoded."""
        services = caller.services
        integration = self._integration(caller, arguments["integration"])
        body = arguments.get("body")
        headers = [("Content-Type", "application/json")] if body is not None else []
        forwarded = await proxy.forward(
            services,
            caller.key,
            caller.acting,
            integration,
            method=arguments.get("method", "GET"),
            raw_path=quote(arguments["path"], safe="/-._~!$&'()*+,;=:"),
            query_string=urlencode(arguments.get("query") or {}),
            headers=headers,
            body=json.dumps(body).encode() if body is not None else None,
        )
        cap = services.settings.upstream_max_response_bytes
        chunks, size = [], 0
        stream = forwarded.body()
        try:
            async for chunk in stream:
                size += len(chunk)
                if size > cap:
                    raise UpstreamResponseTooLarge(
                        f"The answer is past the {cap}-byte limit of a tool's result: narrow the request.",
                        details={"limit_bytes": cap},
                    )
                chunks.append(chunk)
        finally:
            await stream.aclose()
        shown = {name.lower(): value for name, value in forwarded.headers}
        content = b"".join(chunks)
        return {
            "status": forwarded.status,
            "data": decode_body(content, shown.get("content-type", "")),
            "headers": {
                k: v for k, v in shown.items() if k in ("content-type", "link", "retry-after") or "ratelimit" in k
            },
            "run_id": shown.get("x-run-id"),
        }

    async def _search_tools(
        self, caller: Caller, arguments: dict[str, Any], ctx: ServerRequestContext[Any, Any]
    ) -> dict[str, Any]:
        integration = arguments.get("integration")
        if integration is not None:
            self._integration(caller, integration)
        found = tools.search(self._endpoints(caller, integration), arguments["query"])
        return {"tools": [tools.mcp_tool(e) for e in found[: arguments.get("limit", 10)]], "total": len(found)}


def connection_view(settings: Settings, integration: Integration, connection: Connection | None) -> dict[str, Any]:
    """An integration and the person's connection to it, as list_integrations shows it."""
    status = connection.status if connection is not None else "not_connected"
    unavailable = not_set_up(settings, integration) if connection is None else None
    if unavailable is not None:
        status = "not_set_up"
    described: dict[str, Any] = {
        "integration": integration.name,
        "display_name": integration.display_name,
        "description": integration.spec.description,
        "status": status,
        "tool_count": len(integration.endpoints),
    }
    if connection is not None and status == "connected":
        described["account"] = connection.account
        described["scopes"] = [s for s in re.split(r"[\s,]+", connection.scopes or "") if s]
    elif unavailable is not None:
        described["action_url"] = unavailable.action_url
    else:
        described["action_url"] = links.integration(settings, integration.name, reconnect=connection is not None)
    return described


def _validate(name: str, arguments: dict[str, Any]) -> None:
    problems = [
        {"field": ".".join(str(p) for p in error.absolute_path) or "arguments", "message": error.message}
        for error in META_VALIDATORS[name].iter_errors(arguments)
    ]
    if problems:
        raise BadRequest(f"The arguments do not match {name}.", details=problems)


def _version() -> str:
    try:
        return metadata.version("integration-gateway")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return ""
