"""The metric names the Grafana dashboards and Prometheus rules query, for tests to check.

A name here is what a scrape of a carebus process would show as a sample name, or the base name
of a histogram: `carebus_events_accepted_total` (a counter, with its `_total`),
`carebus_http_request_duration_seconds` (a histogram, whatever `_bucket`, `_sum` or `_count`
series the query reads), `process_resident_memory_bytes`. `up` is the exception: Prometheus
makes it for each scrape target, no process exports it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS_DIR = PROJECT_ROOT / "infra" / "grafana" / "dashboards"
RULES_DIR = PROJECT_ROOT / "infra" / "prometheus" / "rules"

# Parts of an expression that can hold words that are not metric names: string literals
# (label values, including Grafana variables such as "$job"), label matchers, range and
# subquery brackets, grouping label lists, and comments.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_COMMENT = re.compile(r"#[^\n]*")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
# A whole identifier: not the tail of a longer word, a number (`5m`, `1e3`) or `$variable`.
_IDENTIFIER = re.compile(r"(?<![\w:$])[A-Za-z_:][\w:]*")
_HISTOGRAM_SERIES = re.compile(r"_(?:bucket|sum|count)$")


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects, in the sense of this module's docstring.

    Counts identifiers that start with `carebus_` or `process_`, and the bare identifier `up`;
    a name that ends in `_bucket`, `_sum` or `_count` is returned without that suffix, `_total`
    is kept. Not counted: words inside strings or label matchers (`{job="backup"}`), label
    names in `by (...)`/`on (...)` lists, functions, keywords, and recording-rule names (they
    contain `:` and are made by Prometheus, not exported). A name given only as a
    `__name__` label value is not found.
    """
    code = _STRING.sub('""', expr)
    code = _COMMENT.sub("", code)
    code = _MATCHERS.sub("{}", code)
    code = _RANGE.sub("[]", code)
    code = _GROUPING.sub("", code)
    names = set()
    for identifier in _IDENTIFIER.findall(code):
        if identifier == "up" or (
            identifier.startswith(("carebus_", "process_")) and ":" not in identifier
        ):
            names.add(_HISTOGRAM_SERIES.sub("", identifier))
    return names


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_panels(path: Path) -> list[dict[str, Any]]:
    """Every panel of a Grafana dashboard file, rows and the panels inside them included."""
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    return list(_panels(dashboard.get("panels", [])))


def dashboard_exprs(path: Path) -> list[str]:
    """The PromQL `expr` of every target of every panel in a Grafana dashboard file."""
    return [
        target["expr"]
        for panel in dashboard_panels(path)
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def rule_exprs(path: Path) -> list[str]:
    """The `expr` of every alerting and recording rule in a Prometheus rules file."""
    rules_file = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return [
        str(rule["expr"])
        for group in rules_file.get("groups", [])
        for rule in group.get("rules", [])
        if "expr" in rule
    ]


def used_metric_names() -> set[str]:
    """Every metric name the dashboards and the Prometheus rules (if any) query, `up` included."""
    exprs = [
        *(expr for path in sorted(DASHBOARDS_DIR.glob("*.json")) for expr in dashboard_exprs(path)),
        *(expr for path in sorted(RULES_DIR.glob("*.yml")) for expr in rule_exprs(path)),
    ]
    return {name for expr in exprs for name in metric_names_in(expr)}
