"""Integration specs: YAML files validated by a strict schema, compiled once.

A spec is data. Provider quirks are named fields here, never branches on a
provider's name elsewhere in the code.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from jsonschema.protocols import Validator
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME = r"^[a-z][a-z0-9-]{0,62}$"  # no "_": GATEWAY_<NAME>_* maps "_" back to "-"
ENDPOINT_NAME = r"^[a-z][a-z0-9_]{0,62}$"
# Names the /v1 routes use for themselves; no integration may take them.
RESERVED_NAMES = frozenset(
    {
        "integrations",
        "runs",
        "queues",
        "waitpoints",
        "tools",
        "approvals",
        "connections",
        "callbacks",
        "connect",
        "end_users",
    }
)
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# RFC 9110's token: what a header name may be made of.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers that frame the message or the connection: only the HTTP client sets them. One
# from a spec would sit next to the client's own (two Host or Content-Length headers on a
# connection that every caller shares: request smuggling).
FRAMING_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive"}
)


def check_header_name(name: str) -> str:
    if not HEADER_NAME.fullmatch(name):
        raise ValueError(f"'{name}' is not a valid header name")
    lowered = name.lower()
    if lowered in FRAMING_HEADERS or lowered.startswith("proxy-"):
        raise ValueError(f"the header '{name}' is set by the HTTP client; a spec may not set it")
    return name


def _check_header_names(headers: dict[str, str]) -> dict[str, str]:
    for name in headers:
        check_header_name(name)
    return headers


CONNECTION_PLACEHOLDER = re.compile(r"\{connection\.([A-Za-z_][A-Za-z0-9_]*)\}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AccountLookup(Strict):
    """How to find the connected account's display name after connecting."""

    path: str = Field(description="Endpoint path (relative to base_url) answering with the account.")
    field: str = Field(description="Dotted path of the display name in that response, e.g. 'login'.")
    method: Literal["GET", "POST"] = "GET"


class ConnectionLookup(Strict):
    """A value fetched once after connecting and kept on the connection (Atlassian's cloud id)."""

    url: str = Field(description="Absolute URL, or a path relative to base_url, answering with the value.")
    field: str = Field(description="Dotted path of the value; numeric parts index lists, e.g. '0.id'.")
    store_as: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Name usable as {connection.<name>}.")


class OAuth2Auth(Strict):
    type: Literal["oauth2"]
    authorize_url: str
    token_url: str
    revoke_url: str | None = None
    scopes: list[str] = []
    scope_separator: str = " "
    pkce: bool = True
    authorize_params: dict[str, str] = {}
    token_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_post"
    # Tokens that never expire and come with no refresh token (Notion).
    refreshable: bool = True
    # Token-response fields kept on the connection, usable as {connection.<name>} in base_url.
    token_response_fields: list[str] = []
    account: AccountLookup | None = None
    lookups: list[ConnectionLookup] = []
    # The cheap read that proves a connection still works (POST /v1/connections/{id}/check).
    verify: VerifyCall | None = None

    @field_validator("verify", mode="before")
    @classmethod
    def _endpoint_name(cls, value: Any) -> Any:
        return {"endpoint": value} if isinstance(value, str) else value


class VerifyCall(Strict):
    """The cheap read a pasted key must pass before it is stored, and that checks a connection:
    one of the spec's read-only endpoints."""

    endpoint: str
    params: dict[str, Any] = {}


class ApiKeyAuth(Strict):
    type: Literal["api_key"]
    placement: Literal["header", "query"] = "header"
    name: str = "Authorization"
    template: str = "Bearer {api_key}"
    label: str = "API key"
    help: str | None = None
    # `verify: list_models`, or `verify: {endpoint: get_model, params: {model: ...}}`; checked in compile_spec.
    verify: VerifyCall | None = None

    @field_validator("verify", mode="before")
    @classmethod
    def _endpoint_name(cls, value: Any) -> Any:
        return {"endpoint": value} if isinstance(value, str) else value

    @field_validator("template")
    @classmethod
    def _has_placeholder(cls, value: str) -> str:
        if "{api_key}" not in value:
            raise ValueError("template must contain {api_key}")
        return value

    @model_validator(mode="after")
    def _header_name(self) -> ApiKeyAuth:
        if self.placement == "header":
            check_header_name(self.name)
        return self


