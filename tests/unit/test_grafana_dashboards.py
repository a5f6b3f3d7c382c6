"""The provisioned Grafana dashboards, and the metric-name extraction the scrape check relies on."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import ProcessCollector
from prometheus_client.metrics import Counter, Gauge, Histogram, MetricWrapperBase

from carebus.runtime import metrics
from tests.observability import (
    DASHBOARDS_DIR,
    PROJECT_ROOT,
    dashboard_exprs,
    dashboard_panels,
    metric_names_in,
    used_metric_names,
)

DASHBOARDS = {
    "flow.json": "carebus-flow",
    "deadlines.json": "carebus-deadlines",
    "health.json": "carebus-health",
}
DASHBOARD_FILES = sorted(DASHBOARDS_DIR.glob("*.json"))
PROVISIONING = PROJECT_ROOT / "infra" / "grafana" / "provisioning"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
UNITS = {"ops", "s", "short", "bytes", "percentunit"}
GRID_COLUMNS = 24
# The windows rate() and increase() may use: Grafana's scrape-aware interval, or the whole
# time range for a stat that counts over it.
RANGE_WINDOWS = {"$__rate_interval", "$__range"}
_RANGE_FUNCTION = re.compile(r"\b(?:rate|irate|increase)\s*\([^\[]*\[(?P<window>[^\]]*)\]")


def _declared_metric_names() -> set[str]:
    """The sample names carebus/runtime/metrics.py exports (a histogram by its base name)."""
    names = set()
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        name: str = collector._name
        if isinstance(collector, Counter):
            names.add(f"{name}_total")
        elif isinstance(collector, Gauge | Histogram):
            names.add(name)
        else:
            pytest.fail(f"runtime.metrics declares {name} of a type this test does not know")
    return names


def _process_metric_names() -> set[str]:
    """The sample names prometheus_client's default process collector exports on Linux."""
    return {
        sample.name
        for family in ProcessCollector(registry=None).collect()
        for sample in family.samples
    }


def _load(path: Path) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return dashboard


def _query_panels(path: Path) -> list[dict[str, Any]]:
    return [panel for panel in dashboard_panels(path) if panel["type"] != "row"]


def _overlaps(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def _assert_laid_out(panels: list[dict[str, Any]]) -> None:
    """Each panel fits the grid and none covers another."""
    for panel in panels:
        grid = panel["gridPos"]
        assert min(grid["x"], grid["y"]) >= 0, panel["title"]
        assert min(grid["w"], grid["h"]) >= 1, panel["title"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
    for index, panel in enumerate(panels):
        for other in panels[index + 1 :]:
            assert not _overlaps(panel["gridPos"], other["gridPos"]), (
                f"{panel['title']} overlaps {other['title']}"
            )


def test_the_three_dashboards_are_provisioned() -> None:
    """Flow, Deadlines and Health exist, and no other dashboard goes unchecked."""
    assert {path.name for path in DASHBOARD_FILES} == set(DASHBOARDS)


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda path: path.name)
def test_dashboard_identity_and_defaults(path: Path) -> None:
    """A dashboard keeps its fixed uid, a title, the carebus tag and the agreed defaults."""
    dashboard = _load(path)
    assert dashboard["uid"] == DASHBOARDS[path.name]
    assert dashboard["title"].startswith("carebus / ")
    assert dashboard["tags"] == ["carebus"]
    assert dashboard["schemaVersion"] == 39
    assert dashboard["time"] == {"from": "now-6h", "to": "now"}
    assert dashboard["refresh"] == "30s"


def test_dashboard_titles_are_distinct() -> None:
    """Each dashboard can be told apart in Grafana's list."""
    titles = [_load(path)["title"] for path in DASHBOARD_FILES]
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda path: path.name)
def test_panels_query_the_provisioned_prometheus(path: Path) -> None:
    """Every panel and target names the provisioned datasource and has a non-empty query."""
    for panel in _query_panels(path):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
            assert "legendFormat" in target, panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids), f"{panel['title']} repeats a refId"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda path: path.name)
def test_panels_say_what_they_answer_and_in_which_unit(path: Path) -> None:
    """Every panel has a title, a description and a unit."""
    for panel in _query_panels(path):
        assert panel["title"].strip()
        assert panel.get("description", "").strip(), f"{panel['title']} has no description"
        assert panel["fieldConfig"]["defaults"].get("unit") in UNITS, panel["title"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda path: path.name)
