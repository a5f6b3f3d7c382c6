"""The inbox keeps refused person-view look-ups after the answer: a failing write or a flood
never reaches the caller, and repeats within an hour are one row."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg

from services.inbox.person_store import PersonStore, RefusalKeeper, refusal_id


class FlakyStore:
    """A PersonStore whose first write fails as a full disk would."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.calls = 0

    async def refused(self, record: dict[str, Any]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise asyncpg.DiskFullError("no space left")
        self.written.append(record["audit_id"])


async def test_a_failed_write_is_logged_and_the_next_one_still_goes_through() -> None:
    store = FlakyStore()
    keeper = RefusalKeeper(cast(PersonStore, store))
    keeper.keep({"audit_id": "first"})
    keeper.keep({"audit_id": "second"})
    runner = asyncio.create_task(keeper.run())
    try:
        for _ in range(100):
            if store.written:
                break
            await asyncio.sleep(0.01)
    finally:
        runner.cancel()
    assert store.calls == 2
    assert store.written == ["second"]


async def test_a_flood_past_the_queue_is_dropped_and_the_rest_drained_at_shutdown() -> None:
    store = FlakyStore()
    store.calls = 1  # no failure this time
    keeper = RefusalKeeper(cast(PersonStore, store), capacity=2)
    for n in range(5):
        keeper.keep({"audit_id": f"r{n}"})  # never raises, never blocks
    await keeper.drain()
    assert store.written == ["r0", "r1"]


def test_one_audit_id_per_organisation_role_person_and_hour() -> None:
    key = "ab" * 32
    at = datetime(2026, 12, 7, 21, 5, tzinfo=UTC)
    same_hour = refusal_id("940493021", "coordinator", key, at.replace(minute=59))
    assert refusal_id("940493021", "coordinator", key, at) == same_hour
    others = {
        refusal_id("940493021", "coordinator", key, at.replace(hour=22)),
        refusal_id("940493021", "privacy_officer", key, at),
        refusal_id("940493039", "coordinator", key, at),
        refusal_id("940493021", "coordinator", "cd" * 32, at),
    }
    assert same_hour not in others
    assert len(others) == 4
