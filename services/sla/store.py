"""Where the SLA engine keeps its state: the unit of work it asks for, and PostgreSQL's version.

The engine sees only `SlaStore` and `SlaTransaction`: a transaction in which it claims the
stream offsets it applied, loads and locks persons' states, saves them with their rows of the
deadline index, and finds the persons whose deadlines are due. `PgSlaStore` is the real one
(tables `sla_persons`, `sla_deadlines`, `sla_offsets`); unit tests give the engine an in-memory
store instead (tests/unit/test_sla_engine.py), as the cosmicpython book's fake unit of work.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Final, Protocol

import asyncpg
import orjson

from carebus.adapters.auth import Connection
from carebus.adapters.db import create_pool
from carebus.domain.obligations import SlaState
from carebus.domain.places import PlaceOwners, PlaceState
from carebus.domain.routing import PersonState
from carebus.runtime.config import Settings

Persons = dict[str, tuple[PersonState, SlaState]]
Place = tuple[str, int]  # topic, partition
Places = dict[str, tuple[PlaceState, PlaceOwners | None]]  # by place key
PROBE_TIMEOUT_S: Final = 2.0


class SlaTransaction(Protocol):
    """One transaction's view of the engine's state; everything commits together or not at all."""

    async def claim_offsets(self, topics: Sequence[str]) -> dict[Place, int]:
        """The last applied offset per partition of `topics`, locked until the transaction ends."""
        ...

    async def save_offsets(self, latest: Mapping[Place, int]) -> None: ...

    async def load(self, subject_keys: Sequence[str], *, skip_locked: bool = False) -> Persons:
        """The stored states of these persons, locked; with `skip_locked`, persons someone else
        holds right now are left out instead of waited for."""
        ...

    async def save(self, persons: Persons) -> None:
        """Write the persons' states and replace their rows of the deadline index."""
        ...

    async def due(self, now: datetime, limit: int) -> list[str]:
        """Up to `limit` persons with an obligation due at `now`, earliest deadline first."""
        ...

    async def load_places(self, place_keys: Sequence[str]) -> Places:
        """Every one of these places' state (a new one where none is stored), locked, with
        its owners as the registry records them (None: not registered)."""
        ...

    async def save_places(self, places: Mapping[str, PlaceState]) -> None: ...

    async def places_counting(self, event_ids: Sequence[str]) -> list[str]:
        """The keys of the places whose stored count may hold one of these events (a
        superset: the caller matches the sender too)."""
        ...


class SlaStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[SlaTransaction]: ...

    async def open_obligations(self) -> dict[str, tuple[int, int]]:
        """Open and overdue obligations per rule id (the whole deadline index)."""
        ...


class PgSlaStore:
    """The engine's state in PostgreSQL, on a pool made on first use in the worker's loop."""

    def __init__(self, settings: Settings, *, max_size: int = 4) -> None:
        self._settings = settings
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await create_pool(self._settings, min_size=1, max_size=self._max_size)
            self._loop = asyncio.get_running_loop()
        return self._pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SlaTransaction]:
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            yield _PgTransaction(conn)

    async def open_obligations(self) -> dict[str, tuple[int, int]]:
        pool = await self.pool()
        rows = await pool.fetch(
            "SELECT split_part(obligation_id, ':', 1) AS rule_id, count(*) AS open, "
            "count(*) FILTER (WHERE deadline <= now()) AS overdue "
            "FROM sla_deadlines GROUP BY 1"
        )
        return {row["rule_id"]: (row["open"], row["overdue"]) for row in rows}

    def answers(self) -> bool:
        """Readiness, from another thread: the pool exists and the database answers."""
        pool, loop = self._pool, self._loop
        if pool is None or loop is None:
            return False
        probe = asyncio.run_coroutine_threadsafe(pool.fetchval("SELECT 1"), loop)
        return bool(probe.result(timeout=PROBE_TIMEOUT_S) == 1)


