"""The local Kafka cluster: one or three KRaft nodes (combined broker + controller) from Maven
Central jars."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Final

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from carebus.adapters.kafka import client_security, quiet_logger
from carebus.adapters.kafka_acls import apply_access, load_grants, principals
from carebus.adapters.topic_admin import admin_client, min_insync_replicas
from carebus.runtime.config import PROJECT_ROOT, Settings
from carebus_dev.stack.kafka_pki import LocalPki
from carebus_dev.stack.process import (
    StackError,
    is_alive,
    running,
    start_until_ready,
    stop_recorded,
    tail,
)

KAFKA_INFRA = PROJECT_ROOT / "infra" / "kafka"
POM = KAFKA_INFRA / "pom.xml"
SERVER_PROPERTIES = KAFKA_INFRA / "server.properties"
# What goes in place of server.properties' security placeholder: always SASL_SSL, but for the
# plaintext broker `make bench` measures TLS and SASL against.
SECURITY_PROPERTIES = {
    True: KAFKA_INFRA / "security-sasl-ssl.properties",
    False: KAFKA_INFRA / "security-plaintext.properties",
}
LOG4J2 = KAFKA_INFRA / "log4j2.xml"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
COMPLETE_MARKER = ".complete"


def default_libs_dir(settings: Settings) -> Path:
    return settings.state_dir / "kafka" / "libs"


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def libs_complete(libs_dir: Path) -> bool:
    marker = libs_dir / COMPLETE_MARKER
    return marker.is_file() and marker.read_text().strip() == _pom_digest()


def fetch_libs(libs_dir: Path) -> bool:
    """Copy the broker's jars from Maven Central into `libs_dir` once; True if it fetched.

    The marker file records the pom's digest, so changing the pom fetches again. A lock
    keeps a test session and `carebus up` from fetching into the same place at once, and the
    jars land in a temporary directory first so an interrupted fetch never looks complete.
    """
    if libs_complete(libs_dir):
        return False
    libs_dir.parent.mkdir(parents=True, exist_ok=True)
    with (libs_dir.parent / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if libs_complete(libs_dir):
            return False
        if shutil.which("mvn") is None:
            raise StackError(
                "Maven (mvn) is not installed; it fetches the Kafka jars. "
                "Install it with `apt-get install -y --no-install-recommends maven` "
                "(or run `make run`, which does)."
            )
        staging = libs_dir.parent / f".libs-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        result = subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(POM),
                DEPENDENCY_PLUGIN,
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not any(staging.glob("kafka_*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            output = (result.stdout + result.stderr).strip().splitlines()[-20:]
            raise StackError(
                f"fetching the Kafka jars with Maven failed (exit {result.returncode}):\n"
                + "\n".join(output)
            )
        shutil.rmtree(libs_dir, ignore_errors=True)
        staging.replace(libs_dir)
        (libs_dir / COMPLETE_MARKER).write_text(_pom_digest() + "\n")
        return True


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError(
            "Java is not installed; the local Kafka broker needs it. Install it with "
            "`apt-get install -y --no-install-recommends default-jre-headless` "
            "(or run `make run`, which does)."
        )
    return java


def new_cluster_id() -> str:
    """A random cluster id the way Kafka makes them: URL-safe base64 of a UUID, no padding.

    Like Kafka's Uuid.randomUuid(), never one that starts with '-': the storage tool's
    argument parser would take it for an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout_s):
        return True
    return False


def broker_answers(settings: Settings, timeout_s: float = 5.0) -> bool:
    """Whether the broker answers `settings`' principal a metadata request with a broker in it."""
    admin = AdminClient(client_security(settings), logger=quiet_logger())
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except Exception:  # any failure means "not answering"
        return False
    return bool(metadata.brokers)


# The two principals that exist before the broker starts (SCRAM records written at format time):
# the node itself (inter-broker) and the admin `carebus up` uses for everything else.
BROKER_USER: Final = "broker"
ADMIN_USER: Final = "admin"
SECURITY_MARKER: Final = "formatted-security"
SECURITY: Final = "SASL_SSL"


