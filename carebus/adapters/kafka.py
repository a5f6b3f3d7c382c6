"""confluent-kafka client settings shared by every carebus producer and consumer."""

from __future__ import annotations

import logging
from typing import Any, Final

from carebus.runtime.config import Settings

SCRAM_MECHANISM: Final = "SCRAM-SHA-512"


def client_security(settings: Settings) -> dict[str, Any]:
    """Where the broker is and how this process proves who it is: every client starts here.

    SASL_SSL: SCRAM-SHA-512 as the process's own principal over TLS, the broker's certificate
    checked against the CA file and its host name (librdkafka's default `https` identification).
    """
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap}
    if settings.kafka_security_protocol == "SASL_SSL":
        # Checked here, not in Settings: a process with no Kafka principal (the audit API, the
        # inbox) runs without any credential and fails only if it ever builds a client.
        missing = [
            name
            for name in ("kafka_username", "kafka_password", "kafka_ca_file")
            if not getattr(settings, name)
        ]
        if missing:
            raise ValueError(
                "kafka_security_protocol SASL_SSL needs " + ", ".join(missing) + " (CAREBUS_"
                "KAFKA_USERNAME, the file carebus_kafka_password in CAREBUS_SECRETS_DIR, "
                "CAREBUS_KAFKA_CA_FILE)"
            )
        assert settings.kafka_password is not None
        config.update(
            {
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": SCRAM_MECHANISM,
                "sasl.username": settings.kafka_username,
                "sasl.password": settings.kafka_password.get_secret_value(),
                "ssl.ca.location": str(settings.kafka_ca_file),
            }
        )
    return config


def producer_config(settings: Settings, client_id: str, **overrides: Any) -> dict[str, Any]:
    """An idempotent, `acks=all` producer that partitions keys exactly as Java and aiokafka do.

    librdkafka's default partitioner is CRC32; faust/aiokafka and the Java client use murmur2,
    so without `murmur2_random` one subject key would land on different partitions.
    """
    config: dict[str, Any] = {
        **client_security(settings),
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": int(settings.produce_timeout_s * 1000),
        # A bounded local queue: past it `produce` raises BufferError at once (the gateway's
        # 503) instead of holding records in memory for a broker that is away.
        "queue.buffering.max.messages": settings.producer_queue_max_messages,
        "queue.buffering.max.kbytes": settings.producer_queue_max_kbytes,
    }
    config.update(overrides)
    return config


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A consumer that commits offsets only when the caller says so (after its sink commit)."""
    config: dict[str, Any] = {
        **client_security(settings),
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 1000,
        "partition.assignment.strategy": "cooperative-sticky",
    }
    config.update(overrides)
    return config


def quiet_logger() -> logging.Logger:
    """A logger that swallows librdkafka's connection-refused chatter during health checks."""
    logger = logging.getLogger("carebus.librdkafka")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
    return logger
