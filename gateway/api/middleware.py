"""Middleware that adds the daily-limit headers to every authenticated /v1 answer."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.core import limits

RATE_LIMIT_HEADER = b"x-ratelimit-limit"


class RateLimitHeadersMiddleware:
    """A call already carries them from counting; any other /v1 answer for a key reads them once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        async def send_with_usage(message: Message) -> None:
            if message["type"] == "http.response.start":
                state = scope.get("state", {})
                key = state.get("api_key")
                headers = message.setdefault("headers", [])
                # A call already reported its usage (or had no limit to report): no second read.
                if (
                    key is not None
                    and not state.get("usage_reported")
                    and not any(name == RATE_LIMIT_HEADER for name, _ in headers)
                ):
                    services = scope["app"].state.services
                    try:
                        usage = await services.db.run(
                            lambda engine: limits.current(engine, key, services.plans.for_user(engine, key.user_id))
                        )
                    except Exception:
                        usage = None  # never fail an answer over its headers
                    if usage is not None:
                        headers.extend((k.lower().encode(), v.encode()) for k, v in usage.headers().items())
            await send(message)

        await self.app(scope, receive, send_with_usage)
