"""Connect sessions and the hosted connect page, driven by a plain HTTP client as a browser would,
against the fake OAuth provider; and the end-user and connection APIs around them."""

from __future__ import annotations

import html
import re
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select, update

from gateway.storage.models import ConnectSession, Run
from tests.conftest import Gateway

pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


class EndUserBrowser:
    """A browser with no dashboard login: cookies, the gateway's Origin on its forms."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        # Our forms come from the public address, which is where a browser would have loaded them.
        origin = gateway.settings.public_url
        self.http = httpx.Client(base_url=gateway.url, timeout=30, headers={"Origin": origin})

    def open(self, connect_url: str) -> httpx.Response:
        """Opens a connect link and presses Continue, as a person does (a GET alone claims nothing)."""
        shown = self.http.get(connect_url)
        found = CSRF.search(shown.text)
        if shown.status_code != 200 or 'action="/connect/open"' not in shown.text or found is None:
            return shown
        token = parse_qs(urlsplit(connect_url).query)["token"][0]
        return self.http.post("/connect/open", data={"csrf_token": html.unescape(found.group(1)), "token": token})

    def page(self) -> httpx.Response:
        return self.http.get("/connect")

    def press(self, integration: str, **data: str) -> httpx.Response:
        found = CSRF.search(self.page().text)
        assert found
        return self.http.post(f"/connect/{integration}", data={"csrf_token": html.unescape(found.group(1)), **data})

    def consent(self, authorize_url: str, user: str, decision: str = "approve") -> str:
        page = self.http.get(authorize_url)
        assert page.status_code == 200, page.text
        fields = {
            k: html.unescape(v) for k, v in re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', page.text)
        }
        decided = self.http.post(
            urlsplit(authorize_url)._replace(path="/oauth/decide", query="").geturl(),
            data={**fields, "decision": decision, "user": user},
        )
        assert decided.status_code == 302
        return decided.headers["location"]

    def close(self) -> None:
        self.http.close()


def session(gateway: Gateway, secret: str, **body: object) -> httpx.Response:
    body.setdefault("end_user", {"id": "alice", "display_name": "Alice", "email": "alice@example.com"})
    return gateway.http.post("/v1/connect/sessions", json=body, headers={"Authorization": f"Bearer {secret}"})


def test_an_end_user_connects_github_through_a_connect_session(public_gateway: Gateway, provider) -> None:
    gw = public_gateway
    owner = gw.user()
    secret = gw.key(owner)
    made = session(
        gw, secret, integrations=["github"], redirect_url="https://app.example.com/done?step=2", app_name="Acme"
    )
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["token"].startswith("cs_") and body["connect_url"] == f"{gw.url}/connect?token={body['token']}"
    assert body["end_user"] == {"id": "alice"} and body["expires_at"]
    with gw.engine.connect() as c:
        [stored] = c.execute(select(ConnectSession.__table__)).all()
    assert stored.id != body["token"] and body["token"] not in str(tuple(stored))  # kept hashed

    browser = EndUserBrowser(gw)
    opened = browser.open(body["connect_url"])
    assert opened.status_code == 303 and opened.headers["location"] == "/connect"
    page = browser.page()
    assert page.status_code == 200 and "Connect your accounts to Acme" in page.text
    assert "GitHub" in page.text and "Slack" not in page.text  # only what the session allows
    assert (
        page.headers["cache-control"] == "no-store"
        and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    )

    authorize = browser.press("github")
    assert authorize.status_code == 303
    query = parse_qs(urlsplit(authorize.headers["location"]).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["state"][0]) >= 32
    back = browser.http.get(browser.consent(authorize.headers["location"], user="alice-login"))
    assert back.status_code == 303 and back.headers["location"].startswith("/connect/done?connection=conn_")
    done = browser.http.get(back.headers["location"])
    assert done.status_code == 303
    target = urlsplit(done.headers["location"])
    assert (target.scheme, target.netloc, target.path) == ("https", "app.example.com", "/done")
    params = parse_qs(target.query)
    assert params["step"] == ["2"] and params["integration"] == ["github"] and params["status"] == ["connected"]
    connection_id = params["connection_id"][0]

    # The owner's server now calls for alice, with alice's account.
    call = gw.http.post(
        "/v1/github/get_authenticated_user",
        json={"params": {}},
        headers={"Authorization": f"Bearer {secret}", "X-End-User-Id": "alice"},
    )
    assert call.status_code == 200 and call.json()["data"]["login"] == "alice-login"
    assert gw.run(call.headers["x-run-id"]).connection_id == connection_id
    # The owner's own calls still have no GitHub connection.
    assert gw.call(secret, "github", "get_authenticated_user").status_code == 403

    # The session is spent: its link opens nothing any more, in this browser or another.
    assert browser.open(body["connect_url"]).status_code == 410
    other = EndUserBrowser(gw)
    assert other.open(body["connect_url"]).status_code == 410
    browser.close()
    other.close()


def test_a_connect_link_works_in_the_first_browser_only_and_not_after_it_expires(public_gateway: Gateway) -> None:
    gw = public_gateway
    secret = gw.key(gw.user())
    url = session(gw, secret).json()["connect_url"]
    # A link preview fetching the URL (a GET, no Continue) claims nothing.
    preview = httpx.get(url.replace(gw.settings.public_url, gw.url))
    assert preview.status_code == 200 and "Continue" in preview.text
    assert "gateway_connect" not in preview.headers.get("set-cookie", "")  # only the form's CSRF nonce
    first, second = EndUserBrowser(gw), EndUserBrowser(gw)
    assert first.open(url).status_code == 303
    assert first.open(url).status_code == 303  # the same browser again: fine
    refused = second.open(url)
    assert refused.status_code == 409 and "another browser" in refused.text
    assert second.page().status_code == 410  # no binding: nothing to show
    # A forged form with no binding changes nothing.
    assert second.http.post("/connect/github", data={"csrf_token": "x"}).status_code in (403, 410)

    with gw.engine.begin() as c:
        c.execute(update(ConnectSession).values(expires_at=ConnectSession.created_at))
    expired = first.page()
    assert expired.status_code == 410 and "expired" in expired.text
    first.close()
    second.close()


def test_a_refused_consent_is_explained_on_the_page_and_stores_nothing(public_gateway: Gateway) -> None:
    gw = public_gateway
    owner = gw.user()
    secret = gw.key(owner)
    browser = EndUserBrowser(gw)
    browser.open(session(gw, secret, integrations=["github"]).json()["connect_url"])
    authorize = browser.press("github").headers["location"]
    page = browser.http.get(browser.consent(authorize, user="alice-login", decision="deny"))
    assert page.status_code == 400 and "declined access" in page.text and "Connect GitHub" in page.text
    listed = gw.http.get("/v1/connections", headers={"Authorization": f"Bearer {secret}"}).json()
    assert listed == {"connections": []}
    browser.close()


def test_connect_session_bodies_and_keys_that_may_not_make_them(gateway: Gateway) -> None:
    owner = gateway.user()
    secret = gateway.key(owner)
    bad = [
        {"end_user": "alice"},
        {"end_user": {"id": ""}},
        {"end_user": {"id": "alice", "nickname": "al"}},
        {"integrations": ["no-such-thing"]},
        {"integrations": []},
        {"redirect_url": "javascript:alert(1)"},
        {"redirect_url": "https://user:pw@app.example.com/"},
        {"allowed_origins": ["https://app.example.com/path"]},
        {"allowed_origins": "https://app.example.com"},
        {"surprise": 1},
    ]
    for body in bad:
        made = session(gateway, secret, **body)
        assert made.status_code == 400 and made.json()["error"] == "bad_request", body
    assert session(gateway, gateway.key(owner, acts_for="owner")).status_code == 403
    narrow = gateway.key(owner, integrations=["fakeapi"])
    assert session(gateway, narrow, integrations=["github"]).status_code == 403
    made = session(gateway, secret, allowed_origins=["https://APP.example.com:443", "http://localhost:3000"])
    assert made.status_code == 201
    with gateway.engine.connect() as c:
        [origins] = c.execute(select(ConnectSession.allowed_origins)).scalars().all()
    assert origins == ["http://localhost:3000", "https://app.example.com"]


def test_the_connections_api_lists_changes_and_deletes_with_revocation(gateway: Gateway, provider) -> None:
    owner = gateway.user()
    secret = gateway.key(owner)
    auth = {"Authorization": f"Bearer {secret}"}
    own = gateway.connect(owner, provider, account="owner-login")
    work = gateway.connect(owner, provider, account="alice-work", end_user="alice")
    personal = gateway.connect(owner, provider, account="alice-personal", end_user="alice")

    listed = gateway.http.get("/v1/connections", headers=auth).json()["connections"]
    assert {(c["id"], c["end_user_id"]) for c in listed} == {
        (own.public_id, None),
        (work.public_id, "alice"),
        (personal.public_id, "alice"),
    }
    mine = gateway.http.get("/v1/connections?end_user_id=alice", headers=auth).json()["connections"]
    assert [c["account"] for c in mine] == ["alice-work", "alice-personal"]
    assert [c["default"] for c in mine] == [False, True] and mine[0]["status"] == "connected"
    assert mine[0]["scopes"] == ["repo", "read:user"]

    changed = gateway.http.patch(
        f"/v1/connections/{work.public_id}", json={"label": "Work", "default": True}, headers=auth
    )
    assert changed.status_code == 200 and changed.json()["label"] == "Work" and changed.json()["default"] is True
    call = gateway.http.post(
        "/v1/github/get_authenticated_user", json={"params": {}}, headers={**auth, "X-End-User-Id": "alice"}
    )
    assert call.json()["data"]["login"] == "alice-work"
    assert (
        gateway.http.patch(f"/v1/connections/{work.public_id}", json={"default": False}, headers=auth).status_code
        == 400
    )

    # A key limited to another integration sees none of these, even by id.
    narrow = {"Authorization": f"Bearer {gateway.key(owner, integrations=['fakeapi'])}"}
    assert gateway.http.get("/v1/connections", headers=narrow).json() == {"connections": []}
    assert gateway.http.get(f"/v1/connections/{work.public_id}", headers=narrow).status_code == 404
    # Nor does another owner's key.
    stranger = {"Authorization": f"Bearer {gateway.key(gateway.user())}"}
    assert gateway.http.get(f"/v1/connections/{work.public_id}", headers=stranger).status_code == 404
    assert gateway.http.delete(f"/v1/connections/{work.public_id}", headers=stranger).status_code == 404

    deleted = gateway.http.delete(f"/v1/connections/{work.public_id}", headers=auth)
    assert deleted.status_code == 200 and deleted.json() == {"deleted": True}
    assert gateway.box.decrypt(work.access_token) in provider.revoked
    assert gateway.http.get(f"/v1/connections/{work.public_id}", headers=auth).status_code == 404
    call = gateway.http.post(
        "/v1/github/get_authenticated_user", json={"params": {}}, headers={**auth, "X-End-User-Id": "alice"}
    )
    assert call.json()["data"]["login"] == "alice-personal"


def test_the_end_users_api_lists_renames_and_deletes(gateway: Gateway, provider) -> None:
    owner = gateway.user()
    secret = gateway.key(owner)
    auth = {"Authorization": f"Bearer {secret}"}
    alice = gateway.connect(owner, provider, account="alice-login", end_user="alice")
    gateway.connect(owner, provider, account="bob-login", end_user="org/bob")
    call = gateway.http.post(
        "/v1/github/get_authenticated_user",
        json={"params": {}, "async": True},
        headers={**auth, "X-End-User-Id": "alice"},
    )
    assert call.status_code == 202
    run_id = call.json()["id"]
    deadline = time.monotonic() + 30
    while gateway.http.get(f"/v1/runs/{run_id}", headers=auth).json()["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)

    listed = gateway.http.get("/v1/end_users", headers=auth).json()
    assert [(e["id"], e["connections"]) for e in listed["end_users"]] == [("alice", 1), ("org/bob", 1)]
    assert [e["id"] for e in gateway.http.get("/v1/end_users?q=BOB", headers=auth).json()["end_users"]] == ["org/bob"]
    renamed = gateway.http.patch(
        "/v1/end_users/alice", json={"display_name": "Alice A.", "email": "a@example.com"}, headers=auth
    )
    assert renamed.status_code == 200 and renamed.json()["display_name"] == "Alice A."
    shown = gateway.http.get("/v1/end_users/org%2Fbob", headers=auth)
    assert shown.status_code == 200 and [c["account"] for c in shown.json()["connections"]] == ["bob-login"]
    assert gateway.http.get("/v1/end_users/nobody", headers=auth).status_code == 404
    owner_only = {"Authorization": f"Bearer {gateway.key(owner, acts_for='owner')}"}
    assert gateway.http.get("/v1/end_users", headers=owner_only).status_code == 403

    deleted = gateway.http.delete("/v1/end_users/alice", headers=auth)
    assert deleted.status_code == 200 and deleted.json() == {"deleted": True, "connections_revoked": 1}
    assert gateway.box.decrypt(alice.access_token) in provider.revoked
    assert [e["id"] for e in gateway.http.get("/v1/end_users", headers=auth).json()["end_users"]] == ["org/bob"]
    with gateway.engine.connect() as c:
        rows = c.execute(select(Run.__table__).where(Run.end_user_id == "alice")).all()
    assert rows and all(r.request is None and r.result is None for r in rows)


def test_checking_a_connection_proves_it_works_or_marks_it(gateway: Gateway, provider) -> None:
    owner = gateway.user()
    auth = {"Authorization": f"Bearer {gateway.key(owner)}"}
    alice = gateway.connect(owner, provider, account="alice-login", end_user="alice")
    checked = gateway.http.post(f"/v1/connections/{alice.public_id}/check", headers=auth)
    assert checked.status_code == 200, checked.text
    body = checked.json()
    assert body["status"] == "connected" and body["check"]["ok"] is True and body["check"]["upstream_status"] == 200
    [sent] = provider.api_requests()
    assert sent.path == "/api/user"
    assert gateway.run(body["check"]["run_id"]).end_user_id == "alice"

    provider.always_401 = True  # the provider now refuses the token, refreshed or not
    body = gateway.http.post(f"/v1/connections/{alice.public_id}/check", headers=auth).json()
    assert body["check"]["ok"] is False and body["check"]["error"] == "token_expired"
    assert body["status"] == "needs_reconnect"
    listed = gateway.http.get("/v1/connections?status=needs_reconnect", headers=auth).json()["connections"]
    assert [c["id"] for c in listed] == [alice.public_id]


def test_the_plans_limits_per_end_user(public_gateway: Gateway, provider) -> None:
    from gateway.core.plans import load
    from tests.test_limits import set_plan

    gw = public_gateway
    owner = gw.user()
    services = gw.app.state.services
    services.plans.plans["embed"] = load(None)["free"].model_copy(
        update={"name": "embed", "end_user_connections": 1, "end_user_daily_calls": 2}
    )
    set_plan(gw, owner, "embed")
    secret = gw.key(owner)
    gw.connect(owner, provider, account="alice-login", end_user="alice")
    gw.connect(owner, provider, account="bob-login", end_user="bob")

    def call(end_user: str) -> httpx.Response:
        return gw.http.post(
            "/v1/github/get_authenticated_user",
            json={"params": {}},
            headers={"Authorization": f"Bearer {secret}", "X-End-User-Id": end_user},
        )

    first = call("alice")
    # The tightest limit that applies is reported: alice's 2 a day, not the account's 5,000.
    assert first.status_code == 200 and first.headers["x-ratelimit-limit"] == "2"
    assert first.headers["x-ratelimit-remaining"] == "1"
    assert call("alice").status_code == 200
    refused = call("alice")
    assert refused.status_code == 429 and refused.json()["error"] == "daily_limit_reached"
    assert "per end user" in refused.json()["message"]
    assert call("bob").status_code == 200  # each end user has their own

    # One connection per end user: alice cannot add a second account, but may reconnect hers.
    browser = EndUserBrowser(gw)
    browser.open(session(gw, secret, integrations=["github"]).json()["connect_url"])
    more = browser.press("github")
    assert more.status_code == 403 and "1 connections per end user" in html.unescape(more.text)
    [alice] = gw.http.get("/v1/connections?end_user_id=alice", headers={"Authorization": f"Bearer {secret}"}).json()[
        "connections"
    ]
    again = browser.press("github", connection=alice["id"])
    assert again.status_code == 303
    back = browser.http.get(browser.consent(again.headers["location"], user="alice-login"))
    assert back.headers["location"] == f"/connect/done?connection={alice['id']}"
    browser.close()


def test_the_dashboard_lists_end_users_revokes_and_makes_connect_links(public_gateway: Gateway, provider) -> None:
    from tests.test_dashboard import Browser

    gw = public_gateway
    browser = Browser(gw)
    browser.signup()
    owner = browser.user_id()
    alice = gw.connect(owner, provider, account="alice-login", end_user="alice@acme")
    gw.connect(owner, provider, account="bob-login", end_user="bob")
    other = gw.user()
    gw.connect(other, provider, account="stranger-login", end_user="carol")

    listed = browser.get("/dashboard/end_users")
    assert listed.status_code == 200 and "alice@acme" in listed.text and "bob" in listed.text
    assert "carol" not in listed.text  # another account's end user
    searched = browser.get("/dashboard/end_users?q=ALICE")
    assert "alice@acme" in searched.text and ">bob<" not in searched.text
    page = browser.get("/dashboard/end_users/alice%40acme")
    assert page.status_code == 200 and "alice-login" in page.text and alice.public_id in page.text
    assert browser.get("/dashboard/end_users/carol").status_code == 404

    made = browser.post(
        "/dashboard/end_users/alice%40acme/connect_link", {"integrations": "github", "app_name": "Acme"}
    )
    assert made.status_code == 200
    link = html.unescape(re.search(r'id="connect-link">([^<]+)<', made.text).group(1))
    assert link.startswith(f"{gw.url}/connect?token=cs_")
    end_user = EndUserBrowser(gw)
    end_user.open(link)
    shown = end_user.page()
    assert "Connect your accounts to Acme" in shown.text and "Connect another GitHub account" in shown.text
    end_user.close()

    revoked = browser.post(f"/dashboard/end_users/alice%40acme/connections/{alice.public_id}/revoke")
    assert revoked.status_code == 303 and revoked.headers["location"].endswith("?done=revoked")
    assert gw.box.decrypt(alice.access_token) in provider.revoked
    assert alice.public_id not in browser.get("/dashboard/end_users/alice%40acme").text
    # Another account's connection cannot be revoked through this end user's page.
    [carol] = gw.http.get("/v1/connections", headers={"Authorization": f"Bearer {gw.key(other)}"}).json()["connections"]
    assert browser.post(f"/dashboard/end_users/bob/connections/{carol['id']}/revoke").status_code == 404
    browser.close()
