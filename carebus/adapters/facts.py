"""The facts the edge judges claims by: each person's routing state in PostgreSQL, row-locked.

The gateway and the registry read a person's state (care team, home municipality, GP, open
admissions, consents) with `lock`, judge the statement (`carebus.domain.authority`), fold what they
accept into it (`carebus.domain.routing.apply`, the router's own fold) and `save` it in the same
transaction that records and publishes the statement. The row lock orders two claims about one
person the way they are accepted, so a claim is always judged against every claim accepted
before it. The nin is never stored: rows are keyed by subject key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import orjson

from carebus.adapters.auth import Connection
from carebus.domain.routing import PersonState


async def lock(conn: Connection, subject_keys: Iterable[str]) -> dict[str, PersonState]:
    """The state of each person, locked until the caller's transaction ends.

    Rows are created and locked in key order, so two transactions locking overlapping sets of
    persons cannot deadlock.
    """
    keys = sorted(set(subject_keys))
    if not keys:
        return {}
    # One round trip: a new person gets a row, an existing one is locked by the no-op update;
    # both come back with their state. Rows are taken in key order.
    rows = await conn.fetch(
        """
        INSERT INTO person_facts (subject_key, state) SELECT unnest($1::text[]), '{}'
        ON CONFLICT (subject_key) DO UPDATE SET updated_at = now()
        RETURNING subject_key, state
        """,
        keys,
    )
    return {row["subject_key"]: PersonState.from_json(orjson.loads(row["state"])) for row in rows}


async def read(conn: Connection, subject_key: str) -> PersonState:
    """The person's state without a lock (for reads that change nothing)."""
    stored = await conn.fetchval(
        "SELECT state FROM person_facts WHERE subject_key = $1", subject_key
    )
    return PersonState.from_json(orjson.loads(stored)) if stored else PersonState()


async def save(conn: Connection, states: Mapping[str, PersonState]) -> None:
    """Write the states the caller changed (rows `lock` created and locked)."""
    if not states:
        return
    await conn.execute(
        """
        UPDATE person_facts AS f SET state = s.state, updated_at = now()
        FROM unnest($1::text[], $2::text[]) AS s (subject_key, state)
        WHERE f.subject_key = s.subject_key
        """,
        list(states),
        [orjson.dumps(state.to_json()).decode() for state in states.values()],
    )
