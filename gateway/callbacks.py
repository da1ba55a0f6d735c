"""Signed callbacks: a POST of the finished run to the caller's `callback_url`.

Signature (Stripe-style): header `X-Gateway-Signature: t=<unix seconds>,v1=<hex>` where
hex = HMAC-SHA256(secret, f"{t}.{raw body}"). The secret is per API key, derived
(never stored), and read with `GET /v1/callbacks/secret`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import time
from typing import Any

import httpx

from .errors import BadRequest
from .models import ApiKey
from .settings import Settings

logger = logging.getLogger("gateway.callbacks")

ATTEMPTS = 4


def secret_for(settings: Settings, key: ApiKey) -> str:
    digest = hmac.new(settings.secret_key.encode(), f"callback:{key.id}:{key.key_hash}".encode(), hashlib.sha256)
    return "whsec_" + digest.hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def check_url(settings: Settings, url: Any) -> str:
    """https only, no credentials, no private or loopback address literal (unless plain http
    upstreams are allowed, which is how tests and private networks run)."""
    if not isinstance(url, str) or len(url) > 2000:
        raise BadRequest("'callback_url' must be a URL string.")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise BadRequest("'callback_url' is not a valid URL.") from None
    trusted = settings.allow_http_upstreams
    if parsed.scheme != "https" and not (trusted and parsed.scheme == "http"):
        raise BadRequest("'callback_url' must be an https URL.")
    if not parsed.host or parsed.userinfo or parsed.fragment:
        raise BadRequest("'callback_url' must have a host and no credentials or fragment.")
    if not trusted:
        try:
            address = ipaddress.ip_address(parsed.host)
        except ValueError:
            address = None
        if parsed.host == "localhost" or (address and not address.is_global):
            raise BadRequest("'callback_url' must not point at a private or loopback address.")
    return url


async def deliver(http: httpx.AsyncClient, secret: str, url: str, payload: dict[str, Any]) -> bool:
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    for attempt in range(ATTEMPTS):
        headers = {
            "Content-Type": "application/json",
            "X-Gateway-Signature": sign(secret, body),
            "X-Gateway-Run-Id": str(payload.get("id", "")),
        }
        try:
            response = await http.post(url, content=body, headers=headers, timeout=10)
            if response.status_code < 300:
                return True
            if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                logger.warning("callback for %s refused with %s", payload.get("id"), response.status_code)
                return False
        except httpx.HTTPError as exc:
            logger.info("callback for %s failed: %s", payload.get("id"), type(exc).__name__)
        await asyncio.sleep(0.5 * 2**attempt)
    logger.warning("callback for %s gave up after %s attempts", payload.get("id"), ATTEMPTS)
    return False
