"""The outbound client against real sockets on 127.0.0.1, with servers that say exactly what each test needs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import gc
import gzip
import ipaddress
import ssl
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.settings import Settings
from gateway.upstream import build as upstream
from gateway.upstream import client as upstream_client
from gateway.upstream.client import Client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]

LOOPBACK = Settings(secret_keys=("x",), allow_http_upstreams=True, egress_allow=("127.0.0.1/32",))


class Server:
    """Counts connections and requests; the handler answers one connection, request after request."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests: list[tuple[bytes, list[tuple[str, str]], bytes]] = []

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
        pairs = []
        for field in fields:
            name, _, value = field.decode("latin-1").partition(":")
            pairs.append((name.strip().lower(), value.strip()))
        headers = dict(pairs)
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((line, pairs, body))
        return line, headers, body


@contextlib.asynccontextmanager
async def serving(
    handler: Handler, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[str, Server]]:
    server = Server(handler)
    listener = await asyncio.start_server(server.serve, host, 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://{host}:{port}", server
    finally:
        listener.close()


@contextlib.asynccontextmanager
async def client(settings: Settings = LOOPBACK, **changes: object) -> AsyncIterator[Client]:
    made = Client(dataclasses.replace(settings, **changes))  # type: ignore[arg-type]
    try:
        yield made
    finally:
        await made.close()


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None, content: bytes | None = None):  # type: ignore[no-untyped-def]
    made = upstream.request_for_url(method, url, headers or {})
    made.content = content
    return made


def answer(body: bytes = b'{"ok":true}', status: str = "200 OK", headers: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


def keep_answering(response: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader) is not None:
            writer.write(response)
            await writer.drain()

    return handler


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
    await server.read_request(reader)
    await asyncio.sleep(30)


async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
    """Chunks of 64 KiB: 640 MB if nobody stopped it."""
    await server.read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(10_000):
        writer.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
        await writer.drain()


def run(coroutine: Awaitable[object]) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def test_a_keep_alive_connection_serves_request_after_request() -> None:
    async def go() -> None:
        async with serving(keep_answering(answer())) as (url, server), client() as c:
            for _ in range(5):
                response = await c.send(request(url + "/a?b=1"), 1000)
                assert (response.status, response.content) == (200, b'{"ok":true}')
            assert server.connections == 1
            line, headers, _ = server.requests[0]
            assert line == b"GET /a?b=1 HTTP/1.1"
            assert dict(headers)["host"] == url.removeprefix("http://")
            assert dict(headers)["user-agent"] == "integration-gateway"
            assert "gzip" in dict(headers)["accept-encoding"]
            assert "cookie" not in dict(headers)

    run(go())


def test_the_request_head_and_body_go_out_as_given() -> None:
    async def go() -> None:
        async with serving(keep_answering(answer())) as (url, server), client() as c:
            made = request(url + "/items", "POST", {"X-Thing": "café", "Accept": "application/json"})
            made.json_body = {"a": 1}
            await c.send(made, 1000)
            await c.send(request(url + "/empty", "POST"), 1000)
            (line, pairs, body), (_, empty_pairs, empty_body) = server.requests
            headers = dict(pairs)
            assert line == b"POST /items HTTP/1.1"
            assert body == b'{"a":1}' and headers["content-length"] == "7"
            assert headers["content-type"] == "application/json"
            assert headers["x-thing"].encode("latin-1").decode() == "café"
            assert headers["accept"] == "application/json"
            assert dict(empty_pairs)["content-length"] == "0" and empty_body == b""
            assert [name for name, _ in pairs].count("host") == 1

    run(go())


def test_headers_and_targets_with_line_breaks_are_refused_before_sending() -> None:
    async def go() -> None:
        async with serving(keep_answering(answer())) as (url, server), client() as c:
            with pytest.raises(ValueError):
                await c.send(request(url + "/a", headers={"X": "1\r\nInjected: yes"}), 1000)
            broken = request(url + "/a")
            broken.path = "/a HTTP/1.1\r\nX: y"
            with pytest.raises(ValueError):
                await c.send(broken, 1000)
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
        async with serving(handler) as (url, server), client() as c:
            for _ in range(2):
                response = await c.send(request(url + "/"), 1000)
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
    ],
)
def test_compressed_answers_are_decoded(encoding: str, encode: Callable[[bytes], bytes]) -> None:
    body = b'{"items": "' + b"x" * 5000 + b'"}'

    async def go() -> None:
        response_bytes = answer(encode(body), headers=f"Content-Encoding: {encoding}\r\n")
        async with serving(keep_answering(response_bytes)) as (url, _), client() as c:
            assert (await c.send(request(url + "/"), 100_000)).content == body

    run(go())


