"""Operations against a stack started as a user starts it: `carebus up --with-prometheus`.

Every metric a Grafana dashboard or a Prometheus rule uses must be exported by the running
services, the local Prometheus must scrape every service and load the alert rules, and
`carebus trace` must show the path of a demo scenario event.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterable

import httpx
import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from carebus.runtime.config import PROJECT_ROOT, Settings
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


def test_up_with_prometheus_exports_every_metric_and_traces_a_demo_event(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    up = run_cli(cli_env, "up", "--with-prometheus")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "prometheus" in up.stdout
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
    deadline = time.monotonic() + 60
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
    assert not silent, f"no series after the demo scenario for: {silent}"
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

    # 3. `carebus trace` shows every hop of a demo admission.
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

    down = run_cli(cli_env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "prometheus   stopped" in down.stdout
