"""The production stack description: docker-compose.yml, its Dockerfile and Prometheus config."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from carebus.runtime.config import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
PROMETHEUS_FILE = PROJECT_ROOT / "infra" / "prometheus" / "prometheus.yml"

# Variables the stack refuses to start without; none of them has a safe default.
# The file secrets every service that needs one declares (compose `secrets:`, /run/secrets).
SECRETS = {
    "carebus_subject_key_secret": "carebus",
    "carebus_webhook_secret_key": "carebus",
    "carebus_person_key_secret": "carebus",
    "carebus_adapter_id_secret": "carebus",
    "carebus_oidc_client_key": "carebus",
    "carebus_audit_oidc_client_key": "carebus",
    "carebus_patient_oidc_client_key": "carebus",
    "postgres_tls_ca": "carebus",
    "grafana_admin_password": "grafana",
}
# Only these hold the key that encrypts webhook signing secrets at rest.
WEBHOOK_KEY_HOLDERS = {"registry", "webhooks", "migrate"}
# Only these hold the key that wraps each person's data key: the gateway seals, the readers
# that show a recipient the person's data open (docs/retention.md, "Erasure").
PERSON_KEY_HOLDERS = {"gateway", "audit", "inbox", "webhooks"}
# Each Kafka client's principal (infra/kafka/acls.yaml); the audit API and the inbox have none.
KAFKA_PRINCIPALS = {
    "gateway": "gateway",
    "registry": "registry",
    "router": "router",
    "sla": "sla",
    "event-store": "event_store",
    "audit-store": "audit_store",
    "alert-store": "alert_store",
    "webhooks": "webhooks",
}
KAFKA_SECRETS = {
    "kafka_ca_pem",
    "kafka_broker_pem",
    "kafka_password_broker",
    "kafka_password_admin",
    *(f"kafka_password_{p}" for p in KAFKA_PRINCIPALS.values()),
}
# Database passwords: the owner's (the migrations), the superuser's and each service's own, all
# known to PostgreSQL's init script; each service mounts only its own as carebus_postgres_password.
DATABASE_ROLES = {
    "gateway": "gateway",
    "registry": "registry",
    "audit": "audit",
    "inbox": "inbox",
    "adapters": "adapters",
    "sla": "sla",
    "event-store": "event_store",
    "audit-store": "audit_store",
    "alert-store": "alert_store",
    "webhooks": "webhooks",
}
DATABASE_PASSWORDS = {
    "carebus_postgres_password",
    "postgres_superuser_password",
    *(f"postgres_{role}_password" for role in [*DATABASE_ROLES.values(), "operator"]),
}
POSTGRES_TLS = {"postgres_tls_cert", "postgres_tls_key"}
# The TLS proxy's certificate chain and key (infra/proxy/nginx.conf reads them).
PROXY_TLS = {"proxy_tls_cert", "proxy_tls_key"}

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
# The three KRaft nodes (broker + controller each); every client bootstraps from all of them.
KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")
# Served to the outside by the TLS proxy, each under its own host name (the adapters' MLLP
# listener on the proxy's port 2575 too); the proxy is the only service that publishes a port
# beyond the host's loopback address.
PUBLIC_SERVICES = {*HTTP_SERVICES, "adapters", "grafana"}
PROXY = "proxy"


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
    assert set(declared) == {
        *SECRETS,
        *DATABASE_PASSWORDS,
        *POSTGRES_TLS,
        *KAFKA_SECRETS,
        *PROXY_TLS,
    }
    for name in declared:
        assert declared[name]["file"] == f"./secrets/{name}"
    assert "/secrets/" in (PROJECT_ROOT / ".gitignore").read_text().splitlines()
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert ":?" not in text
    assert "PASSWORD:" not in text  # only the *_FILE forms
    for name, service in services.items():
        environment = service.get("environment") or {}
        assert "CAREBUS_SUBJECT_KEY_SECRET" not in environment, name
        assert "CAREBUS_POSTGRES_PASSWORD" not in environment, name
    for name in [*DEPLOYABLES, "migrate"]:
        # Each process mounts exactly what it uses: the subject key and the database's CA, the
        # webhook key only where webhook secrets are sealed or opened, its own database password
        # and its own Kafka principal's.
        wanted = {"carebus_subject_key_secret", "postgres_tls_ca"}
        if name in WEBHOOK_KEY_HOLDERS:
            wanted.add("carebus_webhook_secret_key")
        if name in PERSON_KEY_HOLDERS:
            wanted.add("carebus_person_key_secret")
        if name in DATABASE_ROLES or name == "migrate":
            wanted.add("carebus_postgres_password")
        if name in KAFKA_PRINCIPALS:
            wanted |= {"kafka_ca_pem", "carebus_kafka_password"}
        if name == "inbox":
            wanted.add("carebus_oidc_client_key")  # HelseID's private_key_jwt
        if name == "audit":
            # HelseID's (the privacy officer) and ID-porten's (the patient) private_key_jwt
            wanted |= {"carebus_audit_oidc_client_key", "carebus_patient_oidc_client_key"}
        assert set(_secret_mounts(services[name])) == wanted, name
        assert services[name]["environment"]["CAREBUS_SECRETS_DIR"] == "/run/secrets", name
    postgres = services["postgres"]
    assert set(postgres["secrets"]) == DATABASE_PASSWORDS | POSTGRES_TLS
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == (
        "/run/secrets/postgres_superuser_password"
    )
    grafana = services["grafana"]
    assert grafana["secrets"] == ["grafana_admin_password"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == (
        "/run/secrets/grafana_admin_password"
    )
    assert set(services[PROXY]["secrets"]) == PROXY_TLS


def test_the_inbox_signs_people_in_with_helseid(services: dict[str, dict[str, Any]]) -> None:
    """Production's inbox points at HelseID over https, maps HelseID's organisation claims,
    and authenticates with its private key file (docs/security.md, 3b)."""
    environment = services["inbox"]["environment"]
    assert _default(environment, "CAREBUS_OIDC_ISSUER_URL") == "https://helseid-sts.nhn.no"
    # The inbox's own origin (it refuses sign-in posts from any other) is where the proxy
    # serves it.
    inbox_host = _default(services[PROXY]["environment"], "CAREBUS_INBOX_HOST")
    assert _default(environment, "CAREBUS_OIDC_REDIRECT_URL") == f"https://{inbox_host}/callback"
    assert environment["CAREBUS_OIDC_ORG_CLAIMS"].split(",") == [
        "helseid://claims/client/claims/orgnr_child",
        "helseid://claims/client/claims/orgnr_parent",
    ]
    assert "carebus_oidc_client_key" in _secret_mounts(services["inbox"])
    assert "oidc_issuer" not in services  # the development issuer is never deployed


def test_the_audit_service_signs_people_in_with_helseid_and_id_porten(
    services: dict[str, dict[str, Any]],
) -> None:
    """Production's audit service signs the privacy officer in at HelseID as its own client and
    the patient at ID-porten, both coming back to the host the proxy serves it under, and
    authenticates to each with a private key file, never an environment value."""
    environment = services["audit"]["environment"]
    assert _default(environment, "CAREBUS_OIDC_ISSUER_URL") == "https://helseid-sts.nhn.no"
    assert (
        environment["CAREBUS_OIDC_ORG_CLAIMS"]
        == (services["inbox"]["environment"]["CAREBUS_OIDC_ORG_CLAIMS"])
    )
    assert _default(environment, "CAREBUS_AUDIT_OIDC_CLIENT_ID") == "carebus-audit"
    assert _default(environment, "CAREBUS_PATIENT_OIDC_ISSUER_URL") == "https://idporten.no"
    assert _default(environment, "CAREBUS_PATIENT_OIDC_CLIENT_ID") == "carebus-audit-patient"
    # The audit service's own origin (it refuses cookie-authenticated posts from any other) is
    # where the proxy serves it.
    audit_host = _default(services[PROXY]["environment"], "CAREBUS_AUDIT_HOST")
    assert _default(environment, "CAREBUS_AUDIT_OIDC_REDIRECT_URL") == (
        f"https://{audit_host}/callback"
    )
    assert _default(environment, "CAREBUS_PATIENT_OIDC_REDIRECT_URL") == (
        f"https://{audit_host}/patient/callback"
    )
    # Each key is read from CAREBUS_SECRETS_DIR under the setting's name with the prefix.
    for setting in ("audit_oidc_client_key", "patient_oidc_client_key"):
        assert setting in Settings.model_fields, setting
        assert f"carebus_{setting}" in _secret_mounts(services["audit"]), setting
        for name, service in services.items():
            assert f"CAREBUS_{setting.upper()}" not in (service.get("environment") or {}), name
    # No misspelt setting is silently ignored (CAREBUS_SECRETS_DIR is read before the settings).
    known = {*Settings.model_fields, "secrets_dir"}
    for name in [*DEPLOYABLES, *SETUP_SERVICES]:
        settings = {key.removeprefix("CAREBUS_").lower() for key in services[name]["environment"]}
        assert settings <= known, name


def _default(environment: dict[str, str], name: str) -> str:
    """The default of `name: ${name:-default}`, a value the deployment may override."""
    found = re.fullmatch(r"\$\{" + name + r":-(.+)\}", environment[name])
    assert found is not None, name
    return found.group(1)


def _secret_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Each secret a service mounts: its name under /run/secrets, and the secret it is."""
    mounts = {}
    for entry in service.get("secrets", []):
        if isinstance(entry, str):
            mounts[entry] = entry
        else:
            mounts[entry.get("target", entry["source"])] = entry["source"]
    return mounts


