"""The dashboard over real HTTP: accounts, the OAuth connect flow, keys, calls, and the web security around them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select, update

from gateway.app import create_app
from gateway.core import waitpoints
from gateway.storage import connections, keys, runs, users
from gateway.storage.models import ApiKey, Connection, OAuthState, Run, WebSession, new_id, utcnow
from gateway.storage.runs import RunRecord
from tests.conftest import TESTS, Gateway, PostgresSchema, make_settings, postgres_available, provider_overrides
from tests.fakes.provider import ProviderState
from tests.servers import ServerThread, free_port
from tests.tcpproxy import TcpProxy

PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


# The queries that matter most across processes also run against PostgreSQL.
both_databases = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)


class Browser:
    """An httpx client that acts like a browser on our pages: cookies, our Origin, the page's CSRF token."""

    def __init__(self, gateway: Gateway, origin: str | None = None, url: str | None = None) -> None:
        self.gateway = gateway
        self.http = httpx.Client(base_url=url or gateway.url, timeout=30, headers={"Origin": origin or gateway.url})

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def token(self) -> str:
        page = self.get("/dashboard/account")
        if page.status_code == 303:
            page = self.get("/dashboard/login")
        found = CSRF.search(page.text)
        assert found, page.text
        return html.unescape(found.group(1))

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, data={"csrf_token": self.token(), **(data or {})}, **kwargs)

    def signup(self, email: str | None = None, password: str = PASSWORD) -> str:
        email = email or f"u{secrets.token_hex(4)}@example.com"
        response = self.post("/dashboard/signup", {"email": email, "password": password, "password_confirm": password})
        assert response.status_code == 303, response.text
        return email

    def login(self, email: str, password: str = PASSWORD, next_path: str = "") -> httpx.Response:
        return self.post("/dashboard/login", {"email": email, "password": password, "next": next_path})

    def user_id(self) -> int:
        email = re.search(r"signed in as ([^<\s]+)", self.get("/dashboard/account").text)
        assert email
        user = users.by_email(self.gateway.engine, html.unescape(email.group(1)))
        assert user and user.id
        return user.id

    def start_connect(self, integration: str, **data: str) -> str:
        response = self.post(f"/dashboard/integrations/{integration}/connect", data)
        assert response.status_code == 303, response.text
        return response.headers["location"]

    def consent(self, authorize_url: str, decision: str = "approve") -> str:
        """Shows the provider's consent page and presses a button; returns where the provider redirects."""
        page = self.http.get(authorize_url)
        assert page.status_code == 200, page.text
        fields = {
            k: html.unescape(v) for k, v in re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', page.text)
        }
        decided = self.http.post(
            urlsplit(authorize_url)._replace(path="/oauth/decide", query="").geturl(),
            data={**fields, "decision": decision},
        )
        assert decided.status_code == 302
        return decided.headers["location"]

    def connect(self, integration: str = "github", **data: str) -> httpx.Response:
        return self.get(self.consent(self.start_connect(integration, **data)))

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def browser(public_gateway: Gateway) -> Iterator[Browser]:
    b = Browser(public_gateway)
    yield b
    b.close()


@pytest.fixture
def other(public_gateway: Gateway) -> Iterator[Browser]:
    b = Browser(public_gateway)
    yield b
    b.close()


def connection(gateway: Gateway, user_id: int, integration: str = "github") -> Connection | None:
    return connections.get(gateway.engine, user_id, integration)


def add_spec(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)
    return folder


# Accounts


@both_databases
def test_signup_login_logout(browser: Browser, public_gateway: Gateway) -> None:
    assert (
        browser.get("/dashboard/integrations").headers["location"]
        == "/dashboard/login?next=%2Fdashboard%2Fintegrations"
    )
    email = browser.signup()
    cookie = next(h for h in browser.http.cookies.jar if h.name == "gateway_session")
    page = browser.get("/dashboard/integrations")
    assert page.status_code == 200 and email in page.text and "GitHub" in page.text

    stolen = cookie.value
    out = browser.post("/dashboard/logout")
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/login?signed_out=1"
    assert browser.get("/dashboard/integrations").status_code == 303
    # The session ended in the database, not just in this browser.
    replay = httpx.get(f"{public_gateway.url}/dashboard/integrations", headers={"Cookie": f"gateway_session={stolen}"})
    assert replay.status_code == 303

    wrong = browser.login(email, "not the password")
    assert wrong.status_code == 400 and "do not match" in wrong.text
    right = browser.login(email, next_path="/dashboard/keys")
    assert right.status_code == 303 and right.headers["location"] == "/dashboard/keys"
    assert browser.get("/dashboard/keys").status_code == 200


def test_session_cookie_flags_and_what_it_holds(browser: Browser, public_gateway: Gateway) -> None:
    email = browser.signup()
    response = browser.login(email)
    [set_cookie] = [h for h in response.headers.get_list("set-cookie") if h.startswith("gateway_session=")]
    assert "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie and "Secure" not in set_cookie
    value = set_cookie.split(";")[0].split("=", 1)[1]
    with public_gateway.engine.connect() as c:
        stored = [row.id for row in c.execute(select(WebSession.__table__)).all()]
    assert value not in stored  # only a hash of it is kept
    assert len(value) >= 40


def test_https_public_url_makes_host_only_secure_cookies(database_url: str, provider: ProviderState) -> None:
    settings = make_settings(database_url, provider.url, public_url="https://gateway.example")  # type: ignore[attr-defined]
    with ServerThread(create_app(settings)) as server:
        gw = Gateway(settings, server)
        b = Browser(gw, origin="https://gateway.example")
        page = b.get("/dashboard/signup")
        token = html.unescape(CSRF.search(page.text).group(1))  # type: ignore[union-attr]
        form_cookie = page.headers["set-cookie"]
        assert form_cookie.startswith("__Host-gateway_form=") and "Secure" in form_cookie
        response = b.http.post(
            "/dashboard/signup",
            data={"csrf_token": token, "email": "s@example.com", "password": PASSWORD, "password_confirm": PASSWORD},
            headers={"Cookie": form_cookie.split(";")[0]},
        )
        assert response.status_code == 303, response.text
        cookies = response.headers.get_list("set-cookie")
        [session_cookie] = [h for h in cookies if h.startswith("__Host-gateway_session=")]
        assert "Secure" in session_cookie and "HttpOnly" in session_cookie and "Path=/" in session_cookie
        b.close()
        gw.http.close()


