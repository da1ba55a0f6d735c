"""What went wrong is visible where a person looks: a call's upstream error, exact times, filters,
waitpoints they can open and cancel, their real plan, and a "try it" that can work."""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from gateway.app import create_app
from gateway.core import waitpoints
from gateway.storage.models import Run, User
from tests.conftest import Gateway, make_settings, provider_overrides
from tests.fakes.provider import ProviderState
from tests.servers import ServerThread, free_port
from tests.test_dashboard import Browser, record
from tests.test_pasted_keys import GOOD, keyed_api_server, keyed_gateway


def _signed_in(gateway: Gateway) -> Iterator[Browser]:
    b = Browser(gateway)
    b.signup()
    yield b
    b.close()


@pytest.fixture
def person(public_gateway: Gateway) -> Iterator[Browser]:
    """Someone signed in to the dashboard."""
    yield from _signed_in(public_gateway)


@pytest.fixture
def stranger(public_gateway: Gateway) -> Iterator[Browser]:
    """Someone else, signed in to the same gateway."""
    yield from _signed_in(public_gateway)


def test_a_calls_page_shows_the_upstreams_status_and_message(
    person: Browser, public_gateway: Gateway, provider: ProviderState
) -> None:
    user_id = person.user_id()
    public_gateway.connect(user_id, provider, integration="fakeapi")
    secret = public_gateway.key(user_id)
    missing = public_gateway.call(secret, "fakeapi", "missing")
    assert missing.status_code == 404
    run = public_gateway.run(missing.headers["x-run-id"])
    assert (run.upstream_status, run.error_code, run.error_message) == (404, "upstream_error", "Not Found")
    page = person.get(f"/dashboard/calls/{run.id}").text
    assert "<dt>Upstream status</dt><dd>404</dd>" in page
    assert "<dt>Error message</dt><dd>Not Found</dd>" in page


def test_an_upstream_401_is_explained_and_the_key_never_recorded(
    tmp_path: Path, database_url: str, provider: ProviderState
) -> None:
    with keyed_api_server() as (api, url), keyed_gateway(tmp_path, database_url, provider, url) as gw:
        b = Browser(gw)
        b.signup()
        assert b.post("/dashboard/integrations/keyed/connect", {"secret": GOOD}).status_code == 303
        api.good.clear()
        refused = gw.call(gw.key(b.user_id()), "keyed", "me")
        assert refused.status_code == 401
        run = gw.run(refused.headers["x-run-id"])
        assert run.upstream_status == 401 and run.error_code == "upstream_error"
        assert run.error_message is not None and run.error_message.startswith("Invalid API key provided: ")
        assert GOOD not in run.error_message  # the upstream echoed the key; the record never holds it
        page = b.get(f"/dashboard/calls/{run.id}").text
        assert "<dt>Upstream status</dt><dd>401</dd>" in page and "Invalid API key provided" in page
        assert GOOD not in page and "/dashboard/integrations/keyed" in page
        b.close()


def test_calls_show_milliseconds_and_filter_by_time_and_run_id(person: Browser, public_gateway: Gateway) -> None:
    user_id = person.user_id()
    at = dt.datetime(2026, 3, 4, 5, 6, 7, 891_000, tzinfo=dt.UTC)
    made = {}
    for minutes in (0, 10, 20):
        run_id = record(public_gateway, user_id, None)
        with public_gateway.engine.begin() as c:
            c.execute(update(Run).where(Run.id == run_id).values(created_at=at + dt.timedelta(minutes=minutes)))
        made[minutes] = run_id
    listing = person.get("/dashboard/calls").text
    assert "2026-03-04 05:06:07.891 UTC" in listing

    def shown(query: str) -> set[int]:
        text = person.get(f"/dashboard/calls?{query}").text
        return {m for m, run_id in made.items() if run_id in text}

    assert shown("from=2026-03-04T05:16") == {10, 20}
    assert shown("to=2026-03-04T05:16") == {0, 10}
    assert shown("from=2026-03-04T05:06:07.891&to=2026-03-04T05:06:07.891") == {0}  # "to" includes its moment
    assert shown("from=2026-03-04T05:10&to=2026-03-04T05:20") == {10}  # "to 05:20" ends at 05:21
    assert shown("to=2026-03-03") == set()
    assert shown("from=2026-03-04&to=2026-03-04") == {0, 10, 20}  # a day includes all of it
    assert shown(f"run={made[10]}") == {10}
    assert shown(f"run=+{made[10]}+") == {10}
    page = person.get("/dashboard/calls?from=yesterday")
    assert page.status_code == 200 and "could not be read" in page.text and made[0] in page.text
    form = person.get("/dashboard/calls?from=2026-03-04T05:16&run=x").text
    assert 'value="2026-03-04T05:16"' in form and 'name="run"' in form


