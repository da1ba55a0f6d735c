"""Callback delivery: what is retried, what is final, and where a callback may go."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.core import callbacks
from gateway.errors import BadRequest
from gateway.settings import Settings
from gateway.upstream.client import Client
from tests.conftest import Gateway, running_gateway
from tests.test_queue import submit, wait_run

LOOPBACK = Settings(secret_keys=("x",), allow_http_upstreams=True, egress_allow=("127.0.0.0/8",))


class Receiver:
    """A callback receiver answering a script of answers, one per delivery attempt; then 204."""

    def __init__(self, script: list[bytes | None]) -> None:
        self.script = script
        self.attempts: list[float] = []
        self.paths: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                self.attempts.append(time.monotonic())
                self.paths.append(head.split(b" ", 2)[1])
                reply = self.script.pop(0) if self.script else b"204 No Content"
                if reply is None:  # a network error: hang up without answering
                    break
                writer.write(b"HTTP/1.1 " + reply + b"\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            # Also when the test's loop ends first, cancelling this: no socket left for the GC to find.
            writer.close()


@contextlib.asynccontextmanager
async def receiving(script: list[bytes | None]) -> AsyncIterator[tuple[str, Receiver]]:
    receiver = Receiver(script)
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook", receiver
    finally:
        server.close()


def deliver(script: list[bytes | None]) -> tuple[bool, Receiver]:
    async def go() -> tuple[bool, Receiver]:
        async with receiving(script) as (url, receiver):
            client = Client(LOOPBACK)
            try:
                return await callbacks.deliver(client, "whsec_x", url, {"id": "run_1"}), receiver
            finally:
                await client.close()

    return asyncio.run(go())


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(callbacks, "BACKOFF", 0.01)


@pytest.mark.parametrize("status", [b"301 Moved Permanently", b"302 Found", b"307 Temporary Redirect"])
def test_a_redirect_is_final_and_never_followed(status: bytes) -> None:
    delivered, receiver = deliver([status + b"\r\nLocation: /elsewhere"])
    assert delivered is False
    assert receiver.paths == [b"/hook"]  # one attempt, and /elsewhere never asked


@pytest.mark.parametrize("status", [b"400 Bad Request", b"401 Unauthorized", b"404 Not Found", b"410 Gone"])
def test_a_client_error_is_final(status: bytes) -> None:
    delivered, receiver = deliver([status])
    assert delivered is False and len(receiver.attempts) == 1


@pytest.mark.parametrize(
    "first", [b"500 Internal Server Error", b"503 Service Unavailable", b"408 Request Timeout", None]
)
def test_server_errors_timeouts_and_network_errors_are_retried(first: bytes | None) -> None:
    delivered, receiver = deliver([first])
    assert delivered is True and len(receiver.attempts) == 2


def test_attempts_are_bounded() -> None:
    delivered, receiver = deliver([b"502 Bad Gateway"] * 10)
    assert delivered is False and len(receiver.attempts) == callbacks.ATTEMPTS


def test_429_waits_for_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    delivered, receiver = deliver([b"429 Too Many Requests\r\nRetry-After: 1"])
    assert delivered is True and len(receiver.attempts) == 2
    assert receiver.attempts[1] - receiver.attempts[0] >= 0.9
    # A Retry-After past the bound waits the bound, not what the receiver asked.
    monkeypatch.setattr(callbacks, "RETRY_AFTER_MAX", 0.2)
    started = time.monotonic()
    delivered, receiver = deliver([b"429 Too Many Requests\r\nRetry-After: 3600"])
    assert delivered is True and time.monotonic() - started < 30


def test_retry_after_as_a_date() -> None:
    assert callbacks._retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert callbacks._retry_after("120") == 120.0
    assert callbacks._retry_after("soon") is None and callbacks._retry_after(None) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.1/hook",
        "http://2130706433/hook",
        "http://017700000001/hook",
        "http://127.0.0.1./hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/hook",
        "http://localhost/hook",
        "http://api.localhost/hook",
    ],
)
def test_address_literals_and_localhost_are_refused_at_submission(url: str) -> None:
    strict = Settings(secret_keys=("x",), allow_http_upstreams=True)
    with pytest.raises(BadRequest):
        callbacks.check_url(strict, url)


def test_a_queued_call_never_calls_back_a_name_for_a_private_address(
    gateway: Gateway, provider, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    # 0x7f000002 is a name to the URL parser, so the early check lets it through; it resolves to
    # 127.0.0.2, outside the allowed 127.0.0.1/32 (the fake provider), and the delivery refuses it.
    caplog.set_level(logging.INFO, logger="gateway.core.callbacks")

    async def go() -> list[float]:
        receiver = Receiver([])
        server = await asyncio.start_server(receiver.handle, "127.0.0.2", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            user_id = gateway.user()
            gateway.connect(user_id, provider, integration="fakeapi")
            secret = gateway.key(user_id)

            def queue_with(callback: str) -> httpx.Response:
                return submit(gateway, secret, "record", {"queue": "cb", "seq": 1}, queue="cb", callback_url=callback)

            literal = await asyncio.to_thread(queue_with, f"http://127.0.0.2:{port}/hook")
            assert literal.status_code == 400  # an address literal is refused at once
            body = await asyncio.to_thread(queue_with, f"http://0x7f000002:{port}/hook")
            assert body.status_code == 202, body.text
            run_id = body.json()["id"]
            assert (await asyncio.to_thread(wait_run, gateway, secret, run_id))["status"] == "completed"
            deadline = time.monotonic() + 20
            while not any(run_id in r.getMessage() and "not sent" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the callback was never attempted"
                await asyncio.sleep(0.05)
            return receiver.attempts
        finally:
            server.close()

    assert asyncio.run(go()) == []


def test_a_queued_call_calls_back_a_listed_network(gateway: Gateway, provider) -> None:  # type: ignore[no-untyped-def]
    settings = dataclasses.replace(gateway.settings, egress_allow=("127.0.0.0/8",))

    async def go() -> list[float]:
        receiver = Receiver([])
        server = await asyncio.start_server(receiver.handle, "127.0.0.2", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with running_gateway(settings) as gw:
                user_id = gw.user()
                gw.connect(user_id, provider, integration="fakeapi")
                secret = gw.key(user_id)
                callback = f"http://0x7f000002:{port}/hook"
                body = await asyncio.to_thread(
                    submit, gw, secret, "record", {"queue": "cb", "seq": 1}, queue="cb", callback_url=callback
                )
                assert body.status_code == 202, body.text
                await asyncio.to_thread(wait_run, gw, secret, body.json()["id"])
                deadline = time.monotonic() + 20
                while not receiver.attempts and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            return receiver.attempts
        finally:
            server.close()

    assert len(asyncio.run(go())) == 1