def test_panel_ids_are_unique(path: Path) -> None:
    """No two panels, rows and nested panels included, share an id."""
    ids = [panel["id"] for panel in dashboard_panels(path)]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda path: path.name)
def test_panels_are_laid_out_on_the_grid(path: Path) -> None:
    """Panels fit the 24 columns without overlapping, also inside each row."""
    top_level = _load(path)["panels"]
    _assert_laid_out(top_level)
    for row in top_level:
        _assert_laid_out(row.get("panels", []))


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda path: path.name)
def test_rates_use_grafana_windows(path: Path) -> None:
    """rate() and increase() take $__rate_interval (or $__range), never a fixed window."""
    for expr in dashboard_exprs(path):
        windows = [match["window"] for match in _RANGE_FUNCTION.finditer(expr)]
        assert set(windows) <= RANGE_WINDOWS, expr


def test_job_variable_lists_scrape_jobs() -> None:
    """Health filters by job through a variable fed by the jobs Prometheus scrapes."""
    variables = {v["name"]: v for v in _load(DASHBOARDS_DIR / "health.json")["templating"]["list"]}
    assert variables["job"]["definition"] == "label_values(up, job)"
    assert variables["job"]["datasource"] == DATASOURCE
    assert all('job=~"$job"' in expr for expr in dashboard_exprs(DASHBOARDS_DIR / "health.json"))


def test_dashboards_and_rules_query_only_declared_metrics() -> None:
    """Every metric queried is declared in carebus/runtime/metrics.py, a process metric, or `up`."""
    known = _declared_metric_names() | _process_metric_names() | {"up"}
    assert used_metric_names() - known == set()


def test_each_dashboard_queries_carebus_metrics() -> None:
    """No dashboard is left with only `up` and process metrics."""
    for path in DASHBOARD_FILES:
        names = {name for expr in dashboard_exprs(path) for name in metric_names_in(expr)}
        assert any(name.startswith("carebus_") for name in names), path.name


def test_datasource_uid_is_the_one_panels_name() -> None:
    """The provisioned Prometheus datasource carries the uid and address the panels rely on."""
    provisioned = yaml.safe_load(
        (PROVISIONING / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )
    [datasource] = provisioned["datasources"]
    assert datasource["uid"] == DATASOURCE["uid"]
    assert datasource["type"] == DATASOURCE["type"]
    assert datasource["url"] == "http://prometheus:9090"


def test_dashboards_provider_reads_the_mounted_folder() -> None:
    """Grafana's dashboards provider reads where docker-compose mounts infra/grafana/dashboards."""
    provider = yaml.safe_load(
        (PROVISIONING / "dashboards" / "carebus.yml").read_text(encoding="utf-8")
    )
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    mounts = {
        str(volume).split(":")[1]: str(volume).split(":")[0]
        for volume in compose["services"]["grafana"]["volumes"]
    }
    [entry] = provider["providers"]
    assert entry["type"] == "file"
    assert mounts.get(entry["options"]["path"]) == "./infra/grafana/dashboards"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("sum by (job) (up)", {"up"}),
        ('up{job="gateway"} == 0', {"up"}),
        (
            "histogram_quantile(0.99, sum by (le, route) "
            "(rate(carebus_http_request_duration_seconds_bucket[5m])))",
            {"carebus_http_request_duration_seconds"},
        ),
        (
            "sum(rate(carebus_sla_scan_seconds_sum[$__rate_interval]))"
            " / sum(rate(carebus_sla_scan_seconds_count[$__rate_interval]))",
            {"carebus_sla_scan_seconds"},
        ),
        (
            "sum by (agency) (rate(carebus_webhook_retries_total[5m]))",
            {"carebus_webhook_retries_total"},
        ),
        (
            'carebus_inbox_actions_total{action="up", result=~"up|backup"}',
            {"carebus_inbox_actions_total"},
        ),
        (
            'process_open_fds{job=~"$job"} > on (instance) group_left process_max_fds',
            {"process_open_fds", "process_max_fds"},
        ),
        ("max by (up) (carebus_alerts) # up or carebus_sla_breaches_total", {"carebus_alerts"}),
        ("backup_total + setup + up_time + lookup(x)", set()),
        ("job:carebus_http_requests:rate5m > 1e3", set()),
        ("up offset 5m unless up", {"up"}),
    ],
)
def test_metric_names_in(expr: str, names: set[str]) -> None:
    """Metric names are whole identifiers outside strings, matchers, label lists and comments."""
    assert metric_names_in(expr) == names
