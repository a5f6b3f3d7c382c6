"""Which webhook targets carebus connects to (carebus.domain.webhook_targets), and the transport
that connects only to an address it has just checked (consumers.webhooks.targets)."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest

from carebus.domain.webhook_targets import Address, TargetPolicy
from carebus.runtime.config import Settings
from consumers.webhooks.targets import RefusedTargetError, guarded_client

PRODUCTION = TargetPolicy()
LOCAL = TargetPolicy(allow_http=True, allow_private=True)
LIMITS = httpx.Limits(max_connections=2, max_keepalive_connections=2)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # CGNAT
        "169.254.169.254",  # the metadata service
        "169.254.1.1",
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",  # documentation
        "::1",
        "::",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "fd00:ec2::254",  # AWS's IPv6 metadata address
        "fd20:ce::254",  # Google Cloud's IPv6 metadata address
        "100.100.100.200",  # Alibaba's metadata address
        "fec0::1",  # site-local: Python's is_global calls it global
    ],
)
def test_private_and_special_addresses_are_refused_in_production(address: str) -> None:
    """Every address into carebus's own network, or no real host at all, is refused."""
    assert PRODUCTION.address_problem(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_global_addresses_are_allowed(address: str) -> None:
    assert PRODUCTION.address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("10.1.2.3", True),
        ("fd12::1", True),
        ("100.64.0.1", True),  # CGNAT: a tailnet, a cluster's pod network
        ("169.254.169.254", False),
        ("fe80::1", False),
        ("0.0.0.0", False),
        ("fd00:ec2::254", False),
        ("fd20:ce::254", False),
        ("240.0.0.1", False),
        ("192.0.2.1", False),
    ],
)
def test_allowing_private_targets_never_allows_link_local_or_metadata(
    address: str, allowed: bool
) -> None:
    """Local development and tests may send to loopback and private receivers, never to the
    metadata service or an unspecified address."""
    assert (LOCAL.address_problem(ipaddress.ip_address(address)) is None) is allowed


def test_one_refused_address_refuses_the_host() -> None:
    """A name that resolves to a public and a private address is refused (either may be used)."""
    public, private = ipaddress.ip_address("93.184.215.14"), ipaddress.ip_address("10.0.0.1")
    assert PRODUCTION.addresses_problem([public]) is None
    problem = PRODUCTION.addresses_problem([public, private])
    assert problem == "resolves to an address that is private"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://nav.example/hook", None),
        ("http://nav.example/hook", "must be an https URL (http is for local development only)"),
        ("ftp://nav.example/hook", "must be an https URL"),
        ("https://127.0.0.1:18082/x", "is loopback"),
        ("https://[::1]/x", "is loopback"),
        ("https://[::ffff:7f00:1]/x", "is loopback"),
        ("https://169.254.169.254/latest/meta-data", "is link-local"),
        ("https://10.0.0.8/hook", "is private"),
        ("https://metadata.google.internal/computeMetadata/v1/", "names a cloud metadata service"),
        ("https://METADATA.google.internal./x", "names a cloud metadata service"),
        ("https://localhost:18082/x", "names the local host"),
        ("https://audit.localhost/x", "names the local host"),
        ("https://user:pw@nav.example/hook", "must not contain credentials"),
    ],
)
def test_registration_refuses_what_is_plainly_forbidden(url: str, problem: str | None) -> None:
    """Outside local development: https only, no literal private address, no metadata name."""
    found = PRODUCTION.url_problem(url)
    assert (found or "")[: len(problem or "")] == (problem or "")
    assert (found is None) is (problem is None)


def test_local_development_registers_its_own_receivers() -> None:
    """`carebus up` and the tests register http receivers on 127.0.0.1."""
    assert LOCAL.url_problem("http://127.0.0.1:18099/hooks/1") is None
    assert LOCAL.url_problem("http://169.254.169.254/latest") is not None


@pytest.mark.parametrize(
    ("environment", "explicit", "http", "private"),
    [
        ("local", None, True, True),
        ("test", None, True, True),
        ("production", None, False, False),
        ("staging", None, False, False),
        ("production", True, False, True),
        ("local", False, True, False),
    ],
)
def test_settings_allow_http_and_private_targets_only_in_development(
    environment: str, explicit: bool | None, http: bool, private: bool
) -> None:
    """http and private targets are the local stack's and the tests' defaults, nobody else's;
    CAREBUS_WEBHOOK_ALLOW_PRIVATE_TARGETS overrides the latter either way."""
    settings = Settings.model_construct(
        environment=environment, webhook_allow_private_targets=explicit
    )
    assert settings.webhook_targets() == TargetPolicy(allow_http=http, allow_private=private)


# --- the transport -------------------------------------------------------------------------


class _Echo(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        answer = (self.headers.get("Host") or "").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self) -> None:  # a redirect, which must not be followed
        self.send_response(302)
        self.send_header("Location", "http://127.0.0.1:9/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def local_port() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class Resolver:
    """A DNS stand-in that answers `addresses` and counts its look-ups."""

    def __init__(self, *addresses: str) -> None:
        self.addresses: list[Address] = [ipaddress.ip_address(a) for a in addresses]
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[Address]:
        self.lookups.append((host, port))
        return list(self.addresses)


async def test_the_connection_goes_to_the_checked_address_with_the_registered_name(
    local_port: int,
) -> None:
    """The name is resolved once, when the connection opens, and the socket goes to that
    answer; the request still carries the registered name (Host header, and SNI for https)."""
    resolver = Resolver("127.0.0.1")
    async with guarded_client(LOCAL, timeout_s=5, limits=LIMITS, resolver=resolver) as client:
        response = await client.post(f"http://receiver.test:{local_port}/hook", content=b"{}")
    assert response.status_code == 200
    assert response.text == f"receiver.test:{local_port}"
    assert resolver.lookups == [("receiver.test", local_port)]


async def test_a_name_resolving_to_loopback_is_refused_before_connecting(local_port: int) -> None:
    """Without the allowance, a name that resolves to 127.0.0.1 is refused at connect time: a
    DNS answer cannot lead carebus into its own network."""
    resolver = Resolver("127.0.0.1")
    client = guarded_client(
        TargetPolicy(allow_http=True), timeout_s=5, limits=LIMITS, resolver=resolver
    )
    async with client:
        with pytest.raises(RefusedTargetError, match="resolves to an address that is loopback"):
            await client.post(f"http://receiver.test:{local_port}/hook", content=b"{}")
        with pytest.raises(RefusedTargetError, match="names a cloud metadata service"):
            await client.post("http://metadata.google.internal/x", content=b"{}")
    assert resolver.lookups == [("receiver.test", local_port)]


async def test_a_literal_private_address_is_refused_without_a_lookup(local_port: int) -> None:
    """A URL with a literal address is checked as it stands."""
    resolver = Resolver("93.184.215.14")
    client = guarded_client(
        TargetPolicy(allow_http=True), timeout_s=5, limits=LIMITS, resolver=resolver
    )
    async with client:
        with pytest.raises(RefusedTargetError, match="is loopback"):
            await client.post(f"http://127.0.0.1:{local_port}/hook", content=b"{}")
    assert resolver.lookups == []


async def test_redirects_are_not_followed(local_port: int) -> None:
    """A 3xx answer is the answer: carebus never follows it somewhere else."""
    async with guarded_client(LOCAL, timeout_s=5, limits=LIMITS) as client:
        response = await client.get(f"http://127.0.0.1:{local_port}/")
    assert response.status_code == 302
