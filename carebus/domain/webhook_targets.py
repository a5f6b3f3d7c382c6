"""Which webhook targets carebus may connect to: the rules against server-side request forgery.

An organisation registers a URL and carebus POSTs deliveries to it, from inside its own network.
So a URL must not point into that network: loopback, private, link-local (the cloud metadata
service at 169.254.169.254), CGNAT, unspecified, multicast and reserved addresses are refused,
also when an IPv6 address carries one of them (IPv4-mapped, 6to4, Teredo, NAT64). The rules are
applied twice: to the URL when it is registered (a literal address or a known metadata name is
refused at once), and to every address the host resolves to when a connection is opened
(consumers.webhooks.targets), which is the real control — a name can resolve anywhere.

Pure functions over plain data, so every rule is unit-tested without a network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from carebus.domain.text import identifier_problem

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH: Final = 2000
# Names cloud providers document for their instance metadata service (besides the addresses).
METADATA_NAMES: Final = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
# Metadata addresses outside link-local: AWS's IPv6 one (in fc00::/7) and Alibaba's (in CGNAT).
# Refused even where private targets are allowed.
METADATA_ADDRESSES: Final = frozenset(
    {
        ipaddress.ip_address("fd00:ec2::254"),  # AWS (IPv6)
        ipaddress.ip_address("fd20:ce::254"),  # Google Cloud (IPv6)
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")
# RFC 1918 and unique-local: what "private" means here (Python's is_private is much wider).
_PRIVATE: Final = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_THIS_NETWORK: Final = ipaddress.ip_network("0.0.0.0/8")


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """What a deployment allows: `http` (local development only) and private targets (local
    development and tests, whose receivers listen on 127.0.0.1)."""

    allow_http: bool = False
    allow_private: bool = False

    def url_problem(self, url: object) -> str | None:
        """None if `url` may be registered, else the problem (for the `url` field)."""
        if not isinstance(url, str):
            return "must be a string"
        if len(url) > MAX_URL_LENGTH:
            return f"must be at most {MAX_URL_LENGTH} characters"
        if any(character.isspace() for character in url):
            return "must not contain whitespace"
        # A URL is an identifier the organisation chose: carebus calls it, shows it, logs it.
        if (problem := identifier_problem(url)) is not None:
            return problem
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 -- raises ValueError for a port out of range or not a number
        except ValueError:
            return "is not a valid URL"
        if parts.scheme not in ("http", "https"):
            return "must be an http or https URL" if self.allow_http else "must be an https URL"
        if parts.scheme == "http" and not self.allow_http:
            return "must be an https URL (http is for local development only)"
        if not parts.hostname:
            return "must name a host"
        # The URL is shown by GET /v1/webhooks and in operators' tools; the signature, not a
        # password in the URL, is what tells the receiver a request comes from carebus.
        if parts.username is not None or parts.password is not None:
            return "must not contain credentials"
        return self.host_problem(parts.hostname)

    def scheme_problem(self, url: str) -> str | None:
        """The send-time check of a registered URL's scheme (registered before https only)."""
        if urlsplit(url).scheme == "https" or self.allow_http:
            return None
        return "URL is not https"

    def host_problem(self, host: str) -> str | None:
        """A host name or literal address that is refused before anything is resolved."""
        name = host.lower().rstrip(".")
        if name in METADATA_NAMES:
            return "names a cloud metadata service"
        if (name == "localhost" or name.endswith(".localhost")) and not self.allow_private:
            return "names the local host"
        try:
            address = ipaddress.ip_address(name.split("%", 1)[0])
        except ValueError:
            return None
        return self.address_problem(address)

    def address_problem(self, address: Address) -> str | None:
        """None if carebus may connect to `address`, else what kind of address it is."""
        inner = _embedded_ipv4(address)
        if inner is not None:
            return self.address_problem(inner)
        if address in METADATA_ADDRESSES:
            return "is a cloud metadata address"
        kind = _always_refused(address)
        if kind is not None:
            return kind
        kind = _private(address)
        if kind is not None:
            return None if self.allow_private else kind
        if address.is_reserved:
            return "is reserved"
        if not address.is_global:
            return "is not a global address"
        return None

    def addresses_problem(self, addresses: Iterable[Address]) -> str | None:
        """The first problem among every address a host resolved to: one refused address
        refuses the host, so a name cannot mix a public answer with a private one."""
        for address in addresses:
            problem = self.address_problem(address)
            if problem is not None:
                return f"resolves to an address that {problem}"
        return None


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, Teredo, NAT64), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _always_refused(address: Address) -> str | None:
    if address.is_unspecified or (
        isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK
    ):
        return "is unspecified"
    if address.is_link_local:
        return "is link-local (the cloud metadata service lives there)"
    if address.is_multicast:
        return "is multicast"
    return None


def _private(address: Address) -> str | None:
    """The kinds a local development stack or a test may allow."""
    if address.is_loopback:
        return "is loopback"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "is carrier-grade NAT (100.64.0.0/10)"
    if any(address in network for network in _PRIVATE):
        return "is private"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "is site-local (fec0::/10, private IPv6 of old)"
    return None
