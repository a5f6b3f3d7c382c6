"""The production stack description: docker-compose.yml, its Dockerfile and Prometheus config."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
PROMETHEUS_FILE = PROJECT_ROOT / "infra" / "prometheus" / "prometheus.yml"

# Variables the stack refuses to start without; none of them has a safe default.
# The file secrets every service that needs one declares (compose `secrets:`, /run/secrets).
SECRETS = {
    "carebus_subject_key_secret": "carebus",
    "carebus_postgres_password": "carebus",
    "grafana_admin_password": "grafana",
}

# Every deployable in DESIGN's layout, by compose service name, and the module it runs.
HTTP_SERVICES = {
    "gateway": "services.gateway",
    "registry": "services.registry",
    "audit": "services.audit",
    "inbox": "services.inbox",
}
WORKERS = {
    "router": "services.router",
    "sla": "services.sla",
    "event-store": "consumers.event_store",
    "audit-store": "consumers.audit_store",
    "alert-store": "consumers.alert_store",
    "webhooks": "consumers.webhooks",
}
DEPLOYABLES = HTTP_SERVICES | WORKERS
SETUP_SERVICES = ("migrate", "topics")
# The only services reachable from outside the host: the agency-facing APIs and Grafana.
PUBLIC_SERVICES = {*HTTP_SERVICES, "grafana"}


def _docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose is not on PATH; install Debian's docker-compose package "
            "(`make install` does)"
        )
    return binary


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            _docker_compose(),
            "--file",
            str(COMPOSE_FILE),
            "--project-directory",
            str(PROJECT_ROOT),
            "config",
            "--quiet",
        ],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _clean_env() -> dict[str, str]:
    """The caller's environment without any CAREBUS_* or COMPOSE_* values that could mask a gap."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CAREBUS_", "COMPOSE_"))
    }


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _published_ports(service: dict[str, Any]) -> list[str]:
    return [str(port) for port in service.get("ports", [])]


def test_docker_compose_accepts_the_file() -> None:
    """`docker-compose config -q` passes on a fresh clone with nothing set: secrets are files,
    needed only when the stack starts."""
    result = _compose_config(_clean_env())
    assert result.returncode == 0, result.stderr


