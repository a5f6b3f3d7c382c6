"""The carebus services the local stack runs: the one table of them, and how to start each."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
from pydantic import SecretStr

from carebus.runtime.config import PROJECT_ROOT, Settings
from carebus_dev.stack.kafka import KafkaCredentials
from carebus_dev.stack.postgres import login_role, with_user
from carebus_dev.stack.process import (
    StackError,
    is_alive,
    running,
    start_detached,
    stop_recorded,
    tail,
)

# Marks every process the stack starts, so `down` can prove none is left behind.
STACK_MARKER = "CAREBUS_STACK_STATE_DIR"
# A process without an HTTP endpoint counts as started when it is still alive after this long.
SETTLE_S = 2.0


@dataclass(frozen=True)
class ServiceSpec:
    """One service: the module run with `python -m`, and the port it answers /healthz on.

    An HTTP API names its port setting; a worker without an API answers on its metrics port.
    Every service has a fixed local `metrics_port` for /metrics and /healthz (internal: the
    HTTP services' too), passed to it as CAREBUS_METRICS_PORT.
    """

    name: str
    module: str
    port_setting: str | None = None
    metrics_port: int | None = None

    def available(self) -> bool:
        """Whether `python -m <module>` can run (other engineers add services over time)."""
        try:
            spec = importlib.util.find_spec(self.module)
            if spec is not None and spec.submodule_search_locations is not None:
                spec = importlib.util.find_spec(f"{self.module}.__main__")
        except ImportError:
            return False
        return spec is not None

    def argv(self) -> list[str]:
        return [sys.executable, "-m", self.module]

    def port(self, settings: Settings) -> int | None:
        if self.port_setting is None:
            return self.metrics_port
        return int(getattr(settings, self.port_setting))

    def env(self, port: int | None = None) -> dict[str, str]:
        """Extra environment that puts the service on `port` (its default when None)."""
        if self.port_setting is not None:
            env = {f"CAREBUS_{self.port_setting.upper()}": str(port)} if port else {}
            if self.metrics_port is not None:
                env["CAREBUS_METRICS_PORT"] = str(self.metrics_port)
            return env
        if self.metrics_port is not None:
            return {"CAREBUS_METRICS_PORT": str(port or self.metrics_port)}
        return {}

    def url(self, settings: Settings) -> str | None:
        port = self.port(settings)
        return settings.service_url(port) if port is not None else None

    def metrics_url(self, settings: Settings) -> str | None:
        """Where the service's /metrics is scraped: its internal metrics port."""
        if self.metrics_port is None:
            return None
        return f"{settings.service_url(self.metrics_port)}/metrics"


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("gateway", "services.gateway", "gateway_port", metrics_port=18096),
    ServiceSpec("registry", "services.registry", "registry_port", metrics_port=18097),
    ServiceSpec("audit", "services.audit", "audit_port", metrics_port=18098),
    ServiceSpec("inbox", "services.inbox", "inbox_port", metrics_port=18099),
    # PLO, HL7 v2 (HTTP and MLLP on `mllp_port`) and FHIR, handed on to the gateway.
    ServiceSpec("adapters", "services.adapters", "adapters_port", metrics_port=18101),
    # People sign in to the inbox here locally (HelseID in production; never deployed).
    ServiceSpec("oidc_issuer", "carebus_dev.oidc_issuer", "oidc_issuer_port", metrics_port=18100),
    ServiceSpec("event_store", "consumers.event_store", metrics_port=18090),
    ServiceSpec("router", "services.router", metrics_port=18091),
    ServiceSpec("sla", "services.sla", metrics_port=18092),
    ServiceSpec("audit_store", "consumers.audit_store", metrics_port=18093),
    ServiceSpec("webhooks", "consumers.webhooks", metrics_port=18094),
    ServiceSpec("alert_store", "consumers.alert_store", metrics_port=18095),
)


def service_named(name: str) -> ServiceSpec:
    wanted = name.replace("-", "_")
    for spec in SERVICES:
        if spec.name == wanted:
            return spec
    raise KeyError(name)


def settings_env(settings: Settings) -> dict[str, str]:
    """`CAREBUS_*` variables that reproduce `settings` in a child process."""
    env = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, tuple | list | dict):
            # A complex setting is read back from the environment as JSON (pydantic-settings).
            value = json.dumps(settings.model_dump(mode="json", include={name})[name])
        env[f"CAREBUS_{name.upper()}"] = str(value)
    return env


