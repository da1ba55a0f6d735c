"""Build the upstream request from a spec and validated params, and send it.

The request is built structurally: each path param becomes one encoded segment
(or a declared number of them), the host and path shape come only from the
spec, and query, body and headers only carry what the spec declares.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any
from urllib.parse import quote

import httpx

from .errors import BadRequest, UpstreamResponseTooLarge, UpstreamTimeout, UpstreamUnreachable
from .specs import CONNECTION_PLACEHOLDER, PLACEHOLDER, CompiledEndpoint

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Characters that are never accepted in a path param: they would re-shape the
# path or make its decoding ambiguous. '%' is refused so that '%2e%2e' cannot
# become '..' at a server that decodes twice.
PATH_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f/\\%?#]")
SEGMENT_SAFE = "-._~@:!$&'()*+,;="
PASSED_HEADERS = ("retry-after", "link")
PASSED_PREFIXES = ("x-ratelimit-", "ratelimit-")


@dataclasses.dataclass
class UpstreamRequest:
    method: str
    url: httpx.URL
    headers: dict[str, str]
    query: list[tuple[str, str]]
    json_body: Any = None
    form_body: dict[str, str] | None = None

    def to_httpx(self, client: httpx.AsyncClient) -> httpx.Request:
        kwargs: dict[str, Any] = {"headers": self.headers, "params": self.query}
        if self.json_body is not None:
            kwargs["json"] = self.json_body
        elif self.form_body is not None:
            kwargs["data"] = self.form_body
        return client.build_request(self.method, self.url, **kwargs)


@dataclasses.dataclass
class UpstreamResponse:
    status: int
    data: Any
    headers: dict[str, str]


def validate_params(endpoint: CompiledEndpoint, params: Any) -> dict[str, Any]:
    """Every problem at once, per field, or the params with defaults applied."""
    if not isinstance(params, dict):
        raise BadRequest(
            "'params' must be a JSON object.", details=[{"field": "params", "message": "must be an object"}]
        )
    problems: list[dict[str, str]] = []
    for error in endpoint.validator.iter_errors(params):
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else ""
            problems.append({"field": missing, "message": "is required"})
        elif error.validator == "additionalProperties":
            for extra in sorted(set(params) - set(endpoint.spec.params)):
                problems.append({"field": extra, "message": "is not a param of this endpoint"})
        else:
            field = ".".join(str(p) for p in error.absolute_path) or "params"
            problems.append({"field": field, "message": error.message})
    for name, param in endpoint.spec.params.items():
        if name in params and param.location == "path":
            problems.extend(_path_value_problems(endpoint, name, params[name]))
        elif name in params and param.location == "header" and CONTROL.search(str(params[name])):
            problems.append({"field": name, "message": "must not contain control characters"})
    if problems:
        unique = list({(p["field"], p["message"]): p for p in problems}.values())
        raise BadRequest(
            f"The params do not match {endpoint.integration.name}/{endpoint.name}.",
            details=sorted(unique, key=lambda p: p["field"]),
        )
    resolved = dict(params)
    for name, param in endpoint.spec.params.items():
        if name not in resolved and param.default is not None:
            resolved[name] = param.default
    return resolved


def _path_value_problems(endpoint: CompiledEndpoint, name: str, value: Any) -> list[dict[str, str]]:
    param = endpoint.spec.params[name]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return []  # the type error is already reported by the schema
    text = str(value)
    parts = text.split("/") if param.multi_segment else [text]
    if param.max_segments is not None and not param.segments <= len(parts) <= param.max_segments:
        return [
            {"field": name, "message": f"must be {param.segments} to {param.max_segments} segments separated by '/'"}
        ]
    if param.max_segments is None and len(parts) != param.segments:
        return [{"field": name, "message": f"must be {param.segments} segments separated by '/'"}]
    pattern = endpoint.segment_patterns.get(name)
    for part in parts:
        if part in ("", ".", ".."):
            return [{"field": name, "message": "must not be empty, '.' or '..'"}]
        if PATH_FORBIDDEN.search(part):
            return [{"field": name, "message": "must not contain '/', '\\', '%', '?', '#' or control characters"}]
        if pattern is not None and not pattern.search(part):
            return [{"field": name, "message": f"does not match {pattern.pattern}"}]
    return []


def _segment(value: str) -> str:
    return quote(value, safe=SEGMENT_SAFE)


def render_path(endpoint: CompiledEndpoint, params: dict[str, Any]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        return "/".join(_segment(part) for part in str(params[name]).split("/"))

    return PLACEHOLDER.sub(substitute, endpoint.spec.path)


def resolve_base_url(template: str, connection_extra: dict[str, Any] | None) -> httpx.URL:
    extra = connection_extra or {}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        value = extra.get(name)
        if not isinstance(value, str) or not value:
            raise BadRequest(f"The connection has no '{name}'; reconnect the integration.")
        if match.start() == 0:
            # A whole origin from the token response (Salesforce's instance_url).
            origin = httpx.URL(value)
            if origin.scheme != "https" or not origin.host or origin.userinfo or origin.query or origin.fragment:
                raise BadRequest(f"The connection's '{name}' is not an https origin.")
            return f"https://{origin.netloc.decode()}{origin.path.rstrip('/')}"
        if PATH_FORBIDDEN.search(value) or value in (".", ".."):
            raise BadRequest(f"The connection's '{name}' is not a valid path segment.")
        return _segment(value)

    return httpx.URL(CONNECTION_PLACEHOLDER.sub(substitute, template))


def build_request(
    endpoint: CompiledEndpoint,
    params: dict[str, Any],
    *,
    base_url: str,
    auth_headers: dict[str, str] | None = None,
    auth_query: list[tuple[str, str]] | None = None,
    connection_extra: dict[str, Any] | None = None,
) -> UpstreamRequest:
    spec = endpoint.spec
    base = resolve_base_url(base_url, connection_extra)
    path = base.raw_path.decode().split("?")[0].rstrip("/") + render_path(endpoint, params)
    url = base.copy_with(raw_path=path.encode("ascii"), query=None, fragment=None)
    if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
        raise BadRequest("The request would leave the integration's host.")

    headers = {**endpoint.integration.spec.headers, **spec.headers}
    query: list[tuple[str, str]] = list(spec.query.items())
    body: dict[str, Any] = {}
    for name, param in spec.params.items():
        if name not in params:
            continue
        value = params[name]
        upstream_name = param.name or name
        if param.location == "query":
            query.extend(_query_values(upstream_name, value, param.explode))
        elif param.location == "header":
            headers[upstream_name] = _scalar(value)
        elif param.location == "body":
            body[upstream_name] = value
    headers.update(auth_headers or {})
    query.extend(auth_query or [])
    for key, value in headers.items():
        if CONTROL.search(key) or CONTROL.search(value):
            raise BadRequest(f"Header '{key}' holds control characters.")

    request = UpstreamRequest(method=spec.method, url=url, headers=headers, query=query)
    if spec.graphql is not None:
        request.json_body = {"query": spec.graphql.query, "variables": body}
    elif spec.method in ("POST", "PUT", "PATCH", "DELETE") and (body or spec.method != "DELETE"):
        if spec.body_type == "form":
            request.form_body = {
                k: _scalar(v) if not isinstance(v, (list, dict)) else json.dumps(v) for k, v in body.items()
            }
        else:
            request.json_body = body
    return request


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _query_values(name: str, value: Any, explode: bool) -> list[tuple[str, str]]:
    if isinstance(value, list):
        if explode:
            return [(name, _scalar(v)) for v in value]
        return [(name, ",".join(_scalar(v) for v in value))]
    if isinstance(value, dict):
        return [(name, json.dumps(value, separators=(",", ":")))]
    return [(name, _scalar(value))]


def passed_headers(headers: httpx.Headers) -> dict[str, str]:
    return {key: value for key, value in headers.items() if key in PASSED_HEADERS or key.startswith(PASSED_PREFIXES)}


async def send(client: httpx.AsyncClient, request: UpstreamRequest, max_bytes: int) -> UpstreamResponse:
    try:
        response = await client.send(request.to_httpx(client), stream=True)
    except httpx.TimeoutException:
        raise UpstreamTimeout(f"{request.url.host} did not answer in time.") from None
    except httpx.HTTPError as exc:
        raise UpstreamUnreachable(f"{request.url.host} could not be reached ({type(exc).__name__}).") from None
    try:
        chunks: list[bytes] = []
        size = 0
        # aiter_bytes yields decompressed bytes: the cap counts what we would hold.
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise UpstreamResponseTooLarge(
                    f"The upstream response exceeded the {max_bytes}-byte limit.",
                    details={"limit_bytes": max_bytes},
                )
            chunks.append(chunk)
    except httpx.TimeoutException:
        raise UpstreamTimeout(f"{request.url.host} did not finish its answer in time.") from None
    except httpx.HTTPError as exc:
        raise UpstreamUnreachable(f"{request.url.host} broke off its answer ({type(exc).__name__}).") from None
    finally:
        await response.aclose()
    content = b"".join(chunks)
    return UpstreamResponse(
        status=response.status_code,
        data=decode_body(content, response.headers.get("content-type", "")),
        headers=passed_headers(response.headers),
    )


def decode_body(content: bytes, content_type: str) -> Any:
    if not content:
        return None
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            return json.loads(content)
        except ValueError:
            pass
    return content.decode("utf-8", errors="replace")
