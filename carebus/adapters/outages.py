"""The one list of errors that mean "an outage, wait it out": the database or the broker is
unreachable, restarting or refusing connections. Anything else is the record's or the code's
fault and is handled where it happens (dead letter, refusal), never retried."""

from __future__ import annotations

from typing import Final

import asyncpg
from confluent_kafka import KafkaException

from carebus.adapters.deadletter import DeadLettersUnacknowledgedError
from carebus.adapters.publisher import BrokerUnavailableError
from carebus.adapters.unavailable import DependencyUnavailableError

OUTAGES: Final[tuple[type[BaseException], ...]] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,  # 57P01 admin shutdown, 57P03 cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # 53xxx: disk full, too many connections
    KafkaException,
    BrokerUnavailableError,
    DependencyUnavailableError,  # a pool not acquired in time (carebus.adapters.db)
    DeadLettersUnacknowledgedError,
)