def test_secrets_are_files_outside_git_never_environment_values(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """No secret is an environment value or has a default; each is a file under secrets/,
    which git ignores, mounted only into the services that need it."""
    declared = compose["secrets"]
    assert set(declared) == set(SECRETS)
    for name in SECRETS:
        assert declared[name]["file"] == f"./secrets/{name}"
    assert "/secrets/" in (PROJECT_ROOT / ".gitignore").read_text().splitlines()
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert ":?" not in text
    assert "PASSWORD:" not in text  # only the *_FILE forms
    for name, service in services.items():
        environment = service.get("environment") or {}
        assert "CAREBUS_SUBJECT_KEY_SECRET" not in environment, name
        assert "CAREBUS_POSTGRES_PASSWORD" not in environment, name
    for name in [*DEPLOYABLES, *SETUP_SERVICES]:
        assert set(services[name]["secrets"]) == {
            s for s, user in SECRETS.items() if user == "carebus"
        }, name
        assert services[name]["environment"]["CAREBUS_SECRETS_DIR"] == "/run/secrets", name
    postgres = services["postgres"]
    assert postgres["secrets"] == ["carebus_postgres_password"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == (
        "/run/secrets/carebus_postgres_password"
    )
    grafana = services["grafana"]
    assert grafana["secrets"] == ["grafana_admin_password"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == (
        "/run/secrets/grafana_admin_password"
    )


def test_no_top_level_name_or_version(compose: dict[str, Any]) -> None:
    """The file stays readable by docker-compose 1.29 (no `name:`) as the Compose spec."""
    assert "name" not in compose
    assert "version" not in compose


def test_every_deployable_has_a_service(services: dict[str, dict[str, Any]]) -> None:
    """Each deployable of DESIGN's layout runs as its own service with its own module."""
    for name, module in DEPLOYABLES.items():
        assert name in services, f"no service for {name}"
        assert services[name]["command"] == ["python", "-m", module], name


def test_setup_services_are_one_shot(services: dict[str, dict[str, Any]]) -> None:
    """Migrations and the topic catalogue run once and never restart in a loop."""
    assert services["migrate"]["command"] == [
        "alembic",
        "-c",
        "infra/postgres/alembic.ini",
        "upgrade",
        "head",
    ]
    assert services["topics"]["command"] == ["carebus", "topics", "apply"]
    for name in SETUP_SERVICES:
        assert services[name]["restart"] == "no", name


def test_deployables_start_after_setup(services: dict[str, dict[str, Any]]) -> None:
    """No deployable starts before the broker is healthy and the schema and topics exist."""
    for name in DEPLOYABLES:
        depends_on = services[name]["depends_on"]
        assert depends_on["kafka"]["condition"] == "service_healthy", name
        assert depends_on["postgres"]["condition"] == "service_healthy", name
        for setup in SETUP_SERVICES:
            assert depends_on[setup]["condition"] == "service_completed_successfully", name


def test_long_running_services_restart_and_report_health(
    services: dict[str, dict[str, Any]],
) -> None:
    """Everything except the one-shot setup restarts on failure and has a healthcheck."""
    for name, service in services.items():
        if name in SETUP_SERVICES:
            continue
        assert service.get("restart") in {"always", "unless-stopped", "on-failure"}, name
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_carebus_services_share_one_image(services: dict[str, dict[str, Any]]) -> None:
    """Every carebus process is built from the one Dockerfile at the repository root."""
    images = set()
    for name in [*DEPLOYABLES, *SETUP_SERVICES]:
        service = services[name]
        assert service["build"] == ".", name
        images.add(service["image"])
    assert len(images) == 1


def test_carebus_configuration_is_only_carebus_env(services: dict[str, dict[str, Any]]) -> None:
    """carebus processes are configured through CAREBUS_* variables only, never env files."""
    for name in [*DEPLOYABLES, *SETUP_SERVICES]:
        service = services[name]
        assert "env_file" not in service, name
        environment = service["environment"]
        assert isinstance(environment, dict), name
        assert all(key.startswith("CAREBUS_") for key in environment), name
        assert environment["CAREBUS_HTTP_HOST"] == "0.0.0.0", name
        assert environment["CAREBUS_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert "@postgres:5432/" in environment["CAREBUS_POSTGRES_DSN"], name
        assert environment["CAREBUS_ENVIRONMENT"] == "production", name


def test_only_the_apis_and_grafana_are_published(services: dict[str, dict[str, Any]]) -> None:
    """The broker, the database and the workers are unreachable from outside the host."""
    for name in ("kafka", "postgres", *WORKERS, *SETUP_SERVICES):
        assert not _published_ports(services[name]), f"{name} publishes a port"
    for port in _published_ports(services["prometheus"]):
        assert port.startswith("127.0.0.1:"), "prometheus is published beyond loopback"
    for name, service in services.items():
        if name not in PUBLIC_SERVICES and name != "prometheus":
            assert not _published_ports(service), f"{name} publishes a port"


def test_http_services_publish_the_port_they_listen_on(
    services: dict[str, dict[str, Any]],
) -> None:
    """Each API publishes, and is health-checked on, the port its settings make it listen on."""
    for name in HTTP_SERVICES:
        service = services[name]
        port = service["environment"][f"CAREBUS_{name.upper()}_PORT"]
        assert _published_ports(service) == [f"{port}:{port}"], name
        assert f"127.0.0.1:{port}/healthz" in " ".join(service["healthcheck"]["test"]), name


def test_kafka_is_a_single_kraft_node(services: dict[str, dict[str, Any]]) -> None:
    """Kafka runs in KRaft combined mode on the internal listener the clients are given."""
    environment = services["kafka"]["environment"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert environment["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert (
        environment["KAFKA_CONTROLLER_QUORUM_VOTERS"]
        == f"{environment['KAFKA_NODE_ID']}@kafka:9093"
    )
    assert environment["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert environment["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "kafka-data:/var/lib/kafka/data" in services["kafka"]["volumes"]


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    """Broker, database, metrics and faust table state survive `docker-compose down`."""
    named = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if not source.startswith(("./", "/")):
                assert source in named, f"{name} mounts undeclared volume {source}"
    for name in ("kafka", "postgres", "prometheus", "grafana", "router", "sla"):
        sources = [str(volume).split(":", 1)[0] for volume in compose["services"][name]["volumes"]]
        assert any(source in named for source in sources), f"{name} has no named volume"


def test_prometheus_scrapes_every_deployable(services: dict[str, dict[str, Any]]) -> None:
    """Prometheus scrapes each deployable at the compose name and port it serves /metrics on."""
    config = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    for name in HTTP_SERVICES:
        port = services[name]["environment"][f"CAREBUS_{name.upper()}_PORT"]
        assert f"{name}:{port}" in targets, name
    for name in WORKERS:
        port = services[name]["environment"]["CAREBUS_METRICS_PORT"]
        assert f"{name}:{port}" in targets, name
        assert f"127.0.0.1:{port}/metrics" in " ".join(services[name]["healthcheck"]["test"])
    assert config["rule_files"] == ["rules/*.yml"]
    assert (PROMETHEUS_FILE.parent / "rules").is_dir()
    assert "./infra/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]


def _repository_source(service: dict[str, Any], container_path: str) -> tuple[str, bool]:
    """The repository path a bind mount puts at `container_path`, and whether it is read-only.

    The deepest mount that contains the path wins, as in the container.
    """
    best: tuple[str, str, bool] | None = None
    for volume in service.get("volumes", []):
        source, target, *options = str(volume).split(":")
        if container_path != target and not container_path.startswith(f"{target}/"):
            continue
        if best is None or len(target) > len(best[1]):
            best = (source, target, "ro" in options)
    assert best is not None, f"nothing is mounted at {container_path}"
    source, target, read_only = best
    assert source.startswith("./"), f"{container_path} is not from the repository"
    return source + container_path[len(target) :], read_only


def _pinned(image: str) -> bool:
    _name, _, tag = image.rpartition(":")
    return bool(_name) and tag not in {"", "latest"}


def test_prometheus_runs_the_repository_config(services: dict[str, dict[str, Any]]) -> None:
    """Prometheus reads the repository's config and rules read-only; its data is in a volume."""
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    assert _pinned(prometheus["image"])
    assert _repository_source(prometheus, "/etc/prometheus/prometheus.yml") == (
        "./infra/prometheus/prometheus.yml",
        True,
    )
    assert _repository_source(prometheus, "/etc/prometheus/rules") == (
        "./infra/prometheus/rules",
        True,
    )
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    [storage] = [flag for flag in prometheus["command"] if flag.startswith("--storage.tsdb.path=")]
    assert f"prometheus-data:{storage.split('=', 1)[1]}" in prometheus["volumes"]
    assert _published_ports(prometheus) == ["127.0.0.1:9090:9090"]


def test_grafana_runs_the_repository_provisioning(services: dict[str, dict[str, Any]]) -> None:
    """Grafana loads the repository's datasource and dashboards, read-only, after Prometheus."""
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    assert _pinned(grafana["image"])
    assert _repository_source(grafana, "/etc/grafana/provisioning") == (
        "./infra/grafana/provisioning",
        True,
    )
    assert "prometheus" in grafana["depends_on"]
    assert _published_ports(grafana) == ["3000:3000"]


def test_grafana_has_no_default_login(services: dict[str, dict[str, Any]]) -> None:
    """The admin password comes from a file secret (no default) and anonymous viewers are
    refused."""
    environment = services["grafana"]["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in environment
    assert environment["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_image_runs_as_a_non_root_user() -> None:
    """The final image stage switches to an unprivileged user before anything runs."""
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text(encoding="utf-8")
    final_stage = re.split(r"(?m)^FROM ", dockerfile)[-1]
    assert final_stage.startswith("python:3.11-slim")
    users = re.findall(r"(?m)^USER\s+(\S+)", final_stage)
    assert users, "the final stage never sets USER"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    """Secrets, the venv and local broker/database state never enter the build context."""
    ignored = {
        line.strip()
        for line in (PROJECT_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".carebus", ".env"} <= ignored
