"""The strict spec schema: unknown keys rejected, errors name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.settings import BUILTIN_INTEGRATIONS
from gateway.specs.registry import load_file, load_registry
from gateway.specs.spec import SpecError

BASE = {
    "name": "acme",
    "display_name": "Acme",
    "description": "d",
    "docs_url": "https://acme.example/docs",
    "reference": "Acme API v1",
    "base_url": "https://api.acme.example",
    "auth": {"type": "oauth2", "authorize_url": "https://a/authorize", "token_url": "https://a/token"},
    "endpoints": {
        "get_thing": {
            "description": "Get one thing by id.",
            "method": "GET",
            "path": "/things/{id}",
            "params": {"id": {"type": "string", "in": "path", "required": True, "description": "The id."}},
        }
    },
}


def write(tmp_path: Path, data: dict, name: str = "acme") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def with_change(path: list[str], value: object) -> dict:
    import copy

    data = copy.deepcopy(BASE)
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return data


def test_a_valid_spec_loads(tmp_path: Path) -> None:
    integration = load_file(write(tmp_path, BASE))
    assert integration.endpoints["get_thing"].read_only is True


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["colour"], "red", "colour"),
        (["endpoints", "get_thing", "verb"], "GET", "endpoints.get_thing.verb"),
        (["endpoints", "get_thing", "method"], "FETCH", "endpoints.get_thing.method"),
        (["endpoints", "get_thing", "path"], "/things/{other}", "endpoints.get_thing"),
        (["endpoints", "get_thing", "path"], "things", "endpoints.get_thing.path"),
        (["endpoints", "get_thing", "params", "id", "in"], "cookie", "endpoints.get_thing.params.id.in"),
        (["endpoints", "get_thing", "params", "id", "required"], False, "endpoints.get_thing"),
        (["endpoints", "get_thing", "params", "id", "pattern"], "([", "endpoints.get_thing.params.id"),
        (["auth", "type"], "saml", "auth"),
        (["auth", "token_auth_method"], "private_key_jwt", "auth.oauth2.token_auth_method"),
        (["base_url"], "ftp://x", "base_url"),
        (["name"], "runs", "name"),
        (["name"], "callbacks", "name"),
        (["endpoints", "get_thing", "params", "id", "format"], "uuid", "endpoints.get_thing.params.id.format"),
        (["endpoints"], {}, "endpoints"),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path: Path, path: list[str], value: object, field: str) -> None:
    data = with_change(path, value)
    name = data["name"] if path != ["name"] else "runs"
    with pytest.raises(SpecError) as error:
        load_file(write(tmp_path, data, name))
    message = str(error.value)
    assert str(tmp_path) in message
    assert field in message


def test_name_must_match_the_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="must match the file name"):
        load_file(write(tmp_path, BASE, "other"))


def test_invalid_yaml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="acme.yaml: not valid YAML"):
        load_file(path)


def test_duplicate_names_across_folders(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write(tmp_path / "a", BASE)
    write(tmp_path / "b", BASE)
    with pytest.raises(SpecError, match="also defined in"):
        load_registry([tmp_path / "a", tmp_path / "b"])


def test_every_builtin_spec_validates() -> None:
    registry = load_registry([BUILTIN_INTEGRATIONS])
    assert registry.get("github") is not None
    assert len(registry.get("github").endpoints) >= 15


def test_tool_names_must_be_unique_short_and_not_reserved(tmp_path: Path) -> None:
    import copy

    first = copy.deepcopy(BASE)
    first["name"] = "a-b"
    first["endpoints"] = {"c": copy.deepcopy(BASE["endpoints"]["get_thing"])}
    second = copy.deepcopy(BASE)
    second["name"] = "a"
    second["endpoints"] = {"b_c": copy.deepcopy(BASE["endpoints"]["get_thing"])}
    write(tmp_path, first, "a-b")
    write(tmp_path, second, "a")
    with pytest.raises(SpecError, match="tool name 'a_b_c' is also"):
        load_registry([tmp_path])

    long = copy.deepcopy(BASE)
    long["endpoints"] = {"x" * 60: copy.deepcopy(BASE["endpoints"]["get_thing"])}
    (tmp_path / "only").mkdir()
    write(tmp_path / "only", long)
    with pytest.raises(SpecError, match="longer than 64"):
        load_registry([tmp_path / "only"])


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["headers"], {"Host": "api.evil.example"}, "headers"),
        (["headers"], {"Content-Length": "3"}, "headers"),
        (["endpoints", "get_thing", "headers"], {"transfer-encoding": "chunked"}, "endpoints.get_thing.headers"),
        (["endpoints", "get_thing", "headers"], {"Connection": "close"}, "endpoints.get_thing.headers"),
        (["endpoints", "get_thing", "headers"], {"Proxy-Authorization": "Basic x"}, "endpoints.get_thing.headers"),
        (["headers"], {"X-A: b": "c"}, "headers"),
        (
            ["endpoints", "get_thing", "params", "te"],
            {"type": "string", "in": "header", "description": "d"},
            "endpoints.get_thing",
        ),
        (
            ["endpoints", "get_thing", "params", "size"],
            {"type": "integer", "in": "header", "name": "Content-Length", "description": "d"},
            "endpoints.get_thing",
        ),
        (["auth"], {"type": "api_key", "name": "Host"}, "auth.api_key"),
    ],
)
def test_framing_headers_can_never_come_from_a_spec(tmp_path: Path, path: list[str], value: object, field: str) -> None:
    # Issue #16: a spec's Host or Content-Length went out next to the client's own (two Host
    # headers, Content-Length 0 and 3) on a pool every caller shares: request smuggling.
    with pytest.raises(SpecError, match="set by the HTTP client|not a valid header name") as error:
        load_file(write(tmp_path, with_change(path, value)))
    assert str(tmp_path) in str(error.value) and field in str(error.value)


def test_a_nested_format_the_gateway_does_not_check_is_refused(tmp_path: Path) -> None:
    data = with_change(
        ["endpoints", "get_thing", "params", "ids"],
        {"type": "array", "in": "query", "description": "Ids.", "items": {"type": "string", "format": "uuid"}},
    )
    with pytest.raises(SpecError, match="format 'uuid' is not one the gateway checks"):
        load_file(write(tmp_path, data))


def test_a_spec_path_that_names_nothing_is_refused(tmp_path: Path) -> None:
    # Before, a missing folder loaded no spec and said nothing (two tests read a moved folder that way).
    with pytest.raises(SpecError, match="no such spec file or folder"):
        load_registry([tmp_path / "missing"])
