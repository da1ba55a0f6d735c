"""The documented call, end to end over real HTTP against the fake provider."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Gateway

# The documented call runs on both databases.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)


def test_documented_example_creates_an_issue(gateway: Gateway, account, provider) -> None:
    _, secret = account
    response = gateway.call(
        secret,
        "github",
        "create_issue",
        {"repo": "acme/webapp", "title": "Bug report", "body": "Steps to reproduce...", "labels": ["bug", "priority"]},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == 201
    assert body["data"]["title"] == "Bug report"
    assert body["data"]["labels"] == [{"name": "bug"}, {"name": "priority"}]
    assert response.headers["x-run-id"].startswith("run_")
    [sent] = provider.api_requests()
    assert (sent.method, sent.path) == ("POST", "/api/repos/acme/webapp/issues")
    assert json.loads(sent.body) == {
        "title": "Bug report",
        "body": "Steps to reproduce...",
        "labels": ["bug", "priority"],
    }
    assert sent.headers["accept"] == "application/vnd.github+json"
    assert sent.headers["x-github-api-version"] == "2022-11-28"
    assert sent.headers["authorization"].startswith("Bearer gho_")


def test_rate_limit_headers_are_passed_on(gateway: Gateway, account) -> None:
    _, secret = account
    response = gateway.call(secret, "github", "get_authenticated_user")
    assert response.status_code == 200
    assert response.json()["data"] == {"login": "octocat", "id": 1}
    assert response.headers["x-upstream-ratelimit-remaining"] == "59"
    assert response.json()["headers"]["x-ratelimit-limit"] == "60"
    # X-RateLimit-* on the answer are the gateway's own daily limits (the free plan's 5000).
    assert response.headers["x-ratelimit-limit"] == "5000" and response.headers["x-ratelimit-remaining"] == "4999"
    assert "x-internal-secret" not in response.headers
