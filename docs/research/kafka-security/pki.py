"""A local CA and a broker certificate as PEM files, with the `cryptography` package only.

No keytool, no JKS/PKCS12: Kafka (KIP-651, >= 2.7) reads PEM key stores and trust stores.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key(kind: str):
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pkcs8(key) -> bytes:
    # Kafka's PEM key store wants PKCS#8 ("BEGIN PRIVATE KEY" or "BEGIN ENCRYPTED PRIVATE KEY").
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_pki(out: Path, *, kind: str = "rsa", days: int = 825) -> dict[str, Path]:
    """ca.pem (the trust anchor every client gets), ca.key, broker.pem (key + chain)."""
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    ca_key = _key(kind)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "carebus local CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    broker_key = _key(kind)
    broker_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")]))
        .issuer_name(ca_name)
        .public_key(broker_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        # Clients connect to 127.0.0.1 and check the name (librdkafka and Java default to
        # ssl.endpoint.identification.algorithm=https; Python's default context checks too).
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # serverAuth for the listeners, clientAuth because the broker half of the combined node
        # presents the same certificate to the controller listener (mTLS there).
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    paths = {
        "ca": out / "ca.pem",
        "ca_key": out / "ca.key",
        "broker": out / "broker.pem",
    }
    paths["ca"].write_bytes(ca_cert.public_bytes(pem))
    paths["ca_key"].write_bytes(_pkcs8(ca_key))
    paths["ca_key"].chmod(0o600)
    # One file: the private key, then the certificate chain (leaf first, then the CA).
    paths["broker"].write_bytes(
        _pkcs8(broker_key) + broker_cert.public_bytes(pem) + ca_cert.public_bytes(pem)
    )
    paths["broker"].chmod(0o600)
    return paths


if __name__ == "__main__":
    import sys

    print(make_pki(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/kafka-security/pki")))
