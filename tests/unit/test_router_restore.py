"""The router's core restores a lost person state from the registry's snapshot before routing,
and routes nothing until it holds every snapshot published before it started."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import orjson
import pytest

from carebus.adapters.deadletter import DeadLetterPolicy
from carebus.domain.policy import CATEGORIES
from carebus.domain.records import CONSENT_CHANGE
from carebus.domain.routing import PersonState, apply
from carebus.wire import topics
from services.router.app import Router
from tests.unit.fakes import CODEC, DeadLetterBroker, FakePublisher, StreamEvent, StreamRecord
from tests.unit.test_router_core import (
    KEY,
    MUNICIPALITY,
    NAV,
    NOW,
    POLICY,
    care_team,
    consent,
    disclosures_by_org,
    event,
)

pytestmark = pytest.mark.timeout(10)
YEAR = timedelta(days=365)


class FakeSnapshots:
    """Snapshots by subject key; `ready` says whether the initial read is done."""

    def __init__(self, held: dict[str, PersonState], *, ready: bool = True) -> None:
        self.held = dict(held)
        self.ready = asyncio.Event()
        if ready:
            self.ready.set()

    async def caught_up(self) -> None:
        await self.ready.wait()

    def take(self, subject_key: str) -> PersonState | None:
        return self.held.pop(subject_key, None)


def objection(org_id: str, at: Any, status: str = "objection") -> bytes:
    """A ConsentChange of `status` (an objection by default) for `org_id`, recorded at `at`."""
    return CODEC.encode(
        CONSENT_CHANGE,
        {
            "change_id": str(uuid.uuid4()),
            "subject_key": KEY,
            "recipient": {"agency": "nav", "org_id": org_id},
            "categories": list(CATEGORIES) if status == "given" else [],
            "status": status,
            "valid_from": at,
            "valid_to": None,
            "recorded_by": "the patient",
            "recorded_by_org": MUNICIPALITY,
            "recorded_at": at,
        },
    )


def given(org_id: str, at: Any) -> bytes:
    return objection(org_id, at, "given")


def registry_state(*values: bytes) -> PersonState:
    """The state the registry holds after `values` (its own fold, as it snapshots it)."""
    state = PersonState()
    for value in values:
        decoded = CODEC.decode(value)
        state = apply(state, decoded.schema_name, decoded.record)
    return state


def router_with(snapshots: FakeSnapshots) -> tuple[Router, dict[bytes, bytes], FakePublisher]:
    persons: dict[bytes, bytes] = {}
    publisher = FakePublisher([])
    router = Router(
        POLICY,
        CODEC,
        persons,
        publisher,
        DeadLetterPolicy(DeadLetterBroker(journal=[]), CODEC, "router"),
        snapshots,
    )
    return router, persons, publisher


def batch(*values: bytes) -> list[StreamEvent]:
    return [
        StreamEvent(StreamRecord(topics.EVENTS, 0, n, KEY.encode(), value))
        for n, value in enumerate(values)
    ]


async def test_a_lost_state_is_restored_and_a_year_old_objection_withholds() -> None:
    """Empty table (changelog lost, the consent records expired): the snapshot's objection is
    honoured and the withholding is audited; the restored state is written to the table."""
    snapshots = FakeSnapshots(
        {
            KEY: registry_state(
                care_team(NAV), given(NAV, NOW - 2 * YEAR), objection(NAV, NOW - YEAR)
            )
        }
    )
    router, persons, publisher = router_with(snapshots)
    await router.handle_batch(batch(event()))  # type: ignore[arg-type]

    decisions = disclosures_by_org(publisher.on(topics.AUDIT))
    assert decisions[NAV]["decision"] == "withheld"
    assert decisions[NAV]["reason"] == "objection"
    assert publisher.on(topics.deliveries("nav")) == []
    held = PersonState.from_json(orjson.loads(persons[KEY.encode()]))
    latest = held.latest_consent("nav", NAV)
    assert latest is not None
    assert latest.status == "objection"


async def test_a_stale_consent_replayed_after_the_restore_does_not_lift_the_objection() -> None:
    """Records the router replays after restoring (older than the snapshot) change nothing."""
    snapshots = FakeSnapshots(
        {
            KEY: registry_state(
                care_team(NAV), given(NAV, NOW - 2 * YEAR), objection(NAV, NOW - YEAR)
            )
        }
    )
    router, _, publisher = router_with(snapshots)
    await router.handle_batch(batch(given(NAV, NOW - 2 * YEAR), event()))  # type: ignore[arg-type]
    assert disclosures_by_org(publisher.on(topics.AUDIT))[NAV]["reason"] == "objection"


async def test_without_a_snapshot_the_router_routes_as_before() -> None:
    """A person the registry never snapshotted is folded from the stream alone."""
    router, _, publisher = router_with(FakeSnapshots({}))
    await router.handle_batch(batch(care_team(NAV), consent(NAV), event()))  # type: ignore[arg-type]
    assert disclosures_by_org(publisher.on(topics.AUDIT))[NAV]["decision"] == "delivered"


async def test_nothing_is_routed_before_the_snapshots_are_read() -> None:
    """Until the initial read is done the batch waits; then it is routed with the snapshot."""
    snapshots = FakeSnapshots(
        {KEY: registry_state(care_team(NAV), objection(NAV, NOW - YEAR))}, ready=False
    )
    router, _, publisher = router_with(snapshots)
    routing = asyncio.create_task(router.handle_batch(batch(event())))  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    assert not routing.done()
    assert publisher.attempts == []
    snapshots.ready.set()
    await routing
    assert disclosures_by_org(publisher.on(topics.AUDIT))[NAV]["reason"] == "objection"


async def test_a_held_state_keeps_its_team_and_takes_a_newer_objection() -> None:
    """The router holds a state (its changelog survived) with a consent; the snapshot carries a
    later objection: the objection is merged in, the held care team stands."""
    snapshots = FakeSnapshots({})
    router, persons, publisher = router_with(snapshots)
    await router.handle_batch(batch(care_team(NAV), given(NAV, NOW - 2 * YEAR)))  # type: ignore[arg-type]
    snapshots.held[KEY] = registry_state(objection(NAV, NOW - YEAR))
    await router.handle_batch(batch(event()))  # type: ignore[arg-type]
    assert disclosures_by_org(publisher.on(topics.AUDIT))[NAV]["reason"] == "objection"
    held = PersonState.from_json(orjson.loads(persons[KEY.encode()]))
    assert NAV in held.team
