"""The dashboard in a real browser: a person's first session, a reconnection from an action_url, phones, accessibility."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Page, expect

from gateway.storage import connections, users
from tests.conftest import Gateway
from tests.fakes.provider import ProviderState

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery"

# Runs in the page: what a screen-reader or keyboard user would trip over, as a list of problems.
AUDIT = """() => {
  const problems = [];
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (el.type === "hidden") continue;
    const named = (el.labels && el.labels.length) || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby");
    if (!named) problems.push("no label: " + el.outerHTML.slice(0, 80));
  }
  const levels = [...document.querySelectorAll("h1, h2, h3, h4, h5, h6")].map((h) => Number(h.tagName[1]));
  if (levels.filter((l) => l === 1).length !== 1) problems.push("expected one h1, found " + levels.filter((l) => l === 1).length);
  if (levels[0] !== 1) problems.push("the first heading is not an h1");
  levels.forEach((level, i) => { if (i && level > levels[i - 1] + 1) problems.push(`heading jumps from h${levels[i - 1]} to h${level}`); });
  const skip = document.querySelector("a.skip-link");
  if (!skip || skip.getAttribute("href") !== "#main" || !document.querySelector("main#main")) problems.push("no skip link to main");
  if (!document.documentElement.lang) problems.push("no lang on html");
  if (!document.title.trim()) problems.push("no title");

  const rgba = (text) => { const p = text.match(/[\\d.]+/g).map(Number); return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 }; };
  const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  const luminance = (c) => 0.2126 * channel(c.r) + 0.7152 * channel(c.g) + 0.0722 * channel(c.b);
  const background = (el) => {
    for (; el; el = el.parentElement) { const c = rgba(getComputedStyle(el).backgroundColor); if (c.a >= 1) return c; }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  for (const el of document.querySelectorAll("body *")) {
    if (!el.getClientRects().length || el.closest(".visually-hidden")) continue;
    if (![...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden") continue;
    const a = luminance(rgba(style.color)), b = luminance(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    const needed = size >= 24 || (size >= 18.66 && bold) ? 3 : 4.5;
    if (ratio < needed) problems.push(`contrast ${ratio.toFixed(2)} < ${needed} for "${el.textContent.trim().slice(0, 40)}"`);
  }
  return problems;
}"""

FOCUS = """() => {
  const el = document.activeElement;
  const style = getComputedStyle(el);
  const box = el.getBoundingClientRect();
  return {
    tag: el.tagName, text: (el.textContent || el.value || "").trim().slice(0, 40),
    outline: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 2,
    onScreen: box.bottom > 0 && box.top < window.innerHeight && box.width > 0,
  };
}"""


def audit(page: Page) -> None:
    problems = page.evaluate(AUDIT)
    assert problems == [], f"{page.url}: {problems}"


def assert_keyboard_focus_is_visible(page: Page) -> None:
    page.locator("body").focus()
    page.keyboard.press("Tab")
    first = page.evaluate(FOCUS)
    assert first["text"] == "Skip to content" and first["onScreen"] and first["outline"], first
    for _ in range(4):
        page.keyboard.press("Tab")
        focused = page.evaluate(FOCUS)
        assert focused["outline"], f"{page.url}: no visible focus on {focused}"


def sign_up(page: Page, gateway: Gateway, email: str) -> None:
    page.goto(f"{gateway.url}/dashboard")
    expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
    page.get_by_role("link", name="Create an account").click()
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Integrations")


def approve_at_provider(page: Page, provider: ProviderState) -> None:
    expect(page).to_have_url(re.compile("^" + re.escape(f"{provider.url}/oauth/authorize")))  # type: ignore[attr-defined]
    expect(page.get_by_role("heading", level=1)).to_have_text("Authorize the gateway?")
    page.click("#approve")


def test_first_session_connect_create_key_call(
    page: Page, public_gateway: Gateway, provider: ProviderState, offsite
) -> None:  # type: ignore[no-untyped-def]
    gw = public_gateway
    sign_up(page, gw, "journey@example.com")
    audit(page)

    github = page.locator("li.card", has=page.get_by_role("heading", name="GitHub"))
    expect(github.locator(".badge")).to_have_text("Not connected")
    github.get_by_role("button", name="Connect GitHub").click()
    approve_at_provider(page, provider)
    expect(page).to_have_url(f"{gw.url}/dashboard/integrations/github?done=connected")
    expect(page.get_by_role("status")).to_contain_text("Connected.")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Connected")
    expect(page.locator(".facts")).to_contain_text("octocat")
    audit(page)

    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("journey key")
    page.get_by_label("Only the ones ticked below").check()
    page.get_by_label("GitHub").check()
    page.get_by_label("Daily limit").fill("100")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your new API key")
    secret = page.locator("#secret").input_value()
    assert secret.startswith("sk_")
    page.get_by_role("button", name="Copy").click()
    expect(page.locator(".copy-status")).not_to_be_empty()
    audit(page)

    response = httpx.post(
        f"{gw.url}/v1/github/get_authenticated_user",
        json={"params": {}},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert response.status_code == 200 and response.json()["data"]["login"] == "octocat"
    run_id = response.headers["x-run-id"]

    page.get_by_role("link", name="Calls").click()
    row = page.locator("#calls tbody tr", has=page.locator(f'a[href="/dashboard/calls/{run_id}"]'))
    expect(row).to_have_count(1)
    expect(row.locator("td[data-label=Status]")).to_have_text("completed")
    expect(row.locator("td[data-label=HTTP]")).to_have_text("200")
    expect(row.locator("td[data-label=Key]")).to_have_text("journey key")
    audit(page)
    row.get_by_role("link").click()
    expect(page.locator(".facts").first).to_contain_text("completed")
    expect(page.locator(".facts").first).to_contain_text("200")
    audit(page)

    page.get_by_role("link", name="Usage").click()
    expect(page.locator(".stat").first).to_contain_text("1")
    audit(page)
    assert offsite.urls == []


def test_token_expired_action_url_through_login_and_reconnection(
    page: Page, public_gateway: Gateway, provider: ProviderState, offsite
) -> None:  # type: ignore[no-untyped-def]
    gw = public_gateway
    user_id = gw.user("expired@example.com")
    gw.connect(user_id, provider)
    secret = gw.key(user_id, name="agent")
    provider.reject_all_refreshes = True
    provider.expire_access_tokens()
    failed = gw.call(secret, "github", "get_authenticated_user")
    assert failed.status_code == 401 and failed.json()["error"] == "token_expired"
    action_url = failed.json()["action_url"]
    assert action_url == f"{gw.url}/dashboard/integrations/github?reconnect=1"

    page.goto(action_url)
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    page.get_by_label("Email").fill("expired@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(action_url)
    expect(page.get_by_role("heading", name="Reconnect GitHub")).to_be_visible()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Needs reconnection")
    audit(page)

    page.get_by_role("button", name="Reconnect GitHub").click()
    approve_at_provider(page, provider)
    expect(page).to_have_url(f"{gw.url}/dashboard/integrations/github?done=connected")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Connected")
    expect(page.get_by_role("heading", name="Reconnect GitHub")).to_have_count(0)
    saved = connections.get(gw.engine, user_id, "github")
    assert saved is not None and saved.status == "connected"
    assert gw.call(secret, "github", "get_authenticated_user").status_code == 200
    assert offsite.urls == []


def test_disconnect_and_revoke_ask_first(page: Page, public_gateway: Gateway, provider: ProviderState) -> None:
    gw = public_gateway
    sign_up(page, gw, "careful@example.com")
    page.goto(f"{gw.url}/dashboard/integrations/fakeapi")
    page.get_by_role("button", name="Connect Fake API").click()
    approve_at_provider(page, provider)
    page.get_by_role("button", name="Disconnect").click()
    expect(page.get_by_role("status")).to_contain_text("Disconnected")
    assert len(provider.revoked) == 2
    page.goto(f"{gw.url}/dashboard/keys")
    page.get_by_role("button", name="Create key").click()
    page.get_by_role("link", name="Key settings").click()
    page.get_by_role("button", name="Revoke key").click()
    expect(page.get_by_role("status")).to_contain_text("Key revoked")


def test_filter_calls_by_time_and_cancel_a_waitpoint(page: Page, public_gateway: Gateway, offsite) -> None:  # type: ignore[no-untyped-def]
    gw = public_gateway
    sign_up(page, gw, "waiter@example.com")
    user = users.by_email(gw.engine, "waiter@example.com")
    assert user is not None and user.id is not None
    secret = gw.key(user.id, name="waiter")
    auth = {"Authorization": f"Bearer {secret}"}
    run_id = gw.call(secret, "fakeapi", "text").headers["x-run-id"]  # not connected: a failed call, recorded

    # The browser's own date-time field sends what the calls page reads, to the millisecond.
    page.get_by_role("link", name="Calls").click()
    when = page.locator(f'a[href="/dashboard/calls/{run_id}"] time').inner_text()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3} UTC", when), when
    page.get_by_label("From").fill(when[:10] + "T" + when[11:23])
    page.get_by_label("To").fill(when[:10] + "T" + when[11:23])
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#calls tbody tr")).to_have_count(1)
    page.get_by_label("From").fill("2000-01-01T00:00")
    page.get_by_label("To").fill("2000-01-02T00:00")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("No call matches these filters.")).to_be_visible()
    audit(page)

    created = httpx.post(f"{gw.url}/v1/waitpoints", json={"timeout": "1h", "tags": ["deploy"]}, headers=auth).json()
    page.get_by_role("link", name="Waitpoints").click()
    page.get_by_role("link", name=created["id"]).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("waiting")
    audit(page)
    page.get_by_role("button", name="Cancel this waitpoint").click()  # the confirm dialog is accepted
    expect(page.get_by_role("status")).to_contain_text("Cancelled.")
    expect(page.get_by_role("heading", level=1)).to_contain_text("cancelled")
    waited = httpx.get(f"{gw.url}/v1/waitpoints/{created['id']}/wait?timeout=5", headers=auth).json()
    assert waited["ok"] is False and waited["error"]["code"] == "cancelled"
    assert offsite.urls == []


PAGES = [
    "/dashboard/integrations",
    "/dashboard/integrations/github",
    "/dashboard/integrations/slack",
    "/dashboard/integrations/slack/setup",
    "/dashboard/keys",
    "/dashboard/calls",
    "/dashboard/usage",
    "/dashboard/approvals",
    "/dashboard/waitpoints",
    "/dashboard/account",
    "/dashboard/nothing-here",
]


def test_pages_fit_a_phone_and_pass_the_audit(
    phone: Page, public_gateway: Gateway, provider: ProviderState, offsite
) -> None:  # type: ignore[no-untyped-def]
    gw = public_gateway
    phone.goto(f"{gw.url}/dashboard/signup")
    audit(phone)
    sign_up(phone, gw, "phone@example.com")
    user = users.by_email(gw.engine, "phone@example.com")
    assert user is not None and user.id is not None
    user_id = user.id
    gw.connect(user_id, provider)
    secret = gw.key(user_id, name="a key with a fairly long name for a small screen", daily_limit=5)
    run_id = gw.call(secret, "github", "get_authenticated_user").headers["x-run-id"]
    careful = gw.key(user_id, name="careful", require_approval=True)
    held = gw.call(careful, "github", "create_issue", {"repo": "acme/webapp", "title": "A long title " * 8})
    waiting = gw.http.post(
        "/v1/waitpoints",
        json={"tags": ["a-rather-long-tag-name", "deploy"]},
        headers={"Authorization": f"Bearer {secret}"},
    ).json()["id"]
    pages = [
        *PAGES,
        f"/dashboard/calls/{run_id}",
        f"/dashboard/approvals/{held.json()['id']}",
        f"/dashboard/waitpoints/{waiting}",
        f"/dashboard/waitpoints/{held.json()['waitpoint']['id']}",
    ]
    phone.goto(f"{gw.url}/dashboard/keys")
    pages.append(phone.get_by_role("link", name=re.compile("^Manage")).first.get_attribute("href") or "")
    for path in pages:
        phone.goto(f"{gw.url}{path}")
        width = phone.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"{path} scrolls sideways at 390px: {width}"
        audit(phone)
        assert_keyboard_focus_is_visible(phone)
    assert offsite.urls == []
