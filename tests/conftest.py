from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select, text

from gateway.app import create_app
from gateway.core import connect
from gateway.crypto import Box
from gateway.settings import IntegrationOverrides, Settings
from gateway.storage import connections, database, end_users, keys, users
from gateway.storage.models import Connection, Run
from tests.fakes.provider import CLIENT_ID, CLIENT_SECRET, ProviderState, create_provider
from tests.servers import ServerThread, free_port

TESTS = Path(__file__).resolve().parent
PG_URL = os.environ.get("GATEWAY_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session", autouse=True)
def user_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No test touches the real user data directory, the default GATEWAY_HOME: platformdirs honours
    XDG_DATA_HOME, in this process and in every `gateway` process a test starts."""
    path = tmp_path_factory.mktemp("xdg-data")
    previous = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(path)
    yield path
    if previous is None:
        del os.environ["XDG_DATA_HOME"]
    else:
        os.environ["XDG_DATA_HOME"] = previous


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For a test that configures logging in-process: the root handlers and our loggers as they were."""
    from gateway import logs

    names = ["", *logs.LOGGERS, "httpx", "httpx2"]
    saved = [
        (
            logging.getLogger(n),
            logging.getLogger(n).handlers[:],
            logging.getLogger(n).level,
            logging.getLogger(n).propagate,
        )
        for n in names
    ]
    yield
    for logger, handlers, level, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.fixture(scope="session")
def provider_state() -> ProviderState:
    return ProviderState()


@pytest.fixture(scope="session")
def provider_server(provider_state: ProviderState) -> Iterator[ServerThread]:
    with ServerThread(create_provider(provider_state)) as server:
        yield server


@pytest.fixture
def provider(provider_state: ProviderState, provider_server: ServerThread) -> ProviderState:
    provider_state.reset()
    provider_state.url = provider_server.url  # type: ignore[attr-defined]
    return provider_state


def provider_overrides(url: str) -> dict[str, IntegrationOverrides]:
    fake = IntegrationOverrides(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        base_url=f"{url}/api",
        authorize_url=f"{url}/oauth/authorize",
        token_url=f"{url}/oauth/token",
        revoke_url=f"{url}/oauth/revoke",
    )
    return {"github": fake, "fakeapi": fake}


class PostgresSchema:
    """A schema of its own in the local `test` database, dropped afterwards."""

    def __init__(self) -> None:
        self.name = "gw_" + secrets.token_hex(6)
        self.admin = create_engine(PG_URL)
        with self.admin.begin() as c:
            c.execute(text(f'CREATE SCHEMA "{self.name}"'))
        self.url = f"{PG_URL}?options=-csearch_path%3D{self.name}"

    def drop(self) -> None:
        with self.admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{self.name}" CASCADE'))
        self.admin.dispose()


def postgres_available() -> bool:
    try:
        engine = create_engine(PG_URL)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    schema = PostgresSchema()
    try:
        yield schema.url
    finally:
        schema.drop()


def make_settings(database_url: str, provider_url: str, **changes: object) -> Settings:
    values: dict[str, object] = dict(
        secret_keys=("test-secret-" + "x" * 32,),
        database_url=database_url,
        public_url="http://127.0.0.1:9999",
        integrations_paths=(TESTS / "integrations",),
        integrations=provider_overrides(provider_url),
        allow_http_upstreams=True,
        # The fake provider and upstreams listen on loopback, which the egress screen refuses.
        egress_allow=("127.0.0.1/32",),
        upstream_timeout=5.0,
        upstream_max_response_bytes=2 * 1024 * 1024,
    )
    values.update(changes)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: str, provider: ProviderState) -> Settings:
    return make_settings(database_url, provider.url)  # type: ignore[attr-defined]


class Gateway:
    """A running gateway with helpers to set up accounts the way the dashboard would."""

    def __init__(self, settings: Settings, server: ServerThread) -> None:
        self.settings = settings
        self.server = server
        self.url = server.url
        self.app = server.server.config.app
        self.engine = self.app.state.engine
        self.box = Box(settings.secret_keys)
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def user(self, email: str | None = None) -> int:
        user = users.create(self.engine, email or f"u{secrets.token_hex(4)}@example.com", "correct horse battery")
        assert user.id is not None
        return user.id

    def key(self, user_id: int, **kwargs: object) -> str:
        return keys.create(self.engine, user_id, **kwargs)[1]  # type: ignore[arg-type]

    def connect(
        self,
        user_id: int,
        provider: ProviderState,
        integration: str = "github",
        account: str = "octocat",
        end_user: str | None = None,
        **token_changes: object,
    ) -> Connection:
        """Connects as the dashboard (or, with `end_user`, a connect session) would: the provider
        account `account` (its login at the fake provider)."""
        token = {**provider.mint(user=account), **token_changes}
        return connect.store(
            self.engine,
            self.box,
            end_user=end_users.resolve(self.engine, user_id, end_user) if end_user is not None else None,
            user_id=user_id,
            integration=integration,
            access_token=token["access_token"],
            refresh_token=token.get("refresh_token"),
            expires_at=connections.expires_at_from(token),
            scopes=token.get("scope"),
            account=account,
        )

    def run(self, run_id: str) -> Run:
        """A direct call's run row. It is committed right after the answer goes out (batch.py), so a
        reader in another thread may look a moment too early: wait for it, briefly."""
        deadline = time.monotonic() + 5
        while True:
            with self.engine.connect() as c:
                row = c.execute(select(Run.__table__).where(Run.id == run_id)).first()
            if row is not None:
                return Run(**row._mapping)
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} was never written")
            time.sleep(0.01)

    def call(
        self, secret: str, integration: str, endpoint: str, params: dict | None = None, **kwargs: object
    ) -> httpx.Response:
        return self.http.post(
            f"/v1/{integration}/{endpoint}",
            json={"params": params or {}},
            headers={"Authorization": f"Bearer {secret}"},
            **kwargs,  # type: ignore[arg-type]
        )


@contextlib.contextmanager
def running_gateway(settings: Settings, port: int | None = None) -> Iterator[Gateway]:
    """A gateway with these settings, served on 127.0.0.1 until the block ends."""
    server = ServerThread(create_app(settings), port=port).start()
    gw = Gateway(settings, server)
    try:
        yield gw
    finally:
        gw.http.close()
        server.stop()


@pytest.fixture
def gateway(settings: Settings) -> Iterator[Gateway]:
    with running_gateway(settings) as gw:
        yield gw


@pytest.fixture
def account(gateway: Gateway, provider: ProviderState) -> tuple[int, str]:
    """A user with a connected GitHub account and an API key for every integration."""
    user_id = gateway.user()
    gateway.connect(user_id, provider)
    return user_id, gateway.key(user_id, name="test")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests run last: Playwright's sync API leaves an event loop behind that later tests would trip on."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.fixture
def public_gateway(database_url: str, provider: ProviderState) -> Iterator[Gateway]:
    """A running gateway whose public URL is its own address, for flows a browser follows back to it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    revoke = f"{provider.url}/oauth/revoke"  # type: ignore[attr-defined]
    overrides = {
        name: dataclasses.replace(fake, revoke_url=revoke)
        for name, fake in provider_overrides(provider.url).items()  # type: ignore[attr-defined]
    }
    settings = make_settings(database_url, provider.url, public_url=url, integrations=overrides)  # type: ignore[attr-defined]
    with running_gateway(settings, port) as gw:
        yield gw


def pytest_configure(config: pytest.Config) -> None:
    # Database work on a thread that runs an event loop fails the test instead of logging a warning.
    database.ON_LOOP = "raise"
