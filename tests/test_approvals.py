"""Approvals: a key that needs the person's approval holds calls that are not read-only."""

from __future__ import annotations

import dataclasses
import time

import pytest

from gateway.app import create_app
from gateway.core import approvals
from gateway.storage import keys
from tests.conftest import Gateway
from tests.servers import ServerThread


@pytest.fixture
def held(gateway: Gateway, provider):  # type: ignore[no-untyped-def]
    user_id = gateway.user()
    gateway.connect(user_id, provider)
    key, secret = keys.create(gateway.engine, user_id, require_approval=True)
    return gateway, secret, user_id


def wait_status(gw: Gateway, secret: str, run_id: str, statuses: tuple[str, ...], timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = gw.http.get(f"/v1/runs/{run_id}", headers={"Authorization": f"Bearer {secret}"}).json()
        if run["status"] in statuses:
            return run
        time.sleep(0.05)
    raise AssertionError(run)


def services(gw: Gateway):  # type: ignore[no-untyped-def]
    return gw.app.state.services


def test_read_only_calls_pass_and_writes_are_held(held, provider) -> None:
    gw, secret, _ = held
    assert gw.call(secret, "github", "get_authenticated_user").status_code == 200
    response = gw.call(secret, "github", "create_issue", {"repo": "acme/webapp", "title": "Needs a yes"})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending" and body["approval"] == "pending"
    assert body["action_url"] == f"http://127.0.0.1:9999/dashboard/approvals/{body['id']}"
    assert body["waitpoint"]["id"].startswith("waitpoint_")
    time.sleep(0.5)
    assert [r.path for r in provider.api_requests()] == ["/api/user"], "a held call reached the upstream"
    assert wait_status(gw, secret, body["id"], ("pending",))["approval"] == "pending"


def test_approving_runs_the_call_and_completes_the_waitpoint(held, provider) -> None:
    gw, secret, user_id = held
    auth = {"Authorization": f"Bearer {secret}"}
    body = gw.call(secret, "github", "create_issue", {"repo": "acme/webapp", "title": "Approved"}).json()
    assert approvals.approve(services(gw), body["id"], user_id)
    run = wait_status(gw, secret, body["id"], ("completed", "failed"))
    assert run["status"] == "completed" and run["result"]["status"] == 201
    assert run["result"]["data"]["title"] == "Approved"
    waited = gw.http.get(f"/v1/waitpoints/{body['waitpoint']['id']}/wait", params={"timeout": "10s"}, headers=auth)
    assert waited.json() == {"ok": True, "output": run["result"]}
    assert not approvals.approve(services(gw), body["id"], user_id), "approved twice"


def test_rejecting_fails_the_run_with_approval_denied(held, provider) -> None:
    gw, secret, user_id = held
    auth = {"Authorization": f"Bearer {secret}"}
    body = gw.call(secret, "github", "create_issue", {"repo": "acme/webapp", "title": "No"}).json()
    other_user = gw.user()
    assert approvals.reject(services(gw), body["id"], other_user) is None, "another person rejected it"
    assert approvals.reject(services(gw), body["id"], user_id) is not None
    run = wait_status(gw, secret, body["id"], ("failed",))
    assert run["error_code"] == "approval_denied" and run["result"]["error"] == "approval_denied"
    waited = gw.http.get(f"/v1/waitpoints/{body['waitpoint']['id']}/wait", headers=auth).json()
    assert waited["ok"] is True and waited["output"]["error"] == "approval_denied"
    assert not approvals.approve(services(gw), body["id"], user_id)
    time.sleep(0.3)
    assert provider.api_requests() == []


def test_queued_calls_are_held_too(held, provider) -> None:
    gw, secret, user_id = held
    response = gw.http.post(
        "/v1/github/create_issue",
        json={"params": {"repo": "acme/webapp", "title": "Queued"}, "queue": "writes"},
        headers={"Authorization": f"Bearer {secret}"},
    )
    body = response.json()
    assert response.status_code == 202 and body["approval"] == "pending" and body["queue_name"] == "writes"
    time.sleep(0.5)
    assert provider.api_requests() == []
    approvals.approve(services(gw), body["id"], user_id)
    assert wait_status(gw, secret, body["id"], ("completed",))["result"]["status"] == 201


def test_approvals_expire(settings, provider) -> None:
    quick = dataclasses.replace(settings, approval_ttl_seconds=1)
    with ServerThread(create_app(quick)) as server:
        gw = Gateway(quick, server)
        user_id = gw.user()
        gw.connect(user_id, provider)
        _, secret = keys.create(gw.engine, user_id, require_approval=True)
        body = gw.call(secret, "github", "create_issue", {"repo": "acme/webapp", "title": "Late"}).json()
        run = wait_status(gw, secret, body["id"], ("failed",), timeout=10)
        assert run["error_code"] == "approval_denied" and run["approval"] == "expired"
        assert not approvals.approve(gw.app.state.services, body["id"], user_id)
        gw.http.close()
    assert provider.api_requests() == []
