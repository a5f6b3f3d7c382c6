"""The gateway's answer while PostgreSQL is down: whichever way the outage shows, accepting an
event is a 503 with Retry-After (nothing was recorded), never a 500 and never a hang."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from carebus.adapters.auth import Principal
from carebus.adapters.db import DatabaseUnavailableError
from carebus.adapters.http import ApiError
from carebus.domain.authority import Actor
from carebus.domain.events import Event
from services.gateway.app import _accept

pytestmark = pytest.mark.timeout(10)

OUTAGES = [
    ConnectionRefusedError(111, "connection refused"),
    ConnectionResetError(104, "connection reset by peer"),
    asyncpg.exceptions.AdminShutdownError("terminating connection (57P01)"),
    asyncpg.exceptions.CannotConnectNowError("the database system is shutting down (57P03)"),
    asyncpg.exceptions.CrashShutdownError("terminating connection (57P02)"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed mid-operation"),
    asyncpg.exceptions.ConnectionFailureError("connection failure (08006)"),
    asyncpg.exceptions.TooManyConnectionsError("too many clients already (53300)"),
    asyncpg.exceptions.QueryCanceledError("statement timeout (57014)"),
    asyncpg.InterfaceError("connection is closed"),
    asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2)"),
    DatabaseUnavailableError("no database connection within 3.0 s (pool of 20)"),
    TimeoutError(),
]


class FailingIngest:
    """An Ingest whose database fails (or never answers) in the given way."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    async def accept(self, events: Sequence[Event], actor: Actor) -> list[Any]:
        if self.error is None:
            await asyncio.sleep(60)  # a database that does not answer
        raise self.error  # type: ignore[misc]


def request(ingest: FailingIngest, timeout_s: float = 5.0) -> Any:
    state = SimpleNamespace(ingest=ingest, request_timeout_s=timeout_s, retry_after="5")
    return SimpleNamespace(app=SimpleNamespace(state=state))


PRINCIPAL = Principal(uuid.uuid4(), "974705788", "dps", "system")


@pytest.mark.parametrize("error", OUTAGES, ids=lambda error: type(error).__name__)
async def test_every_database_outage_is_a_503_with_retry_after(error: BaseException) -> None:
    """Refused, shut down, starting up, lost mid-transaction, a dead pooled connection, a pool
    not acquired in time: 503 + Retry-After."""
    with pytest.raises(ApiError) as raised:
        await _accept(request(FailingIngest(error)), PRINCIPAL, [], batch=False)
    assert raised.value.status == 503
    assert raised.value.headers == {"Retry-After": "5"}


async def test_a_database_that_never_answers_is_a_503_within_the_request_timeout() -> None:
    """A hang ends at the request's time-out with a 503, not at the client's."""
    started = asyncio.get_running_loop().time()
    with pytest.raises(ApiError) as raised:
        await _accept(request(FailingIngest(None), timeout_s=0.2), PRINCIPAL, [], batch=False)
    assert raised.value.status == 503
    assert asyncio.get_running_loop().time() - started < 2.0


async def test_a_bug_is_not_an_outage() -> None:
    """A programming error is not answered as an outage (it stays a 500)."""
    with pytest.raises(KeyError):
        await _accept(request(FailingIngest(KeyError("x"))), PRINCIPAL, [], batch=False)
