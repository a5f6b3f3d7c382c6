"""confluent-kafka client settings shared by every carebus producer and consumer."""

from __future__ import annotations

import logging
from typing import Any

from carebus.runtime.config import Settings


def producer_config(settings: Settings, client_id: str, **overrides: Any) -> dict[str, Any]:
    """An idempotent, `acks=all` producer that partitions keys exactly as Java and aiokafka do.

    librdkafka's default partitioner is CRC32; faust/aiokafka and the Java client use murmur2,
    so without `murmur2_random` one subject key would land on different partitions.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": int(settings.produce_timeout_s * 1000),
    }
    config.update(overrides)
    return config


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A consumer that commits offsets only when the caller says so (after its sink commit)."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
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
