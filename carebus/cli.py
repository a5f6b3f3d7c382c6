"""The `carebus` command: run the local stack (up, down, status, logs) and manage API tokens."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import NoReturn

import asyncpg
import click

from carebus.auth import REALMS, ROLES
from carebus.config import Settings
from carebus.sla import SlaRulesError, load_rules
from carebus.stack import LocalStack, StackError
from carebus.stack.process import tail
from carebus.stack.supervisor import SERVICES, service_named, stop_service


def _stack(echo: bool = True, settings: Settings | None = None) -> LocalStack:
    return LocalStack(settings or Settings(), durable=True, echo=click.echo if echo else _quiet)


def _quiet(_: str) -> None:
    return None


def _fail(exc: Exception) -> NoReturn:
    click.echo(f"carebus: {exc}", err=True)
    sys.exit(1)


@click.group()
def main() -> None:
    """carebus: the interagency care-coordination message bus (local stack and tools)."""


@main.command()
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
def up(sla_rules: Path | None, with_prometheus: bool) -> None:
    """Start Kafka, PostgreSQL, topics, dev tokens and the services; return when all are healthy.

    Components that already run are left alone, so running it twice is harmless.
    """
    settings = Settings()
    if sla_rules is not None:
        settings = settings.model_copy(update={"sla_rules_override": sla_rules.resolve()})
        try:
            load_rules(settings.sla_rules, settings.sla_rules_override)
        except SlaRulesError as exc:
            _fail(exc)
    try:
        stack = _stack(settings=settings)
        if sla_rules is not None:
            stop_service(service_named("sla"), settings)
        stack.up()
        if with_prometheus:
            stack.start_prometheus()
    except (StackError, OSError) as exc:
        _fail(exc)
    click.echo("carebus is up; `carebus status` shows the endpoints and dev tokens")


@main.command()
def down() -> None:
    """Stop the services, Kafka and PostgreSQL of this state directory."""
    try:
        leftovers = _stack().down()
    except (StackError, OSError) as exc:
        _fail(exc)
    if leftovers:
        click.echo(f"killed {len(leftovers)} leftover process(es): {leftovers}")
    click.echo("carebus is down")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the machine-readable document.")
def status(as_json: bool) -> None:
    """Health of every component; exits 1 if anything is down."""
    stack = _stack(echo=False)
    components = stack.status()
    healthy = all(component.ok for component in components)
    if as_json:
        click.echo(json.dumps(stack.status_document(), indent=2))
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
    files = {"kafka": stack.kafka.log_path, "postgres": stack.postgres.log_path}
    for spec in SERVICES:
        files[spec.name] = settings.state_dir / "logs" / f"{spec.name}.log"
    return files


@main.command()
@click.argument("name", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", default=50, show_default=True, help="Lines of history.")
def logs(name: str | None, follow: bool, lines: int) -> None:
    """Show the log of one component (kafka, postgres, gateway, ...) or of all of them."""
    files = _log_files(_stack(echo=False))
    if name is not None:
        key = name.replace("-", "_")
        if key not in files:
            _fail(ValueError(f"no component {name!r}; choose from {', '.join(files)}"))
        files = {key: files[key]}
    present = {key: path for key, path in files.items() if path.exists()}
    if not present:
        _fail(FileNotFoundError("no logs yet; run `carebus up` first"))
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


@main.group()
def token() -> None:
    """API tokens."""


@token.command("add")
@click.option("--agency", required=True, type=click.Choice(REALMS))
@click.option(
    "--org", "org_id", help="9-digit organisation number (default for patient: the operator's)."
)
@click.option("--role", required=True, type=click.Choice(ROLES))
@click.option("--nin", help="patient tokens only: the person the token reads about.")
@click.option("--label", default="", help="What the token is for.")
def token_add(agency: str, org_id: str | None, role: str, nin: str | None, label: str) -> None:
    """Create a token for an organisation (registered if new) and print it once.

    A patient token (`--agency operator --role patient --nin ...`) reads only its own person's
    disclosure log; it is issued by the operator's organisation.
    """
    from carebus import auth
    from carebus.identity import subject_key, validate_nin
    from carebus.stack.devdata import OPERATOR_ORG

    settings = Settings()
    key = None
    if nin is not None:
        problem = validate_nin(nin)
        if problem is not None:
            _fail(ValueError(f"--nin {problem}"))
        key = subject_key(nin, settings.subject_key_secret.get_secret_value().encode())
    organisation = org_id or (OPERATOR_ORG if agency == auth.OPERATOR else None)
    if organisation is None:
        _fail(ValueError("--org is required"))

    async def create() -> str:
        conn = await asyncpg.connect(settings.postgres_dsn)
        try:
            return await auth.create_token(
                conn, agency=agency, org_id=organisation, role=role, label=label, subject_key=key
            )
        finally:
            await conn.close()

    try:
        created = asyncio.run(create())
    except (ValueError, OSError, asyncpg.PostgresError) as exc:
        _fail(exc)
    click.echo(created)


@main.group()
def org() -> None:
    """The organisation directory (every organisation events and requests may name)."""


@org.command("add")
@click.option("--agency", required=True, type=click.Choice(REALMS))
@click.option("--org", "org_id", required=True, help="9-digit organisation number.")
@click.option("--name", required=True, help="The organisation's name.")
@click.option("--her-id", "her_id", help="Its HER-id in the national address register.")
def org_add(agency: str, org_id: str, name: str, her_id: str | None) -> None:
    """Register an organisation (or update its name and HER-id) and print its entry."""
    from carebus import directory

    async def add() -> directory.Organisation:
        conn = await asyncpg.connect(Settings().postgres_dsn)
        try:
            return await directory.add_organisation(
                conn, agency=agency, org_id=org_id, name=name, her_id=her_id
            )
        finally:
            await conn.close()

    try:
        entry = asyncio.run(add())
    except (ValueError, OSError, asyncpg.PostgresError) as exc:
        _fail(exc)
    click.echo(json.dumps(entry.to_json()))


@org.command("list")
@click.option("--agency", type=click.Choice(REALMS), help="Only this agency's organisations.")
def org_list(agency: str | None) -> None:
    """Print the directory, one JSON object a line."""
    from carebus import directory

    async def read() -> list[directory.Organisation]:
        conn = await asyncpg.connect(Settings().postgres_dsn)
        try:
            return await directory.list_organisations(conn, agency)
        finally:
            await conn.close()

    try:
        entries = asyncio.run(read())
    except (OSError, asyncpg.PostgresError) as exc:
        _fail(exc)
    for entry in entries:
        click.echo(json.dumps(entry.to_json()))


@main.group()
def webhook() -> None:
    """Webhook registrations (where an organisation receives its deliveries)."""


@webhook.command("set")
@click.option("--org", "org_id", required=True, help="9-digit organisation number.")
@click.option("--url", required=True, help="The http or https URL deliveries are POSTed to.")
def webhook_set(org_id: str, url: str) -> None:
    """Register an organisation's webhook with a new signing secret and print the secret once."""
    from carebus import webhook_registrations

    async def register() -> str:
        conn = await asyncpg.connect(Settings().postgres_dsn)
        try:
            return (await webhook_registrations.set_webhook(conn, org_id, url)).secret
        finally:
            await conn.close()

    try:
        secret = asyncio.run(register())
    except (ValueError, OSError, asyncpg.PostgresError) as exc:
        _fail(exc)
    except webhook_registrations.UnknownOrganisationError as exc:
        _fail(ValueError(f"{exc}; create a token for it first (`carebus token add`)"))
    click.echo(secret)


