"""Every component's /metrics is on its own internal metrics port, which the local stack, the
test harness and Prometheus agree on (issue 14, item 5)."""

from __future__ import annotations

from carebus.runtime.config import Settings
from carebus_dev.stack.prometheus import scrape_config
from carebus_dev.stack.supervisor import SERVICES, service_named


def test_every_component_has_its_own_local_metrics_port() -> None:
    """No two components (nor an API port) share a metrics port on the local stack."""
    settings = Settings()
    ports = [spec.metrics_port for spec in SERVICES]
    assert None not in ports
    assert len(set(ports)) == len(ports)
    api_ports = {spec.port(settings) for spec in SERVICES if spec.port_setting is not None}
    assert api_ports.isdisjoint(ports)


def test_an_http_service_is_told_its_metrics_port() -> None:
    gateway = service_named("gateway")
    assert gateway.env() == {"CAREBUS_METRICS_PORT": str(gateway.metrics_port)}
    assert gateway.env(28080) == {
        "CAREBUS_GATEWAY_PORT": "28080",
        "CAREBUS_METRICS_PORT": str(gateway.metrics_port),
    }
    assert gateway.metrics_url(Settings()) == f"http://127.0.0.1:{gateway.metrics_port}/metrics"


def test_local_prometheus_scrapes_the_metrics_ports_never_the_api_ports() -> None:
    settings = Settings()
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"]
        for job in scrape_config(settings)["scrape_configs"]
    }
    for spec in SERVICES:
        assert targets[spec.name.replace("_", "-")] == [f"127.0.0.1:{spec.metrics_port}"]
    assert targets["gateway"] != [f"127.0.0.1:{settings.gateway_port}"]
