"""Build the upstream request from a spec and validated params, and send it.

The request is built structurally: each path param becomes one encoded segment
(or a declared number of them), the host and path shape come only from the
spec, and query, body and headers only carry what the spec declares.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit

import httpx
from yarl import URL

from gateway import jsoncodec
from gateway.errors import BadRequest, UpstreamResponseTooLarge, UpstreamTimeout, UpstreamUnreachable
from gateway.specs.params import CONTROL, PATH_FORBIDDEN
from gateway.specs.spec import CONNECTION_PLACEHOLDER, PLACEHOLDER, CompiledEndpoint
from gateway.upstream import client as upstream_client
from gateway.upstream.client import DEFAULT_PORTS, Origin, UpstreamClient

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

SEGMENT_SAFE = "-._~@:!$&'()*+,;="
PASSED_HEADERS = ("retry-after", "link")
PASSED_PREFIXES = ("x-ratelimit-", "ratelimit-")
# What a host may be once parsed: a DNS name or IPv4 literal, or an IPv6 literal (with a zone).
HOST = re.compile(r"[a-z0-9_.-]+|[0-9a-f:.]+(%[a-z0-9_.-]+)?")


@dataclasses.dataclass
class UpstreamRequest:
    """Where and what to send. The origin is parsed from the spec's base URL alone; params
    only ever add encoded path segments, query pairs, headers and body fields."""

    method: str
    origin: Origin
    path: str
    headers: dict[str, str]
    query: list[tuple[str, str]]
    json_body: Any = None
    form_body: dict[str, str] | None = None
    # Bytes sent as they are (a signed callback, a token request), with the headers' Content-Type.
    content: bytes | None = None
    # A query string sent exactly as given (the proxy's caller encoded it), instead of `query`.
    raw_query: str | None = None

    @property
    def url(self) -> URL:
        """The URL without its query, for reading (tests, messages); sending never parses it."""
        return URL(f"{self.origin.scheme}://{self.origin.netloc}{self.path}", encoded=True)

    @property
    def query_string(self) -> str:
        if self.raw_query is not None:
            return self.raw_query
        return "&".join(f"{_form_quote(k)}={_form_quote(v)}" for k, v in self.query)

    def encoded(self) -> tuple[dict[str, str], bytes | None]:
        """The headers and body bytes to send."""
        headers = self.headers
        content = self.content
        if self.json_body is not None:
            content = jsoncodec.dumps(self.json_body)
            media = "application/json"
        elif self.form_body is not None:
            content = urlencode(self.form_body, doseq=True).encode()
            media = "application/x-www-form-urlencoded"
        else:
            return headers, content
        if not any(name.lower() == "content-type" for name in headers):
            headers = {**headers, "Content-Type": media}
        return headers, content


@dataclasses.dataclass
class UpstreamResponse:
    status: int
    data: Any
    headers: dict[str, str]


# What urlencode's quote_plus leaves as it is; most names and many values are only that.
_FORM_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*")


def _form_quote(value: str) -> str:
    """urllib.parse.urlencode's encoding of one name or value, without its cost for plain text."""
    return value if _FORM_PLAIN.fullmatch(value) else quote_plus(value)


def _segment(value: str) -> str:
    return quote(value, safe=SEGMENT_SAFE)


def render_path(endpoint: CompiledEndpoint, params: dict[str, Any]) -> str:
    def substitute(match: re.Match[str]) -> str:
        value = params[match.group(1)]
        return "/".join(_segment(part) for part in (value if isinstance(value, str) else _scalar(value)).split("/"))

    return PLACEHOLDER.sub(substitute, endpoint.spec.path)


