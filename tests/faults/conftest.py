"""Each fault scenario gets a fresh test stack of its own: a fault leaves marks (a restarted
broker, a database that was down) that the next scenario must not inherit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from carebus_dev.testing import TestStack


@pytest.fixture
def fault_stack() -> Iterator[TestStack]:
    """A single-broker stack and its database, started for one scenario and removed after it."""
    with TestStack() as stack:
        yield stack
