"""The upstream HTTP client against real sockets on 127.0.0.1, with servers that say exactly what each test needs."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import gzip
import ipaddress
import ssl
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import http_client
from gateway.http_client import Client, Origin

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """Counts connections and requests; the handler answers one connection, request after request."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests: list[tuple[bytes, dict[str, str], bytes]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes] | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        line, *fields = head[:-4].split(b"\r\n")
        headers = {}
        for field in fields:
            name, _, value = field.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((line, headers, body))
        return line, headers, body


@contextlib.asynccontextmanager
async def serving(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[Origin, Server]]:
    server = Server(handler)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield Origin("https" if tls else "http", "127.0.0.1", port), server
    finally:
        listener.close()


def answer(body: bytes = b'{"ok":true}', status: str = "200 OK", headers: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


def keep_answering(response: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader) is not None:
            writer.write(response)
            await writer.drain()

    return handler


def run(coroutine: Awaitable[object]) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def test_a_keep_alive_connection_serves_request_after_request() -> None:
    async def go() -> None:
        async with serving(keep_answering(answer())) as (origin, server), Client() as client:
            for _ in range(5):
                response = await client.request("GET", origin, "/a?b=1")
                assert (response.status, response.content) == (200, b'{"ok":true}')
            assert server.connections == 1
            line, headers, _ = server.requests[0]
            assert line == b"GET /a?b=1 HTTP/1.1"
            assert headers["host"] == f"127.0.0.1:{origin.port}"
            assert headers["accept-encoding"] == "gzip, deflate"
            assert "cookie" not in headers

    run(go())


def test_the_request_head_and_body_go_out_as_given() -> None:
    async def go() -> None:
        async with serving(keep_answering(answer())) as (origin, server), Client(user_agent="ua/1") as client:
            await client.request(
                "POST", origin, "/items", [("X-Thing", "café"), ("Accept", "application/json")], b'{"a":1}'
            )
            await client.request("POST", origin, "/empty")
            (line, headers, body), (_, empty_headers, empty_body) = server.requests
            assert line == b"POST /items HTTP/1.1"
            assert body == b'{"a":1}' and headers["content-length"] == "7"
            assert headers["x-thing"].encode("latin-1").decode() == "café"
            assert headers["accept"] == "application/json" and headers["user-agent"] == "ua/1"
            assert empty_headers["content-length"] == "0" and empty_body == b""

    run(go())


def test_headers_and_targets_with_line_breaks_are_refused_before_sending() -> None:
    async def go() -> None:
        async with serving(keep_answering(answer())) as (origin, server), Client() as client:
            with pytest.raises(ValueError):
                await client.request("GET", origin, "/a", [("X", "1\r\nInjected: yes")])
            with pytest.raises(ValueError):
                await client.request("GET", origin, "/a HTTP/1.1\r\nX: y")
            assert server.requests == []

    run(go())


def test_chunked_answers_in_many_writes() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n")
            for part in (b"hello ", b"chunked ", b"world"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")

    async def go() -> None:
        async with serving(handler) as (origin, server), Client() as client:
            for _ in range(2):
                response = await client.request("GET", origin, "/")
                assert response.content == b"hello chunked world"
                assert response.headers["content-type"] == "text/plain"
            assert server.connections == 1

    run(go())


@pytest.mark.parametrize(
    "encoding, encode",
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some servers send it
        ("br", lambda data: data),  # not asked for: passed through as it is
    ],
)
def test_compressed_answers_are_decoded(encoding: str, encode: Callable[[bytes], bytes]) -> None:
    body = b'{"items": "' + b"x" * 5000 + b'"}'

    async def go() -> None:
        response_bytes = answer(encode(body), headers=f"Content-Encoding: {encoding}\r\n")
        async with serving(keep_answering(response_bytes)) as (origin, _), Client() as client:
            assert (await client.request("GET", origin, "/")).content == body

    run(go())


def test_the_cap_counts_decoded_bytes_and_stops_reading() -> None:
    bomb = gzip.compress(b"0" * 50_000_000)
    assert len(bomb) < 100_000

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(10_000):  # 640 MB if nobody stopped it
            writer.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
            await writer.drain()

    async def go() -> None:
        async with Client() as client:
            declared = answer(b"x" * 2000)
            async with serving(keep_answering(declared)) as (origin, _):
                with pytest.raises(http_client.ResponseTooLarge):
                    await client.request("GET", origin, "/", max_bytes=1000)
                assert len((await client.request("GET", origin, "/", max_bytes=2000)).content) == 2000
            async with serving(keep_answering(answer(bomb, headers="Content-Encoding: gzip\r\n"))) as (origin, _):
                with pytest.raises(http_client.ResponseTooLarge):
                    await client.request("GET", origin, "/", max_bytes=1_000_000)
            async with serving(endless) as (origin, _):
                with pytest.raises(http_client.ResponseTooLarge):
                    await asyncio.wait_for(client.request("GET", origin, "/", max_bytes=1_000_000), 10)

    run(go())


def test_a_capped_answer_lets_go_of_its_body_at_once() -> None:
    # The error's traceback leads back to the connection, so whatever it still held would
    # live until the cycle collector ran, and the next big answer would stack on top of it.
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(1_000):
            writer.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
            await writer.drain()

    async def go() -> None:
        async with Client() as client, serving(endless) as (origin, _):
            tracemalloc.start()
            try:
                errors = []
                for _ in range(3):
                    try:
                        await asyncio.wait_for(client.request("GET", origin, "/", max_bytes=4_000_000), 10)
                    except http_client.ResponseTooLarge as exc:
                        errors.append(exc)  # kept, traceback and all, as a caller logging it might
                held, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert len(errors) == 3
            assert held < 1_000_000, held
            assert peak < 6_000_000, peak

    gc.disable()
    try:
        run(go())
    finally:
        gc.enable()


def test_an_answer_ended_by_closing_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"until": ')
        await writer.drain()
        writer.write(b'"eof"}')
        writer.close()

    async def go() -> None:
        async with serving(handler) as (origin, server), Client() as client:
            for _ in range(2):
                assert (await client.request("GET", origin, "/")).content == b'{"until": "eof"}'
            assert server.connections == 2

    run(go())


def test_connection_close_is_honoured() -> None:
    async def go() -> None:
        closing = answer(headers="Connection: close\r\n")
        async with serving(keep_answering(closing)) as (origin, server), Client() as client:
            for _ in range(3):
                assert (await client.request("GET", origin, "/")).status == 200
            assert server.connections == 3
            assert client._open == 0 or client._idle.get(origin) in (None, [])

    run(go())


def test_interim_and_bodiless_answers() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while (request := await server.read_request(reader)) is not None:
            if request[0].startswith(b"GET /early"):
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
                writer.write(answer(b"after the hint"))
            elif request[0].startswith(b"GET /not-modified"):
                writer.write(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 204 No Content\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n")

    async def go() -> None:
        async with serving(handler) as (origin, server), Client() as client:
            early = await client.request("GET", origin, "/early")
            assert (early.status, early.content) == (200, b"after the hint")
            assert (await client.request("GET", origin, "/not-modified")).status == 304
            empty = await client.request("DELETE", origin, "/x")
            assert (empty.status, empty.content) == (204, b"")
            assert empty.headers["set-cookie"] == "a=1, b=2"
            assert server.connections == 1

    run(go())


def test_a_stale_connection_is_retried_only_for_idempotent_methods() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        # The first connection answers once, then reads the next request and hangs up on it,
        # as a server that times out an idle connection at the wrong moment does.
        first = server.connections == 1
        await server.read_request(reader)
        writer.write(answer())
        await writer.drain()
        if first:
            await server.read_request(reader)
            return
        while await server.read_request(reader) is not None:
            writer.write(answer())
            await writer.drain()

    async def go() -> None:
        async with serving(handler) as (origin, server), Client() as client:
            await client.request("GET", origin, "/")
            assert (await client.request("GET", origin, "/")).status == 200
            assert len(server.requests) == 3 and server.connections == 2
        async with serving(handler) as (origin, server), Client() as client:
            await client.request("POST", origin, "/")
            with pytest.raises(http_client.RemoteProtocolError):
                await client.request("POST", origin, "/", content=b"charge")
            assert len(server.requests) == 2  # sent once, never again

    run(go())


def test_read_timeout_is_for_silence_not_for_a_slow_answer() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        await asyncio.sleep(5)

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
        for byte in b"steady":
            await asyncio.sleep(0.1)
            writer.write(bytes([byte]))
            await writer.drain()

    async def go() -> None:
        async with Client(read_timeout=0.3) as client:
            async with serving(silent) as (origin, _):
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(http_client.ReadTimeout):
                    await client.request("GET", origin, "/")
                assert 0.25 < loop.time() - started < 2
            async with serving(trickle) as (origin, _):
                assert (await client.request("GET", origin, "/")).content == b"steady"  # 0.6 s in all

    run(go())


def test_malformed_answers_and_refused_connections() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")

    async def go() -> None:
        async with Client() as client:
            async with serving(garbage) as (origin, _):
                with pytest.raises(http_client.RemoteProtocolError):
                    await client.request("GET", origin, "/")
            async with serving(garbage) as (origin, _):
                pass  # closed: nothing listens on the port any more
            with pytest.raises(http_client.ConnectError):
                await client.request("GET", origin, "/")
            assert client._open == 0

    run(go())


def test_the_pool_never_opens_more_than_its_limit() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader) is not None:
            await asyncio.sleep(0.05)
            writer.write(answer())

    async def go() -> None:
        async with serving(slow) as (origin, server), Client(max_connections=2) as client:
            answers = await asyncio.gather(*(client.request("GET", origin, "/") for _ in range(8)))
            assert [a.status for a in answers] == [200] * 8
            assert server.most_open == 2 and server.connections == 2
        async with serving(slow) as (origin, _), Client(max_connections=1, read_timeout=0.06) as client:
            results = await asyncio.gather(
                *(client.request("GET", origin, "/") for _ in range(3)), return_exceptions=True
            )
            assert any(isinstance(r, http_client.PoolTimeout) for r in results)

    run(go())


def test_a_cancelled_call_gives_its_connection_back() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        await asyncio.sleep(5)

    async def go() -> None:
        async with serving(silent) as (origin, _), Client(max_connections=1) as client:
            task = asyncio.create_task(client.request("GET", origin, "/"))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(50):
                if client._open == 0:
                    break
                await asyncio.sleep(0.01)
            assert client._open == 0

    run(go())


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls_verifies_the_upstream_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def stalls_the_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await asyncio.sleep(5)

    async def go() -> None:
        trusting = ssl.create_default_context(cafile=str(cert))
        async with serving(keep_answering(answer()), tls=server_context) as (origin, server):
            async with Client(ssl_context=trusting) as client:
                for _ in range(2):
                    assert (await client.request("GET", origin, "/")).status == 200
                assert server.connections == 1
            async with Client(ssl_context=ssl.create_default_context()) as client:
                with pytest.raises(http_client.ConnectError):
                    await client.request("GET", origin, "/")
        async with serving(stalls_the_handshake) as (plain, _), Client(ssl_context=trusting, connect_timeout=0.3) as c:
            with pytest.raises(http_client.ConnectTimeout):
                await c.request("GET", Origin("https", "127.0.0.1", plain.port), "/")

    run(go())
