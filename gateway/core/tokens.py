"""Connection tokens: decrypt, and refresh them single-flight per connection.

Authlib's own refresh lock lives on one client object, so it protects neither
concurrent requests nor several processes. Ours is a lease on the connection
row: whoever sets it refreshes, everyone else waits for the new token.

The provider rotates the refresh token the moment it answers, and reusing the old
one may revoke the whole grant. So a refresh, once sent, is finished and stored
whoever still waits for it: it runs as a task of its own, shielded from the
caller's cancellation and timeout, with its own deadline, and its store is
retried while the database is unreachable.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

from authlib.integrations.base_client.errors import OAuthError
from sqlalchemy import or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from gateway.core import links
from gateway.crypto import Box
from gateway.errors import DatabaseTimeout, TokenExpired, TokenRefreshUnavailable
from gateway.settings import Settings
from gateway.specs.spec import Integration, OAuth2Auth
from gateway.storage import connections
from gateway.storage import database as db
from gateway.storage.caches import Cache
from gateway.storage.models import Connection, utcnow
from gateway.upstream.client import UpstreamClient
from gateway.upstream.token_endpoint import HTTP_ERRORS, TIMEOUT_SECONDS, TokenEndpointClient

logger = logging.getLogger(__name__)

EXPIRY_LEEWAY = dt.timedelta(seconds=60)
# How long a refresh may take at the token endpoint, whoever is still waiting for it.
REFRESH_TIMEOUT = TIMEOUT_SECONDS
# The refresh lease covers the request and then storing its result (retried meanwhile), so that no
# other process refreshes with the old refresh token while the new one is on its way to the database.
LEASE = dt.timedelta(seconds=60)
STORE_PATIENCE = LEASE.total_seconds() - REFRESH_TIMEOUT - 5
WAIT_STEP = 0.05


def is_expired(connection: Connection) -> bool:
    return connection.expires_at is not None and connection.expires_at - EXPIRY_LEEWAY <= utcnow()


class TokenStore:
    def __init__(self, settings: Settings, database: db.Database, box: Box, client: UpstreamClient) -> None:
        self.settings = settings
        self.db = database
        self.engine = database.engine
        self.box = box
        self.client = client
        self.owner = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._locks: dict[int, asyncio.Lock] = {}
        # Every call needs its token in clear and decrypting is not free, so each ciphertext is
        # decrypted once per connection-cache lifetime. A refreshed token is a new ciphertext.
        self._clear: Cache[str] = Cache()
        # Refreshes this process sent, by connection id, until they are stored (or failed).
        self._inflight: dict[int, asyncio.Task[Connection]] = {}
        # The access token (sealed) this process last obtained from the provider, by connection id.
        self._obtained: dict[int, str] = {}
        self.on_refresh: Callable[[str, str], None] = lambda integration, result: None

    def access_token(self, connection: Connection) -> str:
        sealed = connection.access_token
        if sealed is None:
            return ""
        token = self._clear.get(sealed)
        if token is None:
            token = self.box.decrypt(sealed) or ""
            self._clear.put(sealed, token)
        return token

    def obtained(self, connection: Connection) -> bool:
        """Whether this connection's access token came from the provider through this process: a
        token another process refreshed may be stale by the time it is used here."""
        return connection.id is not None and self._obtained.get(connection.id) == connection.access_token

    async def mark_needs_reconnect(self, connection: Connection) -> None:
        await self.db.run_unsettled(lambda _engine: self._mark_needs_reconnect(connection))

    def _mark_needs_reconnect(self, connection: Connection) -> None:
        connections.forget_connection(self.engine, connection)
        with self.engine.begin() as c:
            c.execute(
                update(Connection)
                .where(Connection.id == connection.id)
                .values(status="needs_reconnect", updated_at=utcnow())
            )

    def expired_error(self, integration: Integration, message: str) -> TokenExpired:
        return TokenExpired(message, action_url=links.integration(self.settings, integration.name, reconnect=True))

    async def refresh(self, integration: Integration, stale: Connection) -> Connection:
        """Returns a connection whose token is newer than `stale`'s, refreshing at most once."""
        assert stale.id is not None
        lock = self._locks.setdefault(stale.id, asyncio.Lock())
        async with lock:
            inflight = self._inflight.get(stale.id)
            if inflight is not None:  # sent for a caller that stopped waiting: its token is on its way
                return await self._wait(integration, inflight)
            return await self._refresh_across_processes(integration, stale)

    async def _refresh_across_processes(self, integration: Integration, stale: Connection) -> Connection:
        # A call waits for a refresh, its own or another process's, as long as for a silent upstream.
        deadline = asyncio.get_running_loop().time() + self.settings.upstream_timeout
        while True:
            current = await self.db.run_unsettled(connections.get_by_id, stale.id)  # type: ignore[arg-type]
            if current is None or current.status != "connected":
                raise self.expired_error(integration, f"The {integration.display_name} connection must be reconnected.")
            if current.access_token != stale.access_token and not is_expired(current):
                return current  # someone else refreshed while we waited
            if await self.db.run_unsettled(self._take_lease, current):
                # Re-read after taking the lease: a refresh may have landed in between.
                current = await self.db.run_unsettled(connections.get_by_id, stale.id)  # type: ignore[arg-type]
                assert current is not None
                if current.access_token != stale.access_token and not is_expired(current):
                    await self._release(current)
                    return current
                task = asyncio.create_task(self._refresh_holding_lease(integration, current))
                self._inflight[current.id] = task  # type: ignore[index]
                task.add_done_callback(functools.partial(self._settled, current.id))
                return await self._wait(integration, task)
            if asyncio.get_running_loop().time() > deadline:
                raise TokenRefreshUnavailable(
                    "Another process is refreshing this token and has not finished; retry shortly.",
                    headers={"Retry-After": "5"},
                )
            await asyncio.sleep(WAIT_STEP)

    async def _wait(self, integration: Integration, task: asyncio.Task[Connection]) -> Connection:
        """The caller's wait for a refresh: giving up (or being cancelled) leaves the refresh running."""
        try:
            async with asyncio.timeout(self.settings.upstream_timeout):
                return await asyncio.shield(task)
        except TimeoutError:
            raise TokenRefreshUnavailable(
                f"{integration.display_name}'s token endpoint has not answered yet; the refresh goes on "
                "and the next call uses its token. Retry shortly.",
                headers={"Retry-After": "5"},
            ) from None

    def _settled(self, connection_id: int, task: asyncio.Task[Connection]) -> None:
        self._inflight.pop(connection_id, None)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here: nobody may be waiting any more (the caller's error was its own).
            logger.debug("refresh of connection %s ended: %s", connection_id, type(task.exception()).__name__)

    def _take_lease(self, engine: Engine, connection: Connection) -> bool:
        now = utcnow()
        with engine.begin() as c:
            taken = c.execute(
                update(Connection)
                .where(
                    Connection.id == connection.id,
                    # This process's own lease is stale when no refresh of it is in flight (refresh()
                    # checked): one whose release met a database failure.
                    or_(
                        Connection.refresh_lease_until.is_(None),
                        Connection.refresh_lease_until < now,
                        Connection.refresh_lease_owner == self.owner,
                    ),
                )
                .values(refresh_lease_until=now + LEASE, refresh_lease_owner=self.owner)
            ).rowcount
        return taken == 1

    async def _release(self, connection: Connection, **values: Any) -> bool:
        return await self.db.run_unsettled(lambda _engine: self._release_lease(connection, **values))

    def _release_lease(self, connection: Connection, **values: Any) -> bool:
        connections.forget_connection(self.engine, connection)
        with self.engine.begin() as c:
            return (
                c.execute(
                    update(Connection)
                    .where(Connection.id == connection.id, Connection.refresh_lease_owner == self.owner)
                    .values(refresh_lease_until=None, refresh_lease_owner=None, **values)
                ).rowcount
                == 1
            )

    async def _refresh_holding_lease(self, integration: Integration, connection: Connection) -> Connection:
        auth = integration.spec.auth
        assert isinstance(auth, OAuth2Auth)
        refresh_token = self.box.decrypt(connection.refresh_token)
        if not refresh_token or not auth.refreshable:
            await self._release(connection, status="needs_reconnect", updated_at=utcnow())
            raise self.expired_error(
                integration, f"The {integration.display_name} token expired and cannot be refreshed; reconnect."
            )
        overrides = self.settings.overrides(integration.name)
        token_url = overrides.token_url or auth.token_url
        try:
            async with asyncio.timeout(REFRESH_TIMEOUT):
                token = await self._request_refresh(
                    auth, overrides.client_id, overrides.client_secret, token_url, refresh_token
                )
        except OAuthError as exc:
            self.on_refresh(integration.name, "invalid_grant" if exc.error == "invalid_grant" else "unavailable")
            if exc.error == "invalid_grant":
                logger.info("refresh rejected for connection %s: invalid_grant", connection.id)
                await self._release(connection, status="needs_reconnect", updated_at=utcnow())
                raise self.expired_error(
                    integration,
                    f"{integration.display_name} rejected the stored refresh token; the person must reconnect.",
                ) from None
            await self._release(connection)
            raise TokenRefreshUnavailable(
                f"{integration.display_name}'s token endpoint refused the refresh ({exc.error}); retry later.",
                headers={"Retry-After": "30"},
            ) from None
        except (*HTTP_ERRORS, ValueError, TimeoutError) as exc:
            self.on_refresh(integration.name, "unavailable")
            await self._release(connection)
            raise TokenRefreshUnavailable(
                f"{integration.display_name}'s token endpoint is unavailable ({type(exc).__name__}); retry later.",
                headers={"Retry-After": "30"},
            ) from None
        self.on_refresh(integration.name, "ok")
        # Keep the old refresh token when the provider sends none (Authlib does this too).
        new_refresh = token.get("refresh_token") or refresh_token
        values = dict(
            access_token=self.box.encrypt(token["access_token"]),
            refresh_token=self.box.encrypt(new_refresh),
            expires_at=connections.expires_at_from(token),
            token_type=token.get("token_type") or connection.token_type,
            updated_at=utcnow(),
        )
        what = f"the refreshed token of connection {connection.id} ({integration.name})"
        try:
            stored = await db.write_until_landed(
                self.db, lambda: self._release_lease(connection, **values), patience=STORE_PATIENCE, what=what
            )
            if not stored:
                logger.error("%s was not written: another process took over the refresh", what)
        except (DBAPIError, DatabaseTimeout) as exc:
            stored = False
            logger.error("%s could not be written (%s): it is lost", what, type(exc).__name__)
        if not stored:
            # This call still uses the new token; the stored one is now spent at the provider.
            self.on_refresh(integration.name, "lost")
        refreshed = Connection(
            **{**connection.model_dump(), **values, "refresh_lease_until": None, "refresh_lease_owner": None}
        )
        self._obtained[connection.id] = refreshed.access_token  # type: ignore[index,assignment]
        return refreshed

    async def _request_refresh(
        self, auth: OAuth2Auth, client_id: str | None, client_secret: str | None, token_url: str, refresh_token: str
    ) -> dict[str, Any]:
        # Authlib sends the client credentials as the spec says (Basic or body) and raises
        # OAuthError for an OAuth error body; HTTP_ERRORS for an outage.
        client = TokenEndpointClient(
            self.client,
            client_id=client_id,
            client_secret=client_secret,
            token_endpoint_auth_method=auth.token_auth_method,
        )
        # Its own bound, not the caller's: the refresh finishes (and is stored) even when the call
        # that asked for it has given up.
        async with asyncio.timeout(REFRESH_TIMEOUT):
            return dict(await client.refresh_token(token_url, refresh_token=refresh_token))