def test_a_waitpoint_can_be_opened_and_cancelled(person: Browser, stranger: Browser, public_gateway: Gateway) -> None:
    user_id = person.user_id()
    secret = public_gateway.key(user_id)
    auth = {"Authorization": f"Bearer {secret}"}
    created = public_gateway.http.post(
        "/v1/waitpoints", json={"timeout": "1h", "tags": ["deploy"], "idempotencyKey": "deploy-42"}, headers=auth
    ).json()
    waitpoint_id = created["id"]
    listing = person.get("/dashboard/waitpoints").text
    assert f'href="/dashboard/waitpoints/{waitpoint_id}"' in listing
    page = person.get(f"/dashboard/waitpoints/{waitpoint_id}").text
    for expected in ("a callback", "deploy", "deploy-42", "waiting", "Cancel this waitpoint"):
        assert expected in page, expected

    assert stranger.get(f"/dashboard/waitpoints/{waitpoint_id}").status_code == 404
    assert stranger.post(f"/dashboard/waitpoints/{waitpoint_id}/cancel").status_code == 404

    # Someone is waiting on it through the API; cancelling must end their wait, not leave them polling.
    answer: dict = {}

    def wait() -> None:
        answer["wait"] = httpx.get(
            f"{public_gateway.url}/v1/waitpoints/{waitpoint_id}/wait?timeout=60", headers=auth, timeout=90
        )

    waiter = threading.Thread(target=wait)
    waiter.start()
    cancelled = person.post(f"/dashboard/waitpoints/{waitpoint_id}/cancel")
    assert cancelled.status_code == 303 and cancelled.headers["location"].endswith("?done=cancelled")
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert answer["wait"].status_code == 200
    assert answer["wait"].json()["ok"] is False and answer["wait"].json()["error"]["code"] == "cancelled"

    shown = public_gateway.http.get(f"/v1/waitpoints/{waitpoint_id}", headers=auth).json()
    assert shown["status"] == "CANCELLED" and shown["error"]["code"] == "cancelled" and shown["completedAt"]
    late = public_gateway.http.post(f"/v1/waitpoints/{waitpoint_id}/complete", json={"data": 1}, headers=auth).json()
    assert late["completed"] is False and late["status"] == "CANCELLED" and "cancelled" in late["message"]
    listed = public_gateway.http.get("/v1/waitpoints?status=CANCELLED", headers=auth).json()["data"]
    assert [w["id"] for w in listed] == [waitpoint_id]
    page = person.get(f"/dashboard/waitpoints/{waitpoint_id}?done=cancelled").text
    assert "cancelled" in page and "Cancel this waitpoint" not in page
    again = person.post(f"/dashboard/waitpoints/{waitpoint_id}/cancel")
    assert again.headers["location"].endswith("?done=not-cancelled")


def test_a_completed_waitpoint_shows_its_output_and_an_approval_is_decided_elsewhere(
    person: Browser, public_gateway: Gateway
) -> None:
    user_id = person.user_id()
    engine = public_gateway.engine
    done, _ = waitpoints.create(engine, user_id=user_id, api_key_id=None, timeout=dt.timedelta(hours=1))
    waitpoints.complete(engine, done.id, {"approved": "<yes>"})
    page = person.get(f"/dashboard/waitpoints/{done.id}").text
    assert "&#34;approved&#34;: &#34;&lt;yes&gt;&#34;" in page or html.escape('"approved": "<yes>"') in page
    assert "Cancel this waitpoint" not in page
    approval, _ = waitpoints.create(
        engine, user_id=user_id, api_key_id=None, timeout=dt.timedelta(hours=1), kind="approval", integration="github"
    )
    page = person.get(f"/dashboard/waitpoints/{approval.id}").text
    assert "/dashboard/approvals" in page and "Cancel this waitpoint" not in page
    refused = person.post(f"/dashboard/waitpoints/{approval.id}/cancel")
    assert refused.headers["location"].endswith("?done=not-cancelled")
    assert waitpoints.get(engine, approval.id).status == "WAITING"  # type: ignore[union-attr]


def test_an_unknown_plan_is_never_shown_as_free(database_url: str, provider: ProviderState, tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(database_url, provider.url, public_url=f"http://127.0.0.1:{port}")  # type: ignore[attr-defined]
    with ServerThread(create_app(settings), port=port) as server:
        gw = Gateway(settings, server)
        b = Browser(gw)
        b.signup()
        # The plans file that defined "startup" was changed; this person is still on it.
        with gw.engine.begin() as c:
            c.execute(update(User).where(User.id == b.user_id()).values(plan="startup"))
        gw.app.state.services.plans.forget(b.user_id())
        usage = b.get("/dashboard/usage").text
        assert "Your plan: free" not in usage
        assert "startup" in usage and "unknown plan" in usage
        assert "the limits of the default plan, free, apply" in usage and "5000" in usage
        account = b.get("/dashboard/account").text
        assert "startup" in account and "unknown plan" in account
        b.close()
        gw.http.close()


def test_try_it_uses_an_integration_that_is_set_up(database_url: str, provider: ProviderState) -> None:
    # GitHub has no OAuth app on this gateway; Fake API has one.
    overrides = provider_overrides(provider.url)  # type: ignore[attr-defined]
    overrides["github"] = dataclasses.replace(overrides["github"], client_id=None, client_secret=None)
    port = free_port()
    settings = make_settings(
        database_url,
        provider.url,  # type: ignore[attr-defined]
        public_url=f"http://127.0.0.1:{port}",
        integrations=overrides,
    )
    with ServerThread(create_app(settings), port=port) as server:
        gw = Gateway(settings, server)
        b = Browser(gw)
        b.signup()
        only_github = b.post("/dashboard/keys", {"name": "gh", "access": "some", "integrations": ["github"]}).text
        assert "/v1/github/" not in only_github
        assert "None of the integrations this key may use is set up on this gateway" in only_github

        gw.connect(b.user_id(), provider, integration="fakeapi")
        fake = b.post("/dashboard/keys", {"name": "fake", "access": "some", "integrations": ["fakeapi", "github"]})
        assert "/v1/fakeapi/text" in fake.text and "/v1/github/" not in fake.text

        everything = b.post("/dashboard/keys", {"name": "all", "access": "all"}).text
        assert "/v1/fakeapi/text" in everything  # the one this person has connected comes first
        b.close()
        gw.http.close()
