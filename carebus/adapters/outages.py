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
    # A pooled connection the server ended while it was idle (57P01 on a fast shutdown) can be
    # handed out before asyncpg sees it close; its next statement fails with "cannot switch to
    # state 15; another operation (2) is in progress" (a scenario (c) fault run's one 500).
    asyncpg.exceptions.InternalClientError,
    KafkaException,
    BrokerUnavailableError,
    DependencyUnavailableError,  # a pool not acquired in time (carebus.adapters.db)
    DeadLettersUnacknowledgedError,
)