def test_signup_rules(browser: Browser, public_gateway: Gateway) -> None:
    short = browser.post(
        "/dashboard/signup", {"email": "a@example.com", "password": "short", "password_confirm": "short"}
    )
    assert short.status_code == 400 and "at least" in short.text
    mismatch = browser.post(
        "/dashboard/signup", {"email": "a@example.com", "password": PASSWORD, "password_confirm": PASSWORD + "x"}
    )
    assert mismatch.status_code == 400 and "not the same" in mismatch.text
    browser.signup("a@example.com")
    again = Browser(public_gateway)
    taken = again.post(
        "/dashboard/signup", {"email": "A@example.com", "password": PASSWORD, "password_confirm": PASSWORD}
    )
    assert taken.status_code == 400 and "already exists" in taken.text
    again.close()


def test_closed_signup(database_url: str, provider: ProviderState) -> None:
    settings = make_settings(database_url, provider.url, signup_open=False)  # type: ignore[attr-defined]
    with ServerThread(create_app(settings)) as server:
        gw = Gateway(settings, server)
        b = Browser(gw, origin=settings.public_url)
        page = b.get("/dashboard/signup")
        assert page.status_code == 403 and "gateway users create" in page.text
        assert "Create an account" not in b.get("/dashboard/login").text
        response = b.post(
            "/dashboard/signup", {"email": "c@example.com", "password": PASSWORD, "password_confirm": PASSWORD}
        )
        assert response.status_code == 403
        assert users.by_email(gw.engine, "c@example.com") is None
        b.close()
        gw.http.close()


@both_databases
def test_login_is_throttled_per_email_across_processes(
    public_gateway: Gateway, browser: Browser, database_url: str
) -> None:
    email = browser.signup()
    browser.post("/dashboard/logout")
    # A second app on the same database stands in for another worker process.
    with ServerThread(create_app(public_gateway.settings)) as second_server:
        second = Browser(public_gateway, url=second_server.url)
        for attempt in range(5):
            client = browser if attempt % 2 else second
            assert client.login(email, "wrong password!").status_code == 400
        refused = second.login(email)  # even the right password
        assert refused.status_code == 429 and "Too many" in refused.text
        assert browser.login(email).status_code == 429
        second.close()
    other_email = Browser(public_gateway)
    assert other_email.login("someone-else@example.com", "whatever else").status_code == 400
    other_email.close()


def test_login_is_throttled_per_ip(public_gateway: Gateway, browser: Browser) -> None:
    email = browser.signup()
    browser.post("/dashboard/logout")
    for n in range(20):
        assert browser.login(f"nobody{n}@example.com", "wrong password!").status_code == 400
    assert browser.login(email).status_code == 429


@both_databases
def test_password_change_ends_every_other_session(public_gateway: Gateway, browser: Browser, other: Browser) -> None:
    email = browser.signup()
    assert other.login(email).status_code == 303
    stale_token = other.token()
    wrong = browser.post(
        "/dashboard/account/password",
        {
            "current_password": "not it at all",
            "new_password": "a new long password",
            "new_password_confirm": "a new long password",
        },
    )
    assert wrong.status_code == 400
    changed = browser.post(
        "/dashboard/account/password",
        {
            "current_password": PASSWORD,
            "new_password": "a new long password",
            "new_password_confirm": "a new long password",
        },
    )
    assert changed.status_code == 303
    assert browser.get("/dashboard/account").status_code == 200  # this browser got a new session
    assert other.get("/dashboard/account").status_code == 303  # the other one is signed out
    # Pressing "Log out" there still lands on the login page, not on an error.
    assert other.http.post("/dashboard/logout", data={"csrf_token": stale_token}).headers["location"] == (
        "/dashboard/login?signed_out=1"
    )
    assert other.login(email).status_code == 400
    assert other.login(email, "a new long password").status_code == 303


# Web security


def test_forms_need_a_valid_csrf_token(browser: Browser, other: Browser, public_gateway: Gateway) -> None:
    browser.signup()
    other.signup()
    user_id = browser.user_id()
    missing = browser.http.post("/dashboard/keys", data={"name": "x", "access": "all"})
    assert missing.status_code == 403 and "text/html" in missing.headers["content-type"]
    forged = browser.http.post("/dashboard/keys", data={"name": "x", "access": "all", "csrf_token": "forged"})
    assert forged.status_code == 403
    # A real token, but minted for another session.
    foreign = browser.http.post("/dashboard/keys", data={"name": "x", "access": "all", "csrf_token": other.token()})
    assert foreign.status_code == 403
    anonymous = httpx.post(
        f"{public_gateway.url}/dashboard/login",
        data={"email": "a@b.c", "password": "x"},
        headers={"Origin": public_gateway.url},
    )
    assert anonymous.status_code == 403
    with public_gateway.engine.connect() as c:
        assert c.execute(select(ApiKey.id).where(ApiKey.user_id == user_id)).first() is None
    assert browser.post("/dashboard/keys", {"name": "x", "access": "all"}).status_code == 201


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:1"},
        {"Referer": "https://evil.example/page"},
        {},
    ],
    ids=["other-origin", "null-origin", "other-port", "other-referer", "no-origin-no-referer"],
)
def test_forms_from_other_origins_are_refused(
    browser: Browser, public_gateway: Gateway, headers: dict[str, str]
) -> None:
    browser.signup()
    token = browser.token()
    browser.http.headers.pop("Origin")
    response = browser.http.post(
        "/dashboard/keys", data={"csrf_token": token, "name": "x", "access": "all"}, headers=headers
    )
    assert response.status_code == 403 and "another site" in response.text
    with public_gateway.engine.connect() as c:
        assert c.execute(select(ApiKey.id)).first() is None


