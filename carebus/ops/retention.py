"""`carebus retention`: the inventory of stores of personal data, and the job that enforces it.

`run` makes one pass over every table (`--dry-run`: count what is due, remove nothing); `serve` is
the periodic runner, a worker that runs a pass every `CAREBUS_RETENTION_INTERVAL_S` and serves
/metrics and /healthz on its metrics port; `list` prints the inventory. Each logs one JSON line per
table per pass. They log in as CAREBUS_POSTGRES_DSN says: in production the retention role
(`carebus_svc_retention`, which may only call the purge function), locally the owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from datetime import UTC, datetime
from typing import NoReturn

import asyncpg
import click

from carebus.adapters.retention import run_retention
from carebus.domain.retention import Inventory, RetentionConfigError, plan
from carebus.runtime.config import Settings
from carebus.runtime.telemetry import configure_logging, get_logger
from carebus.runtime.worker import WorkerContext, run_worker
from carebus.wire.retention_config import inventory_for

log = get_logger(__name__)


def _fail(exc: Exception) -> NoReturn:
    click.echo(f"carebus: {exc}", err=True)
    sys.exit(1)


def _inventory(settings: Settings) -> Inventory:
    try:
        return inventory_for(settings)
    except RetentionConfigError as exc:
        _fail(exc)


async def _one_pass(settings: Settings, inventory: Inventory, *, dry_run: bool) -> int:
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        outcomes = await run_retention(
            conn,
            plan(inventory.purged(), datetime.now(UTC)),
            batch_size=settings.retention_batch_size,
            dry_run=dry_run,
        )
    finally:
        await conn.close()
    return sum(outcome.rows for outcome in outcomes)


@click.group("retention")
def retention() -> None:
    """Retention of personal data (infra/retention.yaml, docs/retention.md)."""


@retention.command("run")
@click.option("--dry-run", is_flag=True, help="Count the rows past retention; remove nothing.")
def run_command(dry_run: bool) -> None:
    """Remove every table's rows past their retention, in short batches; idempotent."""
    settings = Settings()
    inventory = _inventory(settings)
    configure_logging("retention", settings)
    try:
        asyncio.run(_one_pass(settings, inventory, dry_run=dry_run))
    except (OSError, asyncpg.PostgresError) as exc:
        _fail(exc)


@retention.command("serve")
def serve_command() -> None:
    """Run a pass every CAREBUS_RETENTION_INTERVAL_S until SIGTERM (/metrics on the metrics
    port); a failed pass is logged and tried again at the next interval."""
    settings = Settings()
    inventory = _inventory(settings)

    async def body(context: WorkerContext) -> None:
        healthy = {"last_pass": True}
        context.readiness.add("last_pass", lambda: healthy["last_pass"])
        while not context.stop.is_set():
            try:
                await _one_pass(settings, inventory, dry_run=False)
                healthy["last_pass"] = True
            except (OSError, asyncpg.PostgresError) as exc:
                healthy["last_pass"] = False
                log.error("retention.pass_failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):  # the interval passed: the next pass
                await asyncio.wait_for(context.stop.wait(), settings.retention_interval_s)

    asyncio.run(run_worker("retention", settings, body, metrics_port=settings.metrics_port))


@retention.command("list")
def list_command() -> None:
    """Print the inventory: each store, what it holds, its retention and who decided it."""
    inventory = _inventory(Settings())
    for store in inventory.stores:
        if store.retention is None:
            retention_text = "not by age"
        elif store.retention.days:
            retention_text = f"{store.retention.days} days"
        else:
            retention_text = str(store.retention)
        click.echo(
            f"{store.name:<32} {store.kind:<5} {retention_text:<12} {store.decided_by:<16} "
            f"{store.holds}"
        )
