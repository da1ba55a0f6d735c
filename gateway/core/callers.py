"""Who is calling: the bearer credential a request carries and the API key it names."""

from __future__ import annotations

from starlette.requests import Request

from gateway.core.runtime import Services
from gateway.errors import Unauthorized
from gateway.storage import keys
from gateway.storage.models import ApiKey


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def api_key(services: Services, request: Request) -> ApiKey:
    """The caller's API key: from this process's cache, or looked up in a database thread."""
    secret = bearer(request)
    if secret is None:
        raise Unauthorized("Send an API key as 'Authorization: Bearer sk_...'.")
    key = keys.in_cache(services.engine, secret) or await services.db.run_unsettled(keys.authenticate, secret)
    if key is None:
        raise Unauthorized("The API key is unknown or revoked.")
    # Lets the rate-limit middleware report this key's usage on any /v1 answer.
    request.scope.setdefault("state", {})["api_key"] = key
    return key
