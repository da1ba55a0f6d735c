"""The egress screen: every outbound address a caller or a spec supplies is checked where it is used.

Servers listen on loopback, which the screen refuses unless GATEWAY_EGRESS_ALLOW lists it;
plain http stays allowed throughout, to show that GATEWAY_ALLOW_HTTP_UPSTREAMS no longer
switches the screen off.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from gateway.core import callbacks
from gateway.settings import Settings
from gateway.upstream import build as upstream
from gateway.upstream import client as upstream_client
from gateway.upstream.client import Client
from gateway.upstream.egress import EgressRefused, Policy, ScreeningResolver, is_public
from tests.conftest import Gateway, running_gateway

# Every spelling of 127.0.0.1 the C library accepts, and names that resolve to it.
LOOPBACK_FORMS = [
    "127.1",
    "2130706433",
    "0x7f000001",
    "017700000001",
    "0x7f.1",
    "127.0.0.1.",
    "[::ffff:127.0.0.1]",
    "localhost",
    "LocalHost.",
    "127.0.0.1",
]
# The forms that name 127.0.0.1 in a way aiohttp connects to once it is allowed (it refuses
# the legacy numeric spellings itself, and the gateway refuses them before that).
REACHABLE_WHEN_ALLOWED = ["0x7f000001", "0x7f.1", "localhost", "127.0.0.1"]

OPEN = Settings(secret_keys=("x",), allow_http_upstreams=True)


@pytest.mark.parametrize(
    "address, public",
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("198.18.0.1", False),
        ("192.0.2.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fd12::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("64:ff9b::a00:1", False),
        ("2002:c0a8:101::1", False),
        ("::7f00:1", False),
    ],
)
def test_which_addresses_are_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_the_allow_list_takes_networks_and_names() -> None:
    policy = Policy(["10.0.0.0/8", " fd00::/8 ", "api.internal", ".corp.example", ""])
    assert policy.allows_address(ipaddress.ip_address("10.2.3.4"))
    assert policy.allows_address(ipaddress.ip_address("::ffff:10.2.3.4"))  # the mapped address is screened
    assert policy.allows_address(ipaddress.ip_address("fd00::5"))
    assert not policy.allows_address(ipaddress.ip_address("192.168.0.1"))
    assert policy.allows_name("API.internal.") and policy.allows_name("git.corp.example")
    assert not policy.allows_name("corp.example.evil") and not policy.allows_name("internal")


class FakeDNS(AbstractResolver):
    """The other side of the wire: a DNS server's answers, without the network."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.answers:
            raise OSError(f"no such host {host}")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.answers[host]
        ]

    async def close(self) -> None:
        pass


def test_a_name_is_refused_whole_when_any_of_its_addresses_is_not_public() -> None:
    dns = FakeDNS(
        {
            "rebind.example": ["93.184.216.34", "127.0.0.1"],
            "metadata.example": ["169.254.169.254"],
            "v6.example": ["2606:4700::1111", "fd00::1"],
            "public.example": ["93.184.216.34", "2606:4700::1111"],
            "internal.example": ["10.0.0.7"],
        }
    )

    async def go() -> None:
        screen = ScreeningResolver(Policy(["internal.example"]), dns)
        for name in ("rebind.example", "metadata.example", "v6.example"):
            with pytest.raises(EgressRefused):
                await screen.resolve(name, 443)
        public = await screen.resolve("public.example", 443)
        assert [r["host"] for r in public] == ["93.184.216.34", "2606:4700::1111"]
        assert [r["host"] for r in await screen.resolve("internal.example", 443)] == ["10.0.0.7"]

    asyncio.run(go())


@contextlib.asynccontextmanager
async def listening(host: str = "127.0.0.1") -> AsyncIterator[tuple[int, list[bytes]]]:
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                received.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, 0)
    try:
        yield server.sockets[0].getsockname()[1], received
    finally:
        server.close()


async def get(
    url: str, settings: Settings = OPEN, resolver: AbstractResolver | None = None
) -> upstream_client.Response:
    """A GET through a client of its own, as every outbound request goes."""
    client = Client(settings, resolver=resolver)
    try:
        return await client.send(upstream.request_for_url("GET", url, {}), 1000)
    finally:
        await client.close()


async def call_back(url: str, settings: Settings = OPEN) -> bool:
    client = Client(settings)
    try:
        return await callbacks.deliver(client, "whsec_x", url, {"id": "run_1"})
    finally:
        await client.close()


