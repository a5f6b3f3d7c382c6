"""The stack as a user runs it: `carebus up --with-prometheus`, `status`, `trace`, `down`.

One stack for the module (starting it is most of the time these tests take): `up` again changes
nothing and `status --json` prints the contract; every metric a Grafana dashboard or a Prometheus
rule uses is exported by the running services, the local Prometheus scrapes every service and
loads the alert rules, and `carebus trace` shows the path of a demo scenario event; `down` stops
everything and leaves nothing running.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from carebus.runtime.config import PROJECT_ROOT, Settings
from carebus.wire import topics
from carebus_dev.stack.postgres import with_user
from carebus_dev.stack.process import processes_mentioning
from carebus_dev.stack.prometheus import RULES_DIR, job_name
from carebus_dev.stack.supervisor import SERVICES
from carebus_dev.testing import run_cli
from tests.observability import used_metric_names

pytestmark = pytest.mark.integration

# Series the demo scenario must have produced: the flow through every stage is visible.
EXPECTED_AFTER_DEMO = {
    "carebus_http_requests_total": {"service": "gateway"},
    "carebus_events_accepted_total": {"event_type": "admission"},
    "carebus_produce_duration_seconds_count": {"topic": "care.events.v1"},
    "carebus_routing_decisions_total": {"decision": "delivered"},
    "carebus_sink_rows_total": {"sink": "event-store"},
    "carebus_sla_events_total": {"outcome": "applied"},
    "carebus_consumer_lag_records": {"group": "carebus-router"},
    "carebus_routing_delay_seconds_count": {"event_type": "admission"},
    "carebus_webhook_pending": {"agency": "municipality"},
}
# Ten or more digits in a label value could be a national identity number: never allowed.
_LONG_NUMBER = re.compile(r"\d{10,}")


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in env.items():
        if key.startswith("CAREBUS_"):
            monkeypatch.setenv(key, value)
    return Settings()


def _scrape(urls: Iterable[tuple[str, str]]) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """Per service, every sample (name, labels) its /metrics serves, plus family names."""
    exported: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for service, url in urls:
        response = httpx.get(f"{url}/metrics", timeout=5.0)
        assert response.status_code == 200, f"{service} /metrics answered {response.status_code}"
        samples: list[tuple[str, dict[str, str]]] = []
        for family in text_string_to_metric_families(response.text):
            samples.append((family.name, {}))  # the family, exported even before a sample
            samples.extend((sample.name, dict(sample.labels)) for sample in family.samples)
        exported[service] = samples
    return exported


def _names(exported: dict[str, list[tuple[str, dict[str, str]]]]) -> set[str]:
    names = {name for samples in exported.values() for name, _ in samples}
    # A counter family `x` exports `x_total`; a histogram family `x` exports `x_bucket` etc.
    return names | {f"{name}_total" for name in names}


def _has_sample(
    exported: dict[str, list[tuple[str, dict[str, str]]]], name: str, labels: dict[str, str]
) -> bool:
    return any(
        sample == name and labels.items() <= have.items()
        for samples in exported.values()
        for sample, have in samples
        if have
    )


@pytest.fixture(scope="module")
def up(cli_env: dict[str, str]) -> dict[str, str]:
    """`carebus up --with-prometheus` once for the module; the environment to speak to it."""
    first = run_cli(cli_env, "up", "--with-prometheus")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "prometheus" in first.stdout
    return cli_env


def _answer(url: str) -> int | str:
    """The status code of GET `url`, or the error that kept it from answering."""
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def test_up_again_changes_nothing_and_status_prints_the_contract(up: dict[str, str]) -> None:
    """`carebus up` is healthy and idempotent; status prints the contract, every part working."""
    cli_env = up
    again = run_cli(cli_env, "up", "--with-prometheus")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "started" not in again.stdout  # everything was left running

    status = run_cli(cli_env, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    document = json.loads(status.stdout)
    assert {"services", "metrics", "kafka", "kafka_client", "postgres", "dev_tokens"} <= set(
        document
    )
    # Each component's state, as the table without --json shows it.
    components = document["components"]
    assert {"kafka", "postgres", "migrations", "gateway", "router"} <= set(components)
    assert {c["state"] for c in components.values()} <= {"up", "absent"}, components
    # Every component's /metrics on its internal port, each one answering.
    assert set(document["metrics"]) >= {"gateway", "registry", "audit", "inbox", "router"}
    for component, url in document["metrics"].items():
        assert url not in document["services"].values(), component
        assert _answer(url) == 200, (component, url)
    # The development OpenID Connect issuer people sign in to the inbox with.
    issuer = document["services"]["oidc_issuer"]
    assert issuer == f"http://127.0.0.1:{cli_env['CAREBUS_OIDC_ISSUER_PORT']}"
    discovery = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=10)
    assert discovery.json()["issuer"] == issuer
    # The adapters: HTTP for PLO, HL7 v2 and FHIR, and their MLLP listener for HL7 v2.
    assert _answer(f"{document['services']['adapters']}/healthz") == 200
    mllp = urlsplit(document["services"]["mllp"])
    assert mllp.scheme == "tcp"
    socket.create_connection((mllp.hostname, mllp.port), timeout=10).close()
    assert document["kafka"] == cli_env["CAREBUS_KAFKA_BOOTSTRAP"]
    # The admin's client configuration works, and without it the broker refuses.
    client = document["kafka_client"]
    assert client["bootstrap.servers"] == document["kafka"]
    assert client["security.protocol"] == "SASL_SSL"
    assert AdminClient(client).list_topics(timeout=10).topics
    with pytest.raises(KafkaException):
        AdminClient({"bootstrap.servers": document["kafka"]}).list_topics(timeout=3)
    # The owner's DSN with its generated password: it connects with no further setup, reads
    # every table, and the audit trail stays append-only for it too.
    assert document["postgres"] != cli_env["CAREBUS_POSTGRES_DSN"]
    assert with_user(document["postgres"], "carebus") == cli_env["CAREBUS_POSTGRES_DSN"]
    with psycopg.connect(document["postgres"]) as conn:
        conn.execute("SELECT count(*) FROM events").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("DELETE FROM disclosures")
    tokens = document["dev_tokens"]
    assert set(tokens) == {
        *topics.AGENCIES,
        "coordinator",
        "privacy_officer",
        "admin",
        "gp_coordinator",
        "orgs",
        "operator",
        "operator_privacy_officer",
        "operator_org",
    }
    assert set(tokens["orgs"]) == set(topics.AGENCIES)
    assert tokens["operator_org"] not in tokens["orgs"].values()
    token_file = Path(cli_env["CAREBUS_STATE_DIR"]) / "dev_tokens.json"
    assert token_file.stat().st_mode & 0o777 == 0o600


def test_up_with_prometheus_exports_every_metric_and_traces_a_demo_event(
    up: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cli_env = up
    demo = subprocess.run(
        [sys.executable, "-m", "producers.scenario"],
        env=cli_env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    settings = _settings(cli_env, monkeypatch)
    urls = [(spec.name, spec.url(settings)) for spec in SERVICES]
    targets = [(name, url) for name, url in urls if url is not None]
    assert len(targets) == len(SERVICES)

    # 1. Every metric used by a dashboard or a rule is exported by the running services, and
    #    the demo's traffic shows up in the series of every stage (the lag reporter runs every
    #    10 s, so this waits for a round or two).
    used = used_metric_names()
    assert len(used) > 20, used
    # A liveness bound, not a speed test: the router joins its group and restores its state on a
    # box that may be busy with other tests.
    deadline = time.monotonic() + 150
    while True:
        exported = _scrape(targets)
        missing = sorted(used - _names(exported) - {"up"})
        silent = sorted(
            name
            for name, labels in EXPECTED_AFTER_DEMO.items()
            if not _has_sample(exported, name, labels)
        )
        if (not missing and not silent) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing, f"used by dashboards or rules but exported by no service: {missing}"
    if silent:
        router_log = run_cli(cli_env, "logs", "router", "--lines", "60").stdout
        pytest.fail(f"no series after the demo scenario for: {silent}; router log:\n{router_log}")
    personal = sorted(
        {
            f"{service}: {name}{labels}"
            for service, samples in exported.items()
            for name, labels in samples
            if any(_LONG_NUMBER.search(value) for value in labels.values())
        }
    )
    assert not personal, f"label values that could be identity numbers: {personal}"

    # 2. The local Prometheus scrapes every service under the production job names and has
    #    loaded every alert rule without an evaluation error.
    prometheus = f"http://127.0.0.1:{settings.prometheus_port}"
    jobs = {job_name(spec.name) for spec in SERVICES} | {"prometheus"}
    deadline = time.monotonic() + 60
    while True:
        active = httpx.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"][
            "activeTargets"
        ]
        healthy = {target["labels"]["job"] for target in active if target["health"] == "up"}
        if healthy >= jobs or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert healthy >= jobs, f"targets not up: {sorted(jobs - healthy)}"
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    declared = {
        rule["alert"]
        for path in sorted(RULES_DIR.glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert declared
    assert declared <= set(loaded), sorted(declared - set(loaded))
    errors = {name: rule.get("lastError") for name, rule in loaded.items() if rule.get("lastError")}
    assert not errors, errors
    status = run_cli(cli_env, "status", "--json")
    assert '"prometheus"' in status.stdout

    # 3. Every alert the demo raised is one a coordinator can act on (issue 17): none names its
    #    own recipient as the contact, no two read alike, and the dangerous transitions the demo
    #    plays are not silent (a risk notice for each risk discharge, the breach it shows).
    with psycopg.connect(settings.postgres_dsn) as conn:
        wanted = {
            "followup_notice.discharge": 2,
            "municipal_reply.discharge_ready": 1,
            "place.repeated_incidents": 2,  # persons a, b, c's housing site
        }
        deadline = time.monotonic() + 60
        while True:
            alerts = conn.execute(
                "SELECT rule_id, recipient_org, contact_org, summary FROM alerts"
            ).fetchall()
            seen = {rule: sum(1 for a in alerts if a[0] == rule) for rule in wanted}
            if all(seen[rule] >= count for rule, count in wanted.items()):
                break
            assert time.monotonic() < deadline, f"alerts after the demo: {seen}"
            time.sleep(1)
    assert not [a for a in alerts if a[2] is not None and a[2] == a[1]], alerts
    summaries = [(a[1], a[3]) for a in alerts]
    assert len(summaries) == len(set(summaries)), "two alerts to one recipient read alike"
    # The release from prison reaches the demo municipality on the person's consent (justice)
    # and no one else; the treatment interruption reaches the plan's coordinator and GP on the
    # presumed basis.
    with psycopg.connect(settings.postgres_dsn) as conn:
        deadline = time.monotonic() + 60
        while True:
            told = conn.execute(
                "SELECT event_type, decision, basis, recipient_agency FROM disclosures"
                " WHERE event_type IN ('prison_release', 'treatment_interrupted')"
                " AND decision = 'delivered' ORDER BY event_type, recipient_agency"
            ).fetchall()
            if len(told) >= 3:
                break
            assert time.monotonic() < deadline, f"deliveries after the demo: {told}"
            time.sleep(1)
    assert told == [
        ("prison_release", "delivered", "consent", "municipality"),
        ("treatment_interrupted", "delivered", "presumed", "fastlege"),
        ("treatment_interrupted", "delivered", "presumed", "municipality"),
    ]

    # 4. `carebus trace` shows every hop of a demo admission.
    with psycopg.connect(settings.postgres_dsn) as conn:
        row = conn.execute(
            "SELECT event_id FROM events WHERE event_type = 'admission' "
            "ORDER BY occurred_at LIMIT 1"
        ).fetchone()
    assert row is not None
    event_id = row[0]
    assert event_id in demo.stdout  # the scenario prints the ids it posted
    trace = run_cli(cli_env, "trace", event_id)
    assert trace.returncode == 0, trace.stdout + trace.stderr
    for stage in ("received", "stored", "routed", "delivered", "obligation"):
        assert stage in trace.stdout, f"no {stage!r} hop in:\n{trace.stdout}"


def test_down_stops_everything_and_leaves_nothing_running(up: dict[str, str]) -> None:
    """`carebus down` (last: the module's stack is gone after it) stops every process."""
    cli_env = up
    state_dir = Path(cli_env["CAREBUS_STATE_DIR"])
    pg_root = Path((state_dir / "postgres" / "location").read_text().strip())
    if os.geteuid() == 0:  # PostgreSQL runs as `postgres`, who cannot enter a 0700 checkout
        assert pg_root.parent == Path("/var/tmp")

    down = run_cli(cli_env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "leftover" not in down.stdout
    assert "prometheus   stopped" in down.stdout
    assert (
        processes_mentioning(
            [str(state_dir), str(pg_root)], marker_env=f"CAREBUS_STACK_STATE_DIR={state_dir}"
        )
        == []
    )
    assert run_cli(cli_env, "status").returncode != 0
    stopped = run_cli(cli_env, "status", "--json")
    assert stopped.returncode == 1
    components = json.loads(stopped.stdout)["components"]
    assert components["gateway"] == {"state": "down", "detail": "not running"}
    assert components["kafka"]["state"] == "down"
