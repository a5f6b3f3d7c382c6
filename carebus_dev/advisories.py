"""`make audit`: the locked versions against known vulnerabilities, with pip-audit.

pip-audit asks an advisory service per package. When that service cannot be reached (a package
mirror that serves only the simple index answers PyPI's JSON API with 404), pip-audit reports
every package as "not found on PyPI", which reads like a problem with the lock. So this asks
each service once first and runs pip-audit against the first that answers; when none does, it
says so plainly and fails: an audit that could not run never passes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from carebus.runtime.config import PROJECT_ROOT

LOCK = PROJECT_ROOT / "requirements" / "base.lock"
PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Service:
    """A pip-audit vulnerability service and one request that shows it answers."""

    name: str
    method: str
    url: str
    body: dict[str, object] | None = None


# In pip-audit's order of preference: PyPI's advisory data (the PyPA advisory database), then
# OSV, which aggregates it with GitHub's.
SERVICES: tuple[Service, ...] = (
    Service("pypi", "GET", "https://pypi.org/pypi/pip/24.0/json"),
    Service(
        "osv",
        "POST",
        "https://api.osv.dev/v1/query",
        {"package": {"name": "pip", "ecosystem": "PyPI"}, "version": "24.0"},
    ),
)

Probe = Callable[[Service], str | None]


def probe(service: Service) -> str | None:
    """None when `service` answers as an advisory service does; else why not."""
    try:
        response = httpx.request(
            service.method, service.url, json=service.body, timeout=PROBE_TIMEOUT_S
        )
    except httpx.HTTPError as error:
        return f"{type(error).__name__}: {error}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}"
    try:
        answer = response.json()
    except ValueError:
        return "the answer is not JSON"
    if service.name == "pypi" and "vulnerabilities" not in answer:
        return "the answer has no `vulnerabilities` (a mirror, not PyPI's advisory data)"
    return None


def choose(services: Sequence[Service], ask: Probe) -> tuple[Service | None, list[str]]:
    """The first service that answers, and why each one before it did not."""
    refusals: list[str] = []
    for service in services:
        problem = ask(service)
        if problem is None:
            return service, refusals
        refusals.append(f"{service.name} ({service.url}): {problem}")
    return None, refusals


def pip_audit_command(service: Service, lock: Path = LOCK) -> list[str]:
    # --strict: a package that could not be checked fails the run, never a silent pass.
    return [
        str(Path(sys.executable).with_name("pip-audit")),
        "--strict",
        "--progress-spinner",
        "off",
        "--vulnerability-service",
        service.name,
        "--require-hashes",
        "-r",
        str(lock),
    ]


def main(ask: Probe = probe) -> int:
    service, refusals = choose(SERVICES, ask)
    for refusal in refusals:
        print(f"advisory service unreachable: {refusal}", file=sys.stderr)
    if service is None:
        print(
            "make audit: no advisory service could be reached, so nothing was audited "
            "(this fails on purpose; run it where pypi.org's JSON API or api.osv.dev answers)",
            file=sys.stderr,
        )
        return 2
    print(f"auditing {LOCK.relative_to(PROJECT_ROOT)} against {service.name}", flush=True)
    return subprocess.run(pip_audit_command(service), check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