def child_env(
    settings: Settings, extra: Mapping[str, str] | None = None, *, principal: str | None = None
) -> dict[str, str]:
    """The environment of a process the stack starts: `settings` as CAREBUS_* variables.

    With `principal` (a service's name) the process speaks to Kafka as that principal of
    infra/kafka/acls.yaml, never with the stack's admin credential; a service that has no
    principal there gets no Kafka credential at all. It logs in to PostgreSQL as the service's
    own role, `carebus_<service>`, never as the owner: the DSN names the role and carries no
    password; the process reads its role's password from the state dir
    (`carebus.runtime.config.with_local_password`).
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("CAREBUS_")}
    env.update(settings_env(settings))
    if principal is not None:
        _as_principal(env, settings, principal)
        env.pop("CAREBUS_POSTGRES_PASSWORD", None)
        env["CAREBUS_POSTGRES_DSN"] = with_user(settings.postgres_dsn, login_role(principal))
    env["PYTHONUNBUFFERED"] = "1"
    env[STACK_MARKER] = str(settings.state_dir)
    if extra:
        env.update(extra)
    return env


def _as_principal(env: dict[str, str], settings: Settings, principal: str) -> None:
    """Swap the stack's Kafka credential in `env` for `principal`'s (or for none)."""
    if settings.kafka_security_protocol != "SASL_SSL":
        return
    env.pop("CAREBUS_KAFKA_USERNAME", None)
    env.pop("CAREBUS_KAFKA_PASSWORD", None)
    password = KafkaCredentials.of(settings).read().get(principal)
    if password is None:
        # No principal in acls.yaml: the process has no business on the broker and gets no
        # credential (building a client would fail, naming the missing settings).
        return
    env["CAREBUS_KAFKA_USERNAME"] = principal
    env["CAREBUS_KAFKA_PASSWORD"] = password


def pid_path(settings: Settings, name: str) -> Path:
    return settings.state_dir / "run" / f"{name}.pid"


def log_path(settings: Settings, name: str) -> Path:
    return settings.state_dir / "logs" / f"{name}.log"


def healthz(url: str, timeout_s: float = 2.0, *, ready: bool = True) -> bool:
    """Whether the service at `url` reports ready (/healthz 200); with `ready=False`, whether
    it answers /healthz at all (it serves, though a dependency may be down)."""
    try:
        response = httpx.get(f"{url}/healthz", timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 or (not ready and response.status_code == 503)


def wait_started(
    name: str, pid: int, url: str | None, log: Path, *, timeout_s: float = 60.0
) -> None:
    """Return once the service answers /healthz (or, without HTTP, is still alive after 2 s)."""
    deadline = time.monotonic() + (timeout_s if url else SETTLE_S)
    while time.monotonic() < deadline:
        if not is_alive(pid):
            raise StackError(f"{name} exited while starting; last lines of {log}:\n{tail(log, 30)}")
        if url and healthz(url, timeout_s=1.0):
            return
        time.sleep(0.2)
    if url:
        raise StackError(
            f"{name} did not answer {url}/healthz within {timeout_s:.0f} s; "
            f"last lines of {log}:\n{tail(log, 30)}"
        )
    if not is_alive(pid):
        raise StackError(f"{name} exited while starting; last lines of {log}:\n{tail(log, 30)}")


def start_service(spec: ServiceSpec, settings: Settings) -> bool:
    """Start `spec` detached unless it runs already; True if it was started."""
    pids = pid_path(settings, spec.name)
    log = log_path(settings, spec.name)
    url = spec.url(settings)
    if running(pids) is not None:
        return False
    _, record = start_detached(
        spec.argv(),
        log_path=log,
        pid_path=pids,
        env=child_env(settings, spec.env(), principal=spec.name),
        cwd=PROJECT_ROOT,
    )
    wait_started(spec.name, record.pid, url, log)
    return True


# `carebus status` asks each service a few times before calling it down: one /healthz that a
# busy machine answers late, or a consumer group's rebalance of a second, is not an outage.
PROBES: Final = 3
PROBE_TIMEOUT_S: Final = 5.0
PROBE_PAUSE_S: Final = 1.0


def service_state(spec: ServiceSpec, settings: Settings) -> tuple[bool, str]:
    """Whether the service is up, and what was seen: its URL (or "process"), or why it is
    down — not running, no answer, or the readiness checks its /healthz names as failing."""
    if running(pid_path(settings, spec.name)) is None:
        return False, "not running"
    url = spec.url(settings)
    if not url:
        return True, "process"
    reason = ""
    for attempt in range(PROBES):
        if attempt:
            time.sleep(PROBE_PAUSE_S)
        try:
            response = httpx.get(f"{url}/healthz", timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError as exc:
            reason = f"{url}/healthz did not answer ({type(exc).__name__})"
            continue
        if response.status_code == 200:
            return True, url
        reason = f"{url}/healthz answered {response.status_code}{_failing_checks(response)}"
    return False, reason


def _failing_checks(response: httpx.Response) -> str:
    """`: broker, progress` — the checks a 503 /healthz names as failing, if it names any."""
    try:
        checks = response.json().get("checks", {})
    except (ValueError, AttributeError):
        return ""
    if not isinstance(checks, dict):
        return ""
    failing = sorted(name for name, passed in checks.items() if passed is not True)
    return f": {', '.join(failing)}" if failing else ""


def stop_service(spec: ServiceSpec, settings: Settings) -> bool:
    """SIGTERM the service's process group, SIGKILL after 10 s. True if it was running."""
    return stop_recorded(pid_path(settings, spec.name), timeout_s=10.0)
