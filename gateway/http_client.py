"""The upstream HTTP client: HTTP/1.1 keep-alive connections on asyncio protocols, parsed by httptools.

Every proxied call goes through here, so its cost is the gateway's floor. A bare Starlette
proxy forwarding one call through HTTPX's own transport used 4× the CPU of the same proxy on
this client at one connection, and 15–26× at 32 and 64 (docs/benchmarks.md, the `proxy-*`
rows). It does only what the gateway needs: one request at a time per connection, no
redirects, no cookies, no proxies; an answer is buffered up to a cap, decompressed (gzip,
deflate) as it arrives, and parsed by llhttp (httptools, the parser uvicorn uses).

Errors, as a tree:

    HTTPError
    ├── ConnectError          no connection: refused, unknown host, TLS handshake failed
    ├── TimeoutException
    │   ├── ConnectTimeout    the connection took longer than the connect timeout
    │   ├── ReadTimeout       no byte of the answer for the read timeout
    │   └── PoolTimeout       every connection stayed busy for the read timeout
    ├── RemoteProtocolError   a malformed answer, or the connection closed during one
    └── ResponseTooLarge      the answer passed the caller's byte cap
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import re
import ssl
import zlib
from typing import Any, NamedTuple

import httptools

_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")
_UNSAFE_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}


class HTTPError(Exception):
    """The upstream could not be used."""


class ConnectError(HTTPError):
    """No connection could be made."""


class TimeoutException(HTTPError):
    """A timeout ran out."""


class ConnectTimeout(TimeoutException):
    """Connecting (TCP and TLS) took longer than the connect timeout."""


class ReadTimeout(TimeoutException):
    """No byte of the answer arrived for the read timeout."""


class PoolTimeout(TimeoutException):
    """No connection became free for the read timeout."""


class RemoteProtocolError(HTTPError):
    """The answer was malformed, or the connection closed before it was complete."""


class ResponseTooLarge(HTTPError):
    """The decoded answer is larger than the caller's cap."""


class _ClosedBeforeAnswer(RemoteProtocolError):
    """The connection closed before any byte of the answer: the request may not have been read."""


class Origin(NamedTuple):
    # A tuple: the pool looks origins up on every call, and a dataclass hashes in Python.
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        return _host_header(self)


@functools.lru_cache(maxsize=1024)
def _host_header(origin: Origin) -> str:
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    return host if origin.port == DEFAULT_PORTS[origin.scheme] else f"{host}:{origin.port}"


@dataclasses.dataclass(slots=True)
class Response:
    status: int
    # Lower-case names; a repeated header's values joined with ", ".
    headers: dict[str, str]
    content: bytes


def _decoder(encoding: str) -> Any:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _Deflate()
    return None  # identity, or an encoding we did not ask for: passed through as it is


class _Deflate:
    """'deflate' is zlib-wrapped by the standard, raw by some servers: try the first, fall back."""

    def __init__(self) -> None:
        self.inner = zlib.decompressobj()
        self.started = False

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if not self.started:
            self.started = True
            try:
                return self.inner.decompress(data, max_length)
            except zlib.error:
                self.inner = zlib.decompressobj(-zlib.MAX_WBITS)
        return self.inner.decompress(data, max_length)

    @property
    def unconsumed_tail(self) -> bytes:
        return self.inner.unconsumed_tail

    def flush(self) -> bytes:
        return self.inner.flush()