def test_a_name_resolving_to_loopback_is_refused_by_the_client_with_a_fake_dns_answer() -> None:
    async def go() -> None:
        async with listening() as (port, received):
            dns = FakeDNS({"upstream.example": ["127.0.0.1"]})
            with pytest.raises(upstream_client.Refused):
                await get(f"http://upstream.example:{port}/", resolver=dns)
            allowed = dataclasses.replace(OPEN, egress_allow=("upstream.example",))
            response = await get(f"http://upstream.example:{port}/", allowed, resolver=dns)
            assert response.status == 204 and len(received) == 1

    asyncio.run(go())


@pytest.mark.parametrize("form", LOOPBACK_FORMS)
def test_every_spelling_of_loopback_is_refused_when_the_client_connects(form: str) -> None:
    async def go() -> None:
        async with listening() as (port, received):
            with pytest.raises(upstream_client.Refused, match="GATEWAY_EGRESS_ALLOW|canonical"):
                await get(f"http://{form}:{port}/")
            assert received == []

    asyncio.run(go())


@pytest.mark.parametrize("form", REACHABLE_WHEN_ALLOWED)
def test_loopback_is_reached_when_listed(form: str) -> None:
    async def go() -> None:
        async with listening() as (port, received):
            response = await get(f"http://{form}:{port}/", dataclasses.replace(OPEN, egress_allow=("127.0.0.0/8",)))
            assert response.status == 204 and len(received) == 1

    asyncio.run(go())


@pytest.mark.parametrize("form", LOOPBACK_FORMS)
def test_callbacks_to_loopback_are_refused_at_delivery(form: str) -> None:
    # Whatever the early check at submission let through, the delivery itself is screened.
    async def go() -> None:
        async with listening() as (port, received):
            assert await call_back(f"http://{form}:{port}/hook") is False
            assert received == []

    asyncio.run(go())


def test_callbacks_reach_a_listed_network() -> None:
    async def go() -> None:
        async with listening() as (port, received):
            allowed = dataclasses.replace(OPEN, egress_allow=("127.0.0.1/32",))
            assert await call_back(f"http://localhost:{port}/hook", allowed) is True
            assert len(received) == 1

    asyncio.run(go())


@contextlib.contextmanager
def running(gateway: Gateway, integration: str, allow: tuple[str, ...] | None = None, **urls: str) -> Iterator[Gateway]:
    """Another gateway like `gateway`, with some of one integration's URLs and the allow list changed."""
    changed = dataclasses.replace(gateway.settings.integrations[integration], **urls)
    settings = dataclasses.replace(
        gateway.settings, integrations={**gateway.settings.integrations, integration: changed}
    )
    if allow is not None:
        settings = dataclasses.replace(settings, egress_allow=allow)
    with running_gateway(settings) as gw:
        yield gw


def call_text(gw: Gateway, provider) -> httpx.Response:  # type: ignore[no-untyped-def]
    user_id = gw.user()
    gw.connect(user_id, provider, integration="fakeapi")
    return gw.call(gw.key(user_id), "fakeapi", "text")


@pytest.mark.parametrize("form", ["127.1", "2130706433", "0x7f000001", "0x7f.1", "127.0.0.1.", "localhost"])
def test_a_spec_base_url_on_loopback_is_refused(gateway: Gateway, provider, form: str) -> None:  # type: ignore[no-untyped-def]
    port = provider.url.rsplit(":", 1)[1]
    with running(gateway, "fakeapi", allow=(), base_url=f"http://{form}:{port}/api") as gw:
        response = call_text(gw, provider)
    assert response.status_code == 502, response.text
    assert response.json()["error"] == "upstream_unreachable"
    assert "GATEWAY_EGRESS_ALLOW" in response.json()["message"] or "canonical" in response.json()["message"]
    assert provider.api_requests() == []


def test_a_spec_base_url_on_loopback_is_reached_when_listed(gateway: Gateway, provider) -> None:  # type: ignore[no-untyped-def]
    port = provider.url.rsplit(":", 1)[1]
    with running(gateway, "fakeapi", allow=("localhost",), base_url=f"http://localhost:{port}/api") as gw:
        response = call_text(gw, provider)
    assert response.status_code == 200, response.text
    assert response.json()["data"] == "plain text answer"


def test_the_token_endpoint_is_screened_too(gateway: Gateway, provider) -> None:  # type: ignore[no-untyped-def]
    port = provider.url.rsplit(":", 1)[1]
    with running(gateway, "github", token_url=f"http://127.1:{port}/oauth/token") as gw:
        user_id = gw.user()
        gw.connect(user_id, provider)
        provider.expire_access_tokens()  # the upstream answers 401: the gateway must refresh
        response = gw.call(gw.key(user_id), "github", "get_authenticated_user")
    assert response.status_code == 503 and response.json()["error"] == "token_refresh_unavailable"
    assert provider.refresh_requests() == []
