"""The hosted connect page in a real browser: an app on another origin opens it as a popup with
/static/connect.js, the end user connects GitHub at the fake provider, and the popup tells its
opener and closes; the page on a phone; accessibility."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.browser.test_browser_dashboard import approve_at_provider, audit
from tests.conftest import Gateway
from tests.fakes.provider import ProviderState
from tests.servers import ServerThread

pytestmark = pytest.mark.browser

APP_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Example app</title>
<script src="{gateway}/static/connect.js"></script></head><body><main>
<h1>Example app</h1><button type="button" id="connect">Connect GitHub</button><p id="result"></p>
<script>
document.getElementById("connect").addEventListener("click", async () => {{
  const result = document.getElementById("result");
  try {{
    const done = await Gateway.connect("{token}");
    result.textContent = "connected " + done.integration + " " + done.connection_id;
  }} catch (error) {{ result.textContent = "failed: " + error.message; }}
}});
</script></main></body></html>"""


def make_session(gw: Gateway, secret: str, **body: object) -> dict:
    made = gw.http.post(
        "/v1/connect/sessions",
        json={"end_user": {"id": "user-42"}, "app_name": "Example app", **body},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert made.status_code == 201, made.text
    return made.json()


def test_an_app_opens_the_connect_popup_and_learns_the_connection(
    page: Page, public_gateway: Gateway, provider: ProviderState
) -> None:
    gw = public_gateway
    owner = gw.user()
    secret = gw.key(owner)
    holder: dict[str, str] = {}

    async def app_page(request):  # type: ignore[no-untyped-def]
        return HTMLResponse(APP_PAGE.format(gateway=gw.url, token=holder["token"]))

    with ServerThread(Starlette(routes=[Route("/", app_page)])) as app:
        holder["token"] = make_session(gw, secret, integrations=["github"], allowed_origins=[app.url])["token"]
        page.goto(app.url)
        with page.expect_popup() as popped:
            page.get_by_role("button", name="Connect GitHub").click()
        popup = popped.value
        expect(popup.get_by_role("heading", level=1)).to_have_text("Connect your accounts to Example app")
        audit(popup)
        popup.get_by_role("button", name="Connect GitHub").click()
        approve_at_provider(popup, provider)
        popup.wait_for_event("close")
        expect(page.locator("#result")).to_have_text(re.compile(r"^connected github conn_[0-9a-f]{32}$"))

    connection_id = page.locator("#result").inner_text().split()[-1]
    call = gw.http.post(
        "/v1/github/get_authenticated_user",
        json={"params": {}},
        headers={"Authorization": f"Bearer {secret}", "X-End-User-Id": "user-42", "X-Connection-Id": connection_id},
    )
    assert call.status_code == 200 and call.json()["data"]["login"] == "octocat"


def test_a_popup_reports_nothing_to_an_origin_the_session_does_not_allow(
    page: Page, public_gateway: Gateway, provider: ProviderState
) -> None:
    gw = public_gateway
    secret = gw.key(gw.user())
    holder: dict[str, str] = {}

    async def app_page(request):  # type: ignore[no-untyped-def]
        return HTMLResponse(APP_PAGE.format(gateway=gw.url, token=holder["token"]))

    with ServerThread(Starlette(routes=[Route("/", app_page)])) as app:
        holder["token"] = make_session(
            gw, secret, integrations=["github"], allowed_origins=["https://elsewhere.example"]
        )["token"]
        page.goto(app.url)
        with page.expect_popup() as popped:
            page.get_by_role("button", name="Connect GitHub").click()
        popup = popped.value
        popup.get_by_role("button", name="Connect GitHub").click()
        approve_at_provider(popup, provider)
        # Connected, but this opener's origin is not allowed: the popup stays, saying so, and tells it nothing.
        expect(popup.get_by_role("heading", level=1)).to_have_text("GitHub is connected")
        popup.close()
        expect(page.locator("#result")).to_have_text(re.compile("^failed: The connect window was closed"))


def test_the_connect_page_on_a_phone(phone: Page, public_gateway: Gateway) -> None:
    gw = public_gateway
    connect_url = make_session(gw, gw.key(gw.user()))["connect_url"]
    phone.goto(connect_url)
    expect(phone.get_by_role("heading", level=1)).to_have_text("Connect your accounts to Example app")
    audit(phone)
    phone.get_by_role("button", name="Continue").click()
    expect(phone).to_have_url(f"{gw.url}/connect")
    expect(phone.get_by_role("heading", level=1)).to_have_text("Connect your accounts to Example app")
    audit(phone)
    # Nothing wider than the screen: no sideways scrolling on a phone.
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    # A key integration's form is labelled and reachable.
    expect(phone.get_by_role("heading", name="OpenAI")).to_be_visible()


def test_the_end_user_pages_of_the_dashboard(page: Page, public_gateway: Gateway, provider: ProviderState) -> None:
    from gateway.storage import users
    from tests.browser.test_browser_dashboard import sign_up

    gw = public_gateway
    sign_up(page, gw, "embedder@example.com")
    user = users.by_email(gw.engine, "embedder@example.com")
    assert user is not None and user.id is not None
    gw.connect(user.id, provider, account="alice-login", end_user="alice")
    page.get_by_role("link", name="End users").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("End users")
    audit(page)
    page.get_by_role("link", name="alice").click()
    expect(page.locator("table")).to_contain_text("alice-login")
    audit(page)
    page.get_by_label("GitHub").check()
    page.get_by_role("button", name="Create a connect link").click()
    expect(page.locator("#connect-link")).to_contain_text("/connect?token=cs_")
    page.get_by_role("button", name=re.compile("^Revoke")).click()
    expect(page.get_by_role("status")).to_contain_text("revoked")
    audit(page)