def test_referer_stands_in_for_a_missing_origin(browser: Browser, public_gateway: Gateway) -> None:
    browser.signup()
    token = browser.token()
    browser.http.headers.pop("Origin")
    response = browser.http.post(
        "/dashboard/keys",
        data={"csrf_token": token, "name": "x", "access": "all"},
        headers={"Referer": f"{public_gateway.url}/dashboard/keys"},
    )
    assert response.status_code == 201


def test_nothing_changes_on_get(browser: Browser, public_gateway: Gateway) -> None:
    browser.signup()
    browser.post("/dashboard/keys", {"name": "k", "access": "all"})
    [key] = keys_of(public_gateway, browser.user_id())
    assert browser.get(f"/dashboard/keys/{key.id}/revoke").status_code == 405
    assert browser.get("/dashboard/logout").status_code == 405
    assert browser.get("/dashboard/integrations/github/connect").status_code == 405
    assert keys_of(public_gateway, browser.user_id())[0].revoked_at is None
    assert browser.get("/dashboard/account").status_code == 200


def test_pages_send_security_headers_and_api_keeps_json(browser: Browser) -> None:
    page = browser.get("/dashboard/login")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"
    missing = browser.get("/dashboard/nowhere")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert "Page not found" in missing.text
    api = browser.get("/v1/nowhere/at-all")
    assert api.headers["content-type"] == "application/json" and api.json()["error"] == "not_found"
    assert "content-security-policy" not in api.headers


def test_a_crash_on_a_page_is_a_friendly_500(database_url: str, provider: ProviderState) -> None:
    settings = make_settings(database_url, provider.url)  # type: ignore[attr-defined]
    app = create_app(settings)

    async def boom(request):  # type: ignore[no-untyped-def]
        raise RuntimeError("secret detail that must not leak")

    app.router.add_route("/dashboard/boom", boom)
    with ServerThread(app) as server:
        response = httpx.get(f"{server.url}/dashboard/boom")
    assert response.status_code == 500 and response.headers["content-type"].startswith("text/html")
    assert "Something went wrong" in response.text and "secret detail" not in response.text


# The OAuth connect flow


@both_databases
def test_oauth_connect_flow(browser: Browser, public_gateway: Gateway, provider: ProviderState) -> None:
    browser.signup()
    user_id = browser.user_id()
    authorize = browser.start_connect("github")
    query = parse_qs(urlsplit(authorize).query)
    callback = f"{public_gateway.url}/oauth/github/callback"
    assert authorize.startswith(f"{provider.url}/oauth/authorize?")  # type: ignore[attr-defined]
    assert query["redirect_uri"] == [callback]
    assert query["scope"] == ["repo read:user"]
    assert query["code_challenge_method"] == ["S256"] and query["allow_signup"] == ["false"]
    assert len(query["state"][0]) >= 32
    # The state is stored hashed, bound to this session.
    with public_gateway.engine.connect() as c:
        [stored] = c.execute(select(OAuthState.__table__)).all()
    assert stored.id != query["state"][0] and stored.user_id == user_id

    done = browser.get(browser.consent(authorize))
    assert done.status_code == 303 and done.headers["location"] == "/dashboard/integrations/github?done=connected"
    saved = connection(public_gateway, user_id)
    assert saved is not None and saved.status == "connected" and saved.account == "octocat"
    assert saved.scopes == "repo read:user" and saved.refresh_token and saved.expires_at
    assert provider.token_requests[-1] == {"grant_type": "authorization_code", "client_auth": "body"}
    page = browser.get(done.headers["location"])
    assert "Connected." in page.text and "octocat" in page.text and "read:user" in page.text
    # The token works for API calls.
    secret = public_gateway.key(user_id)
    assert public_gateway.call(secret, "github", "get_authenticated_user").status_code == 200
    with public_gateway.engine.connect() as c:
        assert c.execute(select(OAuthState.id)).first() is None  # used up


def test_token_endpoint_auth_follows_the_spec(browser: Browser, provider: ProviderState) -> None:
    browser.signup()
    assert browser.connect("fakeapi").status_code == 303
    assert provider.token_requests[-1]["client_auth"] == "basic"


def test_denied_consent_stores_nothing(browser: Browser, public_gateway: Gateway) -> None:
    browser.signup()
    page = browser.get(browser.consent(browser.start_connect("github"), decision="deny"))
    assert page.status_code == 400 and "You declined access at GitHub" in page.text
    assert "text/html" in page.headers["content-type"]
    assert connection(public_gateway, browser.user_id()) is None


def test_provider_error_on_the_way_back_stores_nothing(browser: Browser, public_gateway: Gateway) -> None:
    browser.signup()
    state = parse_qs(urlsplit(browser.start_connect("github")).query)["state"][0]
    page = browser.get("/oauth/github/callback", params={"state": state, "error": "temporarily_unavailable"})
    assert page.status_code == 400 and "GitHub stopped the connection (temporarily_unavailable)" in page.text
    assert connection(public_gateway, browser.user_id()) is None
    # The state is spent: coming back with a code for it now is a replay.
    replay = browser.get("/oauth/github/callback", params={"state": state, "code": "anything"})
    assert replay.status_code == 400 and "already used" in replay.text


@both_databases
def test_replayed_state_is_refused(browser: Browser, public_gateway: Gateway) -> None:
    browser.signup()
    callback = browser.consent(browser.start_connect("github"))
    assert browser.get(callback).status_code == 303
    first = connection(public_gateway, browser.user_id())
    replay = browser.get(callback)
    assert replay.status_code == 400 and "already used" in replay.text
    assert connection(public_gateway, browser.user_id()) == first


@both_databases
def test_another_sessions_state_is_refused(browser: Browser, other: Browser, public_gateway: Gateway) -> None:
    browser.signup()
    other.signup()
    authorize = browser.start_connect("github")
    # The attacker's browser comes back with the victim's state (or the other way round).
    stolen = other.get(other.consent(authorize))
    assert stolen.status_code == 400 and "another browser session" in stolen.text
    assert connection(public_gateway, other.user_id()) is None
    assert connection(public_gateway, browser.user_id()) is None
    # The state's owner can still finish.
    assert browser.get(browser.consent(authorize)).status_code == 303
    assert connection(public_gateway, browser.user_id()) is not None