class Param(Strict):
    type: Literal["string", "integer", "number", "boolean", "array", "object"]
    location: Literal["path", "query", "body", "header"] = Field(alias="in")
    description: str
    required: bool = False
    # The name upstream, when it differs from the param's name (e.g. a header name).
    name: str | None = None
    enum: list[Any] | None = None
    default: Any = None
    example: Any = None
    pattern: str | None = None
    min_length: int | None = Field(default=None, alias="minLength")
    max_length: int | None = Field(default=None, alias="maxLength")
    minimum: float | None = None
    maximum: float | None = None
    # Only formats params.validate enforces (params.FORMATS).
    format: Literal["date", "date-time", "email"] | None = None
    items: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None
    # A path param spanning this many segments ('owner/name' is 2), each checked alone.
    segments: int = Field(default=1, ge=1, le=8)
    # A path param of a variable number of segments (a file path): from `segments` up to this.
    max_segments: int | None = Field(default=None, ge=2, le=64)
    # Query arrays: repeat the key (true) or join with commas (false).
    explode: bool = True

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check(self) -> Param:
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        if (self.segments > 1 or self.max_segments) and self.location != "path":
            raise ValueError("segments and max_segments only apply to path params")
        if self.max_segments is not None and self.max_segments < self.segments:
            raise ValueError("max_segments must be at least segments")
        if self.location == "path" and self.type not in ("string", "integer"):
            raise ValueError("path params must be string or integer")
        if self.location in ("header",) and self.type in ("array", "object"):
            raise ValueError("header params must be scalar")
        return self

    @property
    def multi_segment(self) -> bool:
        return self.segments > 1 or self.max_segments is not None

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": self.type, "description": self.description}
        for key in ("enum", "default", "pattern", "minimum", "maximum", "format", "items", "properties"):
            value = getattr(self, key)
            if value is not None:
                schema[key] = value
        if self.min_length is not None:
            schema["minLength"] = self.min_length
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        if self.multi_segment:
            # The pattern applies to each segment; the whole value is several of them.
            schema.pop("pattern", None)
            if self.max_segments:
                schema["description"] += f" ({self.segments} to {self.max_segments} segments separated by '/')"
            else:
                schema["description"] += f" ({self.segments} segments separated by '/')"
        if self.example is not None:
            schema["examples"] = [self.example]
        return schema


class Pagination(Strict):
    style: Literal["cursor", "link_header", "page", "offset", "token"]
    # The request param that selects the next page (cursor, page, offset or token).
    param: str | None = None
    # Dotted path in the response body holding the next cursor or token.
    next: str | None = None
    # The param that sets the page size.
    limit_param: str | None = None
    description: str | None = None


class ErrorWhen(Strict):
    """A 2xx body that still means failure (Slack's {"ok": false})."""

    field: str
    equals: Any
    message_field: str | None = None


class GraphQL(Strict):
    """One declared query per endpoint; body params become its variables."""

    query: str


