"""Real-browser fixtures: Debian's Chromium driven by Playwright's sync API (not the pytest plugin)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-pings",
]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    # Keep each phase's report on the item so the page fixture knows whether the test failed.
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class Offsite:
    """Every request a page tried to make to anything but 127.0.0.1; they are all refused."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1" or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.urls.append(url)
            route.abort()


@pytest.fixture
def offsite() -> Offsite:
    return Offsite()


def _page(
    chromium: Browser, request: pytest.FixtureRequest, offsite: Offsite, width: int, height: int
) -> Iterator[Page]:
    context = chromium.new_context(viewport={"width": width, "height": height})
    context.route("**/*", offsite)
    page = context.new_page()
    page.set_default_timeout(15_000)
    # The dashboard asks before destructive actions; a person would say yes.
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        yield page
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            ARTIFACTS.mkdir(exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        context.close()


@pytest.fixture
def page(chromium: Browser, request: pytest.FixtureRequest, offsite: Offsite) -> Iterator[Page]:
    yield from _page(chromium, request, offsite, 1280, 900)


@pytest.fixture
def phone(chromium: Browser, request: pytest.FixtureRequest, offsite: Offsite) -> Iterator[Page]:
    yield from _page(chromium, request, offsite, 390, 844)
