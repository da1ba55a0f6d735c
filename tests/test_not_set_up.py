"""An integration the operator has not set up says so, points to a page that explains it, and opens no waitpoint."""

from __future__ import annotations

from sqlalchemy import func, select

from gateway.storage.models import Waitpoint
from tests.conftest import Gateway
from tests.test_dashboard import Browser
from tests.test_errors import assert_error


def waitpoint_count(gateway: Gateway) -> int:
    with gateway.engine.connect() as c:
        return c.execute(select(func.count()).select_from(Waitpoint)).scalar_one()


def test_a_call_to_an_integration_without_an_oauth_app(gateway: Gateway, provider) -> None:
    # The test settings give GitHub and Fake API an OAuth app, and Slack none.
    secret = gateway.key(gateway.user())
    body = assert_error(gateway.call(secret, "slack", "list_users"), 403, "integration_not_connected")
    assert "Slack is not set up on this gateway" in body["message"]
    assert body["action_url"] == "http://127.0.0.1:9999/dashboard/integrations/slack/setup"
    assert "waitpoint" not in body
    connect = gateway.http.post("/v1/integrations/slack/connect", headers={"Authorization": f"Bearer {secret}"})
    body = assert_error(connect, 403, "integration_not_connected")
    assert "not set up on this gateway" in body["message"] and body["action_url"].endswith("/integrations/slack/setup")
    assert "waitpoint" not in body
    assert waitpoint_count(gateway) == 0
    assert provider.api_requests() == []
    # A set-up integration still offers a waitpoint to wait on while the person connects.
    assert "waitpoint" in gateway.call(secret, "github", "get_authenticated_user").json()


def test_the_setup_page_explains_what_the_operator_must_do(public_gateway: Gateway) -> None:
    browser = Browser(public_gateway)
    browser.signup()
    url = public_gateway.url
    integration = browser.get("/dashboard/integrations/slack").text
    assert 'href="/dashboard/integrations/slack/setup"' in integration
    page = browser.get("/dashboard/integrations/slack/setup")
    assert page.status_code == 200
    for expected in (
        "Slack is not set up on this gateway",
        f"{url}/oauth/slack/callback",
        "GATEWAY_SLACK_CLIENT_ID",
        "GATEWAY_SLACK_CLIENT_SECRET",
        "chat:write",
    ):
        assert expected in page.text, expected
    ready = browser.get("/dashboard/integrations/github/setup").text
    assert "GitHub is set up on this gateway" in ready and f"{url}/oauth/github/callback" in ready
    assert browser.get("/dashboard/integrations/openai/setup").status_code == 404  # nothing to set up
    assert browser.get("/dashboard/integrations/nope/setup").status_code == 404
    browser.close()
