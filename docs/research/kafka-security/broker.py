"""Start/stop a throwaway single-node KRaft broker in /tmp from carebus's Maven jars."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from string import Template

LIBS = Path(os.environ.get("KAFKA_LIBS", "/work/main/.carebus/kafka/libs"))
HERE = Path(__file__).resolve().parent
LOG4J2 = HERE / "log4j2.xml"


def new_cluster_id() -> str:
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def java(main: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["java", f"-Dlog4j2.configurationFile={LOG4J2}", "-cp", f"{LIBS}/*", main, *args],
        capture_output=True, text=True, check=False, **kw,
    )


class Broker:
    def __init__(self, home: Path, template: Path, *, broker_port: int, controller_port: int,
                 **values: str) -> None:
        self.home = home
        self.template = template
        self.broker_port = broker_port
        self.controller_port = controller_port
        self.values = values
        self.proc: subprocess.Popen | None = None

    @property
    def config(self) -> Path:
        return self.home / "server.properties"

    @property
    def log(self) -> Path:
        return self.home / "kafka.log"

    def write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.config.write_text(Template(self.template.read_text()).substitute(
            broker_port=self.broker_port, controller_port=self.controller_port,
            log_dirs=self.home / "data", offsets_partitions=1, **self.values,
        ))

    def format(self, scram: list[tuple[str, str]] = ()) -> subprocess.CompletedProcess:
        """kafka-storage format --standalone, with --add-scram for each (user, password)."""
        args = ["format", "--standalone", "-t", new_cluster_id(), "-c", str(self.config)]
        for user, password in scram:
            # iterations default to 4096; the broker's minimum is 4096 for SHA-512.
            args += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        result = java("kafka.tools.StorageTool", *args)
        if result.returncode != 0:
            raise RuntimeError(result.stdout + result.stderr)
        return result

    def start(self, ready, timeout_s: float = 90.0) -> float:
        for port in (self.broker_port, self.controller_port):
            if port_open(port):
                raise RuntimeError(f"port {port} taken")
        t0 = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["java", "-Xms512m", "-Xmx512m", "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={LOG4J2}",
                 "-cp", f"{LIBS}/*", "kafka.Kafka", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, cwd=self.home, start_new_session=True,
            )
        (self.home / "kafka.pid").write_text(f"{self.proc.pid}\n")
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError("broker exited:\n" + self.log.read_text()[-4000:])
            if port_open(self.broker_port) and ready():
                return time.monotonic() - t0
            time.sleep(0.5)
        raise RuntimeError("broker not ready:\n" + self.log.read_text()[-4000:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
