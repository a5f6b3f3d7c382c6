"""The topic catalogue (infra/kafka/topics.yaml) against the topic names the code uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from carebus.adapters.topic_admin import (
    PERSON_PARTITIONS,
    CataloguePlan,
    ExistingTopic,
    TopicCatalogueError,
    TopicSpec,
    load_catalogue,
    min_insync_replicas,
    plan_catalogue,
)
from carebus.wire import topics

CODE_TOPICS = {
    topics.EVENTS,
    topics.AUDIT,
    topics.ALERT_DISCLOSURES,
    topics.REFUSALS,
    topics.ALERTS,
    topics.OPERATOR_ALERTS,
    topics.DEADLETTER,
    topics.PERSONS,
    *topics.DELIVERIES,
}


def test_catalogue_covers_every_topic_in_the_code() -> None:
    """Every topic name in carebus/wire/topics.py has a catalogue entry, and nothing else does."""
    assert {spec.name for spec in load_catalogue()} == CODE_TOPICS


def test_person_scoped_topics_share_one_partition_count() -> None:
    """All topics are keyed by subject key, so all take the one shared partition count."""
    catalogue = load_catalogue()
    assert all(spec.person_scoped for spec in catalogue)
    assert {spec.partition_count(7) for spec in catalogue} == {7}


def test_production_settings_are_explicit() -> None:
    """Each entry names replication, cleanup policy, retention and min ISR."""
    for spec in load_catalogue():
        assert spec.replication_factor >= 3, spec.name
        assert {"cleanup.policy", "retention.ms", "min.insync.replicas"} <= set(spec.config)
        assert int(spec.config["min.insync.replicas"]) < spec.replication_factor, spec.name
        # What production runs follows the same rule the applier uses for any replication.
        want = min_insync_replicas(spec.replication_factor)
        assert spec.config["min.insync.replicas"] == str(want), spec.name


def test_min_insync_follows_the_replication() -> None:
    """min.insync.replicas is one less than the replication, at least 1, at most a majority."""
    assert [min_insync_replicas(r) for r in (1, 2, 3, 4, 5)] == [1, 1, 2, 3, 3]


def test_the_cluster_replication_applies_and_min_isr_follows_it() -> None:
    """A topic gets the cluster's replication, min ISR by the rule, every other config as
    catalogued: the catalogue says 3 and "2", a single-broker stack states replication 1."""
    spec = TopicSpec(
        "t", "", PERSON_PARTITIONS, 3, {"min.insync.replicas": "2", "retention.ms": "5"}
    )
    assert spec.for_cluster(1) == (1, {"min.insync.replicas": "1", "retention.ms": "5"})
    assert spec.for_cluster(3) == (3, {"min.insync.replicas": "2", "retention.ms": "5"})


SPECS = [
    TopicSpec("care.a.v1", "", PERSON_PARTITIONS, 3, {"min.insync.replicas": "2"}),
    TopicSpec("care.b.v1", "", PERSON_PARTITIONS, 3, {"min.insync.replicas": "2"}),
]


def _plan(existing: dict[str, ExistingTopic], *, replication: int, brokers: int) -> CataloguePlan:
    return plan_catalogue(
        SPECS, existing, replication=replication, brokers=brokers, person_partitions=4
    )


def test_fewer_brokers_than_the_replication_is_refused_not_lowered() -> None:
    """One broker and replication 3: a clear error saying what to do, never replication 1."""
    with pytest.raises(TopicCatalogueError) as refused:
        _plan({}, replication=3, brokers=1)
    message = str(refused.value)
    assert "1 broker(s), fewer than the configured replication 3" in message
    assert "CAREBUS_KAFKA_REPLICATION" in message
    assert "--brokers 3" in message


def test_an_under_replicated_existing_topic_is_refused() -> None:
    """A topic made with one replica is not left so on a three-broker cluster: an error names it."""
    existing = {"care.a.v1": ExistingTopic(4, 1, {"min.insync.replicas": "1"})}
    with pytest.raises(TopicCatalogueError, match=r"care\.a\.v1 has 1 replica\(s\), fewer"):
        _plan(existing, replication=3, brokers=3)


def test_a_higher_min_isr_is_not_lowered_silently() -> None:
    """Replication 1 on a topic that requires two in-sync replicas is refused, not lowered."""
    existing = {"care.a.v1": ExistingTopic(4, 3, {"min.insync.replicas": "2"})}
    with pytest.raises(TopicCatalogueError, match=r"min\.insync\.replicas=2, more than 1"):
        _plan(existing, replication=1, brokers=3)


def test_a_wrong_partition_count_is_refused() -> None:
    """Partitions are never added automatically (subject keys would move)."""
    existing = {"care.a.v1": ExistingTopic(8, 3, {"min.insync.replicas": "2"})}
    with pytest.raises(TopicCatalogueError, match=r"care\.a\.v1 has 8 partitions"):
        _plan(existing, replication=3, brokers=3)


def test_the_plan_creates_missing_topics_and_raises_min_isr() -> None:
    """Missing topics are created; an existing topic's min ISR is raised to the rule's."""
    existing = {"care.a.v1": ExistingTopic(4, 3, {"min.insync.replicas": "1"})}
    plan = _plan(existing, replication=3, brokers=3)
    assert [spec.name for spec in plan.create] == ["care.b.v1"]
    assert plan.alter == {"care.a.v1": {"min.insync.replicas": "2"}}
    assert plan.unchanged == []


def test_more_brokers_or_replicas_than_configured_are_fine() -> None:
    """Five brokers and a topic with three replicas at replication 3: nothing to change."""
    existing = {
        name: ExistingTopic(4, 3, {"min.insync.replicas": "2"})
        for name in ("care.a.v1", "care.b.v1")
    }
    plan = _plan(existing, replication=3, brokers=5)
    assert (plan.create, plan.alter, plan.unchanged) == ([], {}, ["care.a.v1", "care.b.v1"])


def test_a_malformed_entry_is_rejected_by_name(tmp_path: Path) -> None:
    """A bad partition count is an error naming the topic, not a silent default."""
    path = tmp_path / "topics.yaml"
    path.write_text("topics:\n  care.x.v1:\n    partitions: 0\n    replication_factor: 3\n")
    with pytest.raises(ValueError, match=r"care\.x\.v1"):
        load_catalogue(path)
