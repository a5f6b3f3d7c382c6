"""The local stack's commands (`carebus up`, `down`, `status`, `logs`), added to the `carebus`
command through the `carebus.commands` entry points of a development install."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from carebus.domain.sla import SlaRulesError
from carebus.ops.cli import fail
from carebus.runtime.config import Settings
from carebus.wire.policy_files import load_rules
from carebus_dev.production import production_problems
from carebus_dev.stack import LocalStack, StackError
from carebus_dev.stack.kafka import recorded_brokers
from carebus_dev.stack.process import tail
from carebus_dev.stack.supervisor import SERVICES, service_named, stop_service


def _stack(
    echo: bool = True, settings: Settings | None = None, brokers: int | None = None
) -> LocalStack:
    """The stack of this state directory; with `brokers` None, as many Kafka brokers as its
    last `up` started (`status`, `logs` and `down` find a three-broker cluster by themselves)."""
    return LocalStack(
        settings or Settings(),
        durable=True,
        echo=click.echo if echo else _quiet,
        brokers=brokers,
    )


def _quiet(_: str) -> None:
    return None


@click.command()
@click.option(
    "--sla-rules",
    "sla_rules",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A rule file of policy/sla.yaml's format whose rules replace same-id rules for this "
    "run (e.g. deadlines in seconds); the SLA engine is restarted with it.",
)
@click.option(
    "--with-prometheus",
    "with_prometheus",
    is_flag=True,
    help="Also start Debian's Prometheus (http://127.0.0.1:19090) scraping the local services "
    "with the production alert rules of infra/prometheus/rules.",
)
@click.option(
    "--brokers",
    type=click.Choice(["1", "3"]),
    default=None,
    help="Kafka brokers to run: 1 (replication 1), or 3 (replication 3, min.insync.replicas 2, "
    "what production runs; a broker may be lost). Default: as many as the last `carebus up` "
    "of this state directory, else 1. Changing it needs `carebus down` first.",
)
@click.option(
    "--production",
    is_flag=True,
    help="Refuse to start while any default a production deployment must not run with is in "
    "effect (public secrets, password-less database, fewer than three Kafka brokers, dev tokens); "
    "lists them all.",
)
def up(
    sla_rules: Path | None, with_prometheus: bool, brokers: str | None, production: bool
) -> None:
    """Start Kafka, PostgreSQL, topics, dev tokens and the services; return when all are healthy.

    Components that already run are left alone, so running it twice is harmless.
    """
    settings = Settings()
    if production:
        problems = production_problems(
            settings, int(brokers) if brokers else recorded_brokers(settings) or 1
        )
        if problems:
            click.echo("carebus up --production refuses to start:", err=True)
            for problem in problems:
                click.echo(f"  - {problem}", err=True)
            sys.exit(1)
    if sla_rules is not None:
        settings = settings.model_copy(update={"sla_rules_override": sla_rules.resolve()})
        try:
            load_rules(settings.sla_rules, settings.sla_rules_override)
        except SlaRulesError as exc:
            fail(exc)
    try:
        stack = _stack(settings=settings, brokers=int(brokers) if brokers else None)
        if sla_rules is not None:
            stop_service(service_named("sla"), settings)
        stack.up()
        if with_prometheus:
            stack.start_prometheus()
    except (StackError, OSError) as exc:
        fail(exc)
    click.echo("carebus is up; `carebus status` shows the endpoints and dev tokens")


@click.command()
def down() -> None:
    """Stop the services, Kafka and PostgreSQL of this state directory."""
    try:
        leftovers = _stack().down()
    except (StackError, OSError) as exc:
        fail(exc)
    if leftovers:
        click.echo(f"killed {len(leftovers)} leftover process(es): {leftovers}")
    click.echo("carebus is down")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the machine-readable document.")
def status(as_json: bool) -> None:
    """Health of every component; exits 1 if anything is down."""
    stack = _stack(echo=False)
    components = stack.status()
    healthy = all(component.ok for component in components)
    if as_json:
        click.echo(json.dumps(stack.status_document(components), indent=2))
    else:
        for component in components:
            click.echo(f"{component.name:<12} {component.state:<7} {component.detail}")
        document = stack.status_document()
        tokens = document["dev_tokens"]
        if tokens:
            click.echo("\ndev tokens (local only):")
            orgs = tokens.get("orgs", {})
            for name, token in tokens.items():
                if name in ("orgs", "operator_org"):
                    continue
                operator = name.startswith("operator")
                org = (
                    tokens.get("operator_org", "")
                    if operator
                    else orgs.get(name, orgs.get("municipality", ""))
                )
                click.echo(f"  {name:<16} {org:<10} {token}")
    sys.exit(0 if healthy else 1)


def _log_files(stack: LocalStack) -> dict[str, Path]:
    settings = stack.settings
    files = {**stack.kafka.log_paths(), "postgres": stack.postgres.log_path}
    for spec in SERVICES:
        files[spec.name] = settings.state_dir / "logs" / f"{spec.name}.log"
    return files


@click.command()
@click.argument("name", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", default=50, show_default=True, help="Lines of history.")
def logs(name: str | None, follow: bool, lines: int) -> None:
    """Show the log of one component (kafka, postgres, gateway, ...) or of all of them."""
    files = _log_files(_stack(echo=False))
    if name is not None:
        key = name.replace("-", "_")
        if key not in files:
            fail(ValueError(f"no component {name!r}; choose from {', '.join(files)}"))
        files = {key: files[key]}
    present = {key: path for key, path in files.items() if path.exists()}
    if not present:
        fail(FileNotFoundError("no logs yet; run `carebus up` first"))
    prefix = len(present) > 1
    for key, path in present.items():
        for line in tail(path, lines).splitlines():
            click.echo(f"{key:<12}| {line}" if prefix else line)
    if follow:
        _follow(present, prefix)


def _follow(files: dict[str, Path], prefix: bool) -> None:
    offsets = {key: path.stat().st_size for key, path in files.items()}
    try:
        while True:
            for key, path in files.items():
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                if size < offsets[key]:  # rotated or truncated
                    offsets[key] = 0
                if size == offsets[key]:
                    continue
                with path.open("rb") as handle:
                    handle.seek(offsets[key])
                    chunk = handle.read(size - offsets[key])
                # Print whole lines only; a partial last line waits for its newline.
                complete = chunk.rfind(b"\n") + 1
                offsets[key] += complete
                for line in chunk[:complete].decode(errors="replace").splitlines():
                    click.echo(f"{key:<12}| {line}" if prefix else line)
            time.sleep(0.3)
    except KeyboardInterrupt:
        return