def test_signed_out_callback_is_refused(browser: Browser, public_gateway: Gateway) -> None:
    browser.signup()
    callback = browser.consent(browser.start_connect("github"))
    anonymous = httpx.get(callback)
    assert anonymous.status_code == 400 and "You are signed out in this browser" in anonymous.text
    assert connection(public_gateway, browser.user_id()) is None


@pytest.mark.parametrize(
    "query",
    ["", "?code=abc", "?state=made-up&code=abc", "?state=" + "x" * 300],
    ids=["bare", "no-state", "unknown", "long"],
)
def test_direct_callback_hits_are_friendly(browser: Browser, public_gateway: Gateway, query: str) -> None:
    browser.signup()
    response = browser.get(f"/oauth/github/callback{query}")
    assert response.status_code == 400 and "text/html" in response.headers["content-type"]
    assert "Could not connect GitHub" in response.text and "Nothing was stored" in response.text
    assert connection(public_gateway, browser.user_id()) is None
    assert browser.get("/oauth/no-such-thing/callback?state=x").status_code == 404


def test_expired_state_is_refused(browser: Browser, public_gateway: Gateway) -> None:
    browser.signup()
    callback = browser.consent(browser.start_connect("github"))
    with public_gateway.engine.begin() as c:
        c.execute(update(OAuthState).values(expires_at=utcnow() - dt.timedelta(seconds=1)))
    response = browser.get(callback)
    assert response.status_code == 400 and "expired" in response.text
    assert connection(public_gateway, browser.user_id()) is None


def test_token_endpoint_outage_is_a_friendly_page(
    browser: Browser, public_gateway: Gateway, provider: ProviderState
) -> None:
    browser.signup()
    callback = browser.consent(browser.start_connect("github"))
    provider.token_endpoint_status = 503
    response = browser.get(callback)
    assert response.status_code == 502 and "could not be reached" in response.text
    assert connection(public_gateway, browser.user_id()) is None


OPEN_REDIRECTS = [
    "//evil.example/x",
    "https://evil.example/",
    "/\\evil.example",
    "\\\\evil.example",
    "/%09/evil.example",
    "/\t/evil.example",
    "javascript:alert(1)",
    "evil.example",
    "http:/evil.example",
]


@pytest.mark.parametrize("target", OPEN_REDIRECTS)
def test_next_never_leaves_the_site(browser: Browser, public_gateway: Gateway, target: str) -> None:
    email = browser.signup()
    browser.post("/dashboard/logout")
    response = browser.login(email, next_path=target)
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/") and not location.startswith("//") and "\\" not in location
    assert urlsplit(location).netloc == ""
    assert location == "/dashboard/integrations" or location == target  # '/%09/…' is a local path


def test_next_after_connect(browser: Browser, public_gateway: Gateway) -> None:
    browser.signup()
    back = browser.connect("github", next="/dashboard/keys?from=connect")
    assert back.headers["location"] == "/dashboard/keys?from=connect"
    evil = browser.connect("github", next="//evil.example/")
    assert evil.headers["location"] == "/dashboard/integrations/github?done=connected"


def test_account_and_lookups_are_kept(tmp_path: Path, database_url: str, provider: ProviderState) -> None:
    folder = add_spec(
        tmp_path,
        "lookups",
        """name: lookups
display_name: Lookups
description: An OAuth integration with account and lookups.
docs_url: https://example.invalid/docs
reference: tests
base_url: https://lookups.invalid/api
auth:
  type: oauth2
  authorize_url: https://lookups.invalid/oauth/authorize
  token_url: https://lookups.invalid/oauth/token
  scopes: [one, two]
  scope_separator: ","
  authorize_params: {prompt: consent}
  token_response_fields: [token_type, not_sent]
  account: {path: /user, field: login}
  lookups:
    - {url: /user, field: id, store_as: user_number}
    - {url: /missing/thing, field: x, store_as: never}
connection_fields:
  site: Site name
endpoints:
  me:
    description: Who the token belongs to.
    method: GET
    path: /user
""",
    )
    port = free_port()
    fake = provider_overrides(provider.url)["github"]  # type: ignore[attr-defined]
    settings = make_settings(
        database_url,
        provider.url,  # type: ignore[attr-defined]
        public_url=f"http://127.0.0.1:{port}",
        integrations_paths=(TESTS / "integrations", folder),
        integrations={"lookups": fake},
    )
    with ServerThread(create_app(settings), port=port) as server:
        gw = Gateway(settings, server)
        b = Browser(gw)
        b.signup()
        missing = b.post("/dashboard/integrations/lookups/connect", {"field_site": "  "})
        assert missing.status_code == 400 and "Site name" in missing.text
        authorize = b.start_connect("lookups", field_site="acme")
        query = parse_qs(urlsplit(authorize).query)
        assert query["scope"] == ["one,two"] and query["prompt"] == ["consent"]
        assert b.get(b.consent(authorize)).status_code == 303
        saved = connection(gw, b.user_id(), "lookups")
        assert saved is not None and saved.account == "octocat"
        assert saved.extra == {"site": "acme", "token_type": "bearer", "user_number": "1"}
        b.close()
        gw.http.close()


# Disconnect


def test_disconnect_revokes_and_deletes(browser: Browser, public_gateway: Gateway, provider: ProviderState) -> None:
    browser.signup()
    browser.connect("fakeapi")
    user_id = browser.user_id()
    saved = connection(public_gateway, user_id, "fakeapi")
    assert saved is not None
    tokens = {public_gateway.box.decrypt(saved.access_token), public_gateway.box.decrypt(saved.refresh_token)}
    response = browser.post("/dashboard/integrations/fakeapi/disconnect")
    assert response.status_code == 303 and response.headers["location"].endswith("?done=disconnected")
    assert connection(public_gateway, user_id, "fakeapi") is None
    assert set(provider.revoked) == tokens


