"""The topic catalogue (infra/kafka/topics.yaml) against the topic names the code uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from carebus.adapters.topic_admin import PERSON_PARTITIONS, TopicSpec, load_catalogue
from carebus.wire import topics

CODE_TOPICS = {
    topics.EVENTS,
    topics.AUDIT,
    topics.ALERT_DISCLOSURES,
    topics.REFUSALS,
    topics.ALERTS,
    topics.OPERATOR_ALERTS,
    topics.DEADLETTER,
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


def test_a_single_broker_gets_replication_and_min_isr_of_one() -> None:
    """Locally the applier lowers replication and min ISR to what one broker can honour."""
    spec = TopicSpec(
        "t", "", PERSON_PARTITIONS, 3, {"min.insync.replicas": "2", "retention.ms": "5"}
    )
    assert spec.for_cluster(1) == (1, {"min.insync.replicas": "1", "retention.ms": "5"})
    assert spec.for_cluster(5) == (3, {"min.insync.replicas": "2", "retention.ms": "5"})


def test_a_malformed_entry_is_rejected_by_name(tmp_path: Path) -> None:
    """A bad partition count is an error naming the topic, not a silent default."""
    path = tmp_path / "topics.yaml"
    path.write_text("topics:\n  care.x.v1:\n    partitions: 0\n    replication_factor: 3\n")
    with pytest.raises(ValueError, match=r"care\.x\.v1"):
        load_catalogue(path)
