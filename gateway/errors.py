"""Every error the gateway itself answers with, and its one JSON shape.

    GatewayError
    ├── BadRequest                 400 bad_request
    ├── Unauthorized               401 unauthorized
    ├── TokenExpired               401 token_expired
    ├── IntegrationNotConnected    403 integration_not_connected
    │   └── IntegrationNotSetUp        (the same code: the operator has not set the integration up)
    ├── ScopeNotAllowed            403 scope_not_allowed
    ├── ApprovalDenied             403 approval_denied
    ├── PlanLimitReached           403 plan_limit_reached
    ├── NotFound                   404 not_found
    ├── MethodNotAllowed           405 method_not_allowed
    ├── IdempotencyInProgress      409 idempotency_in_progress
    ├── IdempotencyMismatch        422 idempotency_mismatch
    ├── DailyLimitReached          429 daily_limit_reached
    ├── InternalError              500 internal_error
    ├── WorkerLost                 500 worker_lost
    ├── UpstreamUnreachable        502 upstream_unreachable
    ├── UpstreamResponseTooLarge   502 upstream_response_too_large
    ├── TokenRefreshUnavailable    503 token_refresh_unavailable
    ├── ServiceUnavailable         503 service_unavailable
    │   └── DatabaseTimeout
    └── UpstreamTimeout            504 upstream_timeout

The body is always {"error", "message", "action_url"?, "details"?, "request_id"}.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base class: a code, an HTTP status and a message safe to show a caller."""

    code = "internal_error"
    status = 500

    def __init__(
        self,
        message: str,
        *,
        action_url: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.action_url = action_url
        self.details = details
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self, request_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.action_url:
            body["action_url"] = self.action_url
        if self.details is not None:
            body["details"] = self.details
        body.update(self.extra)
        body["request_id"] = request_id
        return body


class BadRequest(GatewayError):
    """The request is malformed or its params do not match the endpoint."""

    code, status = "bad_request", 400


class Unauthorized(GatewayError):
    """No API key, or one that is unknown or revoked."""

    code, status = "unauthorized", 401


class TokenExpired(GatewayError):
    """The person's connection can no longer be refreshed: they must reconnect."""

    code, status = "token_expired", 401


class IntegrationNotConnected(GatewayError):
    """The person has not connected this integration yet."""

    code, status = "integration_not_connected", 403


class IntegrationNotSetUp(IntegrationNotConnected):
    """Nobody can connect this integration yet: the operator has not given the gateway its OAuth app."""


class ScopeNotAllowed(GatewayError):
    """The API key is not allowed to use this integration."""

    code, status = "scope_not_allowed", 403


class ApprovalDenied(GatewayError):
    """The person rejected this call on the approvals page, or its approval expired."""

    code, status = "approval_denied", 403


class PlanLimitReached(GatewayError):
    """One more connection would exceed the person's plan."""

    code, status = "plan_limit_reached", 403


class NotFound(GatewayError):
    """No such integration, endpoint or record (for this caller)."""

    code, status = "not_found", 404


class MethodNotAllowed(GatewayError):
    """The route exists but not for this HTTP method."""

    code, status = "method_not_allowed", 405


class IdempotencyInProgress(GatewayError):
    """A call with this Idempotency-Key is still running; repeat it once it has ended."""

    code, status = "idempotency_in_progress", 409


class IdempotencyMismatch(GatewayError):
    """This Idempotency-Key was used with a different request."""

    code, status = "idempotency_mismatch", 422


class DailyLimitReached(GatewayError):
    """The person's or the key's calls for the current UTC day are used up."""

    code, status = "daily_limit_reached", 429


class InternalError(GatewayError):
    """Something failed inside the gateway; details are in the server log only."""

    code, status = "internal_error", 500


class WorkerLost(GatewayError):
    """The process running a call stopped before its outcome was recorded: the upstream may or may
    not have acted on it (a queued call's or an Idempotency-Key's recorded result)."""

    code, status = "worker_lost", 500


class UpstreamUnreachable(GatewayError):
    """The upstream API could not be reached (DNS, connection refused, TLS)."""

    code, status = "upstream_unreachable", 502


class UpstreamResponseTooLarge(GatewayError):
    """The upstream's decompressed body exceeded the configured cap."""

    code, status = "upstream_response_too_large", 502


class TokenRefreshUnavailable(GatewayError):
    """The provider's token endpoint failed for a reason other than a dead grant; retry later."""

    code, status = "token_refresh_unavailable", 503


class ServiceUnavailable(GatewayError):
    """The gateway cannot serve right now (for example its database is unreachable)."""

    code, status = "service_unavailable", 503


class DatabaseTimeout(ServiceUnavailable):
    """The database did not answer within GATEWAY_DATABASE_TIMEOUT (a partition, a lock held too long)."""


class UpstreamTimeout(GatewayError):
    """The upstream did not answer within the configured timeout."""

    code, status = "upstream_timeout", 504


def all_error_classes() -> list[type[GatewayError]]:
    found: list[type[GatewayError]] = []
    stack = [GatewayError]
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(cls.__subclasses__())
    # A subclass that only narrows the case (IntegrationNotSetUp) answers with its parent's code.
    coded = {c for c in found if c is not GatewayError and "code" in vars(c)}
    return sorted(coded, key=lambda c: (c.status, c.code))
