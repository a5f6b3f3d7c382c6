"""The HTTP transport of webhook delivery: it connects only to addresses it has just checked.

Every new connection resolves the URL's host at that moment, refuses the host if it or any
address it resolves to is forbidden (carebus.domain.webhook_targets), and opens the socket to
an address from that same answer — there is no second look-up a DNS rebinding could answer
differently. Only the TCP destination is pinned: the URL is sent unchanged, so the Host header,
TLS SNI and the certificate check all use the registered name. A kept-alive connection was
checked when it was opened. Redirects are never followed (the client's follow_redirects=False),
and the environment's proxy settings are ignored (a proxy would connect for us, unchecked).

httpx has no public way to give its transport a network backend, so `GuardedTransport` builds
its httpcore connection pool itself (httpx's own `_pool`); tests/unit/test_webhook_targets.py
proves a request really goes through the guard.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable

import httpcore
import httpx

from carebus.domain.webhook_targets import Address, TargetPolicy

Resolver = Callable[[str, int], Awaitable[list[Address]]]


class RefusedTargetError(Exception):
    """The target is not one carebus may connect to; the message says why, naming neither the
    host nor an address (a fixed text of carebus.domain.webhook_targets)."""


async def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to now, in the resolver's order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[Address] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the target check in front of every connect."""

    def __init__(
        self,
        policy: TargetPolicy,
        resolver: Resolver = resolve,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._policy = policy
        self._resolve = resolver
        self._backend = backend or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 -- httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        problem = self._policy.host_problem(host)
        if problem is not None:
            raise RefusedTargetError(f"host {problem}")
        try:
            addresses = await self._resolve(host, port)
        except (OSError, UnicodeError) as exc:  # socket.gaierror: no such name, for now
            raise httpcore.ConnectError(f"cannot resolve the host ({type(exc).__name__})") from exc
        problem = self._policy.addresses_problem(addresses)
        if problem is not None:
            raise RefusedTargetError(f"host {problem}")
        if not addresses:
            raise httpcore.ConnectError("the host resolves to no address")
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:  # each of them checked above
            try:
                return await self._backend.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 -- httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise RefusedTargetError("webhooks are never sent over a unix socket")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool whose every connection is guarded."""

    def __init__(
        self, policy: TargetPolicy, limits: httpx.Limits, resolver: Resolver = resolve
    ) -> None:
        super().__init__(limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy, resolver),
        )


def guarded_client(
    policy: TargetPolicy, *, timeout_s: float, limits: httpx.Limits, resolver: Resolver = resolve
) -> httpx.AsyncClient:
    """The dispatcher's HTTP client: guarded connections, no redirects, no proxies."""
    return httpx.AsyncClient(
        transport=GuardedTransport(policy, limits, resolver),
        timeout=timeout_s,
        follow_redirects=False,
        trust_env=False,
    )
