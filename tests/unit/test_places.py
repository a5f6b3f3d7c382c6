"""Patterns at a place: the window over place entries, the k >= 2 rule, episodes and replays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from carebus.domain import windows
from carebus.domain.places import (
    PlaceOwners,
    PlaceState,
    Withdrawn,
    countable,
    entry,
    observe_place,
    place_key,
    place_of,
    withdraw,
)
from carebus.domain.records import AlertJson
from carebus.domain.sla import RuleSet, parse_duration
from carebus.runtime.config import PROJECT_ROOT
from carebus.wire.policy_files import load_rules

RULES: RuleSet = load_rules(PROJECT_ROOT / "policy" / "sla.yaml")
RULE = "place.repeated_incidents"
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
POLICE = "911111111"
HOUSING = "922222222"
MUNICIPALITY = "940493021"
OWNERS = PlaceOwners(owner_org=HOUSING, municipality_org=MUNICIPALITY)
SECRET = b"unit-test-secret"
KEY = place_key("site:KH-1", SECRET)


def event(
    event_type: str = "police_callout",
    *,
    at: datetime = T0,
    person: str = "a",
    number: int = 1,
    org: str = POLICE,
    **payload: Any,
) -> dict[str, Any]:
    agency = "police" if event_type == "police_callout" else "housing"
    return {
        "event_id": f"{agency}-{number}",
        "event_type": event_type,
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
        "source": {"agency": agency, "org_id": org, "system": None},
        "subject": {"nin": "not read"},
        "subject_key": f"key-{person}",
        "payload": {"housing_site_id": "KH-1", **payload},
        "emergency": None,
    }


def callouts(
    *persons: str, start: datetime = T0, every: timedelta = timedelta(hours=2)
) -> list[list[str]]:
    return [
        entry(event(at=start + i * every, person=person, number=i + 1), told=())
        for i, person in enumerate(persons)
    ]


def feed(
    state: PlaceState, entries: list[list[str]], owners: PlaceOwners | None = OWNERS
) -> list[AlertJson]:
    raised: list[AlertJson] = []
    for kept in entries:
        raised += observe_place(
            state, kept, "site:KH-1", KEY, owners, RULES, datetime.fromisoformat(kept[0])
        )
    return raised


def to(alerts: list[AlertJson]) -> list[str | None]:
    return [None if a["recipient"] is None else a["recipient"]["org_id"] for a in alerts]


def test_the_place_is_the_site_else_the_unit() -> None:
    """A site id names the place; without one the unit does; other events have no place."""
    assert place_of(event(housing_unit_id="KB-1")) == "site:KH-1"
    unit_only = event(housing_unit_id="KB-1")
    unit_only["payload"].pop("housing_site_id")
    assert place_of(unit_only) == "unit:KB-1"
    unit_only["payload"].pop("housing_unit_id")
    assert place_of(unit_only) is None
    assert place_of({**event(), "event_type": "admission"}) is None


def test_the_place_key_is_a_keyed_pseudonym_apart_from_subject_keys() -> None:
    """The key depends on the secret and is not the subject key of the same text."""
    from carebus.domain.identity import subject_key

    assert place_key("site:KH-1", SECRET) != place_key("site:KH-1", b"other")
    assert place_key("site:KH-1", SECRET) != place_key("site:KH-2", SECRET)
    assert place_key("site:KH-1", SECRET) != subject_key("site:KH-1", SECRET)
    assert "KH-1" not in place_key("site:KH-1", SECRET)


def test_three_callouts_of_three_persons_alert_the_owner_and_the_municipality() -> None:
    """One alert each, naming no person, saying whom to agree measures with."""
    alerts = feed(PlaceState(), callouts("a", "b", "c"))
    assert to(alerts) == [HOUSING, MUNICIPALITY]
    for alert in alerts:
        assert alert["subject"] is None
        assert alert["subject_key"] == f"place:{KEY}"
        assert alert["rule_id"] == RULE
        assert alert["event_ids"] == ["police-1", "police-2", "police-3"]
        assert "disclosure" not in alert
        assert "key-" not in alert["summary"]
        assert alert["rules_version"] == RULES.version
    assert alerts[0]["contact"] == {"agency": "municipality", "org_id": MUNICIPALITY}
    assert alerts[1]["contact"] == {"agency": "housing", "org_id": HOUSING}
    assert alerts[0]["summary"].startswith(
        f"3 events at housing site (place {KEY[:12]}) within P30D (police callouts 3), the "
        "latest at 2026-11-02 14:00 (Oslo). No person is named here. Agree on measures for the "
        f"site with municipality {MUNICIPALITY};"
    )


def test_two_events_are_not_a_pattern() -> None:
    """Below the count nothing is raised."""
    assert feed(PlaceState(), callouts("a", "b")) == []


def test_events_further_apart_than_the_window_do_not_count_together() -> None:
    """Three events spread over more than 30 days raise nothing."""
    assert feed(PlaceState(), callouts("a", "b", "c", every=timedelta(days=16))) == []


def test_one_persons_callouts_are_not_shown_to_whom_routing_did_not_tell() -> None:
    """k >= 2: three callouts of one resident disclose nothing to the owner or municipality."""
    assert feed(PlaceState(), callouts("a", "a", "a")) == []


def test_one_persons_events_count_for_whom_was_told_of_them() -> None:
    """With one person, an organisation counts what it reported or was delivered."""
    told = [entry(event(at=T0 + timedelta(hours=i), number=i), told=[HOUSING]) for i in (1, 2, 3)]
    assert to(feed(PlaceState(), told)) == [HOUSING]
    own = [
        entry(event("housing_incident", at=T0 + timedelta(hours=i), number=i, org=HOUSING), ())
        for i in (1, 2, 3)
    ]
    assert to(feed(PlaceState(), own)) == [HOUSING]


def test_a_second_person_makes_every_event_countable() -> None:
    """Two of a and one of b: the window holds two persons, so all three count for both."""
    assert to(feed(PlaceState(), callouts("a", "a", "b"))) == [HOUSING, MUNICIPALITY]


def test_countable_is_all_or_what_the_organisation_knows() -> None:
    """The pure k rule: all entries of two persons, else those the organisation knows."""
    one = callouts("a", "a")
    assert countable(one, HOUSING) == []
    assert countable(one, POLICE) == one  # its own callouts
    assert countable(one, None) == []
    two = callouts("a", "b")
    assert countable(two, None) == two


def test_one_alert_per_episode_and_a_new_one_after_it() -> None:
    """A fourth event within the episode raises nothing; three more 30 days on raise again."""
    state = PlaceState()
    assert len(feed(state, callouts("a", "b", "c"))) == 2
    assert feed(state, [entry(event(at=T0 + timedelta(days=1), number=4, person="d"), ())]) == []
    later = [
        entry(event(at=T0 + timedelta(days=40, hours=i), number=10 + i, person=p), ())
        for i, p in enumerate("abc")
    ]
    again = feed(state, later)
    assert to(again) == [HOUSING, MUNICIPALITY]
    assert again[0]["alert_id"] != feed(PlaceState(), callouts("a", "b", "c"))[0]["alert_id"]


def test_a_replay_raises_nothing_and_changes_nothing() -> None:
    """The same entries again: no alert, the same state; alert ids are deterministic."""
    state = PlaceState()
    first = feed(state, callouts("a", "b", "c"))
    before = state.to_json()
    assert feed(state, callouts("a", "b", "c")) == []
    assert state.to_json() == before
    assert [a["alert_id"] for a in feed(PlaceState(), callouts("a", "b", "c"))] == [
        a["alert_id"] for a in first
    ]


def test_the_state_survives_json() -> None:
    """A restart reads the stored state and goes on counting where it was."""
    state = PlaceState()
    feed(state, callouts("a", "b"))
    restored = PlaceState.from_json(state.to_json())
    assert to(feed(restored, callouts("a", "b", "c")[2:])) == [HOUSING, MUNICIPALITY]


def test_an_unregistered_place_with_only_police_reports_goes_to_the_operator() -> None:
    """No owner and no housing reporter: the unassigned queue, without the place's name."""
    alerts = feed(PlaceState(), callouts("a", "b", "c"), owners=None)
    assert to(alerts) == [None]
    assert alerts[0]["summary"].startswith(f"3 events at housing site (place {KEY[:12]}) within")
    assert "KH-1" not in alerts[0]["summary"]


