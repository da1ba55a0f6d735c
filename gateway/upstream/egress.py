"""Where the gateway may connect: the egress screen every outbound request passes.

A caller or a spec names hosts (callback URLs, base URLs, token endpoints, a token
response's instance URL); none of them may lead the gateway into its own network. The
screen sits in the resolver of the one shared aiohttp client: a name is resolved once,
refused whole if any of its addresses is not public, and aiohttp connects to exactly the
addresses that were checked. aiohttp never asks the resolver about a literal address, so
the client screens literals itself with `Policy.check_host` before sending.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Public by Python's registry but delivering to an address embedded in them: NAT64
# (RFC 6052) and 6to4 (RFC 3056) reach the embedded IPv4 address through a gateway.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


class EgressRefused(Exception):
    """The destination is not public and not allowed by GATEWAY_EGRESS_ALLOW."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(message)
        self.host = host


def _not_public(host: str, address: IPAddress) -> EgressRefused:
    where = host if host == str(address) else f"{host} ({address})"
    return EgressRefused(host, f"{where} is not a public address; list it in GATEWAY_EGRESS_ALLOW to reach it")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Globally reachable unicast: not loopback, private, link-local, CGNAT, unique-local,
    unspecified, multicast, reserved, documentation or benchmarking."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public(embedded)
        if address.is_site_local:
            return False
    # is_global leaves out loopback, RFC 1918, link-local, CGNAT, fc00::/7, benchmarking and
    # documentation blocks; multicast and IPv6's reserved and site-local blocks it lets through.
    return address.is_global and not (address.is_multicast or address.is_reserved)


def _looks_numeric(host: str) -> bool:
    # What aiohttp takes for an address literal (helpers.is_ip_address): it never resolves these.
    return ":" in host or host.replace(".", "").isdigit()


class Policy:
    """Public addresses, plus the networks and host names GATEWAY_EGRESS_ALLOW lists."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        networks: list[IPNetwork] = []
        names: set[str] = set()
        suffixes: list[str] = []
        for entry in allow:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith(("*.", ".")):
                suffixes.append("." + entry.lstrip("*."))
            else:
                names.add(entry.rstrip("."))
        self.networks = tuple(networks)
        self.names = frozenset(names)
        self.suffixes = tuple(suffixes)

    def allows_name(self, host: str) -> bool:
        name = host.lower().rstrip(".")
        return name in self.names or name.endswith(self.suffixes)

    def allows_address(self, address: IPAddress) -> bool:
        if is_public(address):
            return True
        candidates = [address]
        if isinstance(address, ipaddress.IPv6Address) and (embedded := _embedded_ipv4(address)) is not None:
            candidates.append(embedded)
        return any(a in network for a in candidates for network in self.networks if a.version == network.version)

    def check_address(self, host: str, text: str) -> None:
        """Refuses `host` when `text`, one of the addresses it resolved to, is not allowed."""
        self._check(host, text, f"{host} resolved to something that is not an address ({text!r})")

    def check_host(self, host: str) -> None:
        """Refuses an address literal that is not allowed, in any spelling, and localhost; other
        names pass (the resolver screens what they resolve to)."""
        if self.allows_name(host):
            return
        if not _looks_numeric(host):
            name = host.lower().rstrip(".")
            # Loopback by definition (RFC 6761), whatever a resolver says (or fails to).
            if (name == "localhost" or name.endswith(".localhost")) and not self.allows_address(_LOOPBACK):
                raise EgressRefused(host, f"{host} is loopback; list it in GATEWAY_EGRESS_ALLOW to reach it")
            return
        # 127.1, 2130706433, 017700000001, 127.0.0.1.: the C library would read them as addresses.
        self._check(host, host, f"{host} is not an IP address written the canonical way")

    def _check(self, host: str, text: str, unparsable: str) -> None:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise EgressRefused(host, unparsable) from None
        if not self.allows_address(address):
            raise _not_public(host, address)


@functools.lru_cache(maxsize=16)
def policy_for(allow: tuple[str, ...]) -> Policy:
    """The policy of a GATEWAY_EGRESS_ALLOW list, parsed once."""
    return Policy(allow)


class ScreeningResolver(AbstractResolver):
    """Resolves through `inner` and returns the addresses only when every one of them may be reached."""

    def __init__(self, policy: Policy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self.policy.allows_name(host):
            return await self.inner.resolve(host, port, family)
        self.policy.check_host(host)
        results = await self.inner.resolve(host, port, family)
        # Any address not allowed refuses the whole name: a name resolving to one public and
        # one private address must not reach the private one by way of a retry or happy eyeballs.
        for result in results:
            self.policy.check_address(host, result["host"])
        return results

    async def close(self) -> None:
        await self.inner.close()