class _PgTransaction:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def claim_offsets(self, topics: Sequence[str]) -> dict[Place, int]:
        rows = await self._conn.fetch(
            'SELECT topic, partition, "offset" FROM sla_offsets '
            "WHERE topic = ANY($1::text[]) ORDER BY topic, partition FOR UPDATE",
            sorted(topics),
        )
        return {(row["topic"], row["partition"]): row["offset"] for row in rows}

    async def save_offsets(self, latest: Mapping[Place, int]) -> None:
        await self._conn.executemany(
            'INSERT INTO sla_offsets (topic, partition, "offset") VALUES ($1, $2, $3) '
            'ON CONFLICT (topic, partition) DO UPDATE SET "offset" = EXCLUDED."offset"',
            [(topic, partition, offset) for (topic, partition), offset in latest.items()],
        )

    async def load(self, subject_keys: Sequence[str], *, skip_locked: bool = False) -> Persons:
        # Locked in key order, so two lockers never deadlock.
        lock = "FOR UPDATE SKIP LOCKED" if skip_locked else "FOR UPDATE"
        rows = await self._conn.fetch(
            "SELECT subject_key, state, routing FROM sla_persons "  # noqa: S608 - fixed clauses
            f"WHERE subject_key = ANY($1::text[]) ORDER BY subject_key {lock}",
            list(subject_keys),
        )
        return {
            row["subject_key"]: (
                PersonState.from_json(orjson.loads(row["routing"])),
                SlaState.from_json(orjson.loads(row["state"])),
            )
            for row in rows
        }

    async def save(self, persons: Persons) -> None:
        if not persons:
            return
        keys = list(persons)
        await self._conn.executemany(
            "INSERT INTO sla_persons (subject_key, state, routing) "
            "VALUES ($1, $2::json, $3::json) "
            "ON CONFLICT (subject_key) DO UPDATE SET state = EXCLUDED.state, "
            "routing = EXCLUDED.routing, updated_at = clock_timestamp()",
            [
                (
                    key,
                    orjson.dumps(state.to_json()).decode(),
                    orjson.dumps(routing.to_json()).decode(),
                )
                for key, (routing, state) in persons.items()
            ],
        )
        await self._conn.execute(
            "DELETE FROM sla_deadlines WHERE subject_key = ANY($1::text[])", keys
        )
        rows = [
            (key, oid, deadline)
            for key, (_, state) in persons.items()
            for oid, deadline in state.deadlines().items()
        ]
        if rows:
            await self._conn.executemany(
                "INSERT INTO sla_deadlines (subject_key, obligation_id, deadline) "
                "VALUES ($1, $2, $3)",
                rows,
            )

    async def load_places(self, place_keys: Sequence[str]) -> Places:
        # Locked in key order, after the persons (services/sla/app.py): no deadlock.
        rows = await self._conn.fetch(
            "SELECT place_key, state FROM sla_places WHERE place_key = ANY($1::text[]) "
            "ORDER BY place_key FOR UPDATE",
            sorted(place_keys),
        )
        states = {row["place_key"]: orjson.loads(row["state"]) for row in rows}
        owners = await self._conn.fetch(
            "SELECT place_key, owner_org, municipality_org FROM housing_places "
            "WHERE place_key = ANY($1::text[])",
            sorted(place_keys),
        )
        known = {
            row["place_key"]: PlaceOwners(row["owner_org"], row["municipality_org"])
            for row in owners
        }
        return {key: (PlaceState.from_json(states.get(key)), known.get(key)) for key in place_keys}

    async def places_counting(self, event_ids: Sequence[str]) -> list[str]:
        # A retraction is rare and places with recent events are few: a scan of their text.
        patterns = [f"%{_like(orjson.dumps(event_id).decode())}%" for event_id in event_ids]
        rows = await self._conn.fetch(
            "SELECT place_key FROM sla_places WHERE state::text LIKE ANY($1::text[])", patterns
        )
        return [row["place_key"] for row in rows]

    async def save_places(self, places: Mapping[str, PlaceState]) -> None:
        await self._conn.executemany(
            "INSERT INTO sla_places (place_key, state) VALUES ($1, $2::json) "
            "ON CONFLICT (place_key) DO UPDATE SET state = EXCLUDED.state, "
            "updated_at = clock_timestamp()",
            [(key, orjson.dumps(state.to_json()).decode()) for key, state in places.items()],
        )

    async def due(self, now: datetime, limit: int) -> list[str]:
        rows = await self._conn.fetch(
            "SELECT subject_key FROM sla_deadlines WHERE deadline <= $1 "
            "GROUP BY subject_key ORDER BY min(deadline) LIMIT $2",
            now,
            limit,
        )
        return [row["subject_key"] for row in rows]


def _like(text: str) -> str:
    """`text` as a literal inside a LIKE pattern (backslash is LIKE's default escape)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