@functools.lru_cache(maxsize=4096)
def parse_base(url: str) -> tuple[Origin, str]:
    """A base URL's origin and path, parsed once per distinct URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadRequest("The integration's base URL is not valid.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        raise BadRequest("The integration's base URL must be an http(s) URL with a host and no credentials.")
    host = parts.hostname
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise BadRequest("The integration's base URL has a host name that cannot be encoded.") from None
    if not HOST.fullmatch(host):
        raise BadRequest("The integration's base URL has a malformed host.")
    origin = Origin(parts.scheme, host, port or DEFAULT_PORTS[parts.scheme])
    return origin, parts.path.rstrip("/")


def request_for_url(method: str, url: str, headers: dict[str, str]) -> UpstreamRequest:
    """A request to a whole URL (a spec's account or connection lookup)."""
    origin, _ = parse_base(url)
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    return UpstreamRequest(method=method, origin=origin, path=parts.path or "/", headers=headers, query=query)


def resolve_base_url(template: str, connection_extra: dict[str, Any] | None) -> str:
    if "{" not in template:
        return template
    extra = connection_extra or {}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        value = extra.get(name)
        if not isinstance(value, str) or not value:
            raise BadRequest(f"The connection has no '{name}'; reconnect the integration.")
        if match.start() == 0:
            # A whole origin from the token response (Salesforce's instance_url).
            try:
                origin = httpx.URL(value)
            except httpx.InvalidURL:
                raise BadRequest(f"The connection's '{name}' is not an https origin.") from None
            if origin.scheme != "https" or not origin.host or origin.userinfo or origin.query or origin.fragment:
                raise BadRequest(f"The connection's '{name}' is not an https origin.")
            return f"https://{origin.netloc.decode()}{origin.path.rstrip('/')}"
        if PATH_FORBIDDEN.search(value) or value in (".", ".."):
            raise BadRequest(f"The connection's '{name}' is not a valid path segment.")
        return _segment(value)

    return CONNECTION_PLACEHOLDER.sub(substitute, template)


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
    origin, base_path = parse_base(resolve_base_url(base_url, connection_extra))
    path = base_path + render_path(endpoint, params)

    # The spec's own headers were checked when it was loaded, and header params by params.validate.
    headers = dict(endpoint.headers)
    query: list[tuple[str, str]] = list(spec.query.items())
    body: dict[str, Any] = {}
    for name, upstream_name, location, explode in endpoint.routes:
        if name not in params:
            continue
        value = params[name]
        if location == "query":
            query.extend(_query_values(upstream_name, value, explode))
        elif location == "header":
            headers[upstream_name] = _scalar(value)
        else:
            body[upstream_name] = value
    for key, value in (auth_headers or {}).items():
        if CONTROL.search(key) or CONTROL.search(value):
            raise BadRequest(f"Header '{key}' holds control characters.")
        headers[key] = value
    query.extend(auth_query or [])

    request = UpstreamRequest(method=spec.method, origin=origin, path=path, headers=headers, query=query)
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
    """A value as a path segment, query value, header or form field takes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return plain_number(value)
    return str(value)


def plain_number(value: float) -> str:
    """Digits, never an exponent ('1e+300' is no number to an API reading a query or a path);
    a whole number without '.0', so 5.0 for an integer param is sent as 5."""
    if value == 0:
        return "0"
    number = Decimal(repr(value))
    return format(number.to_integral_value() if value.is_integer() else number, "f")


def _query_values(name: str, value: Any, explode: bool) -> list[tuple[str, str]]:
    if isinstance(value, list):
        if explode:
            return [(name, _scalar(v)) for v in value]
        return [(name, ",".join(_scalar(v) for v in value))]
    if isinstance(value, dict):
        return [(name, json.dumps(value, separators=(",", ":")))]
    return [(name, _scalar(value))]


def passed_headers(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The rate-limit and pagination headers, lower-cased; a repeated one's values joined with ", "."""
    passed: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        if key in PASSED_HEADERS or key.startswith(PASSED_PREFIXES):
            passed[key] = f"{passed[key]}, {value}" if key in passed else value
    return passed


async def send(client: UpstreamClient, request: UpstreamRequest, max_bytes: int) -> UpstreamResponse:
    try:
        response = await client.send(request, max_bytes)
    except upstream_client.TooLarge:
        raise UpstreamResponseTooLarge(
            f"The upstream response exceeded the {max_bytes}-byte limit.", details={"limit_bytes": max_bytes}
        ) from None
    except upstream_client.Timeout as exc:
        raise UpstreamTimeout(f"{exc}.") from None
    except upstream_client.OutboundError as exc:
        raise UpstreamUnreachable(f"{exc}.") from None
    return UpstreamResponse(
        status=response.status,
        data=decode_body(response.content, response.headers.get("content-type", "")),
        headers=passed_headers(response.headers),
    )


def decode_body(content: bytes, content_type: str) -> Any:
    if not content:
        return None
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        try:
            return jsoncodec.loads(content)
        except ValueError:
            pass
    return content.decode("utf-8", errors="replace")


MESSAGE_LIMIT = 300
# Where providers put a human-readable reason in an error body, most specific first: OAuth's
# error_description, GitHub's and Notion's message, Stripe's, OpenAI's, Google's and Graph's
# error.message, Slack's error, Dropbox's error_summary, Asana's and GraphQL's errors[0].message,
# Jira's errorMessages[0].
MESSAGE_FIELDS = ("error_description", "message", "error", "error_summary", "errors", "errorMessages", "detail")


def error_message(data: Any, secret: str | None = None) -> str | None:
    """A short reason from an upstream's error body, or None. Never the secret that was sent: some
    providers echo a wrong key back in their message."""
    found = _message_in(data, depth=0)
    if found is None:
        return None
    text = " ".join(CONTROL.sub(" ", found).split())
    if secret and len(secret) >= 4:
        text = text.replace(secret, "[redacted]")
    if len(text) > MESSAGE_LIMIT:
        text = text[: MESSAGE_LIMIT - 1] + "…"
    return text or None


def _message_in(data: Any, depth: int) -> str | None:
    if depth > 2:
        return None
    if isinstance(data, str):
        # A text body is a message when it is short prose, not an HTML error page.
        stripped = data.strip()
        return stripped if stripped and len(stripped) <= 1000 and not stripped.startswith("<") else None
    if isinstance(data, list):
        return _message_in(data[0], depth + 1) if data else None
    if not isinstance(data, dict):
        return None
    for name in MESSAGE_FIELDS:
        value = data.get(name)
        if isinstance(value, (dict, list)):
            value = _message_in(value, depth + 1)
        if isinstance(value, str) and value.strip():
            return value
    return None