def test_disconnect_survives_a_failing_revocation(database_url: str, provider: ProviderState) -> None:
    port = free_port()
    dead = dataclasses.replace(
        provider_overrides(provider.url)["fakeapi"], revoke_url=f"http://127.0.0.1:{free_port()}/revoke"
    )  # type: ignore[attr-defined]
    settings = make_settings(
        database_url, provider.url, public_url=f"http://127.0.0.1:{port}", integrations={"fakeapi": dead}
    )  # type: ignore[attr-defined]
    with ServerThread(create_app(settings), port=port) as server:
        gw = Gateway(settings, server)
        b = Browser(gw)
        b.signup()
        assert b.connect("fakeapi").status_code == 303
        response = b.post("/dashboard/integrations/fakeapi/disconnect")
        assert response.status_code == 303
        assert connection(gw, b.user_id(), "fakeapi") is None
        b.close()
        gw.http.close()


# API-key integrations


APIKEY_SPEC = """name: keyed
display_name: Keyed
description: An integration that takes a pasted API key.
docs_url: https://example.invalid/docs
reference: tests
base_url: https://keyed.invalid/api
auth:
  type: api_key
  name: Authorization
  template: "Bearer {api_key}"
  label: Personal access token
  help: Find it under Settings, then Tokens.
endpoints:
  me:
    description: Who the key belongs to.
    method: GET
    path: /user
"""


def test_api_key_integration_form(tmp_path: Path, database_url: str, provider: ProviderState) -> None:
    folder = add_spec(tmp_path, "keyed", APIKEY_SPEC)
    fake = dataclasses.replace(provider_overrides(provider.url)["github"], client_id=None, client_secret=None)  # type: ignore[attr-defined]
    port = free_port()
    settings = make_settings(
        database_url,
        provider.url,  # type: ignore[attr-defined]
        public_url=f"http://127.0.0.1:{port}",
        integrations_paths=(TESTS / "integrations", folder),
        integrations={**provider_overrides(provider.url), "keyed": fake},  # type: ignore[attr-defined]
    )
    with ServerThread(create_app(settings), port=port) as server:
        gw = Gateway(settings, server)
        b = Browser(gw)
        b.signup()
        page = b.get("/dashboard/integrations/keyed")
        assert "Personal access token" in page.text and "Find it under Settings, then Tokens." in page.text
        assert b.post("/dashboard/integrations/keyed/connect", {"secret": "  "}).status_code == 400
        secret = provider.mint()["access_token"]
        saved = b.post("/dashboard/integrations/keyed/connect", {"secret": secret})
        assert saved.status_code == 303
        stored = connection(gw, b.user_id(), "keyed")
        assert stored is not None and stored.access_token != secret
        assert gw.box.decrypt(stored.access_token) == secret
        page = b.get("/dashboard/integrations/keyed")
        assert secret not in page.text and secret[-4:] in page.text
        key = gw.key(b.user_id())
        call = gw.call(key, "keyed", "me")
        assert call.status_code == 200 and call.json()["data"]["login"] == "octocat"
        b.close()
        gw.http.close()


# API keys


def keys_of(gateway: Gateway, user_id: int) -> list[ApiKey]:
    with gateway.engine.connect() as c:
        rows = c.execute(select(ApiKey.__table__).where(ApiKey.user_id == user_id).order_by(ApiKey.id)).all()
    return [ApiKey(**r._mapping) for r in rows]


@both_databases
def test_create_use_and_revoke_a_key(browser: Browser, public_gateway: Gateway, provider: ProviderState) -> None:
    browser.signup()
    user_id = browser.user_id()
    public_gateway.connect(user_id, provider)
    created = browser.post(
        "/dashboard/keys", {"name": "worker", "access": "some", "integrations": ["github"], "daily_limit": "25"}
    )
    assert created.status_code == 201 and created.headers["cache-control"] == "no-store"
    secret = re.search(r'value="(sk_[^"]+)"', created.text).group(1)  # type: ignore[union-attr]
    assert "data-copy" in created.text and "only time it is shown" in created.text
    [key] = keys_of(public_gateway, user_id)
    assert (key.name, key.integrations, key.daily_limit) == ("worker", ["github"], 25)
    assert key.key_hash == keys.hash_key(secret)

    listing = browser.get("/dashboard/keys").text
    assert key.prefix in listing and secret not in listing
    assert public_gateway.call(secret, "github", "get_authenticated_user").status_code == 200
    assert "0 / 25" not in browser.get("/dashboard/keys").text and "1 / 25" in browser.get("/dashboard/keys").text
    assert "just now" in browser.get(f"/dashboard/keys/{key.id}").text

    revoked = browser.post(f"/dashboard/keys/{key.id}/revoke")
    assert revoked.status_code == 303
    assert public_gateway.call(secret, "github", "get_authenticated_user").status_code == 401
    assert "Revoked keys" in browser.get("/dashboard/keys").text


def test_scope_not_allowed_points_to_a_page_that_fixes_it(
    browser: Browser, public_gateway: Gateway, provider: ProviderState
) -> None:
    browser.signup()
    user_id = browser.user_id()
    public_gateway.connect(user_id, provider)
    browser.post("/dashboard/keys", {"name": "narrow", "access": "some", "integrations": ["fakeapi"]})
    [key] = keys_of(public_gateway, user_id)
    _, secret = keys.create(public_gateway.engine, user_id, "other", ["fakeapi"])
    refused = public_gateway.call(secret, "github", "get_authenticated_user").json()
    assert refused["error"] == "scope_not_allowed"
    key_id = urlsplit(refused["action_url"]).path.rsplit("/", 1)[1]
    page = browser.get(urlsplit(refused["action_url"]).path)
    assert page.status_code == 200 and "Change what this key may do" in page.text
    saved = browser.post(
        f"/dashboard/keys/{key_id}", {"name": "other", "access": "some", "integrations": ["fakeapi", "github"]}
    )
    assert saved.status_code == 303
    assert public_gateway.call(secret, "github", "get_authenticated_user").status_code == 200
    browser.post(f"/dashboard/keys/{key.id}", {"name": "narrow", "access": "all", "daily_limit": ""})
    assert keys_of(public_gateway, user_id)[0].integrations is None


