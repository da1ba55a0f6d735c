"""The OpenAPI document tells the truth: what it accepts the gateway accepts, what it refuses the gateway
refuses, and every answer is documented. Schemathesis, a real external client, holds the gateway to it.

Deliberate exceptions (also in docs/agents.md, "The OpenAPI document"):
- 422 `idempotency_mismatch` counts as accepting valid data: the fuzzer reuses one Idempotency-Key with
  different bodies, which the gateway must refuse (the document says so in the header's description).
- `GET /v1/waitpoints/{id}/wait` is called with `timeout=0`: it long-polls by design (up to 120 s a call).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import update

from gateway.app import create_app
from gateway.settings import BUILTIN_INTEGRATIONS
from gateway.specs import registry as spec_registry
from gateway.storage.models import User
from tests.conftest import Gateway, make_settings, provider_overrides
from tests.fakes.provider import ProviderState
from tests.servers import ServerThread, free_port


def body_validator(document: dict[str, Any], path: str) -> Draft202012Validator:
    schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return Draft202012Validator(
        {**schema, "components": document["components"]}, format_checker=Draft202012Validator.FORMAT_CHECKER
    )


BODIES: list[tuple[str, dict[str, Any] | None]] = [
    ("/v1/fakeapi/echo", {"params": {"item": "a"}}),
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "async": False}),
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "queue": None, "expires": None, "callback_url": None}),
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "queue": "q-1", "expires": 60}),
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "async": True, "expires": 60.0}),
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "async": True, "callback_url": "https://hooks.example/x?y=1"}),
    ("/v1/fakeapi/echo", {"params": {"item": "a", "tag": "t", "amount": 1.5, "contact": "a@b.example"}}),
    ("/v1/fakeapi/record", {"params": {"queue": "q", "seq": 9223372036854775807}}),
    ("/v1/fakeapi/record", {"params": {"queue": "...", "seq": -5}}),
    # Refused by both.
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "expires": 60}),
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "callback_url": "https://hooks.example/x"}),
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "async": None}),
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "queue": "a b"}),
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "queue": "x" * 201}),
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "async": True, "expires": 0}),
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "async": True, "expires": 1.5}),
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "async": True, "expires": 90 * 86400 + 1}),
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "async": True, "callback_url": "https://u:p@hooks.example/"}),
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "async": True, "callback_url": "https://hooks.example/#f"}),
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "async": True, "callback_url": "ftp://hooks.example/"}),
    ("/v1/fakeapi/echo", {"params": {"item": "a"}, "other": 1}),
    ("/v1/fakeapi/echo", {"params": {"item": "."}}),
    ("/v1/fakeapi/echo", {"params": {"item": ".."}}),
    ("/v1/fakeapi/echo", {"params": {"item": ""}}),
    ("/v1/fakeapi/echo", {"params": {"item": "a/b"}}),
    ("/v1/fakeapi/echo", {"params": {"item": "a%2e"}}),
    ("/v1/fakeapi/echo", {"params": {"item": "a", "tag": "t\r\nX: 1"}}),
    ("/v1/fakeapi/echo", {"params": {"item": "a", "contact": "not an email"}}),
    ("/v1/fakeapi/echo", {"params": {}}),
    ("/v1/fakeapi/echo", None),
    ("/v1/fakeapi/record", {"params": {"queue": "q", "seq": 9223372036854775808}}),
    ("/v1/fakeapi/record", {"params": {"queue": "q", "seq": 1.5}}),
]


def test_the_call_body_document_and_the_gateway_agree(gateway: Gateway, provider) -> None:  # type: ignore[no-untyped-def]
    user_id = gateway.user()
    gateway.connect(user_id, provider, integration="fakeapi")
    auth = {"Authorization": f"Bearer {gateway.key(user_id)}", "Content-Type": "application/json"}
    document = gateway.http.get("/openapi.json").json()
    for path, body in BODIES:
        documented = body_validator(document, path).is_valid(body if body is not None else {})
        raw = json.dumps(body).encode() if body is not None else b""
        answer = httpx.post(gateway.url + path, content=raw, headers=auth, timeout=30)
        assert answer.status_code != 500, answer.text
        assert documented == (answer.status_code != 400), (path, body, answer.status_code, answer.text)


def test_the_document_names_every_answer_of_a_call(gateway: Gateway) -> None:
    document = gateway.http.get("/openapi.json").json()
    call = document["paths"]["/v1/fakeapi/slack_style"]["post"]
    assert {
        "2XX",
        "202",
        "204",
        "default",
        "400",
        "401",
        "403",
        "409",
        "422",
        "429",
        "500",
        "502",
        "503",
        "504",
    } <= set(call["responses"])
    assert call["parameters"] == [{"$ref": "#/components/parameters/IdempotencyKey"}]
    answers = document["components"]["responses"]
    upstream_error = answers["Call502"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/UpstreamError"} in upstream_error["anyOf"][1]["anyOf"]
    queued = answers["Call202"]["content"]["application/json"]["schema"]["anyOf"]
    assert {"$ref": "#/components/schemas/Queued"} in queued and {"$ref": "#/components/schemas/Held"} in queued
    # The 502 of an error_when answer is what the document says it is.
    schema = {**document["components"]["schemas"]["UpstreamError"], "components": document["components"]}
    example = {
        "status": 200,
        "data": {"ok": False, "error": "channel_not_found"},
        "upstream_error": "channel_not_found",
    }
    assert Draft202012Validator(schema).is_valid(example)
    assert not Draft202012Validator(schema).is_valid({"status": 200, "data": {}})


# The fuzzer, on a bounded budget: the gateway's own routes and the calls of a few integrations.
# The proxy's paths are any path (its own tests try the ones that must be refused): not fuzzed here.
FUZZED = r"^/v1/(runs|waitpoints|queues|callbacks|tools|integrations|github|slack|connect|connections|end_users)(/|$)(?!proxy/)"
SCHEMATHESIS_CONFIG = """
[[operations]]
include-operation-id = "wait_for_waitpoint"
parameters = { "query.timeout" = "0" }

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
"""


@pytest.fixture
def fuzzed_gateway(tmp_path: Path, provider: ProviderState) -> Iterator[tuple[Gateway, str]]:
    """A gateway with every built-in integration connected, each pointed at the fake provider on 127.0.0.1,
    and no queue worker: a queued call (and its callback_url) is never sent anywhere."""
    fake = provider_overrides(provider.url)["github"]  # type: ignore[attr-defined]
    registry = spec_registry.load_registry([BUILTIN_INTEGRATIONS])
    overrides = {integration.name: fake for integration in registry}
    port = free_port()
    settings = make_settings(
        f"sqlite:///{tmp_path / 'gateway.db'}",
        provider.url,  # type: ignore[attr-defined]
        public_url=f"http://127.0.0.1:{port}",
        integrations_paths=(),
        integrations=overrides,
        worker_in_serve=False,
    )
    for integration in registry:
        for url in dataclasses.astuple(settings.overrides(integration.name)):
            assert url is None or not url.startswith("http") or urlsplit(url).hostname == "127.0.0.1", url
    server = ServerThread(create_app(settings), port=port).start()
    gateway = Gateway(settings, server)
    try:
        user_id = gateway.user()
        with gateway.engine.begin() as c:
            c.execute(update(User).where(User.id == user_id).values(plan="unlimited"))
        for integration in registry:
            gateway.connect(user_id, provider, integration=integration.name)
        yield gateway, gateway.key(user_id)
    finally:
        gateway.http.close()
        server.stop()


@pytest.mark.slow
def test_schemathesis_finds_nothing(fuzzed_gateway: tuple[Gateway, str], provider, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gateway, key = fuzzed_gateway
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        f"{gateway.url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {key}",
        "--include-path-regex",
        FUZZED,
        "--max-examples",
        "5",
        # Deterministic: the same cases every run, and no example database left behind.
        "--generation-deterministic",
        # One worker: with several, Hypothesis's lambda descriptions race in threads (its own error).
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--no-color",
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    # Schemathesis exits non-zero on any failure or error (a warning, e.g. about missing test data, is neither).
    assert finished.returncode == 0, finished.stdout[-20000:] + finished.stderr[-5000:]
    # It reached the upstream through the gateway, and the upstream is the fake one on loopback.
    assert provider.api_requests()


def test_every_api_route_is_in_the_document(gateway: Gateway) -> None:
    """A /v1 route the document leaves out is a contract nobody can read (or fuzz)."""
    document = gateway.http.get("/openapi.json").json()
    declared: set[tuple[str, str]] = set()
    for route in gateway.app.routes:
        # A path convertor other than the integration's is documented as a plain parameter.
        path = re.sub(r"\{(\w+):path\}", r"{\1}", getattr(route, "path", ""))
        if not path.startswith("/v1/"):
            continue
        for method in getattr(route, "methods", None) or ():
            if method not in ("HEAD", "OPTIONS"):
                declared.add((method.lower(), path))
    # The integration routes stand for every integration and endpoint, documented one by one.
    registry = gateway.app.state.registry
    expanded: set[tuple[str, str]] = set()
    for method, path in declared:
        if path == "/v1/{integration:integration}":
            expanded |= {(method, f"/v1/{i.name}") for i in registry}
        elif path == "/v1/{integration:integration}/proxy/{path}":
            expanded |= {(method, f"/v1/{i.name}/proxy/{{path}}") for i in registry}
        elif path == "/v1/{integration:integration}/{endpoint}":
            expanded |= {(method, f"/v1/{i.name}/{e}") for i in registry for e in i.endpoints}
        else:
            expanded.add((method, path))
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert expanded - documented == set()


def test_the_call_body_is_the_submission_models_schema(gateway: Gateway) -> None:
    from gateway.core import callbacks
    from gateway.core.submit import Submission

    document = gateway.http.get("/openapi.json").json()
    model = Submission.model_json_schema()
    for endpoint in gateway.app.state.registry.endpoints():
        call = document["paths"][f"/v1/{endpoint.integration.name}/{endpoint.name}"]["post"]
        body = call["requestBody"]["content"]["application/json"]["schema"]
        assert body == Submission.body_schema(
            {"$ref": f"#/components/schemas/Params_{endpoint.tool_name}"},
            params_required=bool(endpoint.params_schema["required"]),
            callback_url_pattern=callbacks.url_pattern(gateway.settings),
        )
        assert call["requestBody"]["required"] == bool(endpoint.params_schema["required"])
    # The options are the model's fields, as pydantic describes them.
    assert body["properties"].keys() == model["properties"].keys()
    for name in ("queue", "async", "expires"):
        assert body["properties"][name] == {k: v for k, v in model["properties"][name].items() if k != "title"}
    assert body["anyOf"] == model["anyOf"] and body["additionalProperties"] is False
