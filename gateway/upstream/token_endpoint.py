"""OAuth token endpoint calls (code exchange, refresh, revocation) over the shared outbound client.

Authlib builds the requests and reads the answers: the grant's form body, client
authentication as the spec says (`client_secret_basic` or `client_secret_post`), an
OAuth error body raised as `OAuthError`. Only the sending is ours, so the token endpoint
gets the same egress screen, proxies, CA bundle and limits as every other outbound call.
This is how Authlib's own httpx client is written: the protocol base class with the
three transport methods made asynchronous.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from authlib.integrations.base_client.errors import OAuthError
from authlib.oauth2.client import OAuth2Client

from gateway import jsoncodec
from gateway.errors import GatewayError
from gateway.upstream import build as upstream
from gateway.upstream import client as upstream_client
from gateway.upstream.client import UpstreamClient

# A token answer is a few hundred bytes; an id_token a few KiB.
MAX_BYTES = 256 * 1024
# A token request's own bound, not GATEWAY_UPSTREAM_TIMEOUT: a refresh runs on after the call that
# asked for it gives up, so that a rotated refresh token is never lost (tokens.py).
TIMEOUT_SECONDS = 30.0
TIMEOUT = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS, sock_connect=10.0)


class TokenEndpointError(Exception):
    """The endpoint could not be used: unreachable, too slow, or an HTTP error without an OAuth error body."""


class TokenResponse:
    """What Authlib's answer parsing reads of a response."""

    def __init__(self, status: int, content: bytes) -> None:
        self.status_code = status
        self.content = content

    def json(self) -> Any:
        return jsoncodec.loads(self.content)  # ValueError when it is not JSON

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise TokenEndpointError(f"the token endpoint answered HTTP {self.status_code}")


class TokenEndpointClient(OAuth2Client):
    """Authlib's OAuth 2 client, sending through the gateway's client; awaited like its httpx one."""

    oauth_error_class = OAuthError

    def __init__(self, client: UpstreamClient, **kwargs: Any) -> None:
        super().__init__(session=None, **kwargs)
        self.client = client

    async def _fetch_token(  # type: ignore[override]
        self, url: str, body: str = "", headers: Any = None, auth: Any = None, method: str = "POST", **kwargs: Any
    ) -> Any:
        response = await self._http_post(url, body, auth=auth, headers=headers)
        for hook in self.compliance_hook["access_token_response"]:
            response = hook(response)
        return self.parse_response_token(response)

    async def _refresh_token(  # type: ignore[override]
        self,
        url: str,
        refresh_token: str | None = None,
        body: str = "",
        headers: Any = None,
        auth: Any = None,
        **kwargs: Any,
    ) -> Any:
        response = await self._http_post(url, body, auth=auth, headers=headers)
        for hook in self.compliance_hook["refresh_token_response"]:
            response = hook(response)
        token = self.parse_response_token(response)
        if "refresh_token" not in token:
            self.token["refresh_token"] = refresh_token
        return self.token

    async def _http_post(  # type: ignore[override]
        self, url: str, body: str | None = None, auth: Any = None, headers: Any = None, **kwargs: Any
    ) -> TokenResponse:
        # Authlib's default headers are a module-level dict: never change it in place.
        url, headers, body = auth.prepare("POST", url, dict(headers or {}), body or "")
        try:
            request = upstream.request_for_url("POST", url, headers)
            request.content = body.encode()
            response = await self.client.send(request, MAX_BYTES, TIMEOUT)
        except upstream_client.OutboundError as exc:
            raise TokenEndpointError(str(exc)) from None
        except GatewayError as exc:  # a token URL that is not an http(s) URL
            raise TokenEndpointError(exc.message) from None
        return TokenResponse(response.status, response.content)


# What a failed token call raises besides OAuthError (an OAuth error body).
HTTP_ERRORS: tuple[type[Exception], ...] = (TokenEndpointError,)
