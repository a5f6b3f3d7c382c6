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
# The one setting that follows the cluster's replication; see the header of topics.yaml.
MIN_INSYNC = "min.insync.replicas"
REPLICATION_HINT = (
    "start as many brokers (`carebus up --brokers 3` locally), or set CAREBUS_KAFKA_REPLICATION "
    "to what the cluster has (1 only for a local single-broker stack)"
)


def min_insync_replicas(replication: int) -> int:
    """How many replicas must have a write before it is acknowledged (acks=all): one broker
    fewer than the replication, so one may be lost without refusing writes, yet never less
    than a majority of them, nor less than 1 (1 → 1, 3 → 2, 5 → 3)."""
    return max(1, min(replication - 1, replication // 2 + 1))


@dataclass(frozen=True)
class TopicSpec:
    """One catalogue entry with its production settings."""

    name: str
    description: str
    partitions: int | str  # a number, or PERSON_PARTITIONS for the shared per-person count
    replication_factor: int  # what production runs; the cluster's setting applies (for_cluster)
    config: Mapping[str, str] = field(default_factory=dict)

    @property
    def person_scoped(self) -> bool:
        return self.partitions == PERSON_PARTITIONS

    def partition_count(self, person_partitions: int) -> int:
        return person_partitions if self.person_scoped else int(self.partitions)

    def for_cluster(self, replication: int) -> tuple[int, dict[str, str]]:
        """Replication factor and configs at the cluster's `replication`: min.insync.replicas
        follows it, every other setting as catalogued."""
        config = dict(self.config)
        config[MIN_INSYNC] = str(min_insync_replicas(replication))
        return replication, config


@dataclass(frozen=True)
class ExistingTopic:
    """What the cluster has of a catalogued topic."""

    partitions: int
    replication: int  # the fewest replicas any of its partitions has
    config: Mapping[str, str]


@dataclass(frozen=True)
class CataloguePlan:
    """What applying the catalogue changes: topics to create and configs to set."""

    create: list[TopicSpec]
    alter: dict[str, dict[str, str]]
    unchanged: list[str]


def plan_catalogue(
    specs: Sequence[TopicSpec],
    existing: Mapping[str, ExistingTopic],
    *,
    replication: int,
    brokers: int,
    person_partitions: int,
) -> CataloguePlan:
    """What to change so the cluster has `specs` at `replication`; TopicCatalogueError (and
    nothing changed) where that would need lowering anything or changing a partition count.

    Nothing is lowered silently: a cluster with fewer brokers than `replication`, a topic with
    fewer replicas, or a topic whose min.insync.replicas is above the rule's is refused.
    """
    if brokers < replication:
        raise TopicCatalogueError(
            f"the Kafka cluster has {brokers} broker(s), fewer than the configured replication "
            f"{replication} (CAREBUS_KAFKA_REPLICATION); topics are never created with fewer "
            f"replicas than configured: {REPLICATION_HINT}. Nothing was changed."
        )
    problems = []
    for spec in specs:
        topic = existing.get(spec.name)
        if topic is None:
            continue
        want = spec.partition_count(person_partitions)
        if topic.partitions != want:
            problems.append(
                f"{spec.name} has {topic.partitions} partitions, the catalogue says {want} (not "
                "changed automatically, because that moves subject keys to other partitions)"
            )
        if topic.replication < replication:
            problems.append(
                f"{spec.name} has {topic.replication} replica(s), fewer than the configured "
                f"replication {replication} (raise it with kafka-reassign-partitions.sh, "
                'docs/operations.md "A cluster that survives a broker")'
            )
        have_insync = topic.config.get(MIN_INSYNC)
        want_insync = min_insync_replicas(replication)
        if have_insync is not None and int(have_insync) > want_insync:
            problems.append(
                f"{spec.name} has {MIN_INSYNC}={have_insync}, more than {want_insync} at "
                f"replication {replication} (not lowered automatically: {REPLICATION_HINT})"
            )
    if problems:
        raise TopicCatalogueError(
            "the cluster's topics do not match the catalogue; nothing was changed: "
            + "; ".join(problems)
        )
    alter: dict[str, dict[str, str]] = {}
    unchanged = []
    for spec in specs:
        topic = existing.get(spec.name)
        if topic is None:
            continue
        _, wanted = spec.for_cluster(replication)
        differing = {k: v for k, v in wanted.items() if topic.config.get(k) != v}
        if differing:
            alter[spec.name] = differing
        else:
            unchanged.append(spec.name)
    return CataloguePlan(
        create=[spec for spec in specs if spec.name not in existing],
        alter=alter,
        unchanged=unchanged,
    )


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
    """Create missing topics and align configs at `settings.kafka_replication`; return one
    report line per topic. What `plan_catalogue` refuses raises TopicCatalogueError."""
    specs = list(catalogue) if catalogue is not None else load_catalogue()
    replication = settings.kafka_replication
    admin = admin_client(settings)
    metadata = admin.list_topics(timeout=timeout_s)
    existing = _existing_topics(
        admin, metadata, [spec.name for spec in specs if spec.name in metadata.topics], timeout_s
    )
    plan = plan_catalogue(
        specs,
        existing,
        replication=replication,
        brokers=len(metadata.brokers),
        person_partitions=person_partitions,
    )
    report = _create(admin, plan.create, replication, person_partitions, timeout_s)
    for name, changes in plan.alter.items():
        resource = ConfigResource(
            ConfigResource.Type.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                for key, value in changes.items()
            ],
        )
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(timeout=timeout_s)
        listed = ", ".join(f"{key}={value}" for key, value in sorted(changes.items()))
        report.append(f"altered {name}: {listed}")
    report += [
        f"exists  {name} (partitions, replication and configs as catalogued)"
        for name in plan.unchanged
    ]
    _wait_for_leaders(admin, [spec.name for spec in specs], timeout_s)
    return report


def _existing_topics(
    admin: AdminClient, metadata: Any, names: Sequence[str], timeout_s: float
) -> dict[str, ExistingTopic]:
    if not names:
        return {}
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in names]
    described = admin.describe_configs(resources, request_timeout=timeout_s)
    existing = {}
    for resource, future in described.items():
        entries = future.result(timeout=timeout_s)
        partitions = metadata.topics[resource.name].partitions
        existing[resource.name] = ExistingTopic(
            partitions=len(partitions),
            replication=min((len(p.replicas) for p in partitions.values()), default=0),
            config={key: entry.value for key, entry in entries.items()},
        )
    return existing


def _create(
    admin: AdminClient,
    specs: Sequence[TopicSpec],
    replication: int,
    person_partitions: int,
    timeout_s: float,
) -> list[str]:
    if not specs:
        return []
    new_topics = []
    for spec in specs:
        _, config = spec.for_cluster(replication)
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
    return [
        f"created {spec.name} ({spec.partition_count(person_partitions)} partitions, "
        f"replication {replication}, {MIN_INSYNC} {min_insync_replicas(replication)})"
        for spec in specs
    ]


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
