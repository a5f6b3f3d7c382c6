"""A local cluster of three brokers: replication 3, min.insync.replicas 2, and one broker lost."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AdminClient,
    ConfigResource,
    NewTopic,
)

from carebus.adapters.kafka import client_security, consumer_config, producer_config
from carebus.adapters.topic_admin import load_catalogue
from carebus_dev.testing import TestStack

pytestmark = pytest.mark.integration

ROUTER_CHANGELOG = "carebus-router-persons-changelog"


@pytest.fixture(scope="module")
def cluster() -> Iterator[TestStack]:
    with TestStack(brokers=3) as stack:
        yield stack


def _admin(stack: TestStack) -> AdminClient:
    return AdminClient(client_security(stack.settings))


def _wait_for_topic(admin: AdminClient, name: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while name not in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"{name} was not created within {timeout_s:.0f} s"
        time.sleep(0.5)


def test_every_topic_and_changelog_has_three_replicas_and_min_isr_two(cluster: TestStack) -> None:
    """The catalogue's topics and a faust changelog (the router's, made by the real worker)
    have replication 3 and min.insync.replicas 2 on a three-broker stack."""
    assert cluster.brokers == 3
    assert cluster.settings.kafka_replication == 3
    assert len(cluster.settings.kafka_bootstrap.split(",")) == 3
    cluster.start_service("router")
    admin = _admin(cluster)
    _wait_for_topic(admin, ROUTER_CHANGELOG)
    names = [spec.name for spec in load_catalogue()] + [ROUTER_CHANGELOG]
    metadata = admin.list_topics(timeout=10)
    assert sorted(metadata.brokers) == [1, 2, 3]
    for name in names:
        replicas = {len(p.replicas) for p in metadata.topics[name].partitions.values()}
        assert replicas == {3}, name
    described = admin.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, name) for name in names]
    )
    for resource, future in described.items():
        assert future.result(timeout=10)["min.insync.replicas"].value == "2", resource.name


def _led(admin: AdminClient, topic: str, timeout_s: float = 30.0) -> dict[int, Any]:
    """The topic's partitions once the metadata lists them and each has a leader (just after
    the topic is created the metadata may list it with no partitions yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
        if partitions and all(p.leader > 0 for p in partitions.values()):
            return dict(partitions)
        assert time.monotonic() < deadline, f"{topic} has partitions without a leader"
        time.sleep(0.2)


def _delivered(producer: Producer, topic: str, count: int) -> list[KafkaError | None]:
    outcomes: list[KafkaError | None] = []

    def report(error: KafkaError | None, _: Message) -> None:
        outcomes.append(error)

    for n in range(count):
        producer.produce(topic, key=f"k{n}".encode(), value=f"v{n}".encode(), on_delivery=report)
    assert producer.flush(60) == 0
    return outcomes


def test_a_killed_broker_keeps_acks_all_writes_and_reads_and_rejoins(cluster: TestStack) -> None:
    """With one broker of three SIGKILLed, an acks=all producer still has every record
    acknowledged and a consumer reads them all; started again, the broker is back in sync."""
    admin = _admin(cluster)
    topic = f"test.replication.{uuid.uuid4().hex[:8]}"
    created = admin.create_topics(
        [NewTopic(topic, 6, replication_factor=3, config={"min.insync.replicas": "2"})]
    )
    created[topic].result(timeout=30)
    partitions = _led(admin, topic)
    # The victim leads some of the partitions, so their leadership has to move; not the first
    # broker if another leads one (the clients were first given the first to bootstrap from).
    leaders = sorted({p.leader for p in partitions.values()}, key=lambda node: node == 1)
    victim = leaders[0] - 1

    cluster.kill_broker(victim)
    # Failover waits for the controller to fence the dead broker: give deliveries time.
    config = producer_config(
        cluster.settings, "test-three-brokers", **{"message.timeout.ms": 60000}
    )
    assert config["acks"] == "all"
    outcomes = _delivered(Producer(config), topic, 60)
    assert outcomes == [None] * 60

    reader = Consumer(consumer_config(cluster.settings, f"test-{uuid.uuid4().hex}"))
    reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    values: set[bytes] = set()
    deadline = time.monotonic() + 60
    try:
        while len(values) < 60 and time.monotonic() < deadline:
            for message in reader.consume(100, 0.5):
                if message.error() is None:
                    values.add(message.value() or b"")
    finally:
        reader.close()
    assert values == {f"v{n}".encode() for n in range(60)}
    lagging = admin.list_topics(topic, timeout=10).topics[topic].partitions.values()
    assert all(victim + 1 not in p.isrs for p in lagging)

    cluster.start_broker(victim)
    assert cluster.local.kafka.live_brokers() == [1, 2, 3]
    assert cluster.local.kafka.out_of_sync(victim + 1) == []
