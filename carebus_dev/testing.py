"""Test helpers that ship with carebus: a real throwaway stack, an event factory, log capture."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from structlog.testing import capture_logs

from carebus.adapters import person_keys
from carebus.adapters.kafka import consumer_config
from carebus.domain.events import EVENT_TYPES, EXAMPLE_PAYLOADS, rfc3339
from carebus.domain.identity import random_nin
from carebus.runtime.config import PROJECT_ROOT, Settings
from carebus.wire import topics
from carebus.wire.codec import Codec, DecodeError
from carebus.wire.sealing import KeyWrap, is_sealed, open_sealed
from carebus_dev.stack.devdata import DEV_ORGANISATIONS
from carebus_dev.stack.kafka import NodePorts, default_libs_dir
from carebus_dev.stack.local import LocalStack
from carebus_dev.stack.process import StackError, is_alive, pids_in_group, tail
from carebus_dev.stack.supervisor import child_env, healthz, service_named

__all__ = ["EventFactory", "ServiceProcess", "StackError", "TestStack", "capture_logs"]


# Ports handed out for listeners lie below the kernel's ephemeral range: a port picked from that
# range can be taken as the source port of any outgoing connection before the service that owns
# it binds it (a CI run lost a module to EADDRINUSE that way), and one below the range cannot.
_LISTENER_PORTS = range(20000, 32768)
_local_ports = random.SystemRandom()
# Every port free_ports handed out in this process: never handed out twice, so a service started
# later on a fresh port cannot take a port a stopped service of the stack restarts on (the e2e
# modules restart the inbox on the stack's inbox port; a fresh clone's run once found another
# service there, whose /healthz answered for it).
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_slice(ports: Sequence[int]) -> Sequence[int]:
    """This pytest-xdist worker's share of `ports` (all of them outside xdist).

    Each worker runs a stack of its own; a port one worker has picked but not yet bound could
    otherwise be picked by the other worker too. Disjoint slices make that impossible.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count < 2:
        return ports
    index = int(worker[2:]) % count
    size = len(ports) // count
    return ports[index * size : (index + 1) * size]


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that nothing listens on right now, below the ephemeral range
    (and, under pytest-xdist, in this worker's own slice of it)."""
    candidates = list(_worker_slice([port for port in _LISTENER_PORTS if port < _ephemeral_low()]))
    _local_ports.shuffle(candidates)
    ports: list[int] = []
    for port in candidates:
        if len(ports) == count:
            break
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    _handed_out.update(ports)
    if len(ports) < count:
        raise StackError(f"only {len(ports)} of {count} free ports below the ephemeral range")
    return ports


def run_cli(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`carebus <args>` in a subprocess with `env`, as a user runs it; never raises on failure."""
    return subprocess.run(
        [sys.executable, "-m", "carebus.ops.cli", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


class ServiceProcess:
    """One service started by a test: signal it, restart it, read its log."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        url: str | None = None,
        ready_timeout_s: float = 60.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.url = url
        self.ready_timeout_s = ready_timeout_s
        # Wait for /healthz 200 (ready); False: for any answer (serving, perhaps not ready).
        self.require_ready = True
        self.proc: subprocess.Popen[bytes] | None = None
        self._swept = False  # whether stop() has swept the process group of `proc`

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self.proc.pid

    @property
    def port(self) -> int:
        """The HTTP port the service listens on (only for services started with a URL)."""
        port = urlsplit(self.url).port if self.url else None
        if port is None:
            raise RuntimeError(f"{self.name} has no HTTP endpoint")
        return port

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, wait: bool = True) -> ServiceProcess:
        if self.alive:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._swept = False
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=PROJECT_ROOT,
                start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Until /healthz answers 200 (HTTP services) or the process has lived for 2 s."""
        deadline = time.monotonic() + (self.ready_timeout_s if self.url else 2.0)
        while time.monotonic() < deadline:
            if not self.alive:
                raise StackError(
                    f"{self.name} exited while starting; last lines of {self.log_path}:\n"
                    + self.log_tail(40)
                )
            if self.url and healthz(self.url, timeout_s=1.0, ready=self.require_ready):
                return
            time.sleep(0.1)
        if self.url:
            raise StackError(
                f"{self.name} did not answer {self.url}/healthz within "
                f"{self.ready_timeout_s:.0f} s; last lines of {self.log_path}:\n"
                + self.log_tail(40)
            )

    def kill(self, sig: int = signal.SIGKILL, *, wait: bool = True) -> int | None:
        """Send `sig` to the service's process group; by default wait for it to exit.

        Returns the exit code (None if not waited for or still running).
        """
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        if not wait:
            return None
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        # Children the service started (in its group) must not outlive it either. The leader is
        # reaped by now, so a live process with its pid is a stranger that was given the pid
        # again (pids wrap within minutes under a test run), and a second stop() must not sweep
        # at all: the group may by then be that stranger's.
        if not self._swept:
            self._swept = True
            if any(pid != self.proc.pid and is_alive(pid) for pid in pids_in_group(self.proc.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode

    def restart(self, *, wait: bool = True) -> ServiceProcess:
        self.stop()
        self.proc = None
        return self.start(wait=wait)

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class TestStack:
    """A fresh Kafka cluster (`brokers` nodes: 1, or 3 for fault tests) and PostgreSQL cluster
    on free ports in a temporary state dir.

    It never touches `carebus up`'s stack: other ports, another directory. Only the Kafka
    jars are shared, from the project's real state dir, so tests do not fetch them again.
    Set CAREBUS_KEEP_TEST_STACK=1 to keep the directory (logs, data) after `stop()`.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        *,
        person_partitions: int = 4,
        produce_timeout_s: float = 5.0,
        kafka_secure: bool = True,
        brokers: int = 1,
    ) -> None:
        self.state_dir = Path(tempfile.mkdtemp(prefix="carebus-test-"))
        ports = free_ports(10)
        kafka_ports = [NodePorts(ports[0], ports[1])]
        if brokers > 1:
            extra = free_ports(2 * (brokers - 1))
            kafka_ports += [NodePorts(extra[i], extra[i + 1]) for i in range(0, len(extra), 2)]
        self.settings = Settings(
            environment="test",
            state_dir=self.state_dir,
            kafka_bootstrap=",".join(f"127.0.0.1:{node.broker}" for node in kafka_ports),
            kafka_controller_port=ports[1],
            postgres_dsn=f"postgresql://carebus@127.0.0.1:{ports[2]}/carebus",
            gateway_port=ports[3],
            registry_port=ports[4],
            audit_port=ports[5],
            inbox_port=ports[6],
            oidc_issuer_port=ports[7],
            adapters_port=ports[8],
            mllp_port=ports[9],
            person_partitions=person_partitions,
            produce_timeout_s=produce_timeout_s,
            log_level="info",
        )
        self.local = LocalStack(
            self.settings,
            durable=False,
            libs_dir=default_libs_dir(Settings()),
            offsets_partitions=3,
            kafka_secure=kafka_secure,
            brokers=brokers,
            kafka_ports=kafka_ports,
        )
        # Tests speak to the broker as the stack's admin; services as their own principals.
        # Both name every broker and the cluster's replication (`brokers`, min.insync one less).
        self.settings = self.local.settings
        self.services: list[ServiceProcess] = []
        self._watchdog: ServiceProcess | None = None

    def start(self) -> TestStack:
        """Broker, database, migrations and topics; raises StackError if any cannot start."""
        self._watchdog = ServiceProcess(
            "watchdog",
            [sys.executable, "-m", "carebus_dev.stack.watchdog", str(os.getpid())],
            self.env(),
            self.state_dir / "logs" / "watchdog.log",
        ).start(wait=False)
        try:
            self.local.start_infrastructure()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def brokers(self) -> int:
        """How many Kafka brokers the stack runs (its topics' replication)."""
        return self.local.kafka.brokers

    def kill_broker(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to broker `index` (0-based; 0 is the first of the clients' bootstrap
        list) without a controlled shutdown; returns once a SIGKILLed broker is gone."""
        self.local.kafka.kill_node(index, sig)

    def start_broker(self, index: int, *, timeout_s: float = 120.0) -> None:
        """Start broker `index` (0-based) again; returns once the cluster lists it and it is
        back in the in-sync replicas of every partition it holds a replica of."""
        self.local.kafka.start_node(index, timeout_s=timeout_s)

    def env(self, *, principal: str | None = None, **extra: str) -> dict[str, str]:
        """The environment for a subprocess that should talk to this stack: as the stack's
        admin, or as Kafka `principal` (a service's name) like the stack starts services."""
        return child_env(self.settings, extra, principal=principal)

    def start_service(
        self,
        name_or_argv: str | Sequence[str],
        *,
        name: str | None = None,
        url: str | None = None,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        ready: bool = True,
    ) -> ServiceProcess:
        """Start a service of the services table by name, or any argv (give `url` to health-check).

        The process gets this stack's CAREBUS_* environment plus `env`. `port` runs a named
        HTTP service on another port (a second instance next to the first one). With `wait`,
        returns once /healthz reports ready — or, with `ready=False` (a service started against
        a dependency that is down on purpose), once it answers /healthz at all.
        """
        extra = dict(env or {})
        principal = None
        if isinstance(name_or_argv, str):
            spec = service_named(name_or_argv)
            principal = spec.name
            argv = spec.argv()
            name = name or spec.name
            if port is None and spec.port_setting is None and spec.metrics_port is not None:
                port = free_ports(1)[0]  # never the local stack's fixed worker port
            if spec.port_setting is not None:
                # An HTTP service's internal /metrics port: free, never the local stack's.
                extra.setdefault("CAREBUS_METRICS_PORT", str(free_ports(1)[0]))
            if port is not None:
                for key, value in spec.env(port).items():
                    extra.setdefault(key, value)
                if spec.name == "adapters":
                    # A second instance listens for MLLP on a port of its own too.
                    extra.setdefault("CAREBUS_MLLP_PORT", str(free_ports(1)[0]))
                url = url or self.settings.service_url(port)
            url = url or spec.url(self.settings)
        else:
            argv = list(name_or_argv)
            name = name or Path(argv[-1]).name.replace(".", "_")
            if port is not None:
                url = url or self.settings.service_url(port)
        process = ServiceProcess(
            name=name,
            argv=argv,
            env=self.env(principal=principal, **extra),
            log_path=self.service_log(name),
            url=url,
        )
        self.services.append(process)
        process.require_ready = ready
        return process.start(wait=wait)

    @contextlib.contextmanager
    def running(self, *names: str) -> Iterator[list[ServiceProcess]]:
        """The services `names`, started in order and stopped in reverse when the block ends.

        If one fails to start, those already started are stopped before the error propagates:
        a module whose setup failed leaves nothing behind to consume the next module's records.
        """
        with contextlib.ExitStack() as started:
            processes = []
            for name in names:
                process = self.start_service(name)
                started.callback(process.stop)
                processes.append(process)
            yield processes

    def stop_started_since(self, count: int) -> list[str]:
        """Stop the services started after the first `count`; the names of those still running."""
        leaked = [p.name for p in self.services[count:] if p.alive]
        for process in reversed(self.services[count:]):
            process.stop()
        return leaked

    def service_log(self, name: str) -> Path:
        """The log of every process started under `name` (restarts and second instances append)."""
        return self.state_dir / "logs" / f"{name}.log"

    def python(self, module: str) -> list[str]:
        """argv for `python -m module` with this interpreter."""
        return [sys.executable, "-m", module]

    def stop(self) -> None:
        """Stop every service, the broker and the database; delete the state dir."""
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        for process in reversed(self.services):
            process.stop()
        self.services.clear()
        try:
            self.local.down()
        finally:
            if os.environ.get("CAREBUS_KEEP_TEST_STACK") != "1":
                self.local.postgres.remove()
                shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> TestStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# The agency that typically publishes each event type (DESIGN.md, "Event types").
TYPICAL_SOURCE: Mapping[str, str] = {
    "admission": "dps",
    "discharge": "dps",
    "police_callout": "police",
    "housing_incident": "housing",
    "ip_update": "municipality",
    "discharge_ready": "dps",
    "discharge_ready_withdrawn": "dps",
    "health_info_sent": "dps",
    "municipal_reply": "municipality",
    "housing_work_started": "municipality",
    "epikrise_sent": "dps",
    "followup_contact": "municipality",
    "application_received": "municipality",
    "application_preliminary_reply": "municipality",
    "application_decided": "municipality",
    "retraction": "dps",
    "followup_scheduled": "dps",
    "treatment_interrupted": "dps",
    "prison_release": "corrections",
    "housing_waitlisted": "housing",
    "temporary_housing_started": "municipality",
    "temporary_housing_ended": "municipality",
    "tenancy_at_risk": "housing",
    "brukerplan_assessment": "municipality",
    "somatic_check_done": "fastlege",
    "somatic_referral": "fastlege",
}


class EventFactory:
    """Valid events of every type (the HTTP JSON shape), with valid generated nins.

    Organisations are the local stack's dev organisations, so the dev tokens can publish them.
    Event ids carry a random run token, so events from two test runs never collide.
    """

    def __init__(self, seed: int | None = None, *, orgs: Mapping[str, str] | None = None) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - test data, not secrets
        self.orgs = dict(orgs or DEV_ORGANISATIONS)
        self.run = (
            uuid.UUID(int=self.rng.getrandbits(128)).hex[:8]
            if seed is not None
            else (uuid.uuid4().hex[:8])
        )
        self._counter = 0

    def nin(self, *, d_number: bool = False) -> str:
        return random_nin(self.rng, d_number=d_number)

    def event_id(self, agency: str = "dps") -> str:
        self._counter += 1
        return f"{agency}-{self.orgs[agency]}-{self.run}-{self._counter:06d}"

    def payload(self, event_type: str, **fields: Any) -> dict[str, Any]:
        """The example payload of `event_type` with `fields` replaced (None removes a field)."""
        payload = copy.deepcopy(dict(EXAMPLE_PAYLOADS[event_type]))
        if event_type in ("admission", "prison_release"):
            payload["home_municipality_org"] = self.orgs["municipality"]
        if event_type == "ip_update":
            payload["coordinator"] = {"agency": "municipality", "org_id": self.orgs["municipality"]}
            payload["participants"] = [
                {"agency": "dps", "org_id": self.orgs["dps"]},
                {"agency": "fastlege", "org_id": self.orgs["fastlege"]},
            ]
        if event_type == "epikrise_sent":
            payload["recipient_org"] = self.orgs["fastlege"]
        if event_type == "followup_scheduled":
            payload["with_org"] = self.orgs["municipality"]
        for name, value in fields.items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        return payload

    def event(
        self,
        event_type: str,
        *,
        nin: str | None = None,
        agency: str | None = None,
        org_id: str | None = None,
        occurred_at: datetime | str | None = None,
        event_id: str | None = None,
        system: str | None = "carebus-test",
        emergency: Mapping[str, Any] | None = None,
        **payload: Any,
    ) -> dict[str, Any]:
        """One event as an agency system would POST it."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        agency = agency or TYPICAL_SOURCE[event_type]
        org_id = org_id or self.orgs[agency]
        if occurred_at is None:
            occurred_at = datetime.now(UTC) - timedelta(seconds=1)
        if isinstance(occurred_at, datetime):
            occurred_at = occurred_at.isoformat(timespec="seconds")
        source: dict[str, Any] = {"agency": agency, "org_id": org_id}
        if system is not None:
            source["system"] = system
        event: dict[str, Any] = {
            "event_id": event_id or self.event_id(agency),
            "event_type": event_type,
            "occurred_at": occurred_at,
            "source": source,
            "subject": {"nin": nin or self.nin()},
            "payload": self.payload(event_type, **payload),
        }
        if emergency is not None:
            event["emergency"] = dict(emergency)
        return event

    def every_type(self, *, nin: str | None = None) -> list[dict[str, Any]]:
        """One event of each type, all about the same person."""
        nin = nin or self.nin()
        events = [self.event(t, nin=nin) for t in EVENT_TYPES if t != "retraction"]
        # A retraction withdraws an earlier event of its own sender: the DPS's admission.
        admission = events[EVENT_TYPES.index("admission")]
        return [
            *events,
            self.event("retraction", nin=nin, retracted_event_id=admission["event_id"]),
        ]


def dead_letters(
    settings: Settings, key: bytes, consumer: str, expected: int = 1, timeout_s: float = 20.0
) -> list[dict[str, Any]]:
    """The dead letters `consumer` wrote for records keyed `key`, read from the beginning.

    Waits until `expected` are there, then reads one more second, so a dead letter sent twice
    shows up as two.
    """
    reader = Consumer(consumer_config(settings, f"test-dlq-{uuid.uuid4().hex}"))
    partitions = reader.list_topics(topics.DEADLETTER, timeout=10).topics[topics.DEADLETTER]
    reader.assign(
        [TopicPartition(topics.DEADLETTER, p, OFFSET_BEGINNING) for p in partitions.partitions]
    )
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    linger_until: float | None = None
    try:
        while time.monotonic() < (linger_until or deadline):
            for message in reader.consume(100, 0.2):
                if message.error() or message.key() != key:
                    continue
                record = Codec.default().decode(message.value() or b"").record
                if record["consumer"] == consumer:
                    found.append(record)
            if linger_until is None and len(found) >= expected:
                linger_until = time.monotonic() + 1.0
    finally:
        reader.close()
    return found


def every_dead_letter(settings: Settings) -> list[dict[str, Any]]:
    """Every dead letter on the broker now, from the beginning of the topic to its end."""
    reader = Consumer(consumer_config(settings, f"test-dlq-{uuid.uuid4().hex}"))
    found: list[dict[str, Any]] = []
    try:
        partitions = reader.list_topics(topics.DEADLETTER, timeout=10).topics[topics.DEADLETTER]
        ends = {}
        for p in partitions.partitions:
            low, high = reader.get_watermark_offsets(
                TopicPartition(topics.DEADLETTER, p), timeout=10
            )
            if high > low:
                ends[p] = high
        reader.assign([TopicPartition(topics.DEADLETTER, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + 60.0
        while ends and time.monotonic() < deadline:
            for message in reader.consume(500, 0.5):
                if message.error():
                    continue
                partition, offset = message.partition() or 0, message.offset() or 0
                if offset + 1 >= ends.get(partition, 0):
                    ends.pop(partition, None)
                try:
                    found.append(Codec.default().decode(message.value() or b"").record)
                except DecodeError:
                    continue
    finally:
        reader.close()
    return found


def routing_failures(settings: Settings) -> set[str]:
    """The details of the router's "routing failed" dead letters on the broker: no test routes
    a record that makes the router fail, so any is a bug (a stack's teardown checks)."""
    return {
        letter["detail"]
        for letter in every_dead_letter(settings)
        if letter["consumer"] == "router" and letter["detail"].startswith("routing failed")
    }


async def at_least(
    probe: Callable[[], Awaitable[list[dict[str, Any]]]], count: int, timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """The probe's answer once it holds `count` items (records arrive through Kafka and the
    sinks); fails with the last answer after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = await probe()
        if len(found) >= count:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"expected {count} records, found {len(found)}: {found}")


class ServiceClients:
    """HTTP clients for a running stack's gateway, registry and inbox, its tokens and a database
    connection: what integration tests that drive the system through its API share."""

    def __init__(
        self, stack: TestStack, *, tokens: dict[str, str], conn: asyncpg.Connection
    ) -> None:
        settings = stack.settings
        self.gateway = httpx.AsyncClient(base_url=settings.service_url(settings.gateway_port))
        self.registry = httpx.AsyncClient(base_url=settings.service_url(settings.registry_port))
        self.inbox = httpx.AsyncClient(base_url=settings.service_url(settings.inbox_port))
        self.tokens = tokens
        self.conn = conn
        self.settings = settings
        self.rng = random.Random()  # noqa: S311 - test data, not secrets

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def post_event(
        self,
        source: Mapping[str, str],
        event_type: str,
        nin: str,
        payload: Mapping[str, Any],
        *,
        token: str,
        occurred_at: datetime | None = None,
    ) -> str:
        """POST one event from `source` ({agency, org_id[, system]}); its event_id after a 202."""
        event_id = f"{source['agency']}-{uuid.uuid4().hex[:16]}"
        body = {
            "event_id": event_id,
            "event_type": event_type,
            "occurred_at": rfc3339(occurred_at or datetime.now(UTC)),
            "source": dict(source),
            "subject": {"nin": nin},
            "payload": dict(payload),
        }
        response = await self.gateway.post("/v1/events", json=body, headers=self.auth(token))
        assert response.status_code == 202, response.text
        return event_id

    async def close(self) -> None:
        for client in (self.gateway, self.registry, self.inbox):
            await client.aclose()


# --- people signing in through the development issuer ----------------------------------------

_ISSUER_REQUEST = re.compile(r'name="request" value="([^"]+)"')


async def through_issuer(
    browser: httpx.AsyncClient,
    login: str,
    person: str,
    sign_in_cookie: str,
    seen: list[httpx.Response] | None = None,
) -> httpx.URL:
    """`login`, the development issuer's sign-in page and the person's choice there: the
    callback URL the issuer sends the browser back to (not yet followed). Checks that the
    service set its sign-in cookie and that the issuer's page allows no script; every response
    of the service is added to `seen`."""
    started = await browser.get(login)
    if seen is not None:
        seen.append(started)
    assert started.status_code == 303, started.text
    assert sign_in_cookie in started.cookies
    page = await browser.get(started.headers["location"])
    assert page.status_code == 200, page.text
    assert "script" not in page.headers["content-security-policy"]
    found = _ISSUER_REQUEST.search(page.text)
    assert found is not None
    issuer = urlsplit(started.headers["location"])
    chosen = await browser.post(
        f"{issuer.scheme}://{issuer.netloc}/authorize",
        data={"request": found.group(1), "person": person},
    )
    assert chosen.status_code == 303, chosen.text
    return httpx.URL(chosen.headers["location"])


async def insert_disclosure(db: asyncpg.Connection, key: str, recipient: str) -> str:
    """A delivered disclosure about the person `key` to the municipality `recipient`, as the
    audit store writes it; its event id."""
    event_id = f"dps-974705788-{uuid.uuid4().hex[:12]}"
    await db.execute(
        """
        INSERT INTO disclosures (audit_id, event_id, event_type, source_org, subject_key,
            recipient_agency, recipient_org, decision, basis, categories, fields, rule_id,
            policy_version, decided_at)
        VALUES ($1, $2, 'admission', '974705788', $3, 'municipality', $4, 'delivered',
            'statutory', ARRAY['admission'], ARRAY['admitted_at'], 'r1', 'test-1', $5)
        """,
        str(uuid.uuid4()),
        event_id,
        key,
        recipient,
        datetime.now(UTC),
    )
    return event_id


async def unsealed(
    conn: asyncpg.Connection, settings: Settings, subject_key: str, path: str, value: Any
) -> Any:
    """A stored or published value as its recipient reads it: a sealed value (docs/retention.md,
    "Erasure") opened under the person's data key, anything else as it is."""
    if not is_sealed(value):
        return value
    keys = await person_keys.keyring(conn, KeyWrap.from_settings(settings), [subject_key])
    return open_sealed(keys, subject_key, path, value)