@pytest.mark.parametrize(
    "form, message",
    [
        ({"access": "some"}, "at least one integration"),
        ({"access": "some", "integrations": ["no-such"]}, "from the list"),
        ({"access": "all", "daily_limit": "0"}, "daily limit"),
        ({"access": "all", "daily_limit": "ten"}, "daily limit"),
        ({"access": "all", "daily_limit": "²"}, "daily limit"),
    ],
)
def test_key_form_problems(browser: Browser, public_gateway: Gateway, form: dict[str, Any], message: str) -> None:
    browser.signup()
    response = browser.post("/dashboard/keys", {"name": "x", **form})
    assert response.status_code == 400 and message in response.text
    assert keys_of(public_gateway, browser.user_id()) == []


# Calls and usage


def record(gateway: Gateway, user_id: int, key_id: int | None, **values: Any) -> str:
    """A finished run written straight into the table, as the pipeline would leave it."""
    now = utcnow()
    row = {
        "id": new_id("run"),
        "user_id": user_id,
        "api_key_id": key_id,
        "integration": "github",
        "endpoint": "get_authenticated_user",
        "status": "completed",
        "http_status": 200,
        "created_at": now,
        "started_at": now,
        "ended_at": now,
        "duration_ms": 12.5,
        **values,
    }
    with gateway.engine.begin() as c:
        c.execute(Run.__table__.insert().values(**row))
    return row["id"]


@both_databases
def test_calls_page_filters(browser: Browser, public_gateway: Gateway, provider: ProviderState) -> None:
    browser.signup()
    user_id = browser.user_id()
    public_gateway.connect(user_id, provider)
    public_gateway.connect(user_id, provider, integration="fakeapi")
    first, second = public_gateway.key(user_id, name="first"), public_gateway.key(user_id, name="second")
    ok = public_gateway.call(first, "github", "get_authenticated_user").headers["x-run-id"]
    missing = public_gateway.call(second, "fakeapi", "missing").headers["x-run-id"]
    [first_key, second_key] = keys_of(public_gateway, user_id)

    everything = browser.get("/dashboard/calls").text
    assert everything.index(missing) < everything.index(ok)  # newest first
    cases = {
        "integration=github": ok,
        "integration=fakeapi": missing,
        "endpoint=missing": missing,
        "status=failed": missing,
        "status=completed": ok,
        f"key={first_key.id}": ok,
        f"key={second_key.id}": missing,
    }
    for query, expected in cases.items():
        text = browser.get(f"/dashboard/calls?{query}").text
        assert expected in text, query
        assert ({ok, missing} - {expected}).pop() not in text, query
    assert ok in browser.get("/dashboard/calls?status=bogus").text

    detail = browser.get(f"/dashboard/calls/{missing}")
    assert detail.status_code == 200
    assert "fakeapi/missing" in detail.text and "upstream_error" in detail.text and "404" in detail.text


@both_databases
def test_calls_page_paginates_by_cursor(browser: Browser, public_gateway: Gateway) -> None:
    browser.signup()
    user_id = browser.user_id()
    made = [record(public_gateway, user_id, None) for _ in range(60)]
    first = browser.get("/dashboard/calls").text
    older = re.search(r'href="\?([^"]+)" rel="next"', first)
    assert older is not None
    second = browser.get("/dashboard/calls?" + html.unescape(older.group(1))).text
    on_first = {r for r in made if r in first}
    on_second = {r for r in made if r in second}
    assert len(on_first) == 50 and len(on_second) == 10 and not on_first & on_second
    assert on_first == set(sorted(made, reverse=True)[:50])  # newest ids first
    assert 'rel="next"' not in second


def test_run_page_never_shows_payloads(browser: Browser, public_gateway: Gateway) -> None:
    browser.signup()
    user_id = browser.user_id()
    run_id = record(
        public_gateway,
        user_id,
        None,
        status="failed",
        http_status=401,
        error_code="token_expired",
        error_message="The GitHub connection must be reconnected.",
        refreshed=True,
        attempts=2,
        upstream_status=401,
    )
    with public_gateway.engine.begin() as c:
        c.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(
                request="REQUEST-PAYLOAD-MARKER",
                result="RESULT-PAYLOAD-MARKER",
                callback_url="https://hooks.example/CALLBACK-MARKER",
                idempotency_key="IDEMPOTENCY-MARKER",
            )
        )
    page = browser.get(f"/dashboard/calls/{run_id}").text
    assert "MARKER" not in page
    assert "token_expired" in page and "Yes" in page and "Reconnect GitHub" in page
    assert "/dashboard/integrations/github?reconnect=1" in page


@both_databases
def test_usage_page(browser: Browser, public_gateway: Gateway, provider: ProviderState) -> None:
    browser.signup()
    user_id = browser.user_id()
    public_gateway.connect(user_id, provider)
    secret = public_gateway.key(user_id, name="limited", daily_limit=2)
    for _ in range(2):
        public_gateway.call(secret, "github", "get_authenticated_user")
    # Yesterday's calls do not count.
    old = record(public_gateway, user_id, None)
    with public_gateway.engine.begin() as c:
        c.execute(update(Run).where(Run.id == old).values(created_at=utcnow() - dt.timedelta(days=1, hours=1)))
    page = browser.get("/dashboard/usage").text
    assert re.search(r'stat-value">2</span> <span class="stat-label">calls today', page)
    assert re.search(r'stat-value">1</span> <span class="stat-label">connected integration<', page)
    assert "Limit reached" in page and 'max="2"' in page
    assert "Your plan: free" in page and "5000" in page


# Other people's things


