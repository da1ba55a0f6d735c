"""Reading what a caller sent: the API key and a JSON body, with clear errors."""

from __future__ import annotations

import datetime as dt
from typing import Any

from starlette.requests import ClientDisconnect, Request

from . import jsoncodec, keys
from .errors import BadRequest, Unauthorized
from .models import ApiKey
from .services import Services

MAX_BODY_BYTES = 5 * 1024 * 1024


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def api_key(services: Services, request: Request) -> ApiKey:
    secret = bearer(request)
    if secret is None:
        raise Unauthorized("Send an API key as 'Authorization: Bearer sk_...'.")
    key = keys.authenticate(services.engine, secret)
    if key is None:
        raise Unauthorized("The API key is unknown or revoked.")
    # Lets the rate-limit middleware report this key's usage on any /v1 answer.
    request.scope.setdefault("state", {})["api_key"] = key
    return key


def query_time(request: Request, name: str) -> dt.datetime | None:
    """An ISO 8601 date or time from the query string ('Z' or an offset; UTC when it has none)."""
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"'{name}' must be an ISO 8601 date or time, e.g. 2026-01-31T12:00:00Z.") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


async def json_object(request: Request) -> dict[str, Any]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise BadRequest("Send the body as JSON with 'Content-Type: application/json'.")
    raw = bytearray()
    # receive() directly: Starlette's stream() generator costs more than the loop (bench.hotspots).
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        raw += message.get("body", b"")
        if len(raw) > MAX_BODY_BYTES:
            raise BadRequest(f"The body is larger than {MAX_BODY_BYTES} bytes.")
        if not message.get("more_body", False):
            break
    if not raw:
        return {}
    try:
        body = jsoncodec.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.")
    return body
