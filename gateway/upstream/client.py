"""The one outbound HTTP client: aiohttp behind a small protocol, with the egress screen.

Every request the gateway makes goes through `Client.send`: proxied calls, the OAuth
token endpoint, the connect flow's lookups and callback deliveries. One client per
process, made in the lifespan (services.clients), so one egress configuration applies to
all of them: the screen (gateway/upstream/egress.py), proxies, the CA bundle and client
certificate, connection limits overall and per host, and the timeouts.

What it never does: follow a redirect, keep a cookie (one client serves every person),
read .netrc or the environment (settings.py reads it), or hold more of an answer than the
caller's cap, headers included. A request on a reused connection that the upstream
closed is sent once more only when its method is idempotent (aiohttp's retry).

Errors, as a tree (each message is safe to show a caller):

    OutboundError
    ├── Refused       the egress screen or the scheme rule said no; nothing was sent
    ├── Unreachable   no connection: refused, unknown host, TLS failed, proxy failed
    ├── Timeout       silent for the read timeout, slow to connect, or past the total deadline
    ├── Broken        the connection closed during the answer, or the answer was malformed
    └── TooLarge      headers and decoded body passed the caller's cap, or a header limit
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ssl
import urllib.request
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, NamedTuple, Protocol

import aiohttp
import certifi
from aiohttp import http_exceptions
from yarl import URL

from gateway.settings import Settings
from gateway.upstream.egress import EgressRefused, Policy, ScreeningResolver

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

    from gateway.upstream.build import UpstreamRequest

DEFAULT_PORTS = {"http": 80, "https": 443}
USER_AGENT = "integration-gateway"
# aiohttp's own parser limits, stated: a header line of at most 8 KiB and at most 100
# headers, so an answer's head can never hold more than about 800 KiB while it is parsed.
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 100
# Past aiohttp's limits, the whole head must fit here (curl allows 300 KiB, nginx 4-8 KiB).
MAX_HEADER_BYTES = 64 * 1024
CHUNK = 64 * 1024
# Answers that never have a body, whatever their Content-Length says (RFC 9110 6.4.1).
BODYLESS = frozenset({204, 304})


class OutboundError(Exception):
    """An outbound request failed; the message says why and names the host."""


class Refused(OutboundError):
    """The egress rules refused the destination; nothing was sent."""


class Unreachable(OutboundError):
    """No connection could be made (refused, unknown host, TLS, proxy)."""


class Timeout(OutboundError):
    """A timeout or the total deadline ran out."""


class Broken(OutboundError):
    """The connection broke during the answer, or the answer was malformed."""


class TooLarge(OutboundError):
    """The answer, headers included, passed the caller's cap or a header limit."""


class Origin(NamedTuple):
    # A tuple: the client looks origins up on every call, and a dataclass hashes in Python.
    scheme: str
    host: str  # lower-case, IDNA-encoded, without brackets
    port: int

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


@dataclasses.dataclass(slots=True)
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    content: bytes


class UpstreamClient(Protocol):
    """What the rest of the gateway needs of an HTTP client; tests may give a fake."""

    async def send(
        self, request: UpstreamRequest, cap: int, timeout: aiohttp.ClientTimeout | None = None
    ) -> Response: ...


def make_ssl_context(settings: Settings) -> ssl.SSLContext:
    """Public roots (certifi), plus GATEWAY_CA_BUNDLE, plus the client certificate for mTLS."""
    context = ssl.create_default_context(cafile=certifi.where())
    try:
        if settings.ca_bundle is not None:
            context.load_verify_locations(cafile=str(settings.ca_bundle))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"GATEWAY_CA_BUNDLE: cannot load {settings.ca_bundle}: {exc}") from None
    try:
        if settings.client_cert is not None:
            key = str(settings.client_key) if settings.client_key is not None else None
            context.load_cert_chain(str(settings.client_cert), key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"GATEWAY_CLIENT_CERT / GATEWAY_CLIENT_KEY: cannot load: {exc}") from None
    return context


class _Connector(aiohttp.TCPConnector):
    async def _wait_for_available_connection(self, key, traces):  # type: ignore[no-untyped-def]
        # aiohttp (3.14) loses the wake-up of a waiter cancelled in the turn it is woken (a
        # deadline firing, a caller going away): the next waiter then waits while a
        # connection sits idle. Pass it on; a spare wake-up only makes a waiter look again.
        try:
            await super()._wait_for_available_connection(key, traces)
        except BaseException:
            self._release_waiter()
            raise