@dataclass(frozen=True)
class KafkaCredentials:
    """One random SCRAM password per principal, kept 0600 in the state directory.

    Made once; a principal added to acls.yaml later gets its password on the next `up`.
    """

    path: Path

    @classmethod
    def of(cls, settings: Settings) -> KafkaCredentials:
        return cls(settings.state_dir / "kafka" / "credentials.json")

    def ensure(self) -> dict[str, str]:
        wanted = [BROKER_USER, ADMIN_USER, *principals(load_grants())]
        known = self.read()
        missing = [name for name in wanted if name not in known]
        if missing:
            # token_urlsafe: no `,` `]` or `"`, which the storage tool's --add-scram cannot take.
            known.update({name: secrets.token_urlsafe(24) for name in missing})
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch(mode=0o600, exist_ok=True)
            self.path.chmod(0o600)
            self.path.write_text(json.dumps(known, indent=2) + "\n")
        return known

    def read(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        data = json.loads(self.path.read_text())
        return {str(k): str(v) for k, v in data.items()}


def principal_settings(
    settings: Settings, principal: str, password: str, ca_file: Path
) -> Settings:
    """`settings` for a process that speaks to the local broker as `principal`."""
    return settings.model_copy(
        update={
            "kafka_security_protocol": SECURITY,
            "kafka_username": principal,
            "kafka_password": SecretStr(password),
            "kafka_ca_file": ca_file,
        }
    )


@dataclass(frozen=True)
class NodePorts:
    """A node's two listeners on 127.0.0.1: clients and brokers, and the controller quorum."""

    broker: int
    controller: int


@dataclass
class KafkaBroker:
    """One KRaft node (broker + controller) on 127.0.0.1 with its data and pid file under
    `state_dir`: alone (a standalone quorum) or one of a cluster's voters (`peers`)."""

    settings: Settings
    libs_dir: Path
    broker_port: int
    controller_port: int
    heap_mb: int = 512
    # The consumer-offsets topic is created on the first group join; 50 partitions (Kafka's
    # default) take a few seconds on one broker, which tests do not need to wait for.
    offsets_partitions: int = 50
    # False only for `make bench`'s plaintext baseline: no authentication, TLS or ACLs.
    secure: bool = True
    node_id: int = 1
    # Every node of a cluster, this one included; empty: a single node, its own quorum.
    peers: tuple[NodePorts, ...] = ()
    # The cluster id all nodes of a cluster are formatted with (a single node makes its own).
    cluster_id: str | None = None

    @property
    def clustered(self) -> bool:
        return bool(self.peers)

    @property
    def replication(self) -> int:
        return max(1, len(self.peers))

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    @property
    def kafka_dir(self) -> Path:
        """What the nodes share: jars, the local CA, the SCRAM passwords."""
        return self.state_dir / "kafka"

    @property
    def home(self) -> Path:
        # A single node keeps the layout it always had; a cluster's nodes one directory each.
        if not self.clustered:
            return self.kafka_dir
        return self.kafka_dir / "nodes" / f"node-{self.node_id}"

    @property
    def pki(self) -> LocalPki:
        return LocalPki(self.kafka_dir / "pki")

    @property
    def credentials(self) -> KafkaCredentials:
        return KafkaCredentials.of(self.settings)

    def settings_for(self, principal: str) -> Settings:
        """Settings that speak to this node as `principal` (made on first use)."""
        if not self.secure:
            return self.settings
        passwords = self.credentials.ensure()
        if principal not in passwords:
            raise StackError(f"{principal!r} is not a Kafka principal of infra/kafka/acls.yaml")
        return principal_settings(self.settings, principal, passwords[principal], self.pki.ca_file)

    def admin_settings(self) -> Settings:
        return self.settings_for(ADMIN_USER)

    def node_admin_settings(self) -> Settings:
        """The admin's settings bootstrapped to this node alone (its own health)."""
        return self.admin_settings().model_copy(update={"kafka_bootstrap": self.bootstrap})

    @property
    def config_path(self) -> Path:
        return self.home / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def pid_path(self) -> Path:
        suffix = f"-{self.node_id}" if self.clustered else ""
        return self.state_dir / "run" / f"kafka{suffix}.pid"

    @property
    def log_path(self) -> Path:
        suffix = f"-{self.node_id}" if self.clustered else ""
        return self.state_dir / "logs" / f"kafka{suffix}.log"

    def is_running(self) -> bool:
        return running(self.pid_path) is not None

    def answers(self, timeout_s: float = 5.0) -> bool:
        """Whether this node answers a metadata request that lists it as a live broker."""
        if not port_open("127.0.0.1", self.broker_port):
            return False
        admin = AdminClient(client_security(self.node_admin_settings()), logger=quiet_logger())
        try:
            metadata = admin.list_topics(timeout=timeout_s)
        except Exception:  # any failure means "not answering"
            return False
        return self.node_id in metadata.brokers

    def healthy(self, timeout_s: float = 5.0) -> bool:
        return self.is_running() and self.answers(timeout_s)

    def start(self, *, timeout_s: float = 120.0) -> bool:
        """Start the node unless it runs; return once it answers metadata. True if started."""
        if self.is_running():
            self.wait_ready(timeout_s)
            return False
        java = require_java()
        fetch_libs(self.libs_dir)
        for port in (self.broker_port, self.controller_port):
            if port_open("127.0.0.1", port):
                raise StackError(
                    f"port {port} on 127.0.0.1 is taken by another process, so the local Kafka "
                    "broker cannot start; stop that process or choose other ports "
                    "(CAREBUS_KAFKA_BOOTSTRAP, CAREBUS_KAFKA_CONTROLLER_PORT)"
                )
        passwords: dict[str, str] = {}
        if self.secure:
            self.pki.ensure()
            passwords = self.credentials.ensure()
        self._write_config(passwords.get(BROKER_USER, ""))
        self._format_storage(java, passwords)
        start_until_ready(
            f"Kafka node {self.node_id}",
            [
                java,
                f"-Xms{self.heap_mb}m",
                f"-Xmx{self.heap_mb}m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={LOG4J2}",
                "-cp",
                f"{self.libs_dir}/*",
                "kafka.Kafka",
                str(self.config_path),
            ],
            self.answers,
            log_path=self.log_path,
            pid_path=self.pid_path,
            timeout_s=timeout_s,
            cwd=self.home,
        )
        return True

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_running():
                raise StackError(
                    f"Kafka node {self.node_id} exited while starting; last lines of "
                    f"{self.log_path}:\n" + tail(self.log_path, 30)
                )
            if self.answers():
                return
            time.sleep(0.25)
        raise StackError(
            f"Kafka node {self.node_id} did not answer a metadata request on {self.bootstrap} "
            f"within {timeout_s:.0f} s; last lines of {self.log_path}:\n" + tail(self.log_path, 30)
        )

    def stop(self, *, timeout_s: float = 30.0) -> bool:
        """Stop the node (controlled shutdown, killed after `timeout_s`). True if it ran."""
        return stop_recorded(self.pid_path, timeout_s=timeout_s)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the node's process group (a crash, for fault tests)."""
        record = running(self.pid_path)
        if record is None:
            raise StackError(f"Kafka node {self.node_id} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pgid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            deadline = time.monotonic() + 30.0
            while is_alive(record.pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    def _quorum(self) -> str:
        """The quorum line of server.properties: standalone alone, static voters in a cluster."""
        if not self.clustered:
            # The storage is formatted with `--standalone`: this node bootstraps the quorum.
            return f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}"
        voters = ",".join(
            f"{index}@127.0.0.1:{peer.controller}" for index, peer in enumerate(self.peers, 1)
        )
        return f"controller.quorum.voters={voters}"

    def _write_config(self, broker_password: str) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        template = Template(SERVER_PROPERTIES.read_text())
        # It holds the broker's own password: readable by this user only.
        self.config_path.touch(mode=0o600, exist_ok=True)
        self.config_path.chmod(0o600)
        security = Template(SECURITY_PROPERTIES[self.secure].read_text()).substitute(
            broker_port=self.broker_port,
            controller_port=self.controller_port,
            broker_password=broker_password,
            broker_pem=self.pki.broker_file,
            ca_pem=self.pki.ca_file,
        )
        self.config_path.write_text(
            template.substitute(
                node_id=self.node_id,
                quorum=self._quorum(),
                log_dirs=self.data_dir,
                offsets_partitions=self.offsets_partitions,
                replication=self.replication,
                min_insync=min_insync_replicas(self.replication),
                security=security,
            )
        )

    def _format_storage(self, java: str, passwords: dict[str, str]) -> None:
        # A single node remembers its controller port, a cluster's node the whole voter list.
        formatted_for = self.home / ("formatted-quorum" if self.clustered else FORMATTED_PORT)
        quorum = self._quorum() if self.clustered else str(self.controller_port)
        security = self.home / SECURITY_MARKER
        mode = SECURITY if self.secure else "PLAINTEXT"
        formatted = security.read_text().strip() if security.exists() else "PLAINTEXT"
        if (self.data_dir / "meta.properties").exists() and formatted != mode:
            # Formatted by a carebus that ran Kafka in plain text: it holds no SCRAM credential
            # for the node itself, so the secured broker could not even register. Local topics
            # are disposable (the stores keep what was consumed); format afresh.
            shutil.rmtree(self.data_dir)
        if (self.data_dir / "meta.properties").exists():
            # The quorum is stored in the first snapshot; a node formatted for other controller
            # ports would wait forever for controllers that do not exist.
            previous = formatted_for.read_text().strip() if formatted_for.exists() else ""
            if previous and previous != quorum:
                raise StackError(
                    f"the Kafka data in {self.data_dir} was formatted for another controller "
                    f"quorum ({previous}, not {quorum}); set CAREBUS_KAFKA_BOOTSTRAP and "
                    f"CAREBUS_KAFKA_CONTROLLER_PORT back or remove {self.data_dir} (this "
                    "deletes the local topics)"
                )
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [
                java,
                f"-Dlog4j2.configurationFile={LOG4J2}",
                "-cp",
                f"{self.libs_dir}/*",
                "kafka.tools.StorageTool",
                "format",
                # A cluster's voters are static (controller.quorum.voters): no quorum flag.
                *([] if self.clustered else ["--standalone"]),
                "-t",
                self.cluster_id or new_cluster_id(),
                "-c",
                str(self.config_path),
                # The node's own and the admin's SCRAM credentials must exist before it starts;
                # every component's principal is added by the admin afterwards.
                *[
                    arg
                    for user in (BROKER_USER, ADMIN_USER)
                    if user in passwords
                    for arg in (
                        "--add-scram",
                        f"SCRAM-SHA-512=[name={user},password={passwords[user]}]",
                    )
                ],
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(
                f"formatting the Kafka storage in {self.data_dir} failed "
                f"(exit {result.returncode}):\n{(result.stdout + result.stderr).strip()[-2000:]}"
            )
        formatted_for.write_text(f"{quorum}\n")
        security.write_text(f"{mode}\n")


FORMATTED_PORT: Final = "formatted-controller-port"
# How many nodes `carebus up` last started in a state directory, so `status`, `down` and the
# next `up` find the same cluster.
LAYOUT_FILE: Final = "cluster.json"
SUPPORTED_BROKERS: Final = (1, 3)


def recorded_brokers(settings: Settings) -> int | None:
    """The broker count the last `carebus up` of `settings.state_dir` started, if any."""
    path = settings.state_dir / "kafka" / LAYOUT_FILE
    if not path.exists():
        return None
    return int(json.loads(path.read_text())["brokers"])


def node_ports(settings: Settings, brokers: int) -> list[NodePorts]:
    """Each node's ports: node 1 from the settings, node n two ports on per node.

    CAREBUS_KAFKA_BOOTSTRAP may list every node (127.0.0.1:a,127.0.0.1:b,...) instead.
    """
    listed = [part.strip() for part in settings.kafka_bootstrap.split(",") if part.strip()]
    broker_ports = []
    for address in listed:
        host, _, port = address.rpartition(":")
        if host not in ("127.0.0.1", "localhost") or not port.isdigit():
            raise StackError(
                f"CAREBUS_KAFKA_BOOTSTRAP must be 127.0.0.1:<port> for the local broker, "
                f"not {settings.kafka_bootstrap!r}"
            )
        broker_ports.append(int(port))
    first, controller = broker_ports[0], settings.kafka_controller_port
    if len(broker_ports) != brokers:
        broker_ports = [first + 2 * index for index in range(brokers)]
    ports = [NodePorts(broker_ports[index], controller + 2 * index) for index in range(brokers)]
    every = [port for node in ports for port in (node.broker, node.controller)]
    if len(set(every)) != len(every):
        raise StackError(
            f"the ports of {brokers} local Kafka nodes collide ({every}); choose a "
            "CAREBUS_KAFKA_CONTROLLER_PORT away from CAREBUS_KAFKA_BOOTSTRAP's port"
        )
    return ports


class KafkaCluster:
    """The local Kafka cluster: one node, or three voters with replication 3 and
    min.insync.replicas 2, sharing one CA, one set of SCRAM credentials and one ACL set."""

    def __init__(
        self,
        settings: Settings,
        ports: list[NodePorts],
        *,
        libs_dir: Path | None = None,
        offsets_partitions: int = 50,
        secure: bool = True,
        heap_mb: int | None = None,
    ) -> None:
        if len(ports) not in SUPPORTED_BROKERS:
            raise StackError(
                f"the local Kafka cluster has 1 or 3 brokers, not {len(ports)} (--brokers)"
            )
        clustered = len(ports) > 1
        bootstrap = ",".join(f"127.0.0.1:{node.broker}" for node in ports)
        # Every client gets every node to bootstrap from, and the cluster's replication.
        self.settings = settings.model_copy(
            update={"kafka_bootstrap": bootstrap, "kafka_replication": len(ports)}
        )
        self.nodes = [
            KafkaBroker(
                settings=self.settings,
                libs_dir=libs_dir or default_libs_dir(settings),
                broker_port=node.broker,
                controller_port=node.controller,
                # Three JVMs on a two-core, small box: each gets less than one alone.
                heap_mb=heap_mb or (384 if clustered else 512),
                offsets_partitions=offsets_partitions,
                secure=secure,
                node_id=index,
                peers=tuple(ports) if clustered else (),
                cluster_id=self._cluster_id(settings) if clustered else None,
            )
            for index, node in enumerate(ports, 1)
        ]

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        brokers: int | None = None,
        ports: list[NodePorts] | None = None,
        libs_dir: Path | None = None,
        offsets_partitions: int = 50,
        secure: bool = True,
    ) -> KafkaCluster:
        """The cluster of `settings.state_dir`: `brokers` nodes, or as many as last started,
        on `ports` (a test's free ports) or on the ports `node_ports` derives from `settings`."""
        count = len(ports) if ports else brokers or recorded_brokers(settings) or 1
        return cls(
            settings,
            ports or node_ports(settings, count),
            libs_dir=libs_dir,
            offsets_partitions=offsets_partitions,
            secure=secure,
        )

    @staticmethod
    def _cluster_id(settings: Settings) -> str:
        path = settings.state_dir / "kafka" / "nodes" / "cluster-id"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(new_cluster_id() + "\n")
        return path.read_text().strip()

    # -- what callers of the single broker used ------------------------------------------

    @property
    def first(self) -> KafkaBroker:
        return self.nodes[0]

    @property
    def brokers(self) -> int:
        return len(self.nodes)

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap

    @property
    def addresses(self) -> list[str]:
        return [node.bootstrap for node in self.nodes]

    @property
    def home(self) -> Path:
        return self.first.kafka_dir

    @property
    def pki(self) -> LocalPki:
        return self.first.pki

    @property
    def credentials(self) -> KafkaCredentials:
        return self.first.credentials

    @property
    def pid_path(self) -> Path:
        return self.first.pid_path

    @property
    def log_path(self) -> Path:
        return self.first.log_path

    @property
    def config_path(self) -> Path:
        return self.first.config_path

    def settings_for(self, principal: str) -> Settings:
        return self.first.settings_for(principal)

    def admin_settings(self) -> Settings:
        return self.first.admin_settings()

    # -- lifecycle ----------------------------------------------------------------------

    def is_running(self) -> bool:
        return any(node.is_running() for node in self.nodes)

    def start(self, *, timeout_s: float = 120.0) -> bool:
        """Start every node that is not running, side by side (a quorum of three elects a
        leader only once two run); return when the cluster lists all. True if any started."""
        self._refuse_other_layout()
        if self.first.secure:
            # The nodes share one CA, broker certificate and credential file: made here once,
            # before the nodes start side by side (each would otherwise write them while another
            # reads them half-written).
            self.first.pki.ensure()
            self.first.credentials.ensure()
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            futures = [pool.submit(node.start, timeout_s=timeout_s) for node in self.nodes]
            errors = [future.exception() for future in futures]
        for error in errors:
            if error is not None:
                raise error
        self.wait_for_brokers(timeout_s)
        layout = self.home / LAYOUT_FILE
        layout.write_text(json.dumps({"brokers": self.brokers, "bootstrap": self.bootstrap}) + "\n")
        return any(future.result() for future in futures)

    def stop(self, *, timeout_s: float = 30.0) -> bool:
        """Stop every node (and a node of the other layout left running). True if any ran."""
        pid_paths = sorted((self.first.state_dir / "run").glob("kafka*.pid"))
        if not pid_paths:
            return False
        # Side by side: stopped one after another, the last nodes would lose the quorum their
        # controlled shutdown waits for, and be killed only after `timeout_s`.
        with ThreadPoolExecutor(max_workers=len(pid_paths)) as pool:
            ran = list(pool.map(lambda path: stop_recorded(path, timeout_s=timeout_s), pid_paths))
        return any(ran)

    def kill_node(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to node `index` (0-based) without a controlled shutdown."""
        self._node(index).kill(sig)

    def start_node(self, index: int, *, timeout_s: float = 120.0) -> None:
        """Start node `index` (0-based) again; return once it is back in every ISR it belongs to."""
        node = self._node(index)
        node.start(timeout_s=timeout_s)
        self.wait_in_sync(node.node_id, timeout_s)

    def config_paths(self) -> list[str]:
        """Every node's server.properties, of either layout (what `down` looks for)."""
        single = self.home / "server.properties"
        return [str(single), *(str(p) for p in sorted(self.home.glob("nodes/*/server.properties")))]

    def log_paths(self) -> dict[str, Path]:
        if self.brokers == 1:
            return {"kafka": self.first.log_path}
        return {f"kafka-{node.node_id}": node.log_path for node in self.nodes}

    def live_brokers(self, timeout_s: float = 5.0) -> list[int]:
        """The node ids the cluster's metadata lists as live brokers ([] if it does not answer)."""
        admin = AdminClient(client_security(self.admin_settings()), logger=quiet_logger())
        try:
            metadata = admin.list_topics(timeout=timeout_s)
        except Exception:  # any failure means "not answering"
            return []
        return sorted(metadata.brokers)

    def wait_for_brokers(self, timeout_s: float = 120.0) -> None:
        want = [node.node_id for node in self.nodes]
        deadline = time.monotonic() + timeout_s
        while (live := self.live_brokers()) != want:
            if time.monotonic() > deadline:
                raise StackError(
                    f"the Kafka cluster lists brokers {live}, not {want}, after {timeout_s:.0f} s"
                )
            time.sleep(0.25)

    def out_of_sync(self, node_id: int, timeout_s: float = 5.0) -> list[str]:
        """Partitions with a replica on `node_id` that is not in their in-sync set."""
        admin = AdminClient(client_security(self.admin_settings()), logger=quiet_logger())
        metadata = admin.list_topics(timeout=timeout_s)
        return [
            f"{name}[{partition.id}]"
            for name, topic in metadata.topics.items()
            for partition in topic.partitions.values()
            if node_id in partition.replicas and node_id not in partition.isrs
        ]

    def wait_in_sync(self, node_id: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        lagging = ["(no answer yet)"]
        while time.monotonic() < deadline:
            with contextlib.suppress(KafkaException):
                lagging = self.out_of_sync(node_id)
                if not lagging and node_id in self.live_brokers():
                    return
            time.sleep(0.25)
        raise StackError(
            f"Kafka node {node_id} is not back in sync after {timeout_s:.0f} s: {lagging[:10]}"
        )

    def apply_access(self) -> list[str]:
        """Every component's SCRAM credential and exactly the ACLs of acls.yaml (idempotent),
        once for the whole cluster: the controllers keep them in the shared metadata log."""
        if not self.first.secure:
            return ["none: a plaintext broker (make bench's baseline only)"]
        return apply_access(
            admin_client(self.admin_settings()), load_grants(), self.credentials.ensure()
        )

    def _node(self, index: int) -> KafkaBroker:
        if not 0 <= index < len(self.nodes):
            raise StackError(f"no Kafka node {index}: the cluster has {len(self.nodes)} (0-based)")
        return self.nodes[index]

    def _refuse_other_layout(self) -> None:
        ours = {node.pid_path for node in self.nodes}
        others = [
            path
            for path in (self.first.state_dir / "run").glob("kafka*.pid")
            if path not in ours and running(path) is not None
        ]
        if others:
            raise StackError(
                f"a Kafka cluster of another size runs in {self.first.state_dir} "
                f"({', '.join(p.name for p in others)}); stop it with `carebus down` first"
            )