def test_each_service_logs_in_to_the_database_as_its_own_role_over_verified_tls(
    services: dict[str, dict[str, Any]],
) -> None:
    """Every service's DSN names its own role and requires TLS with the server's certificate
    checked (verify-full against the CA), and it holds its own password only; migrations run as
    the owner, which no service gets; the router, which never connects, gets no password."""
    for name in [*DEPLOYABLES, "migrate"]:
        service = services[name]
        dsn = urlsplit(service["environment"]["CAREBUS_POSTGRES_DSN"])
        query = parse_qs(dsn.query)
        assert query["sslmode"] == ["verify-full"], name
        assert query["sslrootcert"] == ["/run/secrets/postgres_tls_ca"], name
        assert (dsn.hostname, dsn.port, dsn.password) == ("postgres", 5432, None), name
        password = _secret_mounts(service).get("carebus_postgres_password")
        if name == "migrate":
            assert (dsn.username, password) == ("carebus", "carebus_postgres_password")
        elif name == "router":
            assert (dsn.username, password) == ("carebus_router", None)
        else:
            role = DATABASE_ROLES[name]
            assert (dsn.username, password) == (f"carebus_{role}", f"postgres_{role}_password")
    assert "carebus_postgres_password" not in _secret_mounts(services["topics"])