def test_events_out_of_order_count_once_the_window_holds_them() -> None:
    """A late-arriving earlier event completes the window that ends at it."""
    entries = callouts("a", "b", "c")
    assert to(feed(PlaceState(), [entries[2], entries[0], entries[1]])) == [HOUSING, MUNICIPALITY]


@pytest.mark.parametrize("count", [2, 3, 4])
def test_the_window_functions_are_the_persons_too(count: int) -> None:
    """windows.episode: at least `count` counted, and none within the last episode."""
    window = parse_duration("P30D")
    entries = [[f"2026-11-0{i}T00:00:00Z", f"e{i}", "o"] for i in range(1, count + 1)]
    end = datetime(2026, 11, count, tzinfo=UTC)
    assert windows.episode(entries, count, window, end, None)
    assert not windows.episode(entries[:-1], count, window, end, None)
    assert not windows.episode(entries, count, window, end, "2026-10-20T00:00:00Z")
    assert windows.episode(entries, count, window, end, "2026-10-01T00:00:00Z")
    assert windows.add(entries, list(entries[0]), window) is None


def test_a_withdrawn_event_leaves_the_count_and_only_its_senders() -> None:
    """A retraction takes its sender's event out; another sender's event of the same id stays,
    and the place then needs a third event again."""
    state = PlaceState()
    feed(state, callouts("a", "b"))
    assert not withdraw(state, Withdrawn(HOUSING, "police-1"))
    assert withdraw(state, Withdrawn(POLICE, "police-1"))
    assert [e[1] for e in state.windows[RULE]["events"]] == ["police-2"]
    assert feed(state, callouts("a", "b", "c")[2:]) == []