def test_the_cap_counts_headers_and_decoded_bytes_and_stops_reading() -> None:
    bomb = gzip.compress(b"0" * 50_000_000)
    assert len(bomb) < 100_000

    async def go() -> None:
        async with client() as c:
            declared = answer(b"x" * 2000)
            head = len(b"Content-Length: 2000\r\n")  # the header lines count as they were sent
            async with serving(keep_answering(declared)) as (url, _):
                with pytest.raises(upstream_client.TooLarge):
                    await c.send(request(url + "/"), 2000 + head - 1)  # the body fits, not with its headers
                assert len((await c.send(request(url + "/"), 2000 + head)).content) == 2000
            async with serving(keep_answering(answer(bomb, headers="Content-Encoding: gzip\r\n"))) as (url, _):
                with pytest.raises(upstream_client.TooLarge):
                    await c.send(request(url + "/"), 1_000_000)
            async with serving(endless) as (url, _):
                with pytest.raises(upstream_client.TooLarge):
                    await asyncio.wait_for(c.send(request(url + "/"), 1_000_000), 10)

    run(go())


def test_a_capped_answer_lets_go_of_its_body_at_once() -> None:
    # The error's traceback leads back to the reading frame, so whatever it still held would
    # live until the cycle collector ran, and the next big answer would stack on top of it.
    async def go() -> None:
        async with client() as c, serving(endless) as (url, _):
            tracemalloc.start()
            try:
                errors = []
                for _ in range(3):
                    try:
                        await asyncio.wait_for(c.send(request(url + "/"), 4_000_000), 10)
                    except upstream_client.TooLarge as exc:
                        errors.append(exc)  # kept, traceback and all, as a caller logging it might
                held, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert len(errors) == 3
            assert held < 1_000_000, held
            assert peak < 8_000_000, peak

    gc.disable()
    try:
        run(go())
    finally:
        gc.enable()


