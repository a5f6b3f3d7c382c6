"""The fuzz harness's stack: the four HTTP services on one test stack, callers of every role,
and the figures of the run (cases per service, outcomes, failures), printed and, for
`make fuzz`, written to docs/reliability.md."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from schemathesis.openapi import from_url
from schemathesis.specs.openapi.schemas import OpenApiSchema

from carebus.adapters.auth import create_token
from carebus.domain.identity import random_nin, subject_key
from carebus_dev.stack.devdata import DEV_ORGANISATIONS, OPERATOR_ORG
from carebus_dev.testing import ServiceProcess, TestStack, free_ports
from tests.fuzz.figures import FIGURES, write_reliability

SERVICES = ("gateway", "registry", "audit", "inbox", "adapters")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy schemas (`from_fixture`) read and rename `node._nodeid`,
    which pytest 9.2 no longer has; a copy of the node id gives them one to work with."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture(scope="module")
def fuzzed_services(stack: TestStack) -> Iterator[dict[str, ServiceProcess]]:
    """The HTTP services (the adapters too) on ports of their own, so they never meet the
    integration suite's instances on the stack's configured ports; and the development issuer
    people sign in at (on its configured port, where the services look for it; for this module
    only)."""
    started = {"oidc_issuer": stack.start_service("oidc_issuer", name="fuzz_oidc_issuer")}
    try:
        for name in SERVICES:
            # The adapters hand what they map to this module's gateway, and Subscriptions to
            # its registry, not the stack's.
            env = (
                {
                    "CAREBUS_GATEWAY_URL": str(started["gateway"].url),
                    "CAREBUS_REGISTRY_URL": str(started["registry"].url),
                }
                if name == "adapters"
                else {}
            )
            started[name] = stack.start_service(
                name, name=f"fuzz_{name}", port=free_ports(1)[0], env=env
            )
        FIGURES.started = time.monotonic()
        yield started
    finally:
        # Also when a start failed: a service left running would hold its port (the issuer's
        # is the stack's) against every later module.
        for service in started.values():
            service.stop()


async def _callers(stack: TestStack) -> dict[str, str]:
    """One token per role the services' operations need (services' `principal_dependency`s)."""
    secret = stack.settings.subject_key_secret.get_secret_value()
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    try:

        async def token(agency: str, org_id: str, role: str, key: str | None = None) -> str:
            return await create_token(
                conn, agency=agency, org_id=org_id, role=role, subject_key=key
            )

        municipality = DEV_ORGANISATIONS["municipality"]
        return {
            "system": await token("dps", DEV_ORGANISATIONS["dps"], "system"),
            "coordinator": await token("municipality", municipality, "coordinator"),
            "privacy_officer": await token("municipality", municipality, "privacy_officer"),
            "operator": await token("operator", OPERATOR_ORG, "operator"),
            "patient": await token(
                "operator",
                OPERATOR_ORG,
                "patient",
                subject_key(random_nin(random.Random()), secret),
            ),
        }
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def callers(stack: TestStack) -> dict[str, str]:
    return asyncio.run(_callers(stack))


def _schema(service: ServiceProcess) -> OpenApiSchema:
    return from_url(f"{service.url}/openapi.json", wait_for_schema=30)


@pytest.fixture(scope="module")
def gateway_schema(fuzzed_services: dict[str, ServiceProcess]) -> OpenApiSchema:
    return _schema(fuzzed_services["gateway"])


@pytest.fixture(scope="module")
def registry_schema(fuzzed_services: dict[str, ServiceProcess]) -> OpenApiSchema:
    return _schema(fuzzed_services["registry"])


@pytest.fixture(scope="module")
def audit_schema(fuzzed_services: dict[str, ServiceProcess]) -> OpenApiSchema:
    return _schema(fuzzed_services["audit"])


@pytest.fixture(scope="module")
def adapters_schema(fuzzed_services: dict[str, ServiceProcess]) -> OpenApiSchema:
    return _schema(fuzzed_services["adapters"])


@pytest.fixture(scope="module")
def inbox_schema(fuzzed_services: dict[str, ServiceProcess]) -> OpenApiSchema:
    return _schema(fuzzed_services["inbox"])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES.total == 0:
        return
    terminalreporter.write_sep("=", "fuzzing figures")
    for line in FIGURES.lines():
        terminalreporter.write_line(line)
    if os.environ.get("CAREBUS_FUZZ_REPORT") == "1":
        path = write_reliability(Path(__file__).parents[2] / "docs" / "reliability.md")
        terminalreporter.write_line(f"written to {path}")