@both_databases
def test_one_user_never_reaches_anothers_things(
    browser: Browser, other: Browser, public_gateway: Gateway, provider: ProviderState
) -> None:
    browser.signup()
    owner = browser.user_id()
    public_gateway.connect(owner, provider)
    browser.post("/dashboard/keys", {"name": "mine", "access": "all"})
    [key] = keys_of(public_gateway, owner)
    run_id = record(public_gateway, owner, key.id)
    other.signup()

    for path in (f"/dashboard/keys/{key.id}", f"/dashboard/calls/{run_id}", "/dashboard/keys/abc", "/dashboard/keys/²"):
        response = other.get(path)
        assert response.status_code == 404, path
        assert "mine" not in response.text
    assert other.post(f"/dashboard/keys/{key.id}", {"name": "stolen", "access": "all"}).status_code == 404
    assert other.post(f"/dashboard/keys/{key.id}/revoke").status_code == 404
    assert run_id not in other.get(f"/dashboard/calls?key={key.id}").text
    assert run_id not in other.get("/dashboard/calls").text
    assert "mine" not in other.get("/dashboard/keys").text
    assert other.post("/dashboard/integrations/github/disconnect").status_code == 303
    integrations = other.get("/dashboard/integrations").text
    assert "octocat" not in integrations

    [after] = keys_of(public_gateway, owner)
    assert after.name == "mine" and after.revoked_at is None
    assert connection(public_gateway, owner) is not None


# Every action_url opens the page that fixes it, through a login


def test_action_urls_survive_the_login_redirect(public_gateway: Gateway, provider: ProviderState) -> None:
    user_id = public_gateway.user("fixer@example.com")
    secret = public_gateway.key(user_id, name="narrow", integrations=["fakeapi"])
    not_allowed = public_gateway.call(secret, "github", "get_authenticated_user").json()["action_url"]
    not_connected = public_gateway.call(secret, "fakeapi", "text").json()
    public_gateway.connect(user_id, provider)
    with public_gateway.engine.begin() as c:
        c.execute(update(Connection).where(Connection.user_id == user_id).values(status="needs_reconnect"))
    expired = public_gateway.call(public_gateway.key(user_id), "github", "get_authenticated_user").json()
    run_url = f"{public_gateway.url}/dashboard/calls/{record(public_gateway, user_id, None)}"

    expected = {
        not_allowed: "Change what this key may do",
        not_connected["action_url"]: "Connect Fake API",
        expired["action_url"]: "Reconnect GitHub",
        f"{public_gateway.url}/dashboard/usage": "calls today",
        run_url: "Outcome",
    }
    assert expired["action_url"].endswith("/dashboard/integrations/github?reconnect=1")
    for url, text in expected.items():
        assert url.startswith(public_gateway.settings.public_url)
        b = Browser(public_gateway)
        first = b.get(url)
        assert first.status_code == 303
        login_page = b.get(first.headers["location"])
        wanted = urlsplit(url).path + (f"?{urlsplit(url).query}" if urlsplit(url).query else "")
        assert f'name="next" value="{html.escape(wanted)}"' in login_page.text
        back = b.login("fixer@example.com", "correct horse battery", next_path=wanted)
        assert back.headers["location"] == wanted
        page = b.get(back.headers["location"])
        assert page.status_code == 200 and text in page.text, url
        b.close()


# Approvals


def wait_for_run(gateway: Gateway, run_id: str, user_id: int, statuses: tuple[str, ...]) -> Run:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with gateway.engine.connect() as c:
            row = c.execute(select(Run.__table__).where(Run.id == run_id, Run.user_id == user_id)).first()
        if row is not None and row.status in statuses:
            return Run(**row._mapping)
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {statuses}")


def test_approvals_in_the_dashboard(
    browser: Browser, other: Browser, public_gateway: Gateway, provider: ProviderState
) -> None:
    email = browser.signup()
    user_id = browser.user_id()
    public_gateway.connect(user_id, provider)
    created = browser.post("/dashboard/keys", {"name": "careful", "access": "all", "require_approval": "1"})
    secret = re.search(r'value="(sk_[^"]+)"', created.text).group(1)  # type: ignore[union-attr]
    [key] = keys_of(public_gateway, user_id)
    assert key.require_approval

    held = public_gateway.call(secret, "github", "create_issue", {"repo": "acme/webapp", "title": "Please approve"})
    assert held.status_code == 202
    first = held.json()
    path = urlsplit(first["action_url"]).path
    assert path == f"/dashboard/approvals/{first['id']}"
    page = browser.get(path)
    assert page.status_code == 200 and "Approve this call?" in page.text
    assert "Please approve" in page.text and "acme/webapp" in page.text and "careful" in page.text
    assert first["id"] in browser.get("/dashboard/approvals").text
    # Someone signed out who follows the action_url lands on it after signing in.
    signed_out = Browser(public_gateway)
    assert signed_out.get(first["action_url"]).headers["location"].startswith("/dashboard/login?next=")
    assert signed_out.login(email, next_path=path).headers["location"] == path
    signed_out.close()
    assert "waiting for your approval" in browser.get(f"/dashboard/calls/{first['id']}").text

    other.signup()
    assert other.get(path).status_code == 404
    assert other.post(f"{path}/approve").status_code == 404
    assert other.post(f"{path}/reject").status_code == 404
    assert first["id"] not in other.get("/dashboard/approvals").text

    approved = browser.post(f"{path}/approve")
    assert approved.status_code == 303 and approved.headers["location"] == "/dashboard/approvals?done=approved"
    assert wait_for_run(public_gateway, first["id"], user_id, ("completed", "failed")).status == "completed"
    assert [r.method for r in provider.api_requests() if r.path.endswith("/issues")] == ["POST"]
    decided = browser.get(path).text
    assert "Call approved" in decided and "Please approve" not in decided  # params only while waiting

    second = public_gateway.call(secret, "github", "create_issue", {"repo": "acme/webapp", "title": "No"}).json()
    rejected = browser.post(f"/dashboard/approvals/{second['id']}/reject")
    assert rejected.headers["location"] == "/dashboard/approvals?done=rejected"
    run = wait_for_run(public_gateway, second["id"], user_id, ("failed",))
    assert run.error_code == "approval_denied"
    assert len([r for r in provider.api_requests() if r.path.endswith("/issues")]) == 1

    browser.post(f"/dashboard/keys/{key.id}", {"name": "careful", "access": "all"})
    assert not keys_of(public_gateway, user_id)[0].require_approval


