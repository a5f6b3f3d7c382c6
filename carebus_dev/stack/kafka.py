"""The local single-node Kafka broker (KRaft, combined mode), run from Maven Central jars."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Final

from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from carebus.adapters.kafka import client_security, quiet_logger
from carebus.adapters.kafka_acls import apply_access, load_grants, principals
from carebus.adapters.topic_admin import admin_client
from carebus.runtime.config import PROJECT_ROOT, Settings
from carebus_dev.stack.kafka_pki import LocalPki
from carebus_dev.stack.process import StackError, running, start_until_ready, stop_recorded, tail

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


@dataclass
class KafkaBroker:
    """One broker + controller on 127.0.0.1 with its data and pid file under `state_dir`."""

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

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        libs_dir: Path | None = None,
        offsets_partitions: int = 50,
        secure: bool = True,
    ) -> KafkaBroker:
        host, _, port = settings.kafka_bootstrap.rpartition(":")
        if host not in ("127.0.0.1", "localhost") or not port.isdigit():
            raise StackError(
                f"CAREBUS_KAFKA_BOOTSTRAP must be 127.0.0.1:<port> for the local broker, "
                f"not {settings.kafka_bootstrap!r}"
            )
        return cls(
            settings=settings,
            libs_dir=libs_dir or default_libs_dir(settings),
            broker_port=int(port),
            controller_port=settings.kafka_controller_port,
            offsets_partitions=offsets_partitions,
            secure=secure,
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    @property
    def home(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def pki(self) -> LocalPki:
        return LocalPki(self.home / "pki")

    @property
    def credentials(self) -> KafkaCredentials:
        return KafkaCredentials.of(self.settings)

    def settings_for(self, principal: str) -> Settings:
        """Settings that speak to this broker as `principal` (made on first use)."""
        if not self.secure:
            return self.settings
        passwords = self.credentials.ensure()
        if principal not in passwords:
            raise StackError(f"{principal!r} is not a Kafka principal of infra/kafka/acls.yaml")
        return principal_settings(self.settings, principal, passwords[principal], self.pki.ca_file)

    def admin_settings(self) -> Settings:
        return self.settings_for(ADMIN_USER)

    def apply_access(self) -> list[str]:
        """Every component's SCRAM credential and exactly the ACLs of acls.yaml (idempotent)."""
        if not self.secure:
            return ["none: a plaintext broker (make bench's baseline only)"]
        return apply_access(
            admin_client(self.admin_settings()), load_grants(), self.credentials.ensure()
        )

    @property
    def config_path(self) -> Path:
        return self.home / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "run" / "kafka.pid"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "logs" / "kafka.log"

    def is_running(self) -> bool:
        return running(self.pid_path) is not None

    def healthy(self, timeout_s: float = 5.0) -> bool:
        return self.is_running() and broker_answers(self.admin_settings(), timeout_s)

    def start(self, *, timeout_s: float = 120.0) -> bool:
        """Start the broker unless it runs; return once it answers metadata. True if started."""
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
            "the Kafka broker",
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
            lambda: (
                port_open("127.0.0.1", self.broker_port)
                and broker_answers(self.admin_settings(), 5.0)
            ),
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
                    f"the Kafka broker exited while starting; last lines of {self.log_path}:\n"
                    + tail(self.log_path, 30)
                )
            if port_open("127.0.0.1", self.broker_port) and broker_answers(
                self.admin_settings(), 5.0
            ):
                return
            time.sleep(0.25)
        raise StackError(
            f"the Kafka broker did not answer a metadata request on {self.bootstrap} within "
            f"{timeout_s:.0f} s; last lines of {self.log_path}:\n" + tail(self.log_path, 30)
        )

    def stop(self, *, timeout_s: float = 30.0) -> bool:
        """Stop the broker (controlled shutdown, killed after `timeout_s`). True if it ran."""
        return stop_recorded(self.pid_path, timeout_s=timeout_s)

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
                controller_port=self.controller_port,
                log_dirs=self.data_dir,
                offsets_partitions=self.offsets_partitions,
                security=security,
            )
        )

    def _format_storage(self, java: str, passwords: dict[str, str]) -> None:
        formatted_for = self.home / "formatted-controller-port"
        security = self.home / SECURITY_MARKER
        mode = SECURITY if self.secure else "PLAINTEXT"
        formatted = security.read_text().strip() if security.exists() else "PLAINTEXT"
        if (self.data_dir / "meta.properties").exists() and formatted != mode:
            # Formatted by a carebus that ran Kafka in plain text: it holds no SCRAM credential
            # for the node itself, so the secured broker could not even register. Local topics
            # are disposable (the stores keep what was consumed); format afresh.
            shutil.rmtree(self.data_dir)
        if (self.data_dir / "meta.properties").exists():
            # The standalone quorum stores the controller endpoint in its first snapshot; a
            # broker formatted for another port would wait forever for a missing controller.
            previous = formatted_for.read_text().strip() if formatted_for.exists() else ""
            if previous and previous != str(self.controller_port):
                raise StackError(
                    f"the Kafka data in {self.data_dir} was formatted for controller port "
                    f"{previous}, not {self.controller_port}; set CAREBUS_KAFKA_CONTROLLER_PORT "
                    f"back or remove {self.data_dir} (this deletes the local topics)"
                )
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster_id = new_cluster_id()
        result = subprocess.run(
            [
                java,
                f"-Dlog4j2.configurationFile={LOG4J2}",
                "-cp",
                f"{self.libs_dir}/*",
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
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
        formatted_for.write_text(f"{self.controller_port}\n")
        security.write_text(f"{mode}\n")
