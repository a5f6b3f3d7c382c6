"""infra/kafka/acls.yaml as data: what it grants, what it refuses to load, and that it matches
the components that exist (issue 14, item 1)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import SecretStr

from carebus.adapters.kafka import client_security
from carebus.adapters.kafka_acls import AclFileError, Grant, load_grants, principals
from carebus.runtime.config import Settings
from carebus.wire import topics
from carebus_dev.stack.kafka_pki import LocalPki
from carebus_dev.stack.supervisor import SERVICES
from consumers import alert_store, audit_store, event_store
from consumers.webhooks import app as webhooks_app

GRANTS = load_grants()


def allowed(principal: str, operation: str, topic: str) -> bool:
    return Grant(principal, "topic", topic, "literal", operation) in GRANTS


def test_only_the_gateway_and_the_registry_write_the_events_topic() -> None:
    writers = {g.principal for g in GRANTS if g.name == topics.EVENTS and g.operation == "write"}
    assert writers == {"gateway", "registry"}


def test_only_the_router_writes_deliveries() -> None:
    for topic in topics.DELIVERIES:
        writers = {g.principal for g in GRANTS if g.name == topic and g.operation == "write"}
        assert writers == {"router"}, topic


@pytest.mark.parametrize(
    ("topic", "writer"),
    [
        # The rule: only the router writes the routing decisions (review M1).
        (topics.AUDIT, "router"),
        (topics.ALERT_DISCLOSURES, "sla"),
        (topics.ALERTS, "sla"),
        (topics.OPERATOR_ALERTS, "registry"),
    ],
)
def test_each_audit_and_alert_topic_has_one_writer(topic: str, writer: str) -> None:
    writers = {g.principal for g in GRANTS if g.name == topic and g.operation == "write"}
    assert writers == {writer}


def test_only_the_components_that_refuse_statements_write_refusals() -> None:
    writers = {g.principal for g in GRANTS if g.name == topics.REFUSALS and g.operation == "write"}
    assert writers == {"gateway", "registry"}


def test_each_sink_reads_only_its_topics() -> None:
    reads = {
        name: {
            g.name
            for g in GRANTS
            if g.principal == name and g.resource == "topic" and g.operation == "read"
        }
        for name in ("event_store", "audit_store", "alert_store", "webhooks")
    }
    assert reads["event_store"] == {topics.EVENTS}
    assert reads["audit_store"] == set(audit_store.TOPICS)
    assert set(audit_store.TOPICS) == {
        topics.AUDIT,
        topics.ALERT_DISCLOSURES,
        topics.REFUSALS,
        *topics.DELIVERIES,
    }
    assert (
        reads["alert_store"] == set(alert_store.TOPICS) == {topics.ALERTS, topics.OPERATOR_ALERTS}
    )
    assert reads["webhooks"] == set(topics.DELIVERIES)


def test_the_groups_are_the_ones_the_components_use() -> None:
    groups = {g.principal: g.name for g in GRANTS if g.resource == "group"}
    assert groups["event_store"] == event_store.GROUP_ID
    assert groups["audit_store"] == audit_store.GROUP_ID
    assert groups["alert_store"] == alert_store.GROUP_ID
    assert groups["webhooks"] == webhooks_app.GROUP_ID
    assert groups["router"] == "carebus-router"
    assert groups["sla"] == "carebus-sla"


def test_every_principal_is_a_service_and_no_one_is_granted_the_cluster() -> None:
    names = {spec.name for spec in SERVICES}
    assert set(principals(GRANTS)) <= names
    assert {g.resource for g in GRANTS} == {"topic", "group"}
    # The HTTP services that never touch Kafka have no principal at all.
    assert {"audit", "inbox"}.isdisjoint(principals(GRANTS))


def test_prefixed_grants_are_only_the_stream_processors_own_topics() -> None:
    prefixed = {(g.principal, g.name) for g in GRANTS if g.pattern == "prefixed"}
    assert prefixed == {("router", "carebus-router-"), ("sla", "carebus-sla-")}


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("principals: {x: {write: [care.nowhere.v1]}}", "principals.x.write: 'care.nowhere.v1'"),
        ("principals: {x: {delete: [care.events.v1]}}", "principals.x must be a mapping"),
        ("principals: {x: {read: care.events.v1}}", "principals.x.read must be a list"),
        ("topics: {}", "expected a mapping with a 'principals' mapping"),
    ],
)
def test_a_malformed_file_is_refused_naming_the_entry(
    tmp_path: Path, text: str, names: str
) -> None:
    path = tmp_path / "acls.yaml"
    path.write_text(text)
    with pytest.raises(AclFileError, match=names.replace("[", r"\[").replace(".", r"\.")):
        load_grants(path)


def test_deliveries_stands_for_the_six_delivery_topics(tmp_path: Path) -> None:
    path = tmp_path / "acls.yaml"
    path.write_text("principals: {x: {read: [deliveries]}}")
    assert {g.name for g in load_grants(path)} == set(topics.DELIVERIES)


def test_the_local_ca_signs_a_broker_certificate_for_the_loopback_address(
    tmp_path: Path,
) -> None:
    pki = LocalPki(tmp_path / "pki")
    assert pki.ensure()
    ca = x509.load_pem_x509_certificate(pki.ca_file.read_bytes())
    broker = x509.load_pem_x509_certificates(pki.broker_file.read_bytes())[0]
    broker.verify_directly_issued_by(ca)
    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    usage = broker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usage)
    assert b"PRIVATE KEY" in pki.broker_file.read_bytes()
    assert pki.broker_file.stat().st_mode & 0o077 == 0
    assert pki.ca_key_file.stat().st_mode & 0o077 == 0
    # Nothing is due: a second run changes nothing.
    assert not pki.ensure()


def test_a_broker_certificate_near_expiry_is_reissued_by_the_same_ca(tmp_path: Path) -> None:
    pki = LocalPki(tmp_path / "pki")
    pki.ensure()
    ca_before = pki.ca_file.read_bytes()
    first = pki.broker_expires()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=380)
    assert pki.ensure(now=later)
    assert pki.broker_expires() > first
    assert pki.ca_file.read_bytes() == ca_before


def test_a_client_without_its_credential_is_refused_naming_what_is_missing() -> None:
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_username="inbox")
    with pytest.raises(ValueError, match="kafka_password, kafka_ca_file"):
        client_security(settings)
    complete = settings.model_copy(
        update={"kafka_password": SecretStr("pw"), "kafka_ca_file": Path("/ca.pem")}
    )
    config = client_security(complete)
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "inbox"
    assert "sasl.password" not in client_security(Settings())
