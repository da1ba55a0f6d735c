"""Hostile input is a 400 (or a 403 page) everywhere, and nothing hostile is stored or breaks a later read.

Lone surrogate escapes ("\\ud800", which no UTF-8 text holds), nesting past jsoncodec.MAX_DEPTH,
integers past 64 bits, NUL and text that is not UTF-8 in a path or query, and forms or Origin
headers a browser would never send; on SQLite and PostgreSQL, whose text columns differ.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select, update

from gateway import jsoncodec
from gateway.core import waitpoints
from gateway.storage import runs
from gateway.storage.models import ApiKey, Run, Waitpoint
from gateway.storage.runs import RunRecord
from tests.conftest import Gateway
from tests.test_dashboard import Browser

both_databases = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
LONE = b'"\\ud800"'
DEEP = b'{"a":' * (jsoncodec.MAX_DEPTH + 1) + b"1" + b"}" * (jsoncodec.MAX_DEPTH + 1)


@pytest.fixture
def caller(gateway: Gateway, provider) -> tuple[Gateway, dict[str, str]]:  # type: ignore[no-untyped-def]
    user_id = gateway.user()
    gateway.connect(user_id, provider, integration="fakeapi")
    return gateway, {"Authorization": f"Bearer {gateway.key(user_id)}", "Content-Type": "application/json"}


@pytest.fixture
def visitor(public_gateway: Gateway) -> Iterator[Browser]:
    browser = Browser(public_gateway)
    yield browser
    browser.close()


def post(gw: Gateway, path: str, raw: bytes, headers: dict[str, str]) -> httpx.Response:
    # A fresh connection per request: an answer that breaks must not hide the next one.
    return httpx.post(gw.url + path, content=raw, headers=headers, timeout=30)


def get(gw: Gateway, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(gw.url + path, headers=headers, timeout=30)


def assert_bad_request(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad_request"


HOSTILE_CALLS = {
    "body-param": b'{"params": {"item": "a", "note": ' + LONE + b"}}",
    "param-name": b'{"params": {"item": "a", ' + LONE + b": 1}}",
    "top-level-key": b'{"params": {"item": "a"}, ' + LONE + b": 1}",
    "path-param": b'{"params": {"item": ' + LONE + b"}}",
    "header-param": b'{"params": {"item": "a", "tag": "x\\udc00y"}}',
    "query-param": b'{"params": {"item": "a", "flags": [' + LONE + b"]}}",
    "queue": b'{"params": {"item": "a"}, "queue": ' + LONE + b"}",
    "callback_url": b'{"params": {"item": "a"}, "async": true, "callback_url": "https://example.com/\\ud800"}',
    "deep-body": DEEP,
    "deep-param": b'{"params": {"item": "a", "flags": ' + b"[" * 70 + b"]" * 70 + b"}}",
    "deeper-than-orjson": b"[" * 5000 + b"]" * 5000,
    "infinite-number": b'{"params": {"item": "a", "amount": 1e400}}',
    "nan": b'{"params": {"item": "a", "amount": NaN}}',
}


@both_databases
def test_hostile_call_bodies_are_refused_and_nothing_is_sent_or_stored(caller, provider) -> None:  # type: ignore[no-untyped-def]
    gw, auth = caller
    for name, raw in HOSTILE_CALLS.items():
        for headers in (auth, {**auth, "Idempotency-Key": f"key-{name}"}):
            response = post(gw, "/v1/fakeapi/echo", raw, headers)
            assert response.status_code == 400, (name, response.text)
            assert response.json()["error"] == "bad_request"
    assert provider.api_requests() == []
    with gw.engine.connect() as c:
        assert c.execute(select(Run.id)).all() == []


def test_integers_past_64_bits_are_refused_where_the_spec_says_integer(caller, provider) -> None:  # type: ignore[no-untyped-def]
    gw, auth = caller
    for number in ("9223372036854775808", "18446744073709551616", "123456789012345678901234567890", "1e300", "-1e300"):
        response = post(gw, "/v1/fakeapi/record", f'{{"params": {{"queue": "q", "seq": {number}}}}}'.encode(), auth)
        assert_bad_request(response)
        assert response.json()["details"] == [
            {"field": "seq", "message": "must be a whole number from -9223372036854775808 to 9223372036854775807"}
        ]
    assert provider.api_requests() == []


def test_numbers_go_upstream_as_plain_digits(caller, provider) -> None:  # type: ignore[no-untyped-def]
    gw, auth = caller
    # A whole number written as a float is the integer in a path; a number is never sent with an exponent.
    ok = post(gw, "/v1/fakeapi/record", b'{"params": {"queue": "q", "seq": 9.0e3, "sleep": 1e-7}}', auth)
    assert ok.status_code == 200, ok.text
    big = post(gw, "/v1/fakeapi/echo", b'{"params": {"item": "a", "amount": 1e300}}', auth)
    assert big.status_code == 200, big.text
    first, second = provider.api_requests()
    assert first.raw_path == "/api/public/record/q/9000" and first.query == [("sleep", "0.0000001")]
    assert second.query == [("amount", "1" + "0" * 300)]


def test_declared_formats_are_enforced(caller, provider) -> None:  # type: ignore[no-untyped-def]
    gw, auth = caller
    refused = post(gw, "/v1/fakeapi/echo", b'{"params": {"item": "a", "contact": "not an email"}}', auth)
    assert_bad_request(refused)
    assert [d["field"] for d in refused.json()["details"]] == ["contact"]
    accepted = post(gw, "/v1/fakeapi/echo", b'{"params": {"item": "a", "contact": "ada@example.com"}}', auth)
    assert accepted.status_code == 200, accepted.text
    assert len(provider.api_requests()) == 1


HOSTILE_WAITPOINTS = [
    b'{"tags": [' + LONE + b"]}",
    b'{"tags": ["ok", "a\\u0000b"]}',
    b'{"idempotencyKey": ' + LONE + b"}",
    b'{"idempotencyKey": "a\\u0000b"}',
    b'{"timeout": ' + LONE + b"}",
    b'{"timeout": "0s"}',
    b'{"timeout": "31d"}',
    b'{"timeout": "10m\\n"}',
    DEEP,
]


@both_databases
def test_hostile_waitpoints_are_refused_and_the_list_still_reads(caller) -> None:  # type: ignore[no-untyped-def]
    gw, auth = caller
    for raw in HOSTILE_WAITPOINTS:
        response = post(gw, "/v1/waitpoints", raw, auth)
        assert response.status_code == 400, (raw, response.text)
    listed = get(gw, "/v1/waitpoints", auth)
    assert listed.status_code == 200 and listed.json()["data"] == []


@both_databases
@pytest.mark.parametrize("route", ["callback", "complete", "public"])
def test_hostile_completions_are_refused_and_the_waitpoint_still_reads(caller, route: str) -> None:  # type: ignore[no-untyped-def]
    gw, auth = caller
    created = post(gw, "/v1/waitpoints", b'{"tags": ["deploy"]}', auth).json()
    waitpoint_id = created["id"]
    if route == "callback":
        url, headers = created["url"].replace(gw.settings.public_url, ""), {"Content-Type": "application/json"}
    elif route == "complete":
        url, headers = f"/v1/waitpoints/{waitpoint_id}/complete", auth
    else:
        url = f"/v1/waitpoints/{waitpoint_id}/complete"
        headers = {"Authorization": f"Bearer {created['publicAccessToken']}", "Content-Type": "application/json"}
    for raw in (b'{"note": ' + LONE + b"}", b"[" + LONE + b"]", DEEP, b"{nope"):
        refused = post(gw, url, raw if route == "callback" else b'{"data": ' + raw + b"}", headers)
        assert_bad_request(refused)
        assert refused.headers["access-control-allow-origin"] == "*"
    shown = get(gw, f"/v1/waitpoints/{waitpoint_id}", auth)
    assert shown.status_code == 200 and shown.json()["status"] == "WAITING"
    assert get(gw, f"/v1/waitpoints/{waitpoint_id}/wait?timeout=0", auth).status_code == 202
    # The waitpoint can still be completed properly.
    done = post(gw, url, b'{"data": {"ok": true}}' if route != "callback" else b'{"ok": true}', headers)
    assert done.json()["completed"] is True


@both_databases
def test_values_an_older_version_stored_read_back_without_breaking(caller, provider) -> None:  # type: ignore[no-untyped-def]
    """Before the strict reader, a completion, a tag or an upstream answer could store a lone surrogate:
    every later read of it answered 500. Such rows read back with U+FFFD in its place."""
    gw, auth = caller
    email = f"older-{uuid.uuid4().hex[:8]}@example.com"
    user_id = gw.user(email)
    key = gw.key(user_id)
    headers = {"Authorization": f"Bearer {key}"}
    waitpoint, _ = waitpoints.create(gw.engine, user_id=user_id, api_key_id=None, timeout=waitpoints.MAX_TIMEOUT)
    with gw.engine.begin() as c:
        c.execute(
            update(Waitpoint)
            .where(Waitpoint.id == waitpoint.id)
            .values(status="COMPLETED", output={"note": "a\ud800b", "\udc00": 1}, tags=["x\ud800"])
        )
    record = RunRecord.start()
    record.user_id, record.integration, record.endpoint = user_id, "fakeapi", "echo"
    runs.create_pending(gw.engine, gw.box, record=record, params={"note": "n\ud800"}, status="completed")
    with gw.engine.begin() as c:
        result = gw.box.encrypt(json.dumps({"status": 200, "data": "d\ud800"}))
        c.execute(update(Run).where(Run.id == record.id).values(result=result))

    shown = get(gw, f"/v1/waitpoints/{waitpoint.id}", headers)
    assert shown.status_code == 200, shown.text
    assert shown.json()["output"] == {"note": "a\ufffdb", "\ufffd": 1} and shown.json()["tags"] == ["x\ufffd"]
    waited = get(gw, f"/v1/waitpoints/{waitpoint.id}/wait", headers)
    assert waited.status_code == 200 and waited.json()["output"]["note"] == "a\ufffdb"
    listed = get(gw, "/v1/waitpoints", headers)
    assert listed.status_code == 200 and listed.json()["data"][0]["tags"] == ["x\ufffd"]
    run = get(gw, f"/v1/runs/{record.id}", headers)
    assert run.status_code == 200 and run.json()["result"] == {"status": 200, "data": "d\ufffd"}
    assert runs.request_of(gw.box, runs.get_any(gw.engine, record.id))["params"] == {"note": "n\ufffd"}  # type: ignore[arg-type]
    browser = Browser(gw, origin=gw.settings.public_url)
    try:
        assert browser.login(email).status_code == 303
        page = browser.get("/dashboard/waitpoints")
        assert page.status_code == 200 and "<code>x\ufffd</code>" in page.text
    finally:
        browser.close()


@both_databases
def test_nul_and_text_that_is_not_utf8_in_an_address_are_refused(caller) -> None:  # type: ignore[no-untyped-def]
    gw, auth = caller
    for path in (
        "/v1/runs?cursor=%00",
        "/v1/runs?queue=a%00b",
        "/v1/runs?integration=%ED%A0%80",
        "/v1/runs?endpoint=%FF",
        "/v1/waitpoints?idempotencyKey=%00",
        "/v1/waitpoints?tags=%ED%A0%80",
        "/v1/runs/run_%00",
        "/v1/waitpoints/%00",
        "/v1/waitpoints/waitpoint_%ED%A0%80/wait",
        "/v1/queues/%00",
        "/v1/fakeapi%00/echo",
    ):
        response = get(gw, path, auth)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"] == "bad_request"
    page = get(gw, "/dashboard/calls?before=%00")
    assert page.status_code == 400 and page.headers["content-type"].startswith("text/html")


def test_list_queries_take_what_the_openapi_document_says_and_nothing_else(caller) -> None:  # type: ignore[no-untyped-def]
    gw, auth = caller
    for path, params in (
        ("/v1/runs", {"status": "pending,"}),
        ("/v1/runs", {"status": ""}),
        ("/v1/runs", {"limit": "+5"}),
        ("/v1/runs", {"limit": "0"}),
        ("/v1/runs", {"from": "2026-W01-1"}),
        ("/v1/runs", {"to": "2026-01-01T00:00:00Z\n"}),
        ("/v1/waitpoints", {"tags": "a,,b"}),
        ("/v1/waitpoints", {"status": "WAITING,nope"}),
        ("/v1/waitpoints", {"limit": "101"}),
        ("/v1/waitpoints", {"from": "20260101"}),
        ("/v1/queues/a%20b", {}),
    ):
        response = httpx.get(gw.url + path, params=params, headers=auth)
        assert response.status_code == 400, (path, params, response.text)
    for value in ("2026-01-31", "2026-01-31T12:00:00Z", "2026-01-31T12:00:00.5+02:00", "2026-01-31T12:00:00"):
        for path in ("/v1/runs", "/v1/waitpoints"):
            assert httpx.get(gw.url + path, params={"from": value, "to": value}, headers=auth).status_code == 200
    created = post(gw, "/v1/waitpoints", b"{}", auth).json()
    for timeout in ("1e3", "-1", "5d", " 5"):
        waited = httpx.get(f"{gw.url}/v1/waitpoints/{created['id']}/wait", params={"timeout": timeout}, headers=auth)
        assert waited.status_code == 400, (timeout, waited.text)
    for timeout in ("0", "0.05", "0s", "0m"):
        waited = httpx.get(f"{gw.url}/v1/waitpoints/{created['id']}/wait", params={"timeout": timeout}, headers=auth)
        assert waited.status_code == 202, (timeout, waited.text)


@both_databases
def test_dashboard_forms_with_unstorable_text_are_a_400_page(visitor: Browser, public_gateway: Gateway) -> None:
    browser = visitor
    browser.signup()
    for charset, encoded in (("utf-7", b"+2AA-"), ("unicode_escape", b"\\ud800"), ("utf-8", b"a\x00b")):
        parts = [(b"csrf_token", browser.token().encode()), (b"name", b"key " + encoded), (b"access", b"all")]
        body = b"".join(
            b'--B\r\nContent-Disposition: form-data; name="' + name + b'"\r\n\r\n' + value + b"\r\n"
            for name, value in parts
        )
        response = browser.http.post(
            "/dashboard/keys",
            content=body + b"--B--\r\n",
            headers={"Content-Type": f"multipart/form-data; charset={charset}; boundary=B"},
        )
        assert response.status_code == 400, (charset, response.text)
        assert "does not take" in response.text
    assert browser.get("/dashboard/keys").status_code == 200
    with public_gateway.engine.connect() as c:
        assert c.execute(select(ApiKey.id)).all() == []


@pytest.mark.parametrize("header", ["Origin", "Referer"])
def test_a_malformed_origin_or_referer_is_a_403_page(visitor: Browser, header: str) -> None:
    browser = visitor
    malformed = (
        b"http://127.0.0.1:abc",
        b"http://[::1",
        b"http://[::1]:99999/",
        b"http://\xc3\xa9.example",
        b"http://a\xef\xbc\x83b",
        b"null",
        b"",
    )

    def refused(paths: tuple[str, ...]) -> None:
        token = browser.token()
        origin = browser.http.headers.pop("Origin")
        for value in malformed:
            for path in paths:
                response = browser.http.post(
                    path, data={"csrf_token": token, "email": "a@example.com"}, headers=[(header.encode(), value)]
                )
                assert response.status_code == 403, (value, path, response.text)
                assert "another site" in response.text
        browser.http.headers["Origin"] = origin

    refused(("/dashboard/login", "/dashboard/signup"))
    browser.signup()
    refused(("/dashboard/logout", "/dashboard/keys", "/dashboard/account/password"))
    assert browser.get("/dashboard/account").status_code == 200


def test_405_answers_name_every_allowed_method(gateway: Gateway) -> None:
    for method, path, allow in (
        ("PUT", "/v1/runs", "GET, HEAD"),
        ("POST", "/v1/runs/run_0123", "GET, HEAD"),
        ("DELETE", "/v1/waitpoints", "GET, HEAD, POST"),
        ("PUT", "/v1/waitpoints/waitpoint_1/complete", "OPTIONS, POST"),
        ("DELETE", "/v1/github/create_issue", "GET, HEAD, POST"),
        ("POST", "/v1/callbacks/secret", "GET, HEAD"),
        ("DELETE", "/dashboard/keys", "GET, HEAD, POST"),
    ):
        response = httpx.request(method, gateway.url + path, timeout=30)
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["allow"] == allow
