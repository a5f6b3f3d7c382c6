"""The Prometheus alerting rules: valid, unit-tested with promtool, and each with its runbook."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = PROJECT_ROOT / "infra" / "prometheus"
RULES_FILE = PROMETHEUS_DIR / "rules" / "carebus.yml"
RULE_TESTS_FILE = PROMETHEUS_DIR / "tests" / "carebus.test.yml"
CONFIG_FILE = PROMETHEUS_DIR / "prometheus.yml"
RUNBOOK = PROJECT_ROOT / "docs" / "operations.md"
RUNBOOK_PREFIX = "docs/operations.md#"

SEVERITIES = {"page", "ticket"}
ANNOTATIONS = ("summary", "description", "runbook_url")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is missing; `make tools` installs it (as root: "
            "apt-get install -y --no-install-recommends prometheus)"
        )
    return path


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, (
        f"{' '.join(argv)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _alert_rules() -> list[dict[str, Any]]:
    groups = _load(RULES_FILE)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _rule_tests() -> list[dict[str, Any]]:
    return [
        case for test in _load(RULE_TESTS_FILE)["tests"] for case in test.get("alert_rule_test", [])
    ]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lowercase, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _runbook_anchors() -> set[str]:
    anchors = set()
    in_code = False
    for line in RUNBOOK.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6} (.+)", line)):
            anchors.add(_anchor(match.group(1)))
    return anchors


def test_rules_pass_promtool_check(promtool: str) -> None:
    """promtool accepts the rule file (syntax, PromQL, templates)."""
    _run(promtool, "check", "rules", str(RULES_FILE))


def test_rules_pass_their_unit_tests(promtool: str) -> None:
    """Every case of the promtool unit tests holds."""
    _run(promtool, "test", "rules", str(RULE_TESTS_FILE))


def test_prometheus_config_passes_promtool_check(promtool: str) -> None:
    """The stack's Prometheus config is valid, with the rule files it loads."""
    _run(promtool, "check", "config", str(CONFIG_FILE))


def test_rules_are_alerts_with_unique_names() -> None:
    """The rule file holds alerts, each name once (promtool accepts duplicates)."""
    names = [rule["alert"] for rule in _alert_rules()]
    assert names
    assert len(names) == len(set(names))


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """Each alert is tested where it fires, with labels and annotations, and where it must not."""
    alerts = {rule["alert"] for rule in _alert_rules()}
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in _rule_tests():
        name = case["alertname"]
        # A misspelt name would make an empty expectation pass without testing anything.
        assert name in alerts, f"test case for unknown alert {name!r}"
        expected = case.get("exp_alerts") or []
        if not expected:
            quiet.add(name)
            continue
        firing.add(name)
        for alert in expected:
            assert alert.get("exp_labels", {}).get("severity"), f"{name}: severity not checked"
            assert set(alert.get("exp_annotations", {})) == set(ANNOTATIONS), (
                f"{name}: annotations not checked"
            )
    assert alerts - firing == set(), "alerts without a firing test case"
    assert alerts - quiet == set(), "alerts without a non-firing test case"


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: str(rule["alert"]))
def test_alert_has_for_severity_and_annotations(rule: dict[str, Any]) -> None:
    """An alert waits before firing, says how urgent it is, what it means and where to read on."""
    assert rule["alert"].startswith("Carebus")
    assert rule.get("for"), "no `for:`"
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    annotations = rule.get("annotations", {})
    for name in ANNOTATIONS:
        assert str(annotations.get(name, "")).strip(), f"annotation {name} missing"
    assert annotations["runbook_url"].startswith(RUNBOOK_PREFIX)


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: str(rule["alert"]))
def test_runbook_url_names_a_heading_of_the_runbook(rule: dict[str, Any]) -> None:
    """The runbook link lands on the section for this alert in docs/operations.md."""
    anchor = rule["annotations"]["runbook_url"].removeprefix(RUNBOOK_PREFIX)
    assert anchor == _anchor(rule["alert"])
    assert anchor in _runbook_anchors(), f"docs/operations.md has no heading for #{anchor}"


def test_runbook_links_within_itself_resolve() -> None:
    """Every `(#anchor)` link in docs/operations.md lands on one of its headings."""
    links = set(re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text(encoding="utf-8")))
    assert links - _runbook_anchors() == set()


def test_anchor_follows_github() -> None:
    """Anchors are computed as GitHub renders them, so the links work there too."""
    assert _anchor("CarebusServiceDown") == "carebusservicedown"
    assert _anchor("How carebus is watched") == "how-carebus-is-watched"
    assert _anchor("Replaying a dead letter (`care.deadletter.v1`)") == (
        "replaying-a-dead-letter-caredeadletterv1"
    )
