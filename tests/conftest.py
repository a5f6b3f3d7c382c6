"""Session-wide test setup: one real local Kafka broker and PostgreSQL for the whole run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from carebus_dev.testing import TestStack, routing_failures

INTEGRATION_DIR = Path(__file__).parent / "integration"
_session_stack: list[TestStack] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration is an integration test, marked or not."""
    for item in items:
        if INTEGRATION_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack() -> Iterator[TestStack]:
    """A fresh broker and database on free ports, started once per session.

    If Kafka or PostgreSQL cannot start, every test that needs them errors with the reason:
    the integration suite is never silently skipped.
    """
    test_stack = TestStack()
    test_stack.start()  # raises StackError (with the component's log tail) on failure
    _session_stack.append(test_stack)
    try:
        yield test_stack
        # No test routes a record that makes the router fail: such a dead letter is a bug (a
        # record no test looked for would otherwise be lost to the run unseen).
        if failed := routing_failures(test_stack.settings):
            pytest.fail(f"the router failed to route records: {failed}")
    finally:
        _session_stack.clear()
        test_stack.stop()


@pytest.fixture(scope="module", autouse=True)
def services_end_with_their_module() -> Iterator[None]:
    """No service a module started outlives it, whatever its fixtures did.

    A module whose setup failed half-way once left a gateway and an event store running, and the
    next modules' event-store tests met a second consumer of their records.
    """
    started_before = len(_session_stack[0].services) if _session_stack else 0
    yield
    if _session_stack:
        _session_stack[0].stop_started_since(started_before)