class Endpoint(Strict):
    description: str = Field(min_length=10)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str
    params: dict[str, Param] = {}
    scopes: list[str] = []
    body_type: Literal["json", "form"] = "json"
    headers: dict[str, str] = {}
    query: dict[str, str] = {}
    read_only: bool | None = None
    destructive: bool = False
    idempotent: bool | None = None
    retry_safe: bool | None = None
    pagination: Pagination | None = None
    graphql: GraphQL | None = None
    error_when: ErrorWhen | None = None
    docs_url: str | None = None

    _headers = field_validator("headers")(_check_header_names)

    @field_validator("path")
    @classmethod
    def _path_shape(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("path must start with '/'")
        if "?" in value or "#" in value or "//" in value:
            raise ValueError("path must not contain '?', '#' or '//'")
        return value

    @model_validator(mode="after")
    def _params_match_path(self) -> Endpoint:
        in_path = PLACEHOLDER.findall(self.path)
        declared = {n for n, p in self.params.items() if p.location == "path"}
        if set(in_path) != declared:
            raise ValueError(f"path placeholders {sorted(in_path)} and path params {sorted(declared)} must match")
        for name in in_path:
            param = self.params[name]
            if not param.required:
                raise ValueError(f"path param '{name}' must be required")
            if param.multi_segment and f"/{{{name}}}" not in self.path:
                raise ValueError(f"multi-segment param '{name}' must fill whole path segments")
        for name, param in self.params.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ValueError(f"param name '{name}' must be an identifier")
            if param.location == "header":
                try:
                    check_header_name(param.name or name)
                except ValueError as exc:
                    raise ValueError(f"param '{name}': {exc}") from None
        if self.graphql and self.method != "POST":
            raise ValueError("graphql endpoints use POST")
        return self


class ProxySettings(Strict):
    """What the passthrough proxy (`/v1/{integration}/proxy/...`) may not reach under the base URL."""

    refused_paths: list[str] = []

    @field_validator("refused_paths")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if not path.startswith("/") or "//" in path or any(s in (".", "..") for s in path.split("/")):
                raise ValueError(f"'{path}' must be an absolute path with no empty, '.' or '..' segments")
        return value


class Spec(Strict):
    name: str = Field(pattern=NAME)
    display_name: str
    description: str
    docs_url: str
    reference: str = Field(description="Which published API reference and version this spec follows.")
    base_url: str
    headers: dict[str, str] = {}
    auth: OAuth2Auth | ApiKeyAuth = Field(discriminator="type")
    endpoints: dict[str, Endpoint]
    # Fields a person enters when connecting, stored on the connection (Atlassian site id).
    connection_fields: dict[str, str] = {}
    proxy: ProxySettings = ProxySettings()

    _headers = field_validator("headers")(_check_header_names)

    @field_validator("endpoints")
    @classmethod
    def _endpoint_names(cls, value: dict[str, Endpoint]) -> dict[str, Endpoint]:
        if not value:
            raise ValueError("a spec needs at least one endpoint")
        for name in value:
            if not re.match(ENDPOINT_NAME, name):
                raise ValueError(f"endpoint name '{name}' must match {ENDPOINT_NAME}")
            if name == "proxy":
                raise ValueError("the endpoint name 'proxy' is reserved for the passthrough proxy")
        return value

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_NAMES:
            raise ValueError(f"'{value}' is reserved for the gateway's own routes")
        return value

    @model_validator(mode="after")
    def _base_url(self) -> Spec:
        if not self.base_url.startswith(("https://", "http://")):
            raise ValueError("base_url must be an absolute http(s) URL")
        return self


class SpecError(Exception):
    """A spec file that does not validate; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class CompiledEndpoint:
    integration: Integration
    name: str
    spec: Endpoint
    params_schema: dict[str, Any]
    validator: Validator
    segment_patterns: Mapping[str, re.Pattern[str] | None]
    # params.compile_check: the fast yes for well-formed params.
    check: Callable[[Any], bool]
    defaults: Mapping[str, Any]
    # (name, location) of the path and header params, whose values get checks of their own.
    checked_locations: tuple[tuple[str, str], ...]
    # For building requests: the integration's and the endpoint's headers merged, and
    # (name, upstream name, location, explode) of every query, header and body param.
    headers: Mapping[str, str]
    routes: tuple[tuple[str, str, str, bool], ...]

    @property
    def method(self) -> str:
        return self.spec.method

    @property
    def read_only(self) -> bool:
        return self.spec.read_only if self.spec.read_only is not None else self.spec.method == "GET"

    @property
    def idempotent(self) -> bool:
        if self.spec.idempotent is not None:
            return self.spec.idempotent
        return self.spec.method in ("GET", "PUT", "DELETE")

    @property
    def retry_safe(self) -> bool:
        return self.spec.retry_safe if self.spec.retry_safe is not None else self.idempotent

    @property
    def tool_name(self) -> str:
        return f"{self.integration.name.replace('-', '_')}_{self.name}"

    def example_params(self) -> dict[str, Any]:
        example: dict[str, Any] = {}
        for name, param in self.spec.params.items():
            if param.example is not None:
                example[name] = param.example
            elif param.required:
                example[name] = _placeholder_value(param)
        return example


@dataclasses.dataclass(frozen=True)
class Integration:
    name: str
    spec: Spec
    source: Path
    endpoints: dict[str, CompiledEndpoint] = dataclasses.field(default_factory=dict)

    @property
    def display_name(self) -> str:
        return self.spec.display_name

    @property
    def auth_type(self) -> str:
        return self.spec.auth.type


def _placeholder_value(param: Param) -> Any:
    if param.enum:
        return param.enum[0]
    return {"string": "string", "integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}[param.type]
