"""Connection tokens: decrypt, and refresh them single-flight per connection.

Authlib's own refresh lock lives on one client object, so it protects neither
concurrent requests nor several processes. Ours is a lease on the connection
row: whoever sets it refreshes, everyone else waits for the new token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Callable
from typing import Any

from authlib.integrations.base_client.errors import OAuthError
from sqlalchemy import or_, update
from sqlalchemy.engine import Engine

from . import connections, links
from .crypto import Box
from .errors import TokenExpired, TokenRefreshUnavailable
from .models import Connection, utcnow
from .settings import Settings
from .specs import Integration, OAuth2Auth
from .token_endpoint import HTTP_ERRORS, TokenEndpointClient
from .ttlcache import TTLCache
from .upstream_client import UpstreamClient

logger = logging.getLogger("gateway.tokens")

EXPIRY_LEEWAY = dt.timedelta(seconds=60)
LEASE = dt.timedelta(seconds=30)
WAIT_STEP = 0.05


def is_expired(connection: Connection) -> bool:
    return connection.expires_at is not None and connection.expires_at - EXPIRY_LEEWAY <= utcnow()


class TokenStore:
    def __init__(self, settings: Settings, engine: Engine, box: Box, client: UpstreamClient) -> None:
        self.settings = settings
        self.engine = engine
        self.box = box
        self.client = client
        self.owner = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._locks: dict[int, asyncio.Lock] = {}
        # Every call needs its token in clear; decrypting costs ~20 µs, so each ciphertext is
        # decrypted once per connection-cache lifetime. A refreshed token is a new ciphertext.
        self._clear: TTLCache[str] = TTLCache(connections.CACHE_SECONDS)
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

    def mark_needs_reconnect(self, connection: Connection) -> None:
        connections.forget(self.engine, connection.user_id, connection.integration)
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
            return await self._refresh_across_processes(integration, stale)

    async def _refresh_across_processes(self, integration: Integration, stale: Connection) -> Connection:
        deadline = asyncio.get_running_loop().time() + LEASE.total_seconds() + 5
        while True:
            current = connections.get_by_id(self.engine, stale.id)  # type: ignore[arg-type]
            if current is None or current.status != "connected":
                raise self.expired_error(integration, f"The {integration.display_name} connection must be reconnected.")
            if current.access_token != stale.access_token and not is_expired(current):
                return current  # someone else refreshed while we waited
            if self._take_lease(current):
                # Re-read after taking the lease: a refresh may have landed in between.
                current = connections.get_by_id(self.engine, stale.id)  # type: ignore[arg-type]
                assert current is not None
                if current.access_token != stale.access_token and not is_expired(current):
                    self._release_lease(current)
                    return current
                return await self._refresh_holding_lease(integration, current)
            if asyncio.get_running_loop().time() > deadline:
                raise TokenRefreshUnavailable(
                    "Another process is refreshing this token and has not finished; retry shortly.",
                    headers={"Retry-After": "5"},
                )
            await asyncio.sleep(WAIT_STEP)

    def _take_lease(self, connection: Connection) -> bool:
        now = utcnow()
        with self.engine.begin() as c:
            taken = c.execute(
                update(Connection)
                .where(
                    Connection.id == connection.id,
                    or_(Connection.refresh_lease_until.is_(None), Connection.refresh_lease_until < now),
                )
                .values(refresh_lease_until=now + LEASE, refresh_lease_owner=self.owner)
            ).rowcount
        return taken == 1

    def _release_lease(self, connection: Connection, **values: Any) -> None:
        connections.forget(self.engine, connection.user_id, connection.integration)
        with self.engine.begin() as c:
            c.execute(
                update(Connection)
                .where(Connection.id == connection.id, Connection.refresh_lease_owner == self.owner)
                .values(refresh_lease_until=None, refresh_lease_owner=None, **values)
            )

    async def _refresh_holding_lease(self, integration: Integration, connection: Connection) -> Connection:
        auth = integration.spec.auth
        assert isinstance(auth, OAuth2Auth)
        refresh_token = self.box.decrypt(connection.refresh_token)
        if not refresh_token or not auth.refreshable:
            self._release_lease(connection, status="needs_reconnect", updated_at=utcnow())
            raise self.expired_error(
                integration, f"The {integration.display_name} token expired and cannot be refreshed; reconnect."
            )
        overrides = self.settings.overrides(integration.name)
        token_url = overrides.token_url or auth.token_url
        try:
            token = await self._request_refresh(
                auth, overrides.client_id, overrides.client_secret, token_url, refresh_token
            )
        except OAuthError as exc:
            self.on_refresh(integration.name, "invalid_grant" if exc.error == "invalid_grant" else "unavailable")
            if exc.error == "invalid_grant":
                logger.info("refresh rejected for connection %s: invalid_grant", connection.id)
                self._release_lease(connection, status="needs_reconnect", updated_at=utcnow())
                raise self.expired_error(
                    integration,
                    f"{integration.display_name} rejected the stored refresh token; the person must reconnect.",
                ) from None
            self._release_lease(connection)
            raise TokenRefreshUnavailable(
                f"{integration.display_name}'s token endpoint refused the refresh ({exc.error}); retry later.",
                headers={"Retry-After": "30"},
            ) from None
        except (*HTTP_ERRORS, ValueError) as exc:
            self.on_refresh(integration.name, "unavailable")
            self._release_lease(connection)
            raise TokenRefreshUnavailable(
                f"{integration.display_name}'s token endpoint is unavailable ({type(exc).__name__}); retry later.",
                headers={"Retry-After": "30"},
            ) from None
        self.on_refresh(integration.name, "ok")
        # Keep the old refresh token when the provider sends none (Authlib does this too).
        new_refresh = token.get("refresh_token") or refresh_token
        self._release_lease(
            connection,
            access_token=self.box.encrypt(token["access_token"]),
            refresh_token=self.box.encrypt(new_refresh),
            expires_at=connections.expires_at_from(token),
            token_type=token.get("token_type") or connection.token_type,
            updated_at=utcnow(),
        )
        refreshed = connections.get_by_id(self.engine, connection.id)  # type: ignore[arg-type]
        assert refreshed is not None
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
        return dict(await client.refresh_token(token_url, refresh_token=refresh_token))
