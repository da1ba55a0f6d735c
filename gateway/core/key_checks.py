"""A pasted API key is tried on the spec's `auth.verify` endpoint before it is stored.

The person is there, looking at the form: a key the provider refuses, or one that cannot be
checked because the provider is unreachable, is stored nowhere and the form says why. A key
that was never checked would show "Connected" and fail on the first real call instead.
"""

from __future__ import annotations

from typing import Any

from gateway.core.connect import ConnectError
from gateway.core.execute import try_key
from gateway.core.runtime import Services
from gateway.errors import GatewayError, UpstreamTimeout, UpstreamUnreachable
from gateway.specs.params import validate
from gateway.specs.spec import ApiKeyAuth, Integration
from gateway.upstream.build import error_message


async def check(services: Services, integration: Integration, secret: str, fields: dict[str, Any] | None) -> None:
    """Returns when the provider accepts the key (or the spec names no check); raises ConnectError otherwise."""
    auth = integration.spec.auth
    if not isinstance(auth, ApiKeyAuth) or auth.verify is None:
        return
    name = integration.display_name
    endpoint = integration.endpoints[auth.verify.endpoint]  # specs.py checked it exists and is read-only
    try:
        response = await try_key(services, endpoint, validate(endpoint, dict(auth.verify.params)), secret, fields)
    except (UpstreamUnreachable, UpstreamTimeout) as exc:
        raise ConnectError(
            f"{name} could not be reached to check this key: {exc.message} Nothing was stored; try again shortly.", 502
        ) from None
    except GatewayError as exc:
        raise ConnectError(f"The key could not be checked: {exc.message} Nothing was stored.", 502) from None
    if response.status < 300:
        return
    reason = error_message(response.data, secret)
    said = f" ({response.status}: {reason.rstrip('.')})" if reason else f" ({response.status})"
    if response.status in (401, 403):
        raise ConnectError(f"{name} refused this key{said}. Nothing was stored; check the key and paste it again.")
    raise ConnectError(
        f"{name} answered the key check unexpectedly{said}, so the key could not be confirmed. Nothing was stored; "
        "try again later.",
        502,
    )