# Plans


def test_plan_connection_limit_applies_to_the_dashboard(
    tmp_path: Path, database_url: str, provider: ProviderState
) -> None:
    plans = tmp_path / "plans.yaml"
    plans.write_text("tiny: {max_connections: 1, daily_calls: 3}\n")
    port = free_port()
    overrides = {
        name: dataclasses.replace(fake, revoke_url=f"{provider.url}/oauth/revoke")  # type: ignore[attr-defined]
        for name, fake in provider_overrides(provider.url).items()  # type: ignore[attr-defined]
    }
    settings = make_settings(
        database_url,
        provider.url,  # type: ignore[attr-defined]
        public_url=f"http://127.0.0.1:{port}",
        integrations=overrides,
        plans_file=plans,
        default_plan="tiny",
    )
    with ServerThread(create_app(settings), port=port) as server:
        gw = Gateway(settings, server)
        b = Browser(gw)
        b.signup()
        # Both flows start while the plan still has room; only the first to come back may connect.
        github, fakeapi = b.start_connect("github"), b.start_connect("fakeapi")
        assert b.get(b.consent(github)).status_code == 303
        late = b.get(b.consent(fakeapi))
        assert late.status_code == 403 and "allows 1 connected integration" in late.text
        assert connection(gw, b.user_id(), "fakeapi") is None
        refused = b.post("/dashboard/integrations/fakeapi/connect")
        assert refused.status_code == 403 and "allows 1 connected integration" in refused.text
        assert b.connect("github").status_code == 303  # reconnecting is always allowed
        usage = b.get("/dashboard/usage").text
        assert "Your plan: tiny" in usage and "Limit reached" in usage
        b.close()
        gw.http.close()


@pytest.mark.postgres
def test_database_outage_is_a_friendly_page(provider: ProviderState) -> None:
    if not postgres_available():
        pytest.skip("PostgreSQL is not running")
    schema, proxy = PostgresSchema(), TcpProxy(5432)
    port = free_port()
    url = schema.url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = make_settings(url, provider.url, public_url=f"http://127.0.0.1:{port}")  # type: ignore[attr-defined]
    try:
        with ServerThread(create_app(settings), port=port) as server:
            gw = Gateway(settings, server)
            b = Browser(gw)
            b.signup()
            proxy.cut()
            down = b.get("/dashboard/integrations")
            assert down.status_code == 503 and down.headers["content-type"].startswith("text/html")
            assert "Temporarily unavailable" in down.text and "Traceback" not in down.text
            proxy.restore()
            b.close()
            gw.http.close()
    finally:
        proxy.close()
        schema.drop()


# Queued calls and waitpoints


def pending_run(gateway: Gateway, user_id: int, queue: str = "exports") -> str:
    key, _ = keys.create(gateway.engine, user_id)
    record = RunRecord.start()
    record.user_id, record.api_key_id, record.integration, record.endpoint = user_id, key.id, "fakeapi", "text"
    record.queue_name = queue
    # The gateway's worker would run it at once: hold it as if another queue call were running first.
    blocker = RunRecord.start()
    blocker.user_id, blocker.integration, blocker.endpoint, blocker.queue_name = user_id, "fakeapi", "text", queue
    blocker.status = "running"
    runs.save(gateway.engine, gateway.box, blocker, None)
    runs.create_pending(gateway.engine, gateway.box, record=record, params={})
    return record.id


def test_a_pending_queued_call_can_be_cancelled_from_its_page(
    browser: Browser, other: Browser, public_gateway: Gateway
) -> None:
    browser.signup()
    user_id = browser.user_id()
    run_id = pending_run(public_gateway, user_id)
    listed = browser.get("/dashboard/calls?status=pending")
    assert run_id in listed.text
    page = browser.get(f"/dashboard/calls/{run_id}")
    assert "waiting in the queue" in page.text and "Cancel this call" in page.text

    other.signup()
    assert other.post(f"/dashboard/calls/{run_id}/cancel").status_code == 404
    assert runs.get_any(public_gateway.engine, run_id).status == "pending"
    assert browser.http.post(f"/dashboard/calls/{run_id}/cancel", data={"csrf_token": "forged"}).status_code == 403

    done = browser.post(f"/dashboard/calls/{run_id}/cancel")
    assert done.status_code == 303 and done.headers["location"].endswith("?done=cancelled")
    assert runs.get_any(public_gateway.engine, run_id).status == "cancelled"
    again = browser.post(f"/dashboard/calls/{run_id}/cancel")
    assert again.headers["location"].endswith("?done=not-cancelled")
    page = browser.get(again.headers["location"])
    assert "Cancel this call" not in page.text and "can be cancelled" in page.text


def test_waitpoints_are_listed_with_their_status(browser: Browser, other: Browser, public_gateway: Gateway) -> None:
    browser.signup()
    user_id = browser.user_id()
    engine = public_gateway.engine
    import datetime as dt

    done, _ = waitpoints.create(
        engine, user_id=user_id, api_key_id=None, timeout=dt.timedelta(hours=1), tags=["deploy"]
    )
    waitpoints.complete(engine, done.id, {"ok": True})
    waiting = waitpoints.connection_waitpoint(engine, user_id, "github")
    late, _ = waitpoints.create(engine, user_id=user_id, api_key_id=None, timeout=dt.timedelta(seconds=1))
    time.sleep(1.2)
    page = browser.get("/dashboard/waitpoints")
    assert page.status_code == 200
    for w, label in ((done, "completed"), (waiting, "waiting"), (late, "timed out")):
        row = page.text[page.text.index(w.id) :].split("</tr>")[0]
        assert label in row, (w.id, label)
    assert "connecting" in page.text and "deploy" in page.text
    only = browser.get("/dashboard/waitpoints?status=COMPLETED").text
    assert done.id in only and waiting.id not in only

    other.signup()
    assert done.id not in other.get("/dashboard/waitpoints").text
