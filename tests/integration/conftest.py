"""Fixtures shared by integration tests that run the stack the way a user does (`carebus up`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from carebus.runtime.config import Settings
from carebus_dev.stack.kafka import default_libs_dir, fetch_libs
from carebus_dev.testing import TestStack, free_ports, run_cli


@pytest.fixture(scope="module")
def cli_env() -> Iterator[dict[str, str]]:
    """Environment for a `carebus` CLI stack in a private 0700 directory on free ports (its
    services' internal /metrics ports are the local stack's fixed ones: one such stack at once).

    Like CI's `mktemp -d` checkout, the postgres user cannot enter it, which exercises the
    data directory fallback. The Kafka jars are linked from the project's state dir.
    """
    state_dir = Path(tempfile.mkdtemp(prefix="carebus-cli-")) / ".carebus"
    libs = default_libs_dir(Settings())
    fetch_libs(libs)
    (state_dir / "kafka").mkdir(parents=True)
    (state_dir / "kafka" / "libs").symlink_to(libs)
    ports = free_ports(11)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBUS_")}
    env.update(
        CAREBUS_STATE_DIR=str(state_dir),
        CAREBUS_KAFKA_BOOTSTRAP=f"127.0.0.1:{ports[0]}",
        CAREBUS_KAFKA_CONTROLLER_PORT=str(ports[1]),
        CAREBUS_POSTGRES_DSN=f"postgresql://carebus@127.0.0.1:{ports[2]}/carebus",
        CAREBUS_GATEWAY_PORT=str(ports[3]),
        CAREBUS_REGISTRY_PORT=str(ports[4]),
        CAREBUS_AUDIT_PORT=str(ports[5]),
        CAREBUS_INBOX_PORT=str(ports[6]),
        CAREBUS_PROMETHEUS_PORT=str(ports[7]),
        CAREBUS_OIDC_ISSUER_PORT=str(ports[8]),
        CAREBUS_ADAPTERS_PORT=str(ports[9]),
        CAREBUS_MLLP_PORT=str(ports[10]),
    )
    yield env
    run_cli(env, "down")
    location = state_dir / "postgres" / "location"
    if location.exists():
        shutil.rmtree(location.read_text().strip(), ignore_errors=True)
    shutil.rmtree(state_dir.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def adapter_services(stack: TestStack) -> Iterator[None]:
    """The adapters with what their translations reach: the gateway and the event store."""
    with stack.running("gateway", "event_store", "adapters"):
        yield


@pytest.fixture
async def adapters(stack: TestStack, adapter_services: None) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the running adapters."""
    settings = stack.settings
    async with httpx.AsyncClient(
        base_url=settings.service_url(settings.adapters_port), timeout=30
    ) as client:
        yield client


@pytest.fixture
async def db(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the database's owner, who reads every table."""
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    yield conn
    await conn.close()
