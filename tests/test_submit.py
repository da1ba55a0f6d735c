"""core.submit.Submission: what a call may ask, read by one model and described by that model's schema."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from gateway.core import callbacks
from gateway.core.submit import Submission
from gateway.errors import BadRequest
from tests.conftest import make_settings

SETTINGS = make_settings("sqlite://", "http://127.0.0.1:1", allow_http_upstreams=False, egress_allow=())

BODIES: list[tuple[dict[str, Any], bool]] = [
    ({}, True),
    ({"params": {"a": 1}}, True),
    ({"params": {"a": 1}, "async": False}, True),
    ({"params": {}, "queue": None, "async": False, "expires": None, "callback_url": None}, True),
    ({"queue": "q-1.a:b_c"}, True),
    ({"queue": "q", "async": False, "expires": 60}, True),
    ({"async": True, "expires": 60.0}, True),
    ({"async": True, "expires": 90 * 86400}, True),
    ({"queue": "q", "callback_url": "https://hooks.example/x?y=1"}, True),
    ({"async": True, "queue": None, "callback_url": None}, True),
    ({"expires": 60}, False),
    ({"callback_url": "https://hooks.example/x"}, False),
    ({"async": False, "expires": 60}, False),
    ({"async": None}, False),
    ({"async": "yes"}, False),
    ({"async": 1}, False),
    ({"queue": ""}, False),
    ({"queue": "a b"}, False),
    ({"queue": "x" * 201}, False),
    ({"queue": 5}, False),
    ({"async": True, "expires": 0}, False),
    ({"async": True, "expires": 1.5}, False),
    ({"async": True, "expires": "10"}, False),
    ({"async": True, "expires": True}, False),
    ({"async": True, "expires": 90 * 86400 + 1}, False),
    ({"async": True, "callback_url": 5}, False),
    ({"async": True, "callback_url": "http://hooks.example/"}, False),
    ({"async": True, "callback_url": "https://u:p@hooks.example/"}, False),
    ({"async": True, "callback_url": "https://hooks.example/#f"}, False),
    ({"async": True, "callback_url": "https://10.0.0.1/x"}, False),
    ({"async": True, "callback_url": "https://localhost/x"}, False),
    ({"async": True, "callback_url": "https://hooks.example/" + "x" * 2000}, False),
    ({"params": {}, "other": 1}, False),
    ({"async_": True}, False),
    ({"run_async": True}, False),
]


def accepted(body: dict[str, Any]) -> bool:
    try:
        Submission.of(body, SETTINGS)
    except BadRequest:
        return False
    return True


@pytest.mark.parametrize(("body", "valid"), BODIES)
def test_the_model_and_its_schema_agree(body: dict[str, Any], valid: bool) -> None:
    schema = Submission.body_schema(
        {"type": "object"}, params_required=False, callback_url_pattern=callbacks.url_pattern(SETTINGS)
    )
    assert Draft202012Validator(schema).is_valid(body) == valid
    assert accepted(body) == valid


def test_a_refused_body_says_what_is_wrong() -> None:
    with pytest.raises(BadRequest) as unknown:
        Submission.of({"params": {}, "zeta": 1, "alpha": 2, "queue": "a b"}, SETTINGS)
    assert unknown.value.message == "The body has fields this call does not take."
    assert unknown.value.details == [
        {"field": "alpha", "message": "is not a known field"},
        {"field": "zeta", "message": "is not a known field"},
    ]
    with pytest.raises(BadRequest) as options:
        Submission.of({"queue": "a b", "async": "yes"}, SETTINGS)
    assert options.value.message == "'queue' must be 1-200 characters of letters, digits and . _ : -."
    assert [d["field"] for d in options.value.details] == ["queue", "async"]
    with pytest.raises(BadRequest, match="apply to queued calls"):
        Submission.of({"expires": 60}, SETTINGS)
    with pytest.raises(BadRequest, match="'Idempotency-Key' must be 1-255 visible ASCII characters"):
        Submission.of({}, SETTINGS, "with space")


def test_a_repeat_must_match_the_call_and_the_body_as_sent() -> None:
    same = Submission.of({"params": {"b": 1, "a": 2}}, SETTINGS, "k").fingerprint("github", "create_issue")
    assert same == Submission.of({"params": {"a": 2, "b": 1}}, SETTINGS, "k").fingerprint("github", "create_issue")
    assert same != Submission.of({"params": {"a": 2, "b": 1}}, SETTINGS, "k").fingerprint("github", "list_issues")
    assert same != Submission.of({"params": {"a": 2, "b": 1}, "async": False}, SETTINGS).fingerprint(
        "github", "create_issue"
    )
