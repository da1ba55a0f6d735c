"""Reading what a caller sent: the API key and a JSON body, with clear errors."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from . import keys
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


async def json_object(request: Request) -> dict[str, Any]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise BadRequest("Send the body as JSON with 'Content-Type: application/json'.")
    raw = bytearray()
    async for chunk in request.stream():
        raw.extend(chunk)
        if len(raw) > MAX_BODY_BYTES:
            raise BadRequest(f"The body is larger than {MAX_BODY_BYTES} bytes.")
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.")
    return body
