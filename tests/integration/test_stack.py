"""The local stack itself: broker, topics, migrations, partitioning, and `carebus up`/`down`."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from carebus.adapters import db
from carebus.adapters.kafka import client_security, consumer_config, producer_config
from carebus.adapters.streams import broker_credentials
from carebus.adapters.topic_admin import apply_catalogue, load_catalogue
from carebus_dev.stack.kafka import broker_answers
from carebus_dev.testing import TestStack

pytestmark = pytest.mark.integration


def test_broker_answers_metadata(stack: TestStack) -> None:
    """The broker of the session answers a metadata request."""
    assert broker_answers(stack.settings)


def test_catalogued_topics_exist_with_the_shared_partition_count(stack: TestStack) -> None:
    """Every catalogue topic exists with Settings.person_partitions partitions (> 1)."""
    metadata = AdminClient(client_security(stack.settings)).list_topics(timeout=10)
    assert stack.settings.person_partitions > 1
    for spec in load_catalogue():
        assert spec.name in metadata.topics, spec.name
        assert len(metadata.topics[spec.name].partitions) == stack.settings.person_partitions


def test_migrations_are_applied(stack: TestStack) -> None:
    """The database is at the newest migration and its tables exist."""
    assert db.current_revision(stack.settings.postgres_dsn) == db.head_revision()
    with psycopg.connect(stack.settings.postgres_dsn) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    assert {"organisations", "api_tokens", "accepted_events", "events"} <= {r[0] for r in rows}


def test_applying_the_catalogue_again_changes_nothing(stack: TestStack) -> None:
    """Topics are applied idempotently: a second run only reports them as existing."""
    lines = apply_catalogue(stack.settings, stack.settings.person_partitions)
    assert all(line.startswith("exists") for line in lines), lines


def test_produce_consume_round_trip(stack: TestStack) -> None:
    """A record produced with the shared producer config is read back by a consumer."""
    # A topic of its own: raw bytes on a carebus topic would be garbage to other tests' readers.
    topic = _create_topic(stack, 1)
    key, value = uuid.uuid4().hex.encode(), b"round trip"
    producer = Producer(producer_config(stack.settings, "test-round-trip"))
    reports: list[tuple[int, int]] = []
    producer.produce(
        topic,
        key=key,
        value=value,
        on_delivery=lambda err, msg: (
            reports.append((int(msg.partition() or 0), int(msg.offset() or 0)))
            if err is None
            else pytest.fail(str(err))
        ),
    )
    assert producer.flush(15) == 0
    [(partition, offset)] = reports

    consumer = Consumer(consumer_config(stack.settings, f"test-{uuid.uuid4().hex}"))
    consumer.assign([TopicPartition(topic, partition, offset)])
    try:
        message = consumer.poll(15)
    finally:
        consumer.close()
    assert message is not None
    assert message.error() is None
    assert (message.key(), message.value()) == (key, value)


def _create_topic(stack: TestStack, partitions: int) -> str:
    name = f"test.partitioning.{uuid.uuid4().hex[:8]}"
    admin = AdminClient(client_security(stack.settings))
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(timeout=30)
    return name


def _confluent_partitions(
    stack: TestStack, topic: str, keys: list[bytes], **config: str
) -> dict[bytes, int]:
    producer = Producer(producer_config(stack.settings, "test-partitioning", **config))
    placed: dict[bytes, int] = {}

    def delivered(err: object, msg: object) -> None:
        assert err is None, err
        placed[msg.key()] = msg.partition()  # type: ignore[attr-defined]

    for key in keys:
        producer.produce(topic, key=key, value=b"confluent", on_delivery=delivered)
    assert producer.flush(30) == 0
    return placed


@pytest.mark.parametrize("partitions", [None, 12])
async def test_confluent_and_aiokafka_put_a_key_on_the_same_partition(
    stack: TestStack, partitions: int | None
) -> None:
    """murmur2_random in confluent-kafka and aiokafka's default agree for every key.

    The broker reports where each record landed. As a control, librdkafka's default
    partitioner (CRC32) disagrees for some keys, so the test would catch a wrong setting.
    """
    count = partitions or stack.settings.person_partitions
    topic = _create_topic(stack, count)
    keys = [uuid.uuid4().hex.encode() for _ in range(300)]

    confluent = _confluent_partitions(stack, topic, keys)

    credentials = broker_credentials(stack.settings)
    assert credentials is not None
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.settings.kafka_bootstrap,
        **credentials_to_aiokafka_auth(credentials),
    )
    await producer.start()
    try:
        aiokafka = {}
        for key in keys:
            metadata = await producer.send_and_wait(topic, b"aiokafka", key=key)
            aiokafka[key] = metadata.partition
    finally:
        await producer.stop()

    assert confluent == aiokafka
    assert len(set(aiokafka.values())) == count  # the keys really spread over all partitions
    crc32 = _confluent_partitions(stack, topic, keys, partitioner="consistent_random")
    assert crc32 != aiokafka