class Client:
    """An aiohttp.ClientSession with the gateway's egress rules; `send` is the whole interface."""

    def __init__(self, settings: Settings, resolver: aiohttp.abc.AbstractResolver | None = None) -> None:
        proxies = {"http": settings.http_proxy, "https": settings.https_proxy}
        self.proxies = {scheme: URL(url) for scheme, url in proxies.items() if url}
        self.no_proxy = settings.no_proxy
        # The proxies are the operator's own: reaching them is never an egress question.
        self.policy = Policy((*settings.egress_allow, *(url.host or "" for url in self.proxies.values())))
        self.allow_http = settings.allow_http_upstreams
        connector = _Connector(
            limit=settings.upstream_max_connections,
            limit_per_host=settings.upstream_max_connections_per_host,
            resolver=ScreeningResolver(self.policy, resolver),
            ssl=make_ssl_context(settings),
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            # connect=None: waiting for a free connection is bounded by the total deadline.
            timeout=aiohttp.ClientTimeout(
                total=settings.upstream_total_timeout,
                sock_connect=settings.upstream_connect_timeout,
                sock_read=settings.upstream_timeout,
            ),
            headers={"User-Agent": USER_AGENT},
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            max_field_size=MAX_FIELD_SIZE,
            max_line_size=MAX_FIELD_SIZE,
            max_headers=MAX_HEADERS,
        )
        self._route = functools.lru_cache(maxsize=4096)(self._route_for)

    async def close(self) -> None:
        await self.session.close()

    def _route_for(self, origin: Origin) -> URL | None:
        """Checks an origin against the egress rules and returns the proxy to use, if any."""
        if origin.scheme != "https" and not (origin.scheme == "http" and self.allow_http):
            raise Refused(f"{origin.host}: only https is allowed (GATEWAY_ALLOW_HTTP_UPSTREAMS allows http)")
        try:
            self.policy.check_host(origin.host)
        except EgressRefused as exc:
            raise Refused(str(exc)) from None
        proxy = self.proxies.get(origin.scheme)
        if proxy is not None and urllib.request.proxy_bypass_environment(origin.netloc, {"no": self.no_proxy}):
            return None
        return proxy

    async def send(self, request: UpstreamRequest, cap: int, timeout: aiohttp.ClientTimeout | None = None) -> Response:
        """Sends the request and returns the whole answer, at most `cap` bytes of headers and decoded body.
        `timeout` replaces the session's (the token endpoint has a bound of its own)."""
        async with self.stream(request, timeout) as response:
            return await _read(response, cap, request.origin.host)

    @contextlib.asynccontextmanager
    async def stream(
        self, request: UpstreamRequest, timeout: aiohttp.ClientTimeout | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Sends the request and yields the answer with its body not read yet (the proxy streams it):
        the same egress rules, timeouts and error mapping as `send`. Reading the body inside the block
        raises the same errors."""
        origin = request.origin
        proxy = self._route(origin)
        url = URL.build(
            scheme=origin.scheme,
            host=origin.host,
            port=origin.port,
            path=request.path,
            query_string=request.query_string,
            encoded=True,
        )
        headers, content = request.encoded()
        host = origin.host
        try:
            async with self.session.request(
                request.method,
                url,
                headers=headers,
                data=content,
                proxy=proxy,
                allow_redirects=False,
                **({"timeout": timeout} if timeout is not None else {}),
            ) as response:
                yield response
        except OutboundError:
            raise
        except EgressRefused as exc:
            raise Refused(str(exc)) from None
        except TimeoutError:
            raise Timeout(f"{host} did not answer in time") from None
        except aiohttp.ClientHttpProxyError as exc:
            raise Unreachable(f"{host}: the proxy refused the connection (HTTP {exc.status})") from None
        except aiohttp.ClientResponseError as exc:
            if _over_header_limit(exc):
                raise TooLarge(f"{host} answered with headers past the gateway's limits") from None
            raise Broken(f"{host} sent an answer the gateway cannot read ({exc.message})") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            raise Broken(f"{host} broke off its answer ({type(exc).__name__})") from None
        except aiohttp.ClientSSLError as exc:
            raise Unreachable(f"{host}: the TLS connection failed ({exc.__class__.__name__})") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(f"{host} could not be reached ({type(exc).__name__})") from None


def _over_header_limit(exc: aiohttp.ClientResponseError) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, http_exceptions.LineTooLong):
            return True
        if isinstance(cause, http_exceptions.BadHttpMessage) and "Too many headers" in cause.message:
            return True
        cause = cause.__cause__
    return False


async def _read(response: aiohttp.ClientResponse, cap: int, host: str) -> Response:
    if response.status < 200:
        raise Broken(f"{host} answered {response.status} to a plain request")
    # The head counts against the cap too: 40 MiB of Link headers is an answer of 40 MiB.
    size = 0
    for name, value in response.raw_headers:
        size += len(name) + len(value) + 4
    if size > MAX_HEADER_BYTES or size > cap:
        raise TooLarge(f"{host} answered with {size} bytes of headers")
    room = cap - size
    declared = response.content_length
    if response.status in BODYLESS or response.method == "HEAD":
        content = await response.read()  # nothing: aiohttp knows these have no body
    elif declared is not None and "Content-Encoding" not in response.headers:
        if declared > room:
            raise TooLarge(f"{host} declared {declared} bytes")
        content = await response.read()  # the parser reads exactly the declared length
    else:
        # Counted as decoded while it streams: a small compressed body may inflate to gigabytes.
        chunks: list[bytes] = []
        async for chunk in response.content.iter_chunked(CHUNK):
            room -= len(chunk)
            if room < 0:
                # The error's traceback keeps this frame alive: let go of the body now.
                chunks.clear()
                raise TooLarge(f"{host} answered more than the cap")
            chunks.append(chunk)
        content = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return Response(response.status, response.headers, content)
