"""The figures of a fuzz run: cases per service, answers by status, failures; and the
"Fuzzing" section of docs/reliability.md that records them."""

from __future__ import annotations

import os
import platform
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

COMMAND = "make fuzz"


@dataclass
class Figures:
    """What the run sent and what came back, per service."""

    started: float | None = None
    cases: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    # (service, operation, the check's first line) -> failing cases (hypothesis replays count)
    failures: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    @property
    def duration_s(self) -> float:
        return time.monotonic() - self.started if self.started is not None else 0.0

    def answered(self, service: str, status: int) -> None:
        self.cases[service] += 1
        self.statuses.setdefault(service, Counter())[f"{status // 100}xx"] += 1

    def failed(self, service: str, operation: str, failure: BaseException) -> None:
        first = next(iter(str(failure).strip().splitlines()), type(failure).__name__)
        self.failures[(service, operation, first[:160])] += 1

    def lines(self) -> list[str]:
        duration = self.duration_s
        rate = self.total / duration if duration else 0.0
        lines = [
            f"{service}: {self.cases[service]} cases, "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.statuses[service].items()))
            for service in sorted(self.cases)
        ]
        lines.append(
            f"total: {self.total} cases in {duration:.0f} s ({rate:.1f} cases/s),"
            f" {sum(self.failures.values())} failing cases"
        )
        lines.extend(
            f"FAILED {service} {operation}: {first} (x{count})"
            for (service, operation, first), count in sorted(self.failures.items())
        )
        return lines


FIGURES = Figures()

_SECTION = re.compile(r"^## Fuzzing\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
_HEADER = """# Reliability

How carebus's services are shown to hold up under input nobody planned for.

"""


def fuzzing_section(figures: Figures) -> str:
    duration = figures.duration_s
    rate = figures.total / duration if duration else 0.0
    examples = os.environ.get("CAREBUS_FUZZ_EXAMPLES", "default")
    rows = "\n".join(
        f"| {service} | {figures.cases[service]} | "
        + " | ".join(str(figures.statuses.get(service, Counter())[k]) for k in _CLASSES)
        + f" | {sum(c for (s, _, _), c in figures.failures.items() if s == service)} |"
        for service in sorted(figures.cases)
    )
    failures = "\n".join(
        f"- {service} `{operation}`: {first} ({count} cases)"
        for (service, operation, first), count in sorted(figures.failures.items())
    )
    outcome = "Failures:\n\n" + failures if failures else "No answer was a 5xx or broke the schema."
    header = " | ".join(_CLASSES)
    rule = "---|" * len(_CLASSES)
    return f"""## Fuzzing

Every HTTP service's live OpenAPI document (gateway, registry, audit, inbox) is fuzzed with
schemathesis on a real test stack (`tests/fuzz`): valid-shaped and malformed (negative) bodies,
query, path and header values, each operation called with a token of a role it serves (and
every 16th case with a missing or broken token). Each answer is checked: no 5xx
(`not_a_server_error`), the body matches the declared schema (`response_schema_conformance`),
the status is declared (`status_code_conformance`), the content type is declared
(`content_type_conformance`).

Run it with `{COMMAND}` (`make fuzz FUZZ_EXAMPLES=n` sets the examples per operation and
phase, default 5000; `pytest tests/fuzz` reads `CAREBUS_FUZZ_EXAMPLES`, default 5; `make test`
runs that small sample). The last run wrote this section itself.

Last run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} with {os.cpu_count()} cores,
`CAREBUS_FUZZ_EXAMPLES={examples}`: **{figures.total} cases in {duration:.0f} s
({rate:.1f} cases/s), {sum(figures.failures.values())} failing cases**.

| service | cases | {header} | failing |
|---|---|{rule}---|
{rows}

{outcome}

"""


_CLASSES = ("2xx", "3xx", "4xx", "5xx")


def write_reliability(path: Path, figures: Figures = FIGURES) -> Path:
    """Replace (or add) the "Fuzzing" section of `path` with this run's figures."""
    text = path.read_text() if path.exists() else _HEADER
    section = fuzzing_section(figures)
    text = _SECTION.sub(lambda _: section, text) if _SECTION.search(text) else text + section
    path.write_text(text.rstrip("\n") + "\n")
    return path
