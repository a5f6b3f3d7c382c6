"""The local stack's certificate authority and the broker's TLS certificate, as PEM files.

Kafka reads PEM key and trust stores directly (KIP-651), so no keytool and no JKS. Made once
per state directory with `cryptography`; the broker certificate is re-issued from the same CA
when it nears expiry, so clients that trust `ca.pem` keep working.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS: Final = 3650
BROKER_DAYS: Final = 397
# A broker certificate with less than this left is re-issued by the next `carebus up`.
RENEW_BEFORE: Final = dt.timedelta(days=30)
BROKER_NAME: Final = "broker"


@dataclass(frozen=True)
class LocalPki:
    """`ca.pem` (what every client trusts), `ca.key` and `broker.pem` (key + chain), 0600."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key_file(self) -> Path:
        return self.directory / "ca.key"

    @property
    def broker_file(self) -> Path:
        return self.directory / "broker.pem"

    def ensure(self, now: dt.datetime | None = None) -> bool:
        """Make the CA and the broker certificate if missing or due; True if anything changed."""
        now = now or dt.datetime.now(dt.UTC)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        changed = False
        if not (self.ca_file.exists() and self.ca_key_file.exists()):
            key = _new_key()
            _write(self.ca_key_file, _pkcs8(key))
            _write(self.ca_file, _ca_certificate(key, now).public_bytes(serialization.Encoding.PEM))
            self.broker_file.unlink(missing_ok=True)
            changed = True
        if not self.broker_file.exists() or self.broker_expires() - now < RENEW_BEFORE:
            self._issue_broker_certificate(now)
            changed = True
        return changed

    def broker_expires(self) -> dt.datetime:
        return x509.load_pem_x509_certificate(self.broker_file.read_bytes()).not_valid_after_utc

    def _issue_broker_certificate(self, now: dt.datetime) -> None:
        ca_key = serialization.load_pem_private_key(self.ca_key_file.read_bytes(), password=None)
        if not isinstance(ca_key, rsa.RSAPrivateKey):
            raise ValueError(f"{self.ca_key_file} is not the RSA key carebus made")
        ca_cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
        key = _new_key()
        start = now - dt.timedelta(minutes=5)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(BROKER_NAME))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=BROKER_DAYS))
            # Clients connect to 127.0.0.1 and check the name against it (librdkafka's and
            # Python's defaults), so the certificate names the loopback address.
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # clientAuth too: the broker half of the node presents this certificate to the
            # controller listener, which requires mutual TLS.
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        # Kafka's PEM key store: the PKCS#8 key, then the chain from the leaf to the CA.
        _write(
            self.broker_file,
            _pkcs8(key) + certificate.public_bytes(pem) + ca_cert.public_bytes(pem),
        )


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca_certificate(key: rsa.RSAPrivateKey, now: dt.datetime) -> x509.Certificate:
    name = _name("carebus local CA")
    start = now - dt.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


def _pkcs8(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes) -> None:
    """Write `data` (0600) whole: a reader sees the old file or the new one, never half."""
    partial = path.with_name(f".{path.name}.partial")
    partial.touch(mode=0o600, exist_ok=True)
    partial.chmod(0o600)
    partial.write_bytes(data)
    partial.replace(path)
