"""Reading what a caller sent: query parameters and a JSON body, with clear errors."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from starlette.requests import ClientDisconnect, Request

from gateway import jsoncodec
from gateway.errors import BadRequest
from gateway.specs import params

MAX_BODY_BYTES = 5 * 1024 * 1024
DIGITS = re.compile(r"^[0-9]{1,6}$")


def query_time(request: Request, name: str) -> dt.datetime | None:
    """An RFC 3339 time ('Z' or an offset; UTC when it has none) or a date (its midnight, UTC)."""
    value = request.query_params.get(name)
    if value is None:
        return None
    parsed = params.parse_date_time(value, offset_required=False)
    day = params.parse_date(value) if parsed is None else None
    if day is not None:
        parsed = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    if parsed is None:
        raise BadRequest(f"'{name}' must be an RFC 3339 time or a date, e.g. 2026-01-31T12:00:00Z or 2026-01-31.")
    return parsed


def query_list(request: Request, name: str, choices: tuple[str, ...] | None = None) -> list[str] | None:
    """A comma-separated list (the name may repeat), each item non-empty and, with `choices`, one of them."""
    values = request.query_params.getlist(name)
    if not values:
        return None
    items = [item for value in values for item in value.split(",")]
    if "" in items or (choices is not None and not set(items) <= set(choices)):
        among = f" of {', '.join(choices)}" if choices is not None else ""
        raise BadRequest(f"'{name}' must be a comma-separated list{among}, without empty items.")
    return items


def query_limit(request: Request, default: int, most: int) -> int:
    value = request.query_params.get("limit")
    if value is None:
        return default
    if not DIGITS.fullmatch(value) or not 1 <= int(value) <= most:
        raise BadRequest(f"'limit' must be a whole number from 1 to {most}.")
    return int(value)


async def body_bytes(request: Request) -> bytearray:
    """The whole body, refused past MAX_BODY_BYTES."""
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
            return raw


def parse_json(raw: bytes | bytearray, headers: dict[str, str] | None = None) -> Any:
    try:
        return jsoncodec.loads_input(raw)
    except ValueError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.", headers=headers) from None


async def json_object(request: Request) -> dict[str, Any]:
    """The body's JSON object; no body at all reads as {}."""
    raw = await body_bytes(request)
    if not raw:
        return {}
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise BadRequest("Send the body as JSON with 'Content-Type: application/json'.")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.")
    return body


async def json_or_empty(request: Request, headers: dict[str, str] | None = None) -> Any:
    """Any JSON value, whatever the content type (a third party's callback), or {} for no body."""
    raw = await body_bytes(request)
    return parse_json(raw, headers) if raw.strip() else {}