@main.command("trace")
@click.argument("event_id")
@click.option(
    "--source-org",
    "source_org",
    help="The source organisation (event ids are unique per source); default: every one.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the machine-readable document.")
def trace_command(event_id: str, source_org: str | None, as_json: bool) -> None:
    """Print an event's path: received, stored, routed, delivered, tracked, alerted.

    Exits 1 if the event store does not hold it (showing what the other stores hold).
    """
    from carebus import trace

    settings = Settings()

    async def gather() -> list[trace.EventTrace]:
        rules = load_rules(settings.sla_rules, settings.sla_rules_override)
        conn = await asyncpg.connect(settings.postgres_dsn)
        try:
            return await trace.trace(conn, event_id, rules, source_org=source_org)
        finally:
            await conn.close()

    try:
        traces = asyncio.run(gather())
    except (SlaRulesError, OSError, asyncpg.PostgresError) as exc:
        _fail(exc)
    if as_json:
        document = {"event_id": event_id, "sources": [trace.trace_json(t) for t in traces]}
        click.echo(json.dumps(document, indent=2))
    elif traces:
        click.echo("\n\n".join(trace.render(t) for t in traces))
    if not traces:
        source = f" from {source_org}" if source_org else ""
        _fail(LookupError(f"no event {event_id}{source} in the event store or any other store"))
    missing = [t.source_org for t in traces if t.stored is None]
    if missing:
        _fail(LookupError(f"no event {event_id} from {', '.join(missing)} in the event store"))


if __name__ == "__main__":
    main()
