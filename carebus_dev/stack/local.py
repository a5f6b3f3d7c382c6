"""The whole local stack in dependency order: Kafka, PostgreSQL, migrations, topics, services."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from confluent_kafka import KafkaException

from carebus.adapters import db
from carebus.adapters.kafka import client_security
from carebus.adapters.kafka_acls import AclFileError
from carebus.adapters.topic_admin import (
    TopicCatalogueError,
    admin_client,
    apply_catalogue,
    load_catalogue,
    min_insync_replicas,
)
from carebus.runtime.config import Settings
from carebus_dev.stack import devdata
from carebus_dev.stack.kafka import KafkaCluster, NodePorts
from carebus_dev.stack.postgres import PostgresCluster
from carebus_dev.stack.process import StackError, is_alive, processes_mentioning
from carebus_dev.stack.prometheus import LocalPrometheus
from carebus_dev.stack.supervisor import (
    SERVICES,
    STACK_MARKER,
    service_state,
    start_service,
    stop_service,
)


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    state: str  # "up", "down" or "absent" (a service whose module does not exist yet)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state != "down"


def _silent(_: str) -> None:
    return None


class LocalStack:
    """Starts, inspects and stops every local component of one state directory."""

    def __init__(
        self,
        settings: Settings,
        *,
        durable: bool = True,
        libs_dir: Path | None = None,
        offsets_partitions: int = 50,
        echo: Callable[[str], None] = _silent,
        kafka_secure: bool = True,
        brokers: int | None = None,
        kafka_ports: list[NodePorts] | None = None,
    ) -> None:
        self.echo = echo
        # `brokers` Kafka nodes (None: as many as the last `up` of this state dir started, or
        # one); the settings it hands on name them all and the cluster's replication.
        self.kafka = KafkaCluster.from_settings(
            settings,
            brokers=brokers,
            ports=kafka_ports,
            libs_dir=libs_dir,
            offsets_partitions=offsets_partitions,
            secure=kafka_secure,
        )
        # The stack itself (topics, ACLs, status) speaks to the broker as its admin.
        self.settings = settings = self.kafka.admin_settings()
        self.postgres = PostgresCluster.from_settings(settings, durable=durable)
        # The stack (migrations, dev tokens, status) works as the database owner, with the
        # password the stack generates for it; the services log in as their own roles.
        self.settings = settings = settings.model_copy(
            update={"postgres_dsn": self.postgres.owner_dsn()}
        )
        self.prometheus = LocalPrometheus(settings)

    # -- up -----------------------------------------------------------------------------

    def start_infrastructure(self) -> None:
        """Kafka and PostgreSQL (started side by side), then migrations and topics."""
        with ThreadPoolExecutor(max_workers=2) as pool:
            kafka = pool.submit(self.kafka.start)
            postgres = pool.submit(self.postgres.start)
            # Both are awaited before either error is raised, so nothing is left half-started.
            errors = [f.exception() for f in (kafka, postgres)]
        for error in errors:
            if error is not None:
                raise error
        replication = self.settings.kafka_replication
        self.echo(
            f"kafka        {'started' if kafka.result() else 'running'} on {self.kafka.bootstrap} "
            f"({self.kafka.brokers} broker(s), replication {replication}, min.insync.replicas "
            f"{min_insync_replicas(replication)})"
        )
        self.echo(
            f"postgres     {'started' if postgres.result() else 'running'} on port "
            f"{self.postgres.dsn.port} (data in {self.postgres.data_dir})"
        )
        db.migrate(self.settings.postgres_dsn)
        self.echo(f"migrations   at {db.current_revision(self.settings.postgres_dsn)}")
        roles = self.postgres.ensure_login_roles([*(spec.name for spec in SERVICES), "operator"])
        self.echo(f"roles        {', '.join(roles)} (SCRAM, passwords in the state dir)")
        try:
            for line in apply_catalogue(self.settings, self.settings.person_partitions):
                self.echo(f"topic        {line}")
        except TopicCatalogueError as exc:
            raise StackError(str(exc)) from exc
        try:
            for line in self.kafka.apply_access():
                self.echo(f"kafka acls   {line}")
        except (KafkaException, AclFileError, TimeoutError) as exc:
            raise StackError(f"applying infra/kafka/acls.yaml failed: {exc}") from exc

    def up(self) -> None:
        """Start everything that is not running; return when every component is healthy."""
        self.start_infrastructure()
        try:
            devdata.ensure_dev_tokens(self.settings)
            self.echo(f"dev tokens   in {devdata.dev_tokens_path(self.settings)}")
        except StackError as exc:
            self.echo(f"dev tokens   skipped: {exc}")
        for spec in SERVICES:
            if not spec.available():
                self.echo(f"{spec.name:<12} skipped: module {spec.module} does not exist yet")
                continue
            started = start_service(spec, self.settings)
            where = spec.url(self.settings) or "no HTTP endpoint"
            self.echo(f"{spec.name:<12} {'started' if started else 'running'} ({where})")

    def start_prometheus(self) -> None:
        """Debian's Prometheus scraping this stack with the production alert rules."""
        started = self.prometheus.start()
        self.echo(
            f"prometheus   {'started' if started else 'reloaded'} ({self.prometheus.url}, "
            f"config {self.prometheus.config_path})"
        )

    # -- down ---------------------------------------------------------------------------

    def down(self) -> list[int]:
        """Stop services, Kafka and PostgreSQL; return pids that had to be killed afterwards."""
        if self.prometheus.stop():
            self.echo("prometheus   stopped")
        for spec in reversed(SERVICES):
            if stop_service(spec, self.settings):
                self.echo(f"{spec.name:<12} stopped")
        if self.kafka.stop():
            self.echo("kafka        stopped")
        if self.postgres.stop():
            self.echo("postgres     stopped")
        leftovers = self.leftover_processes()
        for pid in leftovers:
            self.echo(f"killing leftover process {pid}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        return leftovers

    def leftover_processes(self) -> list[int]:
        """Live processes of this stack: the broker, the postmaster, anything we started."""
        found = processes_mentioning(
            [*self.kafka.config_paths(), str(self.postgres.data_dir)],
            marker_env=f"{STACK_MARKER}={self.settings.state_dir}",
        )
        postmaster = self.postgres.postmaster_pid()
        if postmaster is not None and postmaster not in found:
            found.append(postmaster)
        return [pid for pid in found if is_alive(pid)]

    # -- status -------------------------------------------------------------------------

    def status(self) -> list[ComponentStatus]:
        components = [self._kafka_status(), self._postgres_status()]
        components.append(self._migrations_status(components[1].ok))
        components.append(self._topics_status(components[0].ok))
        tokens = devdata.read_dev_tokens(self.settings)
        components.append(
            ComponentStatus(
                "dev tokens",
                "up" if tokens else "down",
                str(devdata.dev_tokens_path(self.settings)) if tokens else "not created",
            )
        )
        available = [spec for spec in SERVICES if spec.available()]
        # Asked side by side: a service that answers late is asked again (service_state).
        with ThreadPoolExecutor(max_workers=max(1, len(available))) as pool:
            states = dict(
                zip(
                    (spec.name for spec in available),
                    pool.map(lambda spec: service_state(spec, self.settings), available),
                    strict=True,
                )
            )
        for spec in SERVICES:
            if spec.name not in states:
                components.append(
                    ComponentStatus(spec.name, "absent", f"{spec.module} not written yet")
                )
                continue
            healthy, detail = states[spec.name]
            components.append(ComponentStatus(spec.name, "up" if healthy else "down", detail))
        if self.prometheus.is_running():
            ready = self.prometheus.ready()
            components.append(
                ComponentStatus(
                    "prometheus",
                    "up" if ready else "down",
                    self.prometheus.url if ready else "running, but not ready",
                )
            )
        return components

    def status_document(self, components: list[ComponentStatus] | None = None) -> dict[str, Any]:
        """The `carebus status --json` contract (DESIGN.md, HTTP contract); with `components`
        (what `status()` found), also each one's state under `"components"`."""
        services = {
            spec.name: spec.url(self.settings)
            for spec in SERVICES
            if spec.port_setting is not None and spec.available()
        }
        # Every component's /metrics, on its internal metrics port (what Prometheus scrapes).
        scraped = {
            spec.name: url
            for spec in SERVICES
            if spec.available() and (url := spec.metrics_url(self.settings)) is not None
        }
        if "adapters" in services:
            # The adapters' second listener: HL7 v2 over MLLP (TCP, not HTTP).
            services["mllp"] = f"tcp://{self.settings.http_host}:{self.settings.mllp_port}"
        if self.prometheus.is_running():
            services["prometheus"] = self.prometheus.url
            scraped["prometheus"] = f"{self.prometheus.url}/metrics"
        return {
            "services": services,
            "metrics": scraped,
            "kafka": self.settings.kafka_bootstrap,
            # Each broker of the local cluster (one, or three with `carebus up --brokers 3`).
            "kafka_brokers": self.kafka.addresses,
            # The broker refuses clients without credentials: this is the librdkafka
            # configuration (bootstrap, SASL_SSL, the local CA) of the stack's admin principal,
            # for a developer's tools, like the dev tokens. Local development only.
            "kafka_client": client_security(self.settings),
            "postgres": self.settings.postgres_dsn,
            "dev_tokens": devdata.read_dev_tokens(self.settings) or {},
        } | (
            {
                "components": {
                    component.name: {"state": component.state, "detail": component.detail}
                    for component in components
                }
            }
            if components is not None
            else {}
        )

    def _kafka_status(self) -> ComponentStatus:
        if not self.kafka.is_running():
            return ComponentStatus("kafka", "down", "not running")
        silent = [node.bootstrap for node in self.kafka.nodes if not node.healthy(5.0)]
        if silent:
            return ComponentStatus("kafka", "down", f"running, but {', '.join(silent)} silent")
        return ComponentStatus("kafka", "up", self.kafka.bootstrap)

    def _postgres_status(self) -> ComponentStatus:
        if not self.postgres.is_running():
            return ComponentStatus("postgres", "down", "not running")
        if not self.postgres.healthy():
            return ComponentStatus("postgres", "down", "running, but refuses connections")
        return ComponentStatus("postgres", "up", self.settings.postgres_dsn)

    def _migrations_status(self, postgres_up: bool) -> ComponentStatus:
        if not postgres_up:
            return ComponentStatus("migrations", "down", "PostgreSQL is down")
        head = db.head_revision()
        try:
            current = db.current_revision(self.settings.postgres_dsn)
        except sqlalchemy.exc.SQLAlchemyError:
            return ComponentStatus("migrations", "down", "database unreachable")
        state = "up" if current == head else "down"
        return ComponentStatus("migrations", state, f"at {current}, head {head}")

    def _topics_status(self, kafka_up: bool) -> ComponentStatus:
        if not kafka_up:
            return ComponentStatus("topics", "down", "Kafka is down")
        metadata = admin_client(self.settings).list_topics(timeout=5)
        problems = []
        catalogue = load_catalogue()
        for spec in catalogue:
            want = spec.partition_count(self.settings.person_partitions)
            topic = metadata.topics.get(spec.name)
            if topic is None:
                problems.append(f"{spec.name} missing")
            elif len(topic.partitions) != want:
                problems.append(f"{spec.name} has {len(topic.partitions)} partitions, not {want}")
        if problems:
            return ComponentStatus("topics", "down", "; ".join(problems))
        return ComponentStatus("topics", "up", f"{len(catalogue)} topics as catalogued")
