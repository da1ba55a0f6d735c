"""Signed callbacks: a POST of the finished run to the caller's `callback_url`.

Signature (Stripe-style): header `X-Gateway-Signature: t=<unix seconds>,v1=<hex>` where
hex = HMAC-SHA256(secret, f"{t}.{raw body}"). The secret is per API key, derived
(never stored), and read with `GET /v1/callbacks/secret`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import hashlib
import hmac
import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import BadRequest, GatewayError
from gateway.settings import Settings
from gateway.storage.models import ApiKey
from gateway.upstream import build as upstream
from gateway.upstream import client as upstream_client
from gateway.upstream.client import UpstreamClient
from gateway.upstream.egress import EgressRefused, policy_for

logger = logging.getLogger(__name__)

ATTEMPTS = 4
BACKOFF = 0.5  # seconds before the second attempt, doubling after each
RETRY_AFTER_MAX = 60.0  # a receiver's Retry-After is honoured up to this
MAX_ANSWER_BYTES = 64 * 1024  # only the status matters; a longer answer counts as a failed attempt


def secret_for(settings: Settings, key: ApiKey) -> str:
    digest = hmac.new(settings.secret_key.encode(), f"callback:{key.id}:{key.key_hash}".encode(), hashlib.sha256)
    return "whsec_" + digest.hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


MAX_URL_LENGTH = 2000


def url_pattern(settings: Settings) -> str:
    """What check_url takes, as a regular expression for the API's documents (a little stricter: it
    refuses every address literal, even one GATEWAY_EGRESS_ALLOW lists)."""
    scheme = "https?" if settings.allow_http_upstreams else "https"
    # A host name whose last label starts with a letter (every real top-level domain does): no
    # address literal in any spelling (127.1, 2130706433, 0x7f.1), and no localhost.
    return (
        rf"^{scheme}://(?!(?:[A-Za-z0-9-]+\.)*localhost\.?(?:[:/?]|$))(?:[A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*"
        rf"(?::[0-9]{{1,5}})?(?:[/?][A-Za-z0-9._~!$&'()*+,;=:@/?-]*)?$"
    )


def check_url(settings: Settings, url: Any) -> str:
    """An early, clear 400 for what can never be delivered: not https (http only when plain-http
    upstreams are allowed), credentials or a fragment, a non-public address literal in any
    spelling, or localhost. Names are resolved and screened at delivery (gateway/upstream/egress.py)."""
    if not isinstance(url, str) or len(url) > MAX_URL_LENGTH:
        raise BadRequest("'callback_url' must be a URL string.")
    try:
        # Parsed as the delivery will parse it.
        origin, _ = upstream.parse_base(url)
        fragment = urlsplit(url).fragment
    except (BadRequest, ValueError):
        raise BadRequest("'callback_url' must be an http(s) URL with a host and no credentials.") from None
    if origin.scheme != "https" and not (settings.allow_http_upstreams and origin.scheme == "http"):
        raise BadRequest("'callback_url' must be an https URL.")
    if fragment:
        raise BadRequest("'callback_url' must not have a fragment.")
    try:
        policy_for(settings.egress_allow).check_host(origin.host)
    except EgressRefused:
        raise BadRequest("'callback_url' must not point at a private or loopback address.") from None
    return url


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


async def deliver(client: UpstreamClient, secret: str, url: str, payload: dict[str, Any]) -> bool:
    """POSTs the signed run; retries a network error, 5xx, 408 and 429 (after Retry-After,
    up to RETRY_AFTER_MAX), and nothing else: a redirect is never followed."""
    run_id = payload.get("id")
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    for attempt in range(ATTEMPTS):
        headers = {
            "Content-Type": "application/json",
            "X-Gateway-Signature": sign(secret, body),
            "X-Gateway-Run-Id": str(run_id or ""),
        }
        delay = BACKOFF * 2**attempt
        try:
            request = upstream.request_for_url("POST", url, headers)
            request.content = body
            response = await client.send(request, MAX_ANSWER_BYTES)
        except (upstream_client.Refused, GatewayError) as exc:
            # The egress rules or the URL itself: trying again cannot change that.
            logger.warning("callback for %s not sent: %s", run_id, _message(exc))
            return False
        except upstream_client.OutboundError as exc:
            logger.info("callback for %s failed: %s", run_id, exc)
        else:
            status = response.status
            if 200 <= status < 300:
                return True
            if status not in (408, 429) and status < 500:
                logger.warning("callback for %s answered %s; not retried", run_id, status)
                return False
            logger.info("callback for %s answered %s", run_id, status)
            wait = _retry_after(response.headers.get("Retry-After"))
            if wait is not None:
                delay = min(wait, RETRY_AFTER_MAX)
        if attempt + 1 < ATTEMPTS:
            await asyncio.sleep(delay)
    logger.warning("callback for %s gave up after %s attempts", run_id, ATTEMPTS)
    return False


def _message(exc: Exception) -> str:
    return exc.message if isinstance(exc, GatewayError) else str(exc)
