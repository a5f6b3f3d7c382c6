"""The broker authenticates every client and lets each component do only what
infra/kafka/acls.yaml grants it (issue 14, item 1; docs/security.md, control 1).

Each test speaks to the session's broker as a component would: with that component's own SCRAM
principal from the stack's credentials, over TLS against the local CA.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from pydantic import SecretStr

from carebus.adapters.kafka import client_security, consumer_config, producer_config
from carebus.adapters.kafka_acls import apply_grants, load_grants, password_file, principals
from carebus.adapters.topic_admin import admin_client
from carebus.runtime.config import Settings
from carebus.wire import topics
from carebus_dev.stack.kafka import broker_answers
from carebus_dev.testing import TestStack, run_cli

pytestmark = pytest.mark.integration


def as_principal(stack: TestStack, name: str) -> Settings:
    return stack.local.kafka.settings_for(name)


def produce_error(settings: Settings, topic: str, value: bytes = b"x") -> KafkaError | None:
    """The delivery report's error of one record (None: the broker took it)."""
    reports: list[KafkaError | None] = []
    producer = Producer(producer_config(settings, f"test-{uuid.uuid4().hex[:8]}"))
    producer.produce(topic, value, key=b"k", on_delivery=lambda err, _msg: reports.append(err))
    producer.flush(20)
    assert reports, "no delivery report within 20 s"
    return reports[0]


def first_poll_error(settings: Settings, topic: str, group: str) -> KafkaError | None:
    """The first error a consumer in `group` sees on `topic` (None: it read without one)."""
    consumer = Consumer(consumer_config(settings, group))
    consumer.subscribe([topic])
    try:
        for _ in range(40):
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                return error
            return None
        return None
    finally:
        consumer.close()


def test_a_client_without_credentials_cannot_connect(stack: TestStack) -> None:
    plain = stack.settings.model_copy(
        update={"kafka_security_protocol": "PLAINTEXT", "kafka_username": None}
    )
    assert not broker_answers(plain, timeout_s=3)
    # TLS against the right CA but no SASL, and SASL with a wrong password: both refused.
    wrong = as_principal(stack, "gateway").model_copy(
        update={"kafka_password": SecretStr("not-the-password")}
    )
    assert not broker_answers(wrong, timeout_s=3)
    assert broker_answers(as_principal(stack, "gateway"), timeout_s=10)


def controller_accepts(stack: TestStack, certificate: Path | None) -> bool:
    """Whether the controller listener completes TLS with (or without) a client certificate."""
    context = ssl.create_default_context(cafile=str(stack.settings.kafka_ca_file))
    if certificate is not None:
        context.load_cert_chain(certificate)
    port = stack.settings.kafka_controller_port
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            # TLS 1.3 reports a refused client certificate only on the first read: send a
            # request header the broker will answer or drop, and see whether TLS survives.
            tls.sendall(b"\x00\x00\x00\x00")
            tls.settimeout(2)
            with contextlib.suppress(TimeoutError):
                tls.recv(1)
            return True
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return False


def test_the_controller_listener_wants_the_brokers_certificate(stack: TestStack) -> None:
    assert not controller_accepts(stack, None)
    assert controller_accepts(stack, stack.local.kafka.pki.broker_file)


def test_the_gateway_writes_events_but_not_deliveries(stack: TestStack) -> None:
    gateway = as_principal(stack, "gateway")
    assert produce_error(gateway, topics.EVENTS) is None
    error = produce_error(gateway, topics.deliveries("dps"))
    assert error is not None
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


@pytest.mark.parametrize(
    ("principal", "topic"),
    [
        # Only the router writes the routing decisions: no other writer of the audit trail can
        # take a disclosure's id first or record a disclosure that never happened (review M1).
        ("gateway", topics.AUDIT),
        ("registry", topics.AUDIT),
        ("sla", topics.AUDIT),
        ("gateway", topics.ALERT_DISCLOSURES),
        ("sla", topics.REFUSALS),
        ("sla", topics.OPERATOR_ALERTS),
        ("registry", topics.ALERTS),
    ],
)
def test_each_writer_of_the_audit_trail_writes_only_its_own_topic(
    stack: TestStack, principal: str, topic: str
) -> None:
    error = produce_error(as_principal(stack, principal), topic, b"forged audit record")
    assert error is not None
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


@pytest.mark.parametrize("sink", ["event_store", "audit_store", "alert_store", "webhooks"])
def test_a_sink_cannot_forge_a_consent_change(stack: TestStack, sink: str) -> None:
    error = produce_error(as_principal(stack, sink), topics.EVENTS, b"forged consent change")
    assert error is not None
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_webhook_delivery_cannot_read_the_events_topic(stack: TestStack) -> None:
    webhooks = as_principal(stack, "webhooks")
    error = first_poll_error(webhooks, topics.EVENTS, "carebus-webhooks")
    assert error is not None
    assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_a_component_reads_only_in_its_own_group(stack: TestStack) -> None:
    webhooks = as_principal(stack, "webhooks")
    error = first_poll_error(webhooks, topics.deliveries("dps"), "carebus-router")
    assert error is not None
    assert error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED


def test_a_component_cannot_grant_itself_anything(stack: TestStack) -> None:
    audit_store = as_principal(stack, "audit_store")
    admin = AdminClient(client_security(audit_store))
    grant = AclBinding(
        ResourceType.TOPIC,
        topics.EVENTS,
        ResourcePatternType.LITERAL,
        "User:audit_store",
        "*",
        AclOperation.WRITE,
        AclPermissionType.ALLOW,
    )
    futures: dict[Any, Any] = admin.create_acls([grant], request_timeout=10)
    (future,) = futures.values()
    with pytest.raises(KafkaException) as refused:
        future.result()
    assert refused.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED


def test_the_acls_on_the_broker_are_exactly_the_file(stack: TestStack) -> None:
    """Applying acls.yaml again changes nothing: the broker already has exactly it."""
    lines = apply_grants(admin_client(stack.settings), load_grants())
    assert lines[-1] == "0 created, 0 deleted"


def test_the_operator_applies_users_and_acls_from_password_files(
    stack: TestStack, tmp_path: Path
) -> None:
    """`carebus kafka apply` (production's way, run by the compose setup job) reads each
    component's password from its file; one missing file refuses the whole run."""
    passwords = stack.local.kafka.credentials.read()
    names = principals(load_grants())
    for name in names:
        (tmp_path / password_file(name)).write_text(passwords[name] + "\n")
    done = run_cli(stack.env(), "kafka", "apply", "--passwords-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "0 created, 0 deleted" in done.stdout
    # The credentials it set are the ones the components use.
    assert broker_answers(as_principal(stack, "router"), timeout_s=10)

    (tmp_path / password_file("webhooks")).unlink()
    refused = run_cli(stack.env(), "kafka", "apply", "--passwords-dir", str(tmp_path))
    assert refused.returncode == 1
    assert password_file("webhooks") in refused.stderr
    assert passwords["webhooks"] not in refused.stderr + refused.stdout