class _Connection(asyncio.Protocol):
    """One connection to one origin; the pool lends it to one request at a time."""

    def __init__(self, client: Client, origin: Origin) -> None:
        self.client = client
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.requests = 0
        self.idle_since = 0.0
        self.closed = False
        self.waiter: asyncio.Future[Response] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.read_timeout = 0.0
        self.last_activity = 0.0
        self._reset(0)

    def _reset(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.decoder: Any = None
        self.interim = False
        self.headers_done = False
        self.until_eof = False
        self.received = False
        self.failure: HTTPError | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            # Nothing was asked: a server talking out of turn cannot be trusted with the next request.
            self._close()
            return
        self.received = True
        self.last_activity = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.failure = self.failure or RemoteProtocolError("the upstream switched protocols")
        except httptools.HttpParserError as exc:
            self.failure = self.failure or RemoteProtocolError(f"malformed answer: {exc}")
        if self.failure is not None:
            self._fail(self.failure)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.client._lost(self)
        if self.waiter is None or self.waiter.done():
            return
        if self.headers_done and self.until_eof and self.failure is None:
            self._complete(keep_alive=False)  # a body delimited by the end of the connection
        elif not self.received:
            self._fail(_ClosedBeforeAnswer("the upstream closed the connection before answering"))
        else:
            self._fail(RemoteProtocolError("the upstream closed the connection during its answer"))

    # httptools callbacks: no exception may leave them, so problems are kept in self.failure.

    def on_message_begin(self) -> None:
        self._reset(self.max_bytes)
        self.received = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = self.parser.get_status_code()
        if self.status < 200:
            self.interim = True  # 100 Continue, 103 Early Hints: the real answer follows
            return
        framed = False
        for name, value in self.headers:
            if name == b"content-encoding":
                self.decoder = _decoder(value.decode("latin-1").strip().lower())
            elif name == b"transfer-encoding":
                framed = True
            elif name == b"content-length":
                framed = True
                if value.isdigit() and int(value) > self.max_bytes and self.decoder is None:
                    self.failure = ResponseTooLarge(f"the answer declares {int(value)} bytes")
        self.until_eof = not framed and self.status not in (204, 304)

    def on_body(self, body: bytes) -> None:
        if self.failure is not None or self.interim:
            return
        room = self.max_bytes - self.size
        if self.decoder is not None:
            try:
                body = self.decoder.decompress(body, room + 1)
            except zlib.error as exc:
                self.failure = RemoteProtocolError(f"the answer's compressed body is broken: {exc}")
                return
            if self.decoder.unconsumed_tail:
                self.failure = ResponseTooLarge("the decompressed answer passed the cap")
                return
        self.size += len(body)
        if self.size > self.max_bytes:
            self.failure = ResponseTooLarge("the answer passed the cap")
            return
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            self.headers_done = False
            return
        if self.failure is None:
            self._complete(keep_alive=self.parser.should_keep_alive())

    # Requests

    async def send(self, request: bytes, max_bytes: int, read_timeout: float) -> Response:
        assert self.transport is not None and self.waiter is None
        self.requests += 1
        self._reset(max_bytes)
        self.waiter = self.loop.create_future()
        self.read_timeout = read_timeout
        self.last_activity = self.loop.time()
        self.timer = self.loop.call_at(self.last_activity + read_timeout, self._check_timeout)
        self.transport.write(request)
        try:
            return await self.waiter
        finally:
            self.timer.cancel()
            self.waiter = None

    def _check_timeout(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        quiet_until = self.last_activity + self.read_timeout
        if self.loop.time() >= quiet_until:
            self._fail(ReadTimeout(f"no answer for {self.read_timeout:g} s"))
        else:
            self.timer = self.loop.call_at(quiet_until, self._check_timeout)

    def _complete(self, keep_alive: bool) -> None:
        if self.decoder is not None:
            tail = self.decoder.flush()
            self.size += len(tail)
            if self.size > self.max_bytes:
                self._fail(ResponseTooLarge("the decompressed answer passed the cap"))
                return
            self.chunks.append(tail)
        headers: dict[str, str] = {}
        for name, value in self.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        content = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        if not keep_alive:
            self._close()
        assert self.waiter is not None
        if not self.waiter.done():
            self.waiter.set_result(Response(self.status, headers, content))

    def _fail(self, error: HTTPError) -> None:
        # What is left of the answer is unknown: this connection cannot serve another request.
        # Let go of the body read so far now: the error's traceback leads back here, so this
        # object lives until the cycle collector runs, and the next big answer would stack on it.
        self.chunks = []
        self._close(abort=True)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    def _close(self, abort: bool = False) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort() if abort else self.transport.close()

    @property
    def reusable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()


class Client:
    """A pool of keep-alive connections per origin, at most `max_connections` open in all."""

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        max_connections: int = 100,
        keepalive_expiry: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = "integration-gateway",
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self.ssl_context = ssl_context
        # Sent unless the request has its own.
        self._defaults = (
            ("user-agent", f"User-Agent: {user_agent}"),
            ("accept", "Accept: */*"),
            ("accept-encoding", "Accept-Encoding: gzip, deflate"),
        )
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection._close()
        self._idle.clear()

    async def request(
        self,
        method: str,
        origin: Origin,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        content: bytes | None = None,
        max_bytes: int = 10 * 1024 * 1024,
    ) -> Response:
        """Sends `method target` to `origin` and returns the whole answer.

        `target` is the path and query, already percent-encoded. A request on a reused
        connection that the upstream closed before answering is sent once more on a new
        connection when the method is idempotent (as aiohttp and browsers do).
        """
        head = self._head(method, origin, target, headers or [], content)
        payload = head + content if content else head
        attempts = 2 if method in IDEMPOTENT else 1
        for attempt in range(attempts):
            # Most calls find an idle connection and need no coroutine to get it.
            connection = None if attempt or self._closed else self._idle_connection(origin)
            if connection is None:
                connection = await self._acquire(origin, fresh=attempt > 0)
            reused = connection.requests > 0
            try:
                response = await connection.send(payload, max_bytes, self.read_timeout)
            except _ClosedBeforeAnswer:
                if reused and attempt + 1 < attempts:
                    continue
                raise RemoteProtocolError("the upstream closed the connection before answering") from None
            except BaseException:
                connection._close(abort=True)  # cancelled mid-request: its state is unknown
                raise
            finally:
                self._release(connection)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _head(
        self, method: str, origin: Origin, target: str, headers: list[tuple[str, str]], content: bytes | None
    ) -> bytes:
        if _UNSAFE_TARGET.search(target) or any(_UNSAFE_HEADER.search(n + v) for n, v in headers):
            # Callers check their input; this is the last line against request smuggling.
            raise ValueError("a request target or header holds whitespace or control characters")
        given = {name.lower() for name, _ in headers}
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}"]
        lines.extend(line for name, line in self._defaults if name not in given)
        lines.extend(f"{name}: {value}" for name, value in headers)
        if content or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(content or b'')}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode()

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()
            if connection.reusable and now - connection.idle_since < self.keepalive_expiry:
                return connection
            connection._close()
        return None

    async def _acquire(self, origin: Origin, fresh: bool) -> _Connection:
        if self._closed:
            raise ConnectError("the client is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout
        while True:
            connection = None if fresh else self._idle_connection(origin)
            if connection is not None:
                return connection
            if self._open >= self.max_connections:
                self._close_oldest_idle()
            if self._open < self.max_connections:
                return await self._connect(origin)
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise PoolTimeout(f"no free connection for {self.read_timeout:g} s") from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        self._open += 1
        tls = origin.scheme == "https"
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=(self.ssl_context or ssl.create_default_context()) if tls else None,
                    server_hostname=origin.host if tls else None,
                    ssl_handshake_timeout=self.connect_timeout if tls else None,
                )
        except TimeoutError:
            self._connection_gone()
            raise ConnectTimeout(f"connecting to {origin.host} took longer than {self.connect_timeout:g} s") from None
        except OSError as exc:  # refused, unreachable, unknown host, TLS errors (ssl.SSLError)
            self._connection_gone()
            raise ConnectError(f"cannot connect to {origin.host}: {exc.strerror or exc}") from None
        except BaseException:
            self._connection_gone()
            raise
        return connection

    def _release(self, connection: _Connection) -> None:
        if connection.reusable and not self._closed:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(connection.origin, []).append(connection)
            self._wake()
        else:
            connection._close()

    def _lost(self, connection: _Connection) -> None:
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)
        self._connection_gone()

    def _connection_gone(self) -> None:
        self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _close_oldest_idle(self) -> None:
        oldest = min(
            (c for connections in self._idle.values() for c in connections), key=lambda c: c.idle_since, default=None
        )
        if oldest is not None:
            self._idle[oldest.origin].remove(oldest)
            oldest._close()
