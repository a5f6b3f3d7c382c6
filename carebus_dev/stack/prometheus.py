"""Debian's Prometheus against the local stack (`carebus up --with-prometheus`).

It scrapes every local service under the job names the production scrape config uses
(`infra/prometheus/prometheus.yml`) and evaluates the same alert rules
(`infra/prometheus/rules/*.yml`), so a rule or dashboard query can be tried on a laptop.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import httpx
import yaml

from carebus.runtime.config import PROJECT_ROOT, Settings
from carebus_dev.stack.process import StackError, running, start_until_ready, stop_recorded
from carebus_dev.stack.supervisor import SERVICES, child_env, log_path, pid_path

NAME: Final = "prometheus"
RULES_DIR: Final = PROJECT_ROOT / "infra" / "prometheus" / "rules"
SCRAPE_INTERVAL: Final = "5s"
_APT_ENV: Final = {"DEBIAN_FRONTEND": "noninteractive"}


def job_name(service: str) -> str:
    """The scrape job of a service, as in the production config (`event_store` → `event-store`)."""
    return service.replace("_", "-")


def scrape_config(settings: Settings) -> dict[str, Any]:
    """The local Prometheus configuration: every service on its internal metrics port, the
    shared rules."""
    jobs = [
        {
            "job_name": "prometheus",
            "static_configs": [{"targets": [f"127.0.0.1:{settings.prometheus_port}"]}],
        }
    ]
    for spec in SERVICES:
        if spec.metrics_port is not None:
            target = f"{settings.http_host}:{spec.metrics_port}"
            jobs.append(
                {"job_name": job_name(spec.name), "static_configs": [{"targets": [target]}]}
            )
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
            "external_labels": {"system": "carebus", "environment": settings.environment},
        },
        "rule_files": [str(RULES_DIR / "*.yml")],
        "scrape_configs": jobs,
    }


class LocalPrometheus:
    """One Prometheus server for one state directory, on 127.0.0.1:`prometheus_port`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.state_dir / NAME
        self.config_path = self.home / "prometheus.yml"
        self.pid_path = pid_path(settings, NAME)
        self.log_path = log_path(settings, NAME)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.prometheus_port}"

    def is_running(self) -> bool:
        return running(self.pid_path) is not None

    def ready(self, timeout_s: float = 2.0) -> bool:
        try:
            response = httpx.get(f"{self.url}/-/ready", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def start(self, timeout_s: float = 60.0) -> bool:
        """Write the config and start Prometheus unless it runs; True if it was started."""
        binary = install()
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            "# Written by `carebus up --with-prometheus`; edit infra/prometheus instead.\n"
            + yaml.safe_dump(scrape_config(self.settings), sort_keys=False)
        )
        if self.is_running():
            # Re-read the config (new services, changed rules) without losing the data.
            httpx.post(f"{self.url}/-/reload", timeout=5.0)
            return False
        start_until_ready(
            NAME,
            [
                str(binary),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.home / 'data'}",
                "--storage.tsdb.retention.time=7d",
                f"--web.listen-address=127.0.0.1:{self.settings.prometheus_port}",
                "--web.enable-lifecycle",
            ],
            lambda: self.ready(timeout_s=1.0),
            log_path=self.log_path,
            pid_path=self.pid_path,
            timeout_s=timeout_s,
            env=child_env(self.settings, principal="prometheus"),
            cwd=self.home,
        )
        return True

    def stop(self) -> bool:
        return stop_recorded(self.pid_path)


def install() -> Path:
    """Debian's `prometheus` binary, installed (as root) when it is missing."""
    found = shutil.which("prometheus")
    if found is not None:
        return Path(found)
    if os.geteuid() != 0:
        raise StackError(
            "prometheus is not installed and only root can install it: run "
            "`sudo apt-get install -y --no-install-recommends prometheus`"
        )
    env = {**os.environ, **_APT_ENV}
    for argv in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
    ):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(
                f"`{' '.join(argv)}` failed (exit {result.returncode}):\n"
                + (result.stdout + result.stderr).strip()[-2000:]
            )
    found = shutil.which("prometheus")
    if found is None:
        raise StackError("the prometheus package installed, but no prometheus binary was found")
    return Path(found)
