"""Pasted API keys are checked with the provider before they are stored, and a key the provider later
refuses shows on its integration's page."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import event
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.settings import IntegrationOverrides
from gateway.specs.registry import load_file, registry_for
from gateway.specs.spec import ApiKeyAuth, SpecError
from tests.conftest import TESTS, Gateway, make_settings
from tests.fakes.provider import ProviderState
from tests.servers import ServerThread, free_port
from tests.test_dashboard import Browser, add_spec, connection

GOOD = "key-good-" + "g" * 24
LIMITED = "key-limited-" + "l" * 24
WRONG = "key-wrong-" + "w" * 24

SPEC: dict = {
    "name": "keyed",
    "display_name": "Keyed",
    "description": "An integration that takes a pasted API key.",
    "docs_url": "https://example.invalid/docs",
    "reference": "tests",
    "base_url": "https://keyed.invalid/api",
    "auth": {"type": "api_key", "label": "Secret key", "verify": "me"},
    "endpoints": {
        "me": {"description": "Who the key belongs to.", "method": "GET", "path": "/user"},
        "add_thing": {"description": "Creates a thing.", "method": "POST", "path": "/things"},
        "get_thing": {
            "description": "Gets one thing by id.",
            "method": "GET",
            "path": "/things/{id}",
            "params": {"id": {"type": "string", "in": "path", "required": True, "description": "The id."}},
        },
    },
}


class KeyedApi:
    """The other side of the wire: an API that knows some keys, and echoes a wrong one in its error, as some do."""

    def __init__(self) -> None:
        self.good = {GOOD}
        self.lock = threading.Lock()
        self.calls = 0

    def app(self) -> Starlette:
        async def user(request: Request) -> Response:
            with self.lock:
                self.calls += 1
            key = request.headers.get("authorization", "").removeprefix("Bearer ")
            if key in self.good:
                return JSONResponse({"login": "ada"})
            if key == LIMITED:
                return JSONResponse({"error": {"message": "This key may not read the account.", "type": "perm"}}, 403)
            message = f"Invalid API key provided: {key}. Find yours in the settings."
            return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, 401)

        return Starlette(routes=[Route("/api/user", user, methods=["GET"])])


@contextlib.contextmanager
def keyed_api_server() -> Iterator[tuple[KeyedApi, str]]:
    api = KeyedApi()
    with ServerThread(api.app()) as server:
        yield api, server.url


@pytest.fixture
def keyed_api() -> Iterator[tuple[KeyedApi, str]]:
    with keyed_api_server() as served:
        yield served


@contextlib.contextmanager
def keyed_gateway(tmp_path: Path, database_url: str, provider: ProviderState, base_url: str) -> Iterator[Gateway]:
    """A gateway serving the `keyed` spec, its API at `base_url`."""
    folder = add_spec(tmp_path, "keyed", yaml.safe_dump(SPEC))
    port = free_port()
    settings = make_settings(
        database_url,
        provider.url,  # type: ignore[attr-defined]
        public_url=f"http://127.0.0.1:{port}",
        integrations_paths=(TESTS / "integrations", folder),
        integrations={"keyed": IntegrationOverrides(base_url=f"{base_url}/api")},
    )
    with ServerThread(create_app(settings), port=port) as server:
        gw = Gateway(settings, server)
        try:
            yield gw
        finally:
            gw.http.close()


@pytest.fixture
def keyed(tmp_path: Path, database_url: str, provider: ProviderState, keyed_api) -> Iterator[tuple[Gateway, KeyedApi]]:
    api, url = keyed_api
    with keyed_gateway(tmp_path, database_url, provider, url) as gw:
        yield gw, api


@pytest.mark.parametrize("secret", [WRONG, LIMITED], ids=["401", "403"])
def test_a_key_the_provider_refuses_is_not_stored(keyed, secret: str) -> None:
    gw, api = keyed
    b = Browser(gw)
    b.signup()
    refused = b.post("/dashboard/integrations/keyed/connect", {"secret": secret})
    assert refused.status_code == 400, refused.text
    assert "Keyed refused this key" in refused.text and "Connected." not in refused.text
    assert secret not in refused.text  # the provider echoed it; the page never does
    assert connection(gw, b.user_id(), "keyed") is None
    assert api.calls == 1
    b.close()


def test_a_key_with_characters_no_key_has_is_refused_before_any_call(keyed) -> None:
    gw, api = keyed
    b = Browser(gw)
    b.signup()
    refused = b.post("/dashboard/integrations/keyed/connect", {"secret": f"\u201c{GOOD}\u201d"})
    assert refused.status_code == 400 and "paste it again" in refused.text
    assert connection(gw, b.user_id(), "keyed") is None and api.calls == 0
    b.close()


def test_a_key_the_provider_accepts_is_connected(keyed) -> None:
    gw, api = keyed
    b = Browser(gw)
    b.signup()
    saved = b.post("/dashboard/integrations/keyed/connect", {"secret": GOOD})
    assert saved.status_code == 303 and saved.headers["location"].endswith("?done=connected")
    stored = connection(gw, b.user_id(), "keyed")
    assert stored is not None and gw.box.decrypt(stored.access_token) == GOOD
    assert api.calls == 1
    b.close()


def test_an_unreachable_provider_stores_nothing(tmp_path: Path, database_url: str, provider: ProviderState) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with keyed_gateway(tmp_path, database_url, provider, closed) as gw:
        b = Browser(gw)
        b.signup()
        page = b.post("/dashboard/integrations/keyed/connect", {"secret": GOOD})
        assert page.status_code == 502 and "could not be reached" in page.text and "Nothing was stored" in page.text
        assert connection(gw, b.user_id(), "keyed") is None
        b.close()


def test_a_refused_key_shows_on_its_page_until_a_success(keyed) -> None:
    gw, api = keyed
    b = Browser(gw)
    b.signup()
    user_id = b.user_id()
    assert b.post("/dashboard/integrations/keyed/connect", {"secret": GOOD}).status_code == 303
    secret = gw.key(user_id)
    writes: list[str] = []

    def count(conn, cursor, statement: str, *args: object) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("UPDATE CONNECTIONS"):
            writes.append(statement)

    event.listen(gw.engine, "before_cursor_execute", count)
    try:
        for _ in range(3):
            assert gw.call(secret, "keyed", "me").status_code == 200
        # A successful call writes nothing to its connection but when it was last used, once a minute.
        assert [w for w in writes if "last_used_at" not in w] == [] and len(writes) == 1

        api.good.clear()  # the person deleted the key at the provider
        assert gw.call(secret, "keyed", "me").status_code == 401
        stored = connection(gw, user_id, "keyed")
        assert stored is not None and stored.last_error_at is not None
        assert "401" in (stored.last_error or "") and GOOD not in (stored.last_error or "")
        page = b.get("/dashboard/integrations/keyed").text
        assert "Keyed refused the stored key" in page and "Invalid API key provided" in page and GOOD not in page

        api.good.add(GOOD)  # restored: the next success clears the mark
        assert gw.call(secret, "keyed", "me").status_code == 200
        cleared = connection(gw, user_id, "keyed")
        assert cleared is not None and cleared.last_error is None and cleared.last_error_at is None
        assert "refused the stored key" not in b.get("/dashboard/integrations/keyed").text
    finally:
        event.remove(gw.engine, "before_cursor_execute", count)

    api.good.clear()
    assert gw.call(secret, "keyed", "me").status_code == 401
    api.good.add(GOOD)
    assert b.post("/dashboard/integrations/keyed/connect", {"secret": GOOD}).status_code == 303  # a reconnect clears it
    reconnected = connection(gw, user_id, "keyed")
    assert reconnected is not None and reconnected.last_error is None
    b.close()


def _spec_with(tmp_path: Path, verify: object) -> Path:
    spec = copy.deepcopy(SPEC)
    spec["auth"]["verify"] = verify
    path = tmp_path / "keyed.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    ("verify", "problem"),
    [
        ("nope", "'nope' is not an endpoint"),
        ("add_thing", "read-only"),
        ("get_thing", "id: is required"),
        ({"endpoint": "get_thing", "params": {"id": "a/b"}}, "id: must not contain"),
        ({"endpoint": "me", "params": {"extra": 1}}, "extra: is not a param"),
        ({"endpoint": "me", "colour": "red"}, "auth.api_key.verify"),
    ],
)
def test_verify_is_checked_when_the_spec_loads(tmp_path: Path, verify: object, problem: str) -> None:
    with pytest.raises(SpecError) as error:
        load_file(_spec_with(tmp_path, verify))
    assert "auth" in str(error.value) and problem in str(error.value)


def test_verify_may_give_params(tmp_path: Path) -> None:
    integration = load_file(_spec_with(tmp_path, {"endpoint": "get_thing", "params": {"id": "42"}}))
    auth = integration.spec.auth
    assert isinstance(auth, ApiKeyAuth) and auth.verify is not None
    assert (auth.verify.endpoint, auth.verify.params) == ("get_thing", {"id": "42"})


def test_every_built_in_api_key_integration_verifies_pasted_keys(settings) -> None:  # type: ignore[no-untyped-def]
    expected = {"openai": ("list_models", "GET", "/models"), "stripe": ("get_balance", "GET", "/balance")}
    found = {}
    for integration in registry_for(dataclasses.replace(settings, integrations_paths=())):
        auth = integration.spec.auth
        if isinstance(auth, ApiKeyAuth):
            assert auth.verify is not None, f"{integration.name} has no auth.verify"
            endpoint = integration.endpoints[auth.verify.endpoint]
            found[integration.name] = (endpoint.name, endpoint.method, endpoint.spec.path)
    assert found == expected