def test_postgres_requires_tls_and_scram(services: dict[str, dict[str, Any]]) -> None:
    """The server runs with TLS on and an hba file that refuses every connection without TLS,
    or without a SCRAM password, and the superuser from outside its container."""
    postgres = services["postgres"]
    command = " ".join(postgres["entrypoint"])
    for setting in (
        "ssl=on",
        "ssl_cert_file=/run/secrets/postgres_tls_cert",
        "password_encryption=scram-sha-256",
        "hba_file=/etc/carebus/pg_hba.conf",
    ):
        assert f"-c {setting}" in command, setting
    assert _repository_source(postgres, "/etc/carebus/pg_hba.conf") == (
        "./infra/postgres/pg_hba.conf",
        True,
    )
    rules = [
        line.split()
        for line in (PROJECT_ROOT / "infra/postgres/pg_hba.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules == [
        ["local", "all", "postgres", "peer"],
        ["local", "all", "all", "reject"],
        ["hostssl", "all", "postgres", "all", "reject"],
        ["hostssl", "all", "all", "all", "scram-sha-256"],
        ["host", "all", "all", "all", "reject"],
    ]
    script = (PROJECT_ROOT / "infra/postgres/initdb/10-carebus-roles.sh").read_text()
    for role in [*DATABASE_ROLES.values(), "operator"]:
        assert role in script.split('services="', 1)[1].split('"', 1)[0].split(), role


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
    assert services["topics"]["command"] == [
        "sh",
        "-c",
        "carebus topics apply && carebus kafka apply",
    ]
    for name in SETUP_SERVICES:
        assert services[name]["restart"] == "no", name


def test_deployables_start_after_setup(services: dict[str, dict[str, Any]]) -> None:
    """No deployable starts before the broker is healthy and the schema and topics exist."""
    for name in DEPLOYABLES:
        depends_on = services[name]["depends_on"]
        for broker in KAFKA_NODES:
            assert depends_on[broker]["condition"] == "service_healthy", name
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
        assert environment["CAREBUS_KAFKA_BOOTSTRAP"] == ",".join(
            f"{broker}:9092" for broker in KAFKA_NODES
        ), name
        assert environment["CAREBUS_KAFKA_REPLICATION"] == "3", name
        assert "@postgres:5432/" in environment["CAREBUS_POSTGRES_DSN"], name
        assert environment["CAREBUS_ENVIRONMENT"] == "production", name


def test_only_the_tls_proxy_is_published(services: dict[str, dict[str, Any]]) -> None:
    """Nothing speaks plain HTTP or MLLP to the outside: the proxy alone publishes ports, 443,
    2575 (HL7 v2 over MLLP with TLS) and the 80 that only sends browsers to https; Prometheus is
    bound to the loopback address; every other service, the APIs, the adapters and Grafana
    included, is reachable on the compose network only."""
    assert _published_ports(services[PROXY]) == ["443:443", "80:80", "2575:2575"]
    assert _published_ports(services["prometheus"]) == ["127.0.0.1:9090:9090"]
    for name, service in services.items():
        if name not in {PROXY, "prometheus"}:
            assert not _published_ports(service), f"{name} publishes a port"


def test_http_services_expose_the_port_they_listen_on(
    services: dict[str, dict[str, Any]],
) -> None:
    """Each API exposes to the proxy, and is health-checked on, the port its settings make it
    listen on; Grafana exposes its own."""
    for name in HTTP_SERVICES:
        service = services[name]
        port = service["environment"][f"CAREBUS_{name.upper()}_PORT"]
        assert [str(exposed) for exposed in service["expose"]] == [port], name
        assert f"127.0.0.1:{port}/healthz" in " ".join(service["healthcheck"]["test"]), name
    assert [str(exposed) for exposed in services["grafana"]["expose"]] == ["3000"]


def test_the_adapters_expose_their_http_and_mllp_ports_to_the_proxy_only(
    services: dict[str, dict[str, Any]],
) -> None:
    """The adapters expose the HTTP and MLLP ports their settings make them listen on, which
    the proxy passes to (infra/proxy: https://<CAREBUS_ADAPTERS_HOST>/ and MLLP over TLS on
    2575), are health-checked on the first, and publish nothing themselves."""
    adapters = services["adapters"]
    environment = adapters["environment"]
    ports = [environment["CAREBUS_ADAPTERS_PORT"], environment["CAREBUS_MLLP_PORT"]]
    assert [str(exposed) for exposed in adapters["expose"]] == ports
    assert f"127.0.0.1:{ports[0]}/healthz" in " ".join(adapters["healthcheck"]["test"])
    assert not _published_ports(adapters)
    proxy = (PROJECT_ROOT / "infra" / "proxy").glob("**/*.conf*")
    text = "".join(path.read_text(encoding="utf-8") for path in proxy)
    assert f"http://adapters:{ports[0]};" in text
    assert f"adapters:{ports[1]};" in text


def test_the_proxy_serves_each_public_service_under_its_own_host_name(
    services: dict[str, dict[str, Any]],
) -> None:
    """The proxy's environment names one host per public service, CAREBUS_<SERVICE>_HOST with
    a default under carebus.example, all different, and nothing else the template fills in;
    Grafana knows the address it is served at."""
    environment = services[PROXY]["environment"]
    hosts = {name: f"CAREBUS_{name.upper()}_HOST" for name in PUBLIC_SERVICES}
    assert set(environment) == {"NGINX_ENVSUBST_FILTER", *hosts.values()}
    assert environment["NGINX_ENVSUBST_FILTER"] == "^CAREBUS_"
    for name, variable in hosts.items():
        assert environment[variable] == f"${{{variable}:-{name}.carebus.example}}", name
    assert services["grafana"]["environment"]["GF_SERVER_ROOT_URL"] == (
        "https://${CAREBUS_GRAFANA_HOST:-grafana.carebus.example}/"
    )
    assert services["grafana"]["environment"]["GF_SECURITY_COOKIE_SECURE"] == "true"


def test_the_proxy_runs_the_repository_config(services: dict[str, dict[str, Any]]) -> None:
    """The official nginx image, pinned, reads infra/proxy read-only, its certificate and key
    from file secrets, and is health-checked without leaving the container."""
    proxy = services[PROXY]
    assert proxy["image"].startswith("nginx:")
    assert _pinned(proxy["image"])
    assert _repository_source(proxy, "/etc/nginx/nginx.conf") == (
        "./infra/proxy/nginx.conf",
        True,
    )
    assert _repository_source(proxy, "/etc/nginx/templates/carebus.conf.template") == (
        "./infra/proxy/templates/carebus.conf.template",
        True,
    )
    assert set(_secret_mounts(proxy)) == PROXY_TLS
    assert "http://127.0.0.1:8081/healthz" in proxy["healthcheck"]["test"]


def test_kafka_is_three_secured_kraft_nodes(services: dict[str, dict[str, Any]]) -> None:
    """The production cluster is three nodes secured like the local one (SASL/SCRAM over TLS
    for clients, mutual TLS for the controller, nothing allowed that acls.yaml does not grant),
    the three controller voters, with replication 3 and min.insync.replicas 2."""
    assert "kafka" not in services
    images = set()
    for index, name in enumerate(KAFKA_NODES, 1):
        kafka = services[name]
        images.add(kafka["image"])
        assert kafka["command"] == ["/bin/sh", "/opt/carebus/kafka/start-kafka.sh"]
        assert kafka["environment"]["KAFKA_NODE_ID"] == str(index), name
        assert "./infra/kafka/compose:/opt/carebus/kafka:ro" in kafka["volumes"]
        assert f"{name}-data:/var/lib/kafka/data" in kafka["volumes"]
        assert f"--bootstrap-server {name}:9092" in kafka["healthcheck"]["test"][1], name
        assert set(kafka["secrets"]) == {
            "kafka_broker_pem",
            "kafka_ca_pem",
            "kafka_password_broker",
            "kafka_password_admin",
        }
    assert len(images) == 1
    assert {services[name]["environment"]["CLUSTER_ID"] for name in KAFKA_NODES} != {""}
    assert len({services[name]["environment"]["CLUSTER_ID"] for name in KAFKA_NODES}) == 1
    config = dict(
        line.split("=", 1)
        for line in (PROJECT_ROOT / "infra/kafka/compose/server.properties")
        .read_text()
        .splitlines()
        if line and not line.startswith("#")
    )
    assert config["process.roles"] == "broker,controller"
    assert config["node.id"] == "@NODE_ID@"
    assert config["controller.quorum.voters"] == ",".join(
        f"{index}@{name}:9093" for index, name in enumerate(KAFKA_NODES, 1)
    )
    assert config["listener.security.protocol.map"] == "CLIENT:SASL_SSL,CONTROLLER:SSL"
    assert config["advertised.listeners"].startswith("CLIENT://kafka-@NODE_ID@:9092")
    assert config["listener.name.controller.ssl.client.auth"] == "required"
    assert config["allow.everyone.if.no.acl.found"] == "false"
    assert config["super.users"] == "User:broker;User:admin"
    assert config["auto.create.topics.enable"] == "false"
    for key in ("default.replication.factor", "offsets.topic.replication.factor"):
        assert config[key] == "3", key
    for key in ("min.insync.replicas", "transaction.state.log.min.isr"):
        assert config[key] == "2", key
    assert "PLAINTEXT" not in (PROJECT_ROOT / "infra/kafka/compose/server.properties").read_text()


def test_the_catalogue_is_written_for_the_production_replication(
    services: dict[str, dict[str, Any]],
) -> None:
    """Every catalogued topic's replication is what the production cluster is configured for."""
    from carebus.adapters.topic_admin import load_catalogue

    replication = int(services["topics"]["environment"]["CAREBUS_KAFKA_REPLICATION"])
    assert replication == len(KAFKA_NODES)
    assert {spec.replication_factor for spec in load_catalogue()} == {replication}


def test_each_kafka_client_is_its_own_principal(services: dict[str, dict[str, Any]]) -> None:
    """Every component speaks to the broker as its own principal with its own password; the
    setup gives every principal of acls.yaml its credential as the admin, which no service is."""
    from carebus.adapters.kafka_acls import load_grants, principals

    assert set(KAFKA_PRINCIPALS.values()) == set(principals(load_grants()))
    for name, principal in KAFKA_PRINCIPALS.items():
        environment = services[name]["environment"]
        assert environment["CAREBUS_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", name
        assert environment["CAREBUS_KAFKA_USERNAME"] == principal, name
        assert environment["CAREBUS_KAFKA_CA_FILE"] == "/run/secrets/kafka_ca_pem", name
        mounts = _secret_mounts(services[name])
        assert mounts["carebus_kafka_password"] == f"kafka_password_{principal}", name
    for name in ("audit", "inbox"):
        assert "CAREBUS_KAFKA_USERNAME" not in services[name]["environment"], name
    topics = services["topics"]
    assert topics["environment"]["CAREBUS_KAFKA_USERNAME"] == "admin"
    mounts = _secret_mounts(topics)
    assert mounts.pop("carebus_kafka_password") == "kafka_password_admin"
    assert set(mounts) == {"kafka_ca_pem"} | {
        f"kafka_password_{p}" for p in KAFKA_PRINCIPALS.values()
    }


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    """Broker, database, metrics and faust table state survive `docker-compose down`."""
    named = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if not source.startswith(("./", "/")):
                assert source in named, f"{name} mounts undeclared volume {source}"
    for name in (*KAFKA_NODES, "postgres", "prometheus", "grafana", "router", "sla"):
        sources = [str(volume).split(":", 1)[0] for volume in compose["services"][name]["volumes"]]
        assert any(source in named for source in sources), f"{name} has no named volume"


def test_prometheus_scrapes_every_deployable(services: dict[str, dict[str, Any]]) -> None:
    """Prometheus scrapes each deployable at its compose name on its internal metrics port; the
    HTTP services' API ports neither serve /metrics nor are scraped, and the metrics port is
    never published."""
    config = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    for name in HTTP_SERVICES:
        environment = services[name]["environment"]
        port = environment[f"CAREBUS_{name.upper()}_PORT"]
        metrics_port = environment["CAREBUS_METRICS_PORT"]
        assert f"{name}:{metrics_port}" in targets, name
        assert f"{name}:{port}" not in targets, name
        assert environment["CAREBUS_METRICS_ON_PUBLIC_PORT"] == "false", name
        assert [str(exposed) for exposed in services[name]["expose"]] == [port], name
        assert not _published_ports(services[name]), name
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
    assert not _published_ports(grafana)  # served through the proxy only


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
    assert re.match(r"python:3\.11(\.\d+)?-slim[@\s]", final_stage)
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
