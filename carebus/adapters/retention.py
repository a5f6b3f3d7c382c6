"""The retention job against PostgreSQL: each table's share of a run, through the owner's function.

Every statement is one call of `carebus_retention_purge` (migration 0016) in its own short
transaction, removing at most `batch_size` rows, so no run holds a lock for long or blocks the
services' writes; a table is done when a call removes fewer than a batch. The function refuses a
cut-off younger than the table's minimum, so a wrong setting or a compromised caller cannot
remove recent rows. Running again right after removes nothing more: the job is idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg

from carebus.domain.retention import Purge
from carebus.runtime.metrics import (
    RETENTION_FAILURES,
    RETENTION_LAST_SUCCESS,
    RETENTION_ROWS_DUE,
    RETENTION_ROWS_REMOVED,
)
from carebus.runtime.telemetry import get_logger

log = get_logger(__name__)

_PURGE = "SELECT carebus_retention_purge($1, $2, $3, $4)"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one run did to one table: rows removed (or, in a dry run, due) and the statements."""

    store: str
    rows: int
    statements: int
    dry_run: bool


async def purge_store(
    conn: asyncpg.Connection,
    purge: Purge,
    *,
    batch_size: int,
    dry_run: bool = False,
    stopping: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Remove `purge.store`'s rows past `purge.cutoff`, a batch per statement (in a dry run,
    count them and remove nothing)."""
    if dry_run:
        due = await conn.fetchval(_PURGE, purge.store, purge.cutoff, batch_size, True)
        return Outcome(purge.store, int(due), 1, dry_run=True)
    rows = statements = 0
    while True:
        removed = int(await conn.fetchval(_PURGE, purge.store, purge.cutoff, batch_size, False))
        rows += removed
        statements += 1
        RETENTION_ROWS_REMOVED.labels(store=purge.store).inc(removed)
        if removed < batch_size or stopping():
            return Outcome(purge.store, rows, statements, dry_run=False)


async def run_retention(
    conn: asyncpg.Connection,
    plan: Sequence[Purge],
    *,
    batch_size: int,
    dry_run: bool = False,
    stopping: Callable[[], bool] = lambda: False,
) -> list[Outcome]:
    """One run over every table of `plan`, in its order; a log line per table. A table whose
    statement fails stops the run (the next run starts again from the first table)."""
    outcomes = []
    started = time.monotonic()
    for purge in plan:
        if stopping():
            break
        try:
            outcome = await purge_store(
                conn, purge, batch_size=batch_size, dry_run=dry_run, stopping=stopping
            )
        except (asyncpg.PostgresError, OSError) as exc:
            RETENTION_FAILURES.labels(store=purge.store).inc()
            log.error("retention.failed", store=purge.store, error=type(exc).__name__)
            raise
        if dry_run:
            RETENTION_ROWS_DUE.labels(store=purge.store).set(outcome.rows)
        log.info(
            "retention.store",
            store=purge.store,
            cutoff=purge.cutoff.isoformat(),
            rows=outcome.rows,
            statements=outcome.statements,
            dry_run=dry_run,
        )
        outcomes.append(outcome)
    if not dry_run and len(outcomes) == len(plan):
        RETENTION_LAST_SUCCESS.set_to_current_time()
    log.info(
        "retention.run",
        stores=len(outcomes),
        rows=sum(o.rows for o in outcomes),
        dry_run=dry_run,
        seconds=round(time.monotonic() - started, 3),
    )
    return outcomes