@pytest.mark.parametrize("shape", ["one header", "many headers", "a long head"])
def test_forty_mebibytes_of_link_headers_are_refused_in_bounded_memory(shape: str) -> None:
    # Issue #15: 40 MiB of Link headers passed the 10 MiB cap and came back twice.
    total = 40 * 1024 * 1024

    async def links(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        if shape == "one header":
            writer.write(b"Link: <")
            line = b"x" * 65536
            for _ in range(total // len(line)):
                writer.write(line)
                await writer.drain()
        else:
            # Each header under aiohttp's field limit: many of them, or as many as it allows.
            size = 8000 if shape == "a long head" else 100
            line = b"Link: <https://api.example/" + b"p" * size + b'>; rel="next"\r\n'
            count = 90 if shape == "a long head" else total // len(line)
            for _ in range(count):
                writer.write(line)
                await writer.drain()
        writer.write(b"Content-Length: 2\r\n\r\nok")
        await writer.drain()

    async def go() -> None:
        async with client() as c, serving(links) as (url, _):
            tracemalloc.start()
            try:
                with pytest.raises(upstream_client.TooLarge):
                    await asyncio.wait_for(c.send(request(url + "/"), 10 * 1024 * 1024), 60)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak < 4_000_000, peak

    run(go())


def test_an_answer_ended_by_closing_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"until": ')
        await writer.drain()
        writer.write(b'"eof"}')
        writer.close()

    async def go() -> None:
        async with serving(handler) as (url, server), client() as c:
            for _ in range(2):
                assert (await c.send(request(url + "/"), 1000)).content == b'{"until": "eof"}'
            assert server.connections == 2

    run(go())


def test_connection_close_is_honoured() -> None:
    async def go() -> None:
        closing = answer(headers="Connection: close\r\n")
        async with serving(keep_answering(closing)) as (url, server), client() as c:
            for _ in range(3):
                assert (await c.send(request(url + "/"), 1000)).status == 200
            assert server.connections == 3

    run(go())


def test_interim_and_bodiless_answers() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while (received := await server.read_request(reader)) is not None:
            line = received[0]
            if line.startswith(b"GET /early"):
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
                writer.write(answer(b"after the hint"))
            elif line.startswith(b"GET /not-modified"):
                writer.write(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\nContent-Length: 5000\r\n\r\n")
            elif line.startswith(b"HEAD"):
                # Issue #16: a HEAD answer's length is the GET's; no body follows (the old client hung).
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 204 No Content\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n")

    async def go() -> None:
        async with serving(handler) as (url, server), client() as c:
            early = await c.send(request(url + "/early"), 1000)
            assert (early.status, early.content) == (200, b"after the hint")
            not_modified = await c.send(request(url + "/not-modified"), 1000)
            assert (not_modified.status, not_modified.content) == (304, b"")
            for _ in range(2):
                head = await asyncio.wait_for(c.send(request(url + "/x", "HEAD"), 1000), 10)
                assert (head.status, head.content) == (200, b"")
            empty = await c.send(request(url + "/x", "DELETE"), 1000)
            assert (empty.status, empty.content) == (204, b"")
            assert empty.headers.getall("set-cookie") == ["a=1", "b=2"]
            assert server.connections == 1

    run(go())


def test_an_unasked_half_answer_never_reaches_the_next_request() -> None:
    # Issue #16: a half answer in the same segment as a real one survived the return to the
    # pool, and the next request read it: status 418 (or 0) with another request's body.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader) is not None:
            writer.write(answer(b"ok") + b"HTTP/1.1 418 I'm a teapot\r\nX-Smuggled: b")
            await writer.drain()

    async def whole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader) is not None:
            writer.write(answer(b"ok") + answer(b"smuggled", "418 I'm a teapot"))
            await writer.drain()

    async def go() -> None:
        for shape in (handler, whole):
            async with serving(shape) as (url, _), client() as c:
                for _ in range(3):
                    response = await c.send(request(url + "/"), 1000)
                    assert (response.status, response.content) == (200, b"ok")
                    assert "x-smuggled" not in response.headers

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
        async with serving(handler) as (url, server), client() as c:
            await c.send(request(url + "/"), 1000)
            assert (await c.send(request(url + "/"), 1000)).status == 200
            assert len(server.requests) == 3 and server.connections == 2
        async with serving(handler) as (url, server), client() as c:
            await c.send(request(url + "/", "POST"), 1000)
            with pytest.raises(upstream_client.Broken):
                await c.send(request(url + "/", "POST", content=b"charge"), 1000)
            assert len(server.requests) == 2  # sent once, never again

    run(go())


def test_read_timeout_is_for_silence_not_for_a_slow_answer() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
        for byte in b"steady":
            await asyncio.sleep(0.1)
            writer.write(bytes([byte]))
            await writer.drain()

    async def go() -> None:
        async with client(upstream_timeout=0.3) as c:
            async with serving(silent) as (url, _):
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(upstream_client.Timeout):
                    await c.send(request(url + "/"), 1000)
                assert 0.25 < loop.time() - started < 5
            async with serving(trickle) as (url, _):
                assert (await c.send(request(url + "/"), 1000)).content == b"steady"  # 0.6 s in all

    run(go())


def test_a_drip_of_one_byte_at_a_time_ends_at_the_total_deadline() -> None:
    # Issue #16: an upstream dripping a byte a second held a call (and a queue) forever.
    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(100_000):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    async def go() -> None:
        async with client(upstream_timeout=5, upstream_total_timeout=1) as c, serving(drip) as (url, _):
            started = time.monotonic()
            with pytest.raises(upstream_client.Timeout):
                await asyncio.wait_for(c.send(request(url + "/"), 1_000_000), 30)
            assert time.monotonic() - started < 10

    run(go())


def test_redirects_are_answered_not_followed() -> None:
    async def go() -> None:
        moved = answer(b"", "302 Found", "Location: http://127.0.0.1:1/elsewhere\r\n")
        async with serving(keep_answering(moved)) as (url, server), client() as c:
            response = await c.send(request(url + "/"), 1000)
            assert (response.status, response.headers["location"]) == (302, "http://127.0.0.1:1/elsewhere")
            assert len(server.requests) == 1

    run(go())


def test_malformed_answers_and_refused_connections() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")

    async def go() -> None:
        async with client() as c:
            async with serving(garbage) as (url, _):
                with pytest.raises(upstream_client.Broken):
                    await c.send(request(url + "/"), 1000)
            async with serving(garbage) as (url, _):
                pass  # closed: nothing listens on the port any more
            with pytest.raises(upstream_client.Unreachable):
                await c.send(request(url + "/"), 1000)

    run(go())


def test_limits_overall_and_per_host() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader) is not None:
            await asyncio.sleep(0.05)
            writer.write(answer())

    async def go() -> None:
        async with serving(slow) as (url, server), client(upstream_max_connections=2) as c:
            answers = await asyncio.gather(*(c.send(request(url + "/"), 1000) for _ in range(8)))
            assert [a.status for a in answers] == [200] * 8
            assert server.most_open == 2 and server.connections == 2
        # One host that never answers holds its own connections only: another is still served.
        settings = dict(upstream_max_connections=10, upstream_max_connections_per_host=2, egress_allow=("127.0.0.0/8",))
        async with (
            serving(silent) as (stuck, stuck_server),
            serving(slow, host="127.0.0.2") as (other, _),
            client(**settings) as c,
        ):
            hung = [asyncio.create_task(c.send(request(stuck + "/"), 1000)) for _ in range(5)]
            while len(stuck_server.requests) < 2:
                await asyncio.sleep(0.01)
            assert (await asyncio.wait_for(c.send(request(other + "/"), 1000), 10)).status == 200
            assert stuck_server.most_open == 2
            for task in hung:
                task.cancel()
            await asyncio.gather(*hung, return_exceptions=True)

    run(go())


def test_a_waiter_cancelled_as_it_is_woken_passes_the_connection_on() -> None:
    # Issue #16: the waiter woken for a freed connection is cancelled before it runs (its
    # deadline fires in the same turn); the next waiter must get the connection, not wait on.
    async def go() -> None:
        gate = asyncio.Event()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
            while await server.read_request(reader) is not None:
                if len(server.requests) == 1:
                    await gate.wait()
                writer.write(answer())
                await writer.drain()

        async with serving(handler) as (url, server), client(upstream_max_connections=1) as c:
            tasks: dict[str, asyncio.Task[object]] = {}

            async def first() -> None:
                await c.send(request(url + "/"), 1000)
                tasks["second"].cancel()  # woken by the release just now, not yet running

            tasks["first"] = asyncio.create_task(first())
            while not server.requests:
                await asyncio.sleep(0.01)
            tasks["second"] = asyncio.create_task(c.send(request(url + "/"), 1000))
            tasks["third"] = asyncio.create_task(c.send(request(url + "/"), 1000))
            await asyncio.sleep(0.05)  # both wait for the one connection
            gate.set()
            await tasks["first"]
            with pytest.raises(asyncio.CancelledError):
                await tasks["second"]
            third = await asyncio.wait_for(tasks["third"], 10)
            assert third.status == 200  # type: ignore[attr-defined]

    run(go())


def test_a_cancelled_call_gives_its_connection_back() -> None:
    async def go() -> None:
        async with (
            serving(silent) as (url, server),
            serving(keep_answering(answer())) as (other, _),
            client(upstream_max_connections=1) as c,
        ):
            task = asyncio.create_task(c.send(request(url + "/"), 1000))
            while not server.requests:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The one connection the limit allows is free again.
            assert (await asyncio.wait_for(c.send(request(other + "/"), 1000), 10)).status == 200

    run(go())


def test_plain_http_needs_its_setting() -> None:
    async def go() -> None:
        async with serving(keep_answering(answer())) as (url, server), client(allow_http_upstreams=False) as c:
            with pytest.raises(upstream_client.Refused):
                await c.send(request(url + "/"), 1000)
            assert server.connections == 0

    run(go())


def _certificate(
    folder: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
) -> tuple[Path, Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    signer_cert, signer_key = issuer if issuer else (None, key)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_cert.subject if signer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True)
        .sign(signer_key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path, certificate, key


def test_tls_the_ca_bundle_and_a_client_certificate(tmp_path: Path) -> None:
    server_cert, server_key, *_ = _certificate(tmp_path, "server")
    ca_cert, _, ca, ca_key = _certificate(tmp_path, "client-ca")
    client_cert, client_key, *_ = _certificate(tmp_path, "client", issuer=(ca, ca_key))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(server_cert, server_key)
    server_context.load_verify_locations(cafile=str(ca_cert))
    server_context.verify_mode = ssl.CERT_REQUIRED  # mTLS: no client certificate, no connection

    async def stalls_the_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await asyncio.sleep(5)

    async def go() -> None:
        mtls = dict(ca_bundle=server_cert, client_cert=client_cert, client_key=client_key)
        async with serving(keep_answering(answer()), tls=server_context) as (url, server):
            async with client(**mtls) as c:
                for _ in range(2):
                    assert (await c.send(request(url + "/"), 1000)).status == 200
                assert server.connections == 1
            async with client(ca_bundle=server_cert) as c:  # trusted, but no client certificate
                with pytest.raises(upstream_client.OutboundError):
                    await c.send(request(url + "/"), 1000)
            async with client() as c:  # the public roots do not know this server
                with pytest.raises(upstream_client.Unreachable):
                    await c.send(request(url + "/"), 1000)
        async with serving(stalls_the_handshake) as (plain, _), client(upstream_connect_timeout=0.3, **mtls) as c:
            with pytest.raises(upstream_client.Timeout):
                await c.send(request(plain.replace("http://", "https://") + "/"), 1000)

    run(go())


def test_a_bad_ca_bundle_names_its_setting(tmp_path: Path) -> None:
    async def go() -> None:
        with pytest.raises(ValueError, match="GATEWAY_CA_BUNDLE"):
            Client(dataclasses.replace(LOOPBACK, ca_bundle=tmp_path / "missing.pem"))

    run(go())


def test_proxies_and_no_proxy() -> None:
    # An HTTP proxy answering itself: it records the absolute-form target it was asked for.
    async def go() -> None:
        async with (
            serving(keep_answering(answer(b"from the proxy"))) as (proxy, proxy_server),
            serving(keep_answering(answer(b"direct"))) as (direct, _),
            client(http_proxy=proxy, no_proxy="127.0.0.1") as c,
        ):
            # A name the gateway never resolves: the proxy does.
            proxied = await c.send(request("http://api.example.test/v1?a=1"), 1000)
            assert proxied.content == b"from the proxy"
            assert proxy_server.requests[0][0] == b"GET http://api.example.test/v1?a=1 HTTP/1.1"
            assert (await c.send(request(direct + "/"), 1000)).content == b"direct"
            assert len(proxy_server.requests) == 1
            # A literal address is screened even on its way to the proxy.
            with pytest.raises(upstream_client.Refused):
                await c.send(request("http://10.0.0.1/"), 1000)
            assert len(proxy_server.requests) == 1

    run(go())
