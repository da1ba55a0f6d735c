"""Bad input gets a clear 400 and nothing reaches the upstream."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.specs.params import validator_for
from gateway.specs.registry import load_registry
from tests.conftest import Gateway

ROOT = Path(__file__).resolve().parents[1]


def catalogue_endpoints():  # type: ignore[no-untyped-def]
    return load_registry(
        [ROOT / "gateway" / "integrations", ROOT / "tests" / "integrations", ROOT / "bench" / "specs"]
    ).endpoints()


ISSUE = {"repo": "acme/webapp", "title": "t"}


@pytest.mark.parametrize(
    "repo",
    [
        "../admin",
        "acme/..",
        "acme/../admin",
        "%2e%2e/admin",
        "acme/%2e%2e",
        "acme/web%2Fapp",
        "acme",
        "acme/web/app",
        "@evil.com/x",
        "acme/@evil.com",
        "acme/web\r\nX-Injected: 1",
        "acme/web\napp",
        "acme/ ",
        "/acme/webapp",
        "acme/webapp/",
        "acme\\webapp/x",
        "acme/webapp?x=1",
        "acme/webapp#frag",
        "",
    ],
)
def test_path_injection_is_refused(gateway: Gateway, account, provider, repo: str) -> None:
    _, secret = account
    response = gateway.call(secret, "github", "create_issue", {**ISSUE, "repo": repo})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "bad_request"
    assert [d["field"] for d in body["details"]] == ["repo"]
    assert provider.api_requests() == []


@pytest.mark.parametrize("number", ["1/../../admin", "..", "1?x", -1, 0, 1.5, True])
def test_integer_path_params_are_integers(gateway: Gateway, account, provider, number) -> None:  # type: ignore[no-untyped-def]
    _, secret = account
    response = gateway.call(secret, "github", "get_issue", {"repo": "acme/webapp", "issue_number": number})
    assert response.status_code == 400
    assert provider.api_requests() == []


def test_every_problem_is_reported_at_once(gateway: Gateway, account, provider) -> None:
    _, secret = account
    response = gateway.call(
        secret, "github", "create_issue", {"repo": "acme/../x", "labels": "bug", "milestone": "one", "colour": "red"}
    )
    assert response.status_code == 400
    fields = {d["field"]: d["message"] for d in response.json()["details"]}
    assert set(fields) == {"repo", "title", "labels", "milestone", "colour"}
    assert fields["title"] == "is required"
    assert fields["colour"] == "is not a param of this endpoint"
    assert provider.api_requests() == []


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"params=1", "application/x-www-form-urlencoded"),
        (b'{"params": {}}', "text/plain"),
        (b"[1, 2]", "application/json"),
        (b'"text"', "application/json"),
        (b"\xff\xfe", "application/json"),
        (b'{"params": [1]}', "application/json"),
        (b'{"params": {}, "unknown": 1}', "application/json"),
    ],
)
def test_malformed_bodies(gateway: Gateway, account, provider, content: bytes, content_type: str) -> None:
    _, secret = account
    response = gateway.http.post(
        "/v1/github/get_authenticated_user",
        content=content,
        headers={"Authorization": f"Bearer {secret}", "Content-Type": content_type},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad_request"
    assert provider.api_requests() == []


def test_params_are_placed_where_the_spec_says(gateway: Gateway, provider) -> None:
    user_id = gateway.user()
    gateway.connect(user_id, provider, integration="fakeapi")
    response = gateway.call(
        gateway.key(user_id),
        "fakeapi",
        "echo",
        {"item": "a b@c:d", "tag": "t1", "flags": ["x", "y"], "note": "hello"},
    )
    assert response.status_code == 200, response.text
    [sent] = provider.api_requests()
    assert sent.raw_path == "/api/echo/a%20b@c:d"
    assert sent.query == [("flags", "x"), ("flags", "y")]
    assert sent.headers["x-tag"] == "t1"
    assert sent.body == b'{"note":"hello"}'


def test_header_params_refuse_control_characters(gateway: Gateway, provider) -> None:
    user_id = gateway.user()
    gateway.connect(user_id, provider, integration="fakeapi")
    response = gateway.call(gateway.key(user_id), "fakeapi", "echo", {"item": "a", "tag": "t\r\nX-Evil: 1"})
    assert response.status_code == 400
    assert response.json()["details"][0]["field"] == "tag"
    assert provider.api_requests() == []


def test_multi_segment_file_paths(gateway: Gateway, account, provider) -> None:
    _, secret = account
    ok = gateway.call(secret, "github", "get_file_contents", {"repo": "acme/webapp", "path": "docs/guide/intro.md"})
    assert ok.status_code == 200
    assert provider.api_requests()[0].raw_path == "/api/repos/acme/webapp/contents/docs/guide/intro.md"
    bad = gateway.call(secret, "github", "get_file_contents", {"repo": "acme/webapp", "path": "docs/../../admin"})
    assert bad.status_code == 400
    assert len(provider.api_requests()) == 1


# The compiled check against jsonschema, across the whole catalogue.

ODD_VALUES = [None, True, False, 0, 1, -1, 7, 1.0, 1.5, -2.5, "", "x", "acme/webapp", "x" * 300, [], [1], ["a"], {}]
ODD_VALUES += [{"a": 1}, {"type": "doc"}, [{"a": "b"}], 10**12, "2025-01-06", "ok"]
# Integers at and past 64 bits, numbers JSON cannot hold, and declared formats, right and wrong.
ODD_VALUES += [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 1e300, 9.0, float("inf"), float("nan")]
ODD_VALUES += ["a@b.example", "not an email", "a@b\n", "2025-13-45", "2025-01-06T08:00:00Z", "2025-01-06\n"]


def _variants(endpoint):  # type: ignore[no-untyped-def]
    base = endpoint.example_params()
    yield base
    yield {**base, "unknown_param": 1}
    for name, param in endpoint.spec.params.items():
        if name in base:
            yield {k: v for k, v in base.items() if k != name}
        values = [*ODD_VALUES, *(param.enum or [])]
        for bound in (param.minimum, param.maximum, param.min_length, param.max_length):
            if bound is not None:
                values += [
                    int(bound) - 1,
                    int(bound),
                    int(bound) + 1,
                    "y" * max(int(bound) - 1, 0),
                    "y" * (int(bound) + 1),
                ]
        for value in values:
            yield {**base, name: value}


@pytest.mark.parametrize("endpoint", catalogue_endpoints(), ids=lambda e: f"{e.integration.name}.{e.name}")
def test_the_fast_check_never_accepts_what_jsonschema_refuses(endpoint) -> None:  # type: ignore[no-untyped-def]
    accepted = 0
    for params in _variants(endpoint):
        if endpoint.check(params):
            accepted += 1
            assert endpoint.validator.is_valid(params), f"fast check accepted {params}"
    # And it does the work: the documented example takes the fast path.
    assert endpoint.check(endpoint.example_params())
    assert accepted >= 1


@pytest.mark.parametrize(
    ("schema", "good", "bad"),
    [
        ({"type": "integer"}, [0, -(2**63), 2**63 - 1, 5.0], [2**63, -(2**63) - 1, 1e300, 1.5, True]),
        ({"type": "number"}, [0, 1.5, 1e300, 2**70], [float("inf"), float("nan"), True]),
        ({"type": "array", "items": {"type": "integer"}}, [[1, 2]], [[1, 2**64]]),
        ({"type": "string", "format": "email"}, ["ada@example.com", "a@b"], ["ada", "a@b\n", "a b@c", "@b", "a@"]),
        ({"type": "string", "format": "date"}, ["2025-01-06"], ["2025-13-01", "2025-1-6", "2025-01-06\n", "20250106"]),
        (
            {"type": "string", "format": "date-time"},
            ["2025-01-06T08:00:00Z", "2025-01-06t08:00:00.123456789+05:30", "2016-12-31T23:59:60Z"],
            ["2025-01-06T08:00:00", "2024-01-01T12:99:00Z", "2025-01-06", "2025-01-06T08:00:00Z\n"],
        ),
        ({"type": ["string", "null"], "format": "date-time"}, [None], []),
    ],
)
def test_params_take_64_bit_integers_finite_numbers_and_the_formats_they_declare(schema, good, bad) -> None:  # type: ignore[no-untyped-def]
    validator = validator_for(schema)
    for value in good:
        assert validator.is_valid(value), value
    for value in bad:
        assert not validator.is_valid(value), value
