"""The topic catalogue (infra/kafka/topics.yaml): loading it and applying it to a cluster."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # re-exported without __all__
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from carebus.adapters.kafka import client_security, quiet_logger
from carebus.runtime.config import PROJECT_ROOT, Settings


class TopicCatalogueError(RuntimeError):
    """The topic catalogue could not be applied to the broker; the message says why."""


CATALOGUE = PROJECT_ROOT / "infra" / "kafka" / "topics.yaml"
PERSON_PARTITIONS = "person_partitions"
# Settings that depend on the cluster's size; see the header of topics.yaml.
MIN_INSYNC = "min.insync.replicas"


@dataclass(frozen=True)
class TopicSpec:
    """One catalogue entry with its production settings."""

    name: str
    description: str
    partitions: int | str  # a number, or PERSON_PARTITIONS for the shared per-person count
    replication_factor: int
    config: Mapping[str, str] = field(default_factory=dict)

    @property
    def person_scoped(self) -> bool:
        return self.partitions == PERSON_PARTITIONS

    def partition_count(self, person_partitions: int) -> int:
        return person_partitions if self.person_scoped else int(self.partitions)

    def for_cluster(self, brokers: int) -> tuple[int, dict[str, str]]:
        """Replication factor and configs this cluster can honour (smaller than 3 locally)."""
        replication = max(1, min(self.replication_factor, brokers))
        config = dict(self.config)
        if MIN_INSYNC in config:
            config[MIN_INSYNC] = str(min(int(config[MIN_INSYNC]), replication))
        return replication, config


def load_catalogue(path: Path = CATALOGUE) -> list[TopicSpec]:
    """Parse and check the catalogue; a malformed entry raises ValueError naming it."""
    raw: Any = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("topics"), dict):
        raise ValueError(f"{path}: expected a mapping with a 'topics' mapping")
    specs = []
    for name, entry in raw["topics"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: topic {name!r} must be a mapping")
        partitions: Any = entry.get("partitions")
        positive = isinstance(partitions, int) and partitions > 0
        if not (partitions == PERSON_PARTITIONS or positive):
            raise ValueError(
                f"{path}: topic {name!r}: partitions must be a positive number or "
                f"{PERSON_PARTITIONS!r}"
            )
        replication = entry.get("replication_factor")
        if not isinstance(replication, int) or replication < 1:
            raise ValueError(f"{path}: topic {name!r}: replication_factor must be >= 1")
        config = entry.get("config") or {}
        if not isinstance(config, dict):
            raise ValueError(f"{path}: topic {name!r}: config must be a mapping")
        specs.append(
            TopicSpec(
                name=str(name),
                description=str(entry.get("description", "")),
                partitions=partitions if positive else PERSON_PARTITIONS,
                replication_factor=replication,
                config={str(k): str(v) for k, v in config.items()},
            )
        )
    return specs


def admin_client(settings: Settings) -> AdminClient:
    """An admin client as the process's own principal (`carebus up`: the admin super user)."""
    return AdminClient(client_security(settings), logger=quiet_logger())


def apply_catalogue(
    settings: Settings,
    person_partitions: int,
    catalogue: Sequence[TopicSpec] | None = None,
    *,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create missing topics and align configs; return one report line per topic.

    An existing topic with another partition count is an error, not something to fix: adding
    partitions would move subject keys and break per-person ordering.
    """
    specs = list(catalogue) if catalogue is not None else load_catalogue()
    admin = admin_client(settings)
    metadata = admin.list_topics(timeout=timeout_s)
    brokers = len(metadata.brokers)
    report: list[str] = []

    missing = [spec for spec in specs if spec.name not in metadata.topics]
    if missing:
        new_topics = []
        for spec in missing:
            replication, config = spec.for_cluster(brokers)
            new_topics.append(
                NewTopic(
                    spec.name,
                    num_partitions=spec.partition_count(person_partitions),
                    replication_factor=replication,
                    config=config,
                )
            )
        futures = admin.create_topics(new_topics, operation_timeout=timeout_s)
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    message = f"creating topic {name} failed: {exc.args[0].str()}"
                    raise TopicCatalogueError(message) from exc
        for spec in missing:
            replication, _ = spec.for_cluster(brokers)
            report.append(
                f"created {spec.name} ({spec.partition_count(person_partitions)} partitions, "
                f"replication {replication})"
            )

    wrong_counts = []
    existing = [spec for spec in specs if spec.name in metadata.topics]
    for spec in existing:
        have = len(metadata.topics[spec.name].partitions)
        want = spec.partition_count(person_partitions)
        if have != want:
            wrong_counts.append(f"{spec.name} has {have} partitions, the catalogue says {want}")
    if wrong_counts:
        raise TopicCatalogueError(
            "topics with the wrong partition count (not changed automatically, because that "
            "moves subject keys to other partitions): " + "; ".join(wrong_counts)
        )
    report += _align_configs(admin, existing, brokers, timeout_s)
    _wait_for_leaders(admin, [spec.name for spec in specs], timeout_s)
    return report


def _align_configs(
    admin: AdminClient, specs: Sequence[TopicSpec], brokers: int, timeout_s: float
) -> list[str]:
    if not specs:
        return []
    resources = [ConfigResource(ConfigResource.Type.TOPIC, spec.name) for spec in specs]
    described = admin.describe_configs(resources, request_timeout=timeout_s)
    current: dict[str, dict[str, str]] = {}
    for resource, future in described.items():
        entries = future.result(timeout=timeout_s)
        current[resource.name] = {key: entry.value for key, entry in entries.items()}

    report = []
    for spec in specs:
        _, wanted = spec.for_cluster(brokers)
        differing = {
            key: value for key, value in wanted.items() if current[spec.name].get(key) != value
        }
        if not differing:
            report.append(f"exists  {spec.name} (partitions and configs as catalogued)")
            continue
        resource = ConfigResource(
            ConfigResource.Type.TOPIC,
            spec.name,
            incremental_configs=[
                ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                for key, value in differing.items()
            ],
        )
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(timeout=timeout_s)
        changes = ", ".join(f"{key}={value}" for key, value in sorted(differing.items()))
        report.append(f"altered {spec.name}: {changes}")
    return report


def _wait_for_leaders(admin: AdminClient, names: Sequence[str], timeout_s: float) -> None:
    """Block until every partition of `names` has a leader, so producers can use them at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = admin.list_topics(timeout=timeout_s)
        pending = [
            name
            for name in names
            if name not in metadata.topics
            or metadata.topics[name].error is not None
            or any(p.leader < 0 for p in metadata.topics[name].partitions.values())
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TopicCatalogueError(
                f"topics without a partition leader after {timeout_s:.0f} s: {pending}"
            )
        time.sleep(0.2)
