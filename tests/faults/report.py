"""The "Fault tests" section of docs/reliability.md, from the figures the scenarios of the last
`make faults` wrote (one JSON file each): `python -m tests.faults.report`."""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.faults.harness import RESULTS_DIR

RELIABILITY = Path(__file__).parents[2] / "docs" / "reliability.md"
_SECTION = re.compile(r"^## Fault tests\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
SCENARIOS = {
    "a_broker_killed": "(a) broker kill -9",
    "b_workers_killed": "(b) routers + SLA engines killed",
    "c_postgres_stopped": "(c) PostgreSQL stopped",
    "d_webhook_receiver_down": "(d) webhook receiver down 24 h",
    "e_gateway_killed": "(e) gateway killed mid-request",
}


_COLUMNS = (
    "scenario",
    "load",
    "events sent",
    "202",
    "503",
    "5xx (not 503)",
    "lost",
    "duplicated",
    "reordered",
    "recovery s",
    "slowest answer s",
    "result",
)
_HEADER = "| " + " | ".join(_COLUMNS) + " |\n|" + "---|" * len(_COLUMNS)


def load(results: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    """Each scenario's figures by its name; a scenario that wrote none is missing."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(results.glob("*.json"))}


def _row(name: str, figures: dict[str, Any] | None) -> str:
    label = SCENARIOS.get(name, name)
    if figures is None:
        return f"| {label} | – | – | – | – | – | – | – | – | – | – | did not run or crashed |"
    recovery = figures["recovery_s"]
    problems = figures.get("problems", [])
    outcome = "pass" if not problems else "FAIL: " + "; ".join(problems)
    return (
        f"| {label} | {figures['seconds']:.0f} s × {figures['rate']:.0f}/s "
        f"| {figures['events']} | {figures['accepted']} | {figures['answers_503']} "
        f"| {figures['answers_500']} | {figures['lost']} | {figures['duplicated']} "
        f"| {figures['reordered']} | {'–' if recovery is None else f'{recovery:.1f}'} "
        f"| {figures['max_answer_s']:.2f} | {outcome} |"
    )


def section(results: dict[str, dict[str, Any]]) -> str:
    names = list(SCENARIOS) + sorted(set(results) - set(SCENARIOS))
    rows = "\n".join(_row(name, results.get(name)) for name in names)
    faults = "\n".join(
        f"- {SCENARIOS.get(name, name)}: {figures['fault']}" for name, figures in results.items()
    )
    return f"""## Fault tests

Each scenario of `tests/faults` starts a fresh test stack (real Kafka and PostgreSQL), the
gateway, registry, event store, router, audit store and webhook sink, and posts a steady load
of discharge-ready notices through the gateway (`CAREBUS_FAULT_RATE` events/s for
`CAREBUS_FAULT_SECONDS`, about `CAREBUS_FAULT_PERSONS` persons, each person's next event sent
after the previous one's 202, 503s retried after Retry-After with the same event_id). Every
event is routed to the coordinator's webhook, a real HTTP receiver on loopback. A fifth into
the load the fault starts; it lasts `CAREBUS_FAULT_OUTAGE_SECONDS`. A scenario fails unless
every accepted (202) event is stored, audited (a delivered disclosure) and received by the
webhook; no delivery_id is received twice; each person's deliveries arrive in the order of
their 202s; no answer is a 5xx other than 503, a 503 without Retry-After, or slower than 10 s;
and the pipeline catches up. Recovery is the time from the fault's end until every event
accepted before then has been stored, audited and delivered.

Run it with `make faults` (about 30 minutes with the defaults: 180 s at 100 events/s,
20 persons, 60 s outages; the short runs reported by developers use smaller values). The last
run wrote this section itself.

Last run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} with {os.cpu_count()}
cores.

{_HEADER}
{rows}

The faults:

{faults}

"""


def write_reliability(path: Path = RELIABILITY, results: Path = RESULTS_DIR) -> Path:
    """Replace (or add, after the other sections) the "Fault tests" section of `path`."""
    text = path.read_text()
    new = section(load(results))
    text = _SECTION.sub(lambda _: new, text) if _SECTION.search(text) else text + "\n" + new
    path.write_text(text.rstrip("\n") + "\n")
    return path


if __name__ == "__main__":
    written = write_reliability()
    sys.stdout.write(f"fault test figures written to {written}\n")
