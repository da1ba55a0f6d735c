"""Loading specs: parse and validate each YAML file, compile it once, and keep them in a registry."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import ValidationError

from gateway.errors import BadRequest
from gateway.settings import BUILTIN_INTEGRATIONS, Settings
from gateway.specs import params
from gateway.specs.spec import (
    ApiKeyAuth,
    CompiledEndpoint,
    Endpoint,
    Integration,
    OAuth2Auth,
    Spec,
    SpecError,
    VerifyCall,
)


def params_schema(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: param.json_schema() for name, param in endpoint.params.items()},
        "required": [name for name, param in endpoint.params.items() if param.required],
        "additionalProperties": False,
    }


def _format_error(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    return f"{location}: {error['msg']}"


def parse_spec(data: Any, source: Path) -> Spec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the file must hold a mapping")
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_format_error(e) for e in exc.errors())
        raise SpecError(f"{source}: {problems}") from None


def compile_spec(spec: Spec, source: Path) -> Integration:
    integration = Integration(name=spec.name, spec=spec, source=source)
    for name, endpoint in spec.endpoints.items():
        schema = params_schema(endpoint)
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise SpecError(f"{source}: endpoints.{name}.params: {exc.message}") from None
        unchecked = sorted(set(_formats(schema)) - set(params.FORMATS))
        if unchecked:
            raise SpecError(
                f"{source}: endpoints.{name}.params: format {unchecked[0]!r} is not one the gateway checks "
                f"({', '.join(params.FORMATS)})"
            )
        headers = {**spec.headers, **endpoint.headers}
        for header, value in headers.items():
            if params.CONTROL.search(header) or params.CONTROL.search(value):
                raise SpecError(f"{source}: endpoints.{name}.headers: '{header}' holds control characters")
        segment_patterns = {
            pname: re.compile(p.pattern) if p.pattern else None
            for pname, p in endpoint.params.items()
            if p.location == "path"
        }
        integration.endpoints[name] = CompiledEndpoint(
            integration=integration,
            name=name,
            spec=endpoint,
            params_schema=schema,
            validator=params.validator_for(schema),
            segment_patterns=segment_patterns,
            check=params.compile_check(endpoint),
            defaults={n: p.default for n, p in endpoint.params.items() if p.default is not None},
            checked_locations=tuple(
                (n, p.location) for n, p in endpoint.params.items() if p.location in ("path", "header")
            ),
            headers=headers,
            routes=tuple(
                (n, p.name or n, p.location, p.explode) for n, p in endpoint.params.items() if p.location != "path"
            ),
        )
    if isinstance(spec.auth, (ApiKeyAuth, OAuth2Auth)) and spec.auth.verify is not None:
        _check_verify(integration, spec.auth.verify, source)
    return integration


def _check_verify(integration: Integration, verify: VerifyCall, source: Path) -> None:
    """A key check must be a call that changes nothing and that the gateway can always make."""
    where = f"{source}: auth.verify"
    endpoint = integration.endpoints.get(verify.endpoint)
    if endpoint is None:
        raise SpecError(f"{where}: '{verify.endpoint}' is not an endpoint of this spec")
    if not endpoint.read_only:
        raise SpecError(f"{where}: '{verify.endpoint}' must be a read-only endpoint")
    try:
        params.validate(endpoint, dict(verify.params))
    except BadRequest as exc:
        problems = "; ".join(f"{p['field']}: {p['message']}" for p in exc.details or [])
        raise SpecError(f"{where}.params: {problems or exc.message}") from None


def _formats(schema: Any) -> Iterable[str]:
    """Every `format` named anywhere in a schema (nested items and properties too)."""
    if isinstance(schema, dict):
        if isinstance(schema.get("format"), str):
            yield schema["format"]
        for key, value in schema.items():
            if key not in ("enum", "default", "examples", "const"):
                yield from _formats(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _formats(item)


def load_file(path: Path) -> Integration:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    spec = parse_spec(data, path)
    if spec.name != path.stem:
        raise SpecError(f"{path}: name: '{spec.name}' must match the file name '{path.stem}'")
    return compile_spec(spec, path)


def spec_files(folders: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for folder in folders:
        if folder.is_file():
            files.append(folder)
        elif not folder.is_dir():
            # A path that names nothing would otherwise load no spec from it, silently.
            raise SpecError(f"{folder}: no such spec file or folder")
        else:
            files.extend(sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")))
    return files


# The MCP server's own tools; no endpoint's tool name may take them.
META_TOOLS = frozenset(
    {"list_integrations", "connect_integration", "wait_for_connection", "search_tools", "proxy_request"}
)
# OpenAI and Anthropic accept function names of at most 64 characters.
MAX_TOOL_NAME = 64


class Registry:
    """Every integration the gateway serves, by name."""

    def __init__(self, integrations: Iterable[Integration]) -> None:
        self.integrations: dict[str, Integration] = {}
        tools: dict[str, CompiledEndpoint] = {}
        for integration in integrations:
            if integration.name in self.integrations:
                other = self.integrations[integration.name].source
                raise SpecError(f"{integration.source}: name: '{integration.name}' is also defined in {other}")
            self.integrations[integration.name] = integration
            for endpoint in integration.endpoints.values():
                name = endpoint.tool_name
                where = f"{integration.source}: endpoints.{endpoint.name}"
                if len(name) > MAX_TOOL_NAME:
                    raise SpecError(f"{where}: tool name '{name}' is longer than {MAX_TOOL_NAME} characters")
                if name in META_TOOLS:
                    raise SpecError(f"{where}: tool name '{name}' is reserved for the MCP server")
                if name in tools:
                    clash = tools[name]
                    raise SpecError(
                        f"{where}: tool name '{name}' is also {clash.integration.name}/{clash.name} ({clash.integration.source})"
                    )
                tools[name] = endpoint

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self.integrations.values(), key=lambda i: i.name))

    def __len__(self) -> int:
        return len(self.integrations)

    def get(self, name: str) -> Integration | None:
        return self.integrations.get(name)

    def endpoint(self, integration: str, endpoint: str) -> CompiledEndpoint | None:
        found = self.integrations.get(integration)
        return found.endpoints.get(endpoint) if found else None

    def endpoints(self) -> list[CompiledEndpoint]:
        return [e for i in self for e in i.endpoints.values()]


def load_registry(folders: Iterable[Path]) -> Registry:
    return Registry(load_file(path) for path in spec_files(folders))


def registry_for(settings: Settings) -> Registry:
    return load_registry([BUILTIN_INTEGRATIONS, *settings.integrations_paths])