def test_padding_with_made_up_persons_does_not_reveal_one_persons_callout() -> None:
    """Security review (HIGH): a housing organisation reports two incidents about two made-up
    persons; one police callout about a real person it was not told of does not count for it
    (what it was not told of covers one person), so it is shown nothing it did not know."""
    padding = [
        entry(event("housing_incident", at=T0, number=1, org=HOUSING, person="x"), ()),
        entry(event("housing_incident", at=T0, number=2, org=HOUSING, person="y"), ()),
    ]
    real = entry(event(at=T0 + timedelta(hours=1), number=3, person="a"), ())
    window = [*padding, real]
    assert countable(window, HOUSING) == padding
    alerts = feed(PlaceState(), window)
    assert HOUSING not in to(alerts)
    for alert in alerts:
        assert alert["recipient"] is not None or "police-3" not in alert["event_ids"]
    # The municipality was told of none of them: three persons among them, all count.
    assert to(alerts) == [MUNICIPALITY]
    assert alerts[0]["event_ids"] == ["housing-1", "housing-2", "police-3"]


def test_what_a_recipient_was_not_told_of_counts_over_two_persons_of_its_own() -> None:
    """Events a recipient was not told of count only when they alone cover two persons."""
    own = entry(event("housing_incident", at=T0, number=1, org=HOUSING, person="x"), ())
    one = callouts("a", "a", start=T0 + timedelta(hours=1))
    two = callouts("a", "b", start=T0 + timedelta(hours=1))
    told = entry(event(at=T0 + timedelta(hours=5), number=9, person="c"), told=[HOUSING])
    assert countable([own, *one], HOUSING) == [own]
    assert countable([own, *two], HOUSING) == [own, *two]
    assert countable([told, *one], HOUSING) == [told]
    assert countable([*one, told], None) == [*one, told]  # two persons, none told the operator
    assert countable(one, None) == []


def test_an_unregistered_place_never_makes_a_reporter_its_owner() -> None:
    """Security review (HIGH): at an unregistered place the owner role is the operator's
    queue, never a housing organisation that reported there (anyone could report)."""
    entries = [
        entry(event("housing_incident", at=T0, number=1, org=HOUSING, person="a"), ()),
        *callouts("b", "c", start=T0 + timedelta(hours=1)),
    ]
    alerts = feed(PlaceState(), entries, owners=None)
    assert to(alerts) == [None]
    assert alerts[0]["contact"] is None
    assert "POST /v1/housing-places" in alerts[0]["summary"]
    assert alerts[0]["event_ids"] == ["housing-1", "police-1", "police-2"]


def test_the_summary_names_the_place_by_its_key_never_its_id() -> None:
    """Security review: a site id may be an address; the summary gives the first 12 hex
    characters of the place key (POST /v1/housing-places returns the key to the owner)."""
    for owners in (OWNERS, None):
        alerts = feed(PlaceState(), callouts("a", "b", "c"), owners=owners)
        assert alerts
        for alert in alerts:
            assert "KH-1" not in alert["summary"]
            assert f"place {KEY[:12]}" in alert["summary"]


def test_the_stored_state_holds_no_clear_place() -> None:
    """Only the key names a place in sla_places; a row stored with the old `place` reads."""
    state = PlaceState()
    feed(state, callouts("a", "b"))
    assert "KH-1" not in repr(state.to_json())
    old = {"place": "site:KH-1", **state.to_json()}
    restored = PlaceState.from_json(old)
    assert "KH-1" not in repr(restored.to_json())
    assert to(feed(restored, callouts("a", "b", "c")[2:])) == [HOUSING, MUNICIPALITY]
