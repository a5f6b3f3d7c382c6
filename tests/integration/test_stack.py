"""The local stack itself: broker, topics, migrations, partitioning, and `carebus up`/`down`."""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from carebus.adapters import db
from carebus.adapters.kafka import client_security, consumer_config, producer_config
from carebus.adapters.streams import broker_credentials
from carebus.adapters.topic_admin import apply_catalogue, load_catalogue
from carebus.wire import topics
from carebus_dev.stack.kafka import broker_answers
from carebus_dev.stack.postgres import with_user
from carebus_dev.stack.process import processes_mentioning
from carebus_dev.testing import TestStack, run_cli

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


# -- carebus up / status / down as a user runs them --------------------------------------------


def _answer(url: str) -> int | str:
    """The status code of GET `url`, or the error that kept it from answering."""
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def test_up_status_down_leaves_nothing_running(cli_env: dict[str, str]) -> None:
    """`carebus up` is healthy and idempotent, status prints the contract, down stops all."""
    first = run_cli(cli_env, "up")
    assert first.returncode == 0, first.stdout + first.stderr
    again = run_cli(cli_env, "up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "started" not in again.stdout  # everything was left running

    status = run_cli(cli_env, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    document = json.loads(status.stdout)
    assert {"services", "metrics", "kafka", "kafka_client", "postgres", "dev_tokens"} <= set(
        document
    )
    # Each component's state, as the table without --json shows it.
    components = document["components"]
    assert {"kafka", "postgres", "migrations", "gateway", "router"} <= set(components)
    assert {c["state"] for c in components.values()} <= {"up", "absent"}, components
    # Every component's /metrics on its internal port, each one answering.
    assert set(document["metrics"]) >= {"gateway", "registry", "audit", "inbox", "router"}
    for component, url in document["metrics"].items():
        assert url not in document["services"].values(), component
        assert _answer(url) == 200, (component, url)
    # The development OpenID Connect issuer people sign in to the inbox with.
    issuer = document["services"]["oidc_issuer"]
    assert issuer == f"http://127.0.0.1:{cli_env['CAREBUS_OIDC_ISSUER_PORT']}"
    discovery = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=10)
    assert discovery.json()["issuer"] == issuer
    # The adapters: HTTP for PLO, HL7 v2 and FHIR, and their MLLP listener for HL7 v2.
    assert _answer(f"{document['services']['adapters']}/healthz") == 200
    mllp = urlsplit(document["services"]["mllp"])
    assert mllp.scheme == "tcp"
    socket.create_connection((mllp.hostname, mllp.port), timeout=10).close()
    assert document["kafka"] == cli_env["CAREBUS_KAFKA_BOOTSTRAP"]
    # The admin's client configuration works, and without it the broker refuses.
    client = document["kafka_client"]
    assert client["bootstrap.servers"] == document["kafka"]
    assert client["security.protocol"] == "SASL_SSL"
    assert AdminClient(client).list_topics(timeout=10).topics
    with pytest.raises(KafkaException):
        AdminClient({"bootstrap.servers": document["kafka"]}).list_topics(timeout=3)
    # The owner's DSN with its generated password: it connects with no further setup, reads
    # every table, and the audit trail stays append-only for it too.
    assert document["postgres"] != cli_env["CAREBUS_POSTGRES_DSN"]
    assert with_user(document["postgres"], "carebus") == cli_env["CAREBUS_POSTGRES_DSN"]
    with psycopg.connect(document["postgres"]) as conn:
        conn.execute("SELECT count(*) FROM events").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("DELETE FROM disclosures")
    tokens = document["dev_tokens"]
    assert set(tokens) == {
        *topics.AGENCIES,
        "coordinator",
        "privacy_officer",
        "admin",
        "orgs",
        "operator",
        "operator_privacy_officer",
        "operator_org",
    }
    assert set(tokens["orgs"]) == set(topics.AGENCIES)
    assert tokens["operator_org"] not in tokens["orgs"].values()
    token_file = Path(cli_env["CAREBUS_STATE_DIR"]) / "dev_tokens.json"
    assert token_file.stat().st_mode & 0o777 == 0o600

    state_dir = Path(cli_env["CAREBUS_STATE_DIR"])
    pg_root = Path((state_dir / "postgres" / "location").read_text().strip())
    if os.geteuid() == 0:  # PostgreSQL runs as `postgres`, who cannot enter a 0700 checkout
        assert pg_root.parent == Path("/var/tmp")

    down = run_cli(cli_env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "leftover" not in down.stdout
    assert (
        processes_mentioning(
            [str(state_dir), str(pg_root)], marker_env=f"CAREBUS_STACK_STATE_DIR={state_dir}"
        )
        == []
    )
    assert run_cli(cli_env, "status").returncode != 0
    stopped = run_cli(cli_env, "status", "--json")
    assert stopped.returncode == 1
    components = json.loads(stopped.stdout)["components"]
    assert components["gateway"] == {"state": "down", "detail": "not running"}
    assert components["kafka"]["state"] == "down"
