"""The `carebus` command: the operator's tools (tokens, the directory, webhooks, topics, trace,
rebuild-state).

Further commands come from the `carebus.commands` entry points: a development install adds the
local stack's (`up`, `down`, `status`, `logs`, from `carebus_dev.cli`); a production image,
which does not carry the developer tooling, has the operator's tools only.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import NoReturn

import asyncpg
import click

from carebus.adapters.auth import REALMS, ROLES, TokenInfo
from carebus.domain.sla import SlaRulesError
from carebus.ops.plo_drop import plo
from carebus.ops.retention import retention
from carebus.runtime.config import Settings
from carebus.wire.policy_files import load_rules


def fail(exc: Exception) -> NoReturn:
    click.echo(f"carebus: {exc}", err=True)
    sys.exit(1)


class _Commands(click.Group):
    """The operator's commands plus those of the `carebus.commands` entry points, loaded when
    the command line is read (so that a plugin may import this module)."""

    _loaded = False

    def _load_plugins(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for entry in entry_points(group="carebus.commands"):
            try:
                command = entry.load()
            except ModuleNotFoundError as missing:
                # Declared by the project's metadata but not in this image (production images do
                # not carry carebus_dev); any other import failure is a bug and is raised.
                if missing.name is None or not entry.module.startswith(missing.name):
                    raise
                continue
            if isinstance(command, click.Command):
                self.add_command(command, entry.name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugins()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load_plugins()
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands)
def main() -> None:
    """carebus: the interagency care-coordination message bus (local stack and tools)."""


@main.group()
def topics() -> None:
    """The Kafka topic catalogue (infra/kafka/topics.yaml)."""


@topics.command("apply")
def topics_apply() -> None:
    """Create missing topics and align the settings of existing ones (idempotent)."""
    from confluent_kafka import KafkaException

    from carebus.adapters.topic_admin import TopicCatalogueError, apply_catalogue

    settings = Settings()
    try:
        for line in apply_catalogue(settings, settings.person_partitions):
            click.echo(f"topic        {line}")
    except (TopicCatalogueError, KafkaException, ValueError, OSError) as exc:
        fail(exc)


@main.group()
def kafka() -> None:
    """The broker's principals and ACLs (infra/kafka/acls.yaml)."""


@kafka.command("apply")
@click.option(
    "--passwords-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the files kafka_password_<principal> are (default: CAREBUS_SECRETS_DIR).",
)
def kafka_apply(passwords_dir: Path | None) -> None:
    """Give every component its SCRAM credential and exactly its ACLs (idempotent; run as the
    admin super user: CAREBUS_KAFKA_USERNAME and the file carebus_kafka_password)."""
    from confluent_kafka import KafkaException

    from carebus.adapters.kafka_acls import (
        AclFileError,
        apply_access,
        load_grants,
        principals,
        read_passwords,
    )
    from carebus.adapters.topic_admin import admin_client

    settings = Settings()
    directory = passwords_dir or (Path(d) if (d := os.environ.get("CAREBUS_SECRETS_DIR")) else None)
    if directory is None:
        fail(ValueError("no --passwords-dir and no CAREBUS_SECRETS_DIR"))
    try:
        grants = load_grants()
        passwords = read_passwords(directory, principals(grants))
        for line in apply_access(admin_client(settings), grants, passwords):
            click.echo(f"kafka acls   {line}")
    except (AclFileError, KafkaException, TimeoutError, OSError) as exc:
        fail(exc)


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
    from carebus.adapters import auth
    from carebus.domain.identity import subject_key, validate_nin

    settings = Settings()
    key = None
    if nin is not None:
        problem = validate_nin(nin)
        if problem is not None:
            fail(ValueError(f"--nin {problem}"))
        key = subject_key(nin, settings.subject_key_secret.get_secret_value().encode())
    if org_id is None and agency != auth.OPERATOR:
        fail(ValueError("--org is required"))

    async def create() -> str:
        conn = await asyncpg.connect(settings.postgres_dsn)
        try:
            organisation = org_id or await _the_operator(conn)
            return await auth.create_token(
                conn, agency=agency, org_id=organisation, role=role, label=label, subject_key=key
            )
        finally:
            await conn.close()

    try:
        created = asyncio.run(create())
    except (ValueError, OSError, asyncpg.PostgresError) as exc:
        fail(exc)
    click.echo(created)


@token.command("revoke")
@click.argument("token_or_id")
def token_revoke(token_or_id: str) -> None:
    """Revoke a token, named by its id or by the token itself: every service refuses it within
    seconds (their token caches hold a look-up for 5 s)."""
    from carebus.adapters import auth

    async def revoke(conn: asyncpg.Connection, found: auth.TokenInfo) -> str:
        if not await auth.revoke_token(conn, found.token_id):
            return f"token {found.token_id} was already revoked"
        return f"token {found.token_id} revoked ({found.role} of {found.org_id})"

    click.echo(_on_token(token_or_id, revoke))


@token.command("rotate")
@click.argument("token_or_id")
@click.option(
    "--grace-hours",
    default=24.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="How long the old token stays valid beside the new one.",
)
def token_rotate(token_or_id: str, grace_hours: float) -> None:
    """Issue a replacement for a token and print it once; the old one is accepted for the grace
    period (both are valid meanwhile), then expires."""
    from datetime import timedelta

    from carebus.adapters import auth

    async def rotate(conn: asyncpg.Connection, found: auth.TokenInfo) -> str:
        return await auth.rotate_token(conn, found.token_id, grace=timedelta(hours=grace_hours))

    click.echo(_on_token(token_or_id, rotate))


def _on_token(
    token_or_id: str, act: Callable[[asyncpg.Connection, TokenInfo], Awaitable[str]]
) -> str:
    """`act` on the token named by its id or by the token itself; exits with the error if it
    is unknown or the database fails (the token is never echoed)."""
    from carebus.adapters import auth

    async def run() -> str:
        conn = await asyncpg.connect(Settings().postgres_dsn)
        try:
            found = await auth.find_token(conn, token_or_id)
            if found is None:
                raise ValueError("no such token")
            return await act(conn, found)
        finally:
            await conn.close()

    try:
        return asyncio.run(run())
    except (ValueError, OSError, asyncpg.PostgresError) as exc:
        fail(exc)


async def _the_operator(conn: asyncpg.Connection) -> str:
    """The operator's organisation: the one registered organisation of the operator realm."""
    from carebus.adapters import directory

    operators = await directory.list_organisations(conn, "operator")
    if len(operators) != 1:
        raise ValueError(f"--org is required ({len(operators)} operator organisations registered)")
    return operators[0].org_id


@main.group()
def org() -> None:
    """The organisation directory (every organisation events and requests may name)."""


@org.command("add")
@click.option("--agency", required=True, type=click.Choice(REALMS))
@click.option("--org", "org_id", required=True, help="9-digit organisation number.")
@click.option("--name", required=True, help="The organisation's name.")
@click.option("--her-id", "her_id", help="Its HER-id in the national address register.")
@click.option(
    "--municipality-number", "municipality_number", help="A municipality's 4-digit kommunenummer."
)
def org_add(
    agency: str, org_id: str, name: str, her_id: str | None, municipality_number: str | None
) -> None:
    """Register an organisation (or update its name, HER-id and kommunenummer) and print its
    entry."""
    from carebus.adapters import directory

    async def add() -> directory.Organisation:
        conn = await asyncpg.connect(Settings().postgres_dsn)
        try:
            return await directory.add_organisation(
                conn,
                agency=agency,
                org_id=org_id,
                name=name,
                her_id=her_id,
                municipality_number=municipality_number,
            )
        finally:
            await conn.close()

    try:
        entry = asyncio.run(add())
    except (ValueError, OSError, asyncpg.PostgresError) as exc:
        fail(exc)
    click.echo(json.dumps(entry.to_json()))


@org.command("list")
@click.option("--agency", type=click.Choice(REALMS), help="Only this agency's organisations.")
def org_list(agency: str | None) -> None:
    """Print the directory, one JSON object a line."""
    from carebus.adapters import directory

    async def read() -> list[directory.Organisation]:
        conn = await asyncpg.connect(Settings().postgres_dsn)
        try:
            return await directory.list_organisations(conn, agency)
        finally:
            await conn.close()

    try:
        entries = asyncio.run(read())
    except (OSError, asyncpg.PostgresError) as exc:
        fail(exc)
    for entry in entries:
        click.echo(json.dumps(entry.to_json()))


@main.group()
def webhook() -> None:
    """Webhook registrations (where an organisation receives its deliveries)."""


@webhook.command("set")
@click.option("--org", "org_id", required=True, help="9-digit organisation number.")
@click.option(
    "--url", required=True, help="The https URL deliveries are POSTed to (http: local only)."
)
@click.option(
    "--format",
    "format_",
    type=click.Choice(["carebus", "plo", "fhir"]),
    default=None,
    help="What the webhook receives: carebus JSON, PLO in MsgHead, or a FHIR message Bundle"
    " (PLO and FHIR: DPS, municipality and GP only). Default: the registration's format stays"
    " (carebus for a new one).",
)
def webhook_set(org_id: str, url: str, format_: str | None) -> None:
    """Register an organisation's webhook with a new signing secret and print the secret once;
    the secret it replaces keeps signing beside it for CAREBUS_WEBHOOK_SECRET_GRACE_S."""
    from carebus.adapters import webhook_registrations
    from carebus.wire.outbound import Format

    settings = Settings()

    async def register() -> str:
        conn = await asyncpg.connect(settings.postgres_dsn)
        try:
            chosen = None if format_ is None else Format(format_)
            webhook = await webhook_registrations.set_webhook(conn, org_id, url, settings, chosen)
            return webhook.secret
        finally:
            await conn.close()

    try:
        secret = asyncio.run(register())
    except (ValueError, OSError, asyncpg.PostgresError) as exc:
        fail(exc)
    except webhook_registrations.UnknownOrganisationError as exc:
        fail(ValueError(f"{exc}; create a token for it first (`carebus token add`)"))
    click.echo(secret)


@webhook.command("redrive")
@click.option("--org", "org_id", required=True, help="9-digit organisation number.")
@click.option(
    "--delivery",
    "delivery_ids",
    multiple=True,
    help="Only this delivery id (repeatable); default: every dead delivery of the organisation.",
)
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"]),
    help="Only deliveries dead-lettered at or after this time (ISO 8601; UTC if no offset).",
)
def webhook_redrive(org_id: str, delivery_ids: tuple[str, ...], since: datetime | None) -> None:
    """Queue an organisation's dead-lettered webhook deliveries again, keeping their delivery
    ids (receivers deduplicate on Idempotency-Key); each gets a fresh retry window. Running it
    again is harmless. Recorded in operator_actions."""
    from carebus.adapters import webhook_redrive as redrive
    from carebus.domain.events import ORG_ID_PROBLEM

    if not (len(org_id) == 9 and org_id.isdigit()):
        fail(ValueError(f"--org {ORG_ID_PROBLEM}"))
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)

    async def run() -> redrive.Redriven:
        conn = await asyncpg.connect(Settings().postgres_dsn)
        try:
            return await redrive.redrive(
                conn,
                org_id,
                operator_org=await redrive.operator_org(conn),
                delivery_ids=list(delivery_ids) or None,
                since=since,
            )
        finally:
            await conn.close()

    try:
        done = asyncio.run(run())
    except (OSError, asyncpg.PostgresError) as exc:
        fail(exc)
    for delivery_id in done.delivery_ids:
        click.echo(f"queued again  {delivery_id}")
    click.echo(f"{len(done.delivery_ids)} dead webhook deliveries of {org_id} queued again")
    if done.delivery_ids and not done.has_webhook:
        click.echo(
            f"carebus: {org_id} has no webhook: these will be dead-lettered again unless it "
            "registers one (`carebus webhook set`)",
            err=True,
        )


@main.command("rebuild-state")
@click.option(
    "--wait",
    "wait_s",
    default=120.0,
    show_default=True,
    help="Seconds to wait for the registry to publish the snapshots (0: do not wait).",
)
def rebuild_state_command(wait_s: float) -> None:
    """Rebuild every person's routing state from the registry's history and the event store,
    and have the registry publish it to care.persons.v1, where the router restores a lost state
    from. Safe while everything runs; running it again changes nothing. Exits 1 if the registry
    has not published the snapshots within --wait seconds (they stay queued in its outbox)."""
    from carebus.ops import rebuild
    from carebus.wire.codec import Codec

    async def run() -> tuple[rebuild.Rebuilt, int]:
        conn = await asyncpg.connect(Settings().postgres_dsn)
        try:
            done = await rebuild.rebuild_state(conn, Codec.default())
            click.echo(f"{done.persons} person snapshots queued in the registry's outbox")
            deadline = asyncio.get_running_loop().time() + wait_s
            left = await rebuild.unpublished(conn, done.outbox_ids)
            while left and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.5)
                left = await rebuild.unpublished(conn, done.outbox_ids)
            return done, left
        finally:
            await conn.close()

    try:
        done, left = asyncio.run(run())
    except (OSError, asyncpg.PostgresError) as exc:
        fail(exc)
    if left and wait_s > 0:
        fail(TimeoutError(f"{left} snapshots not yet published: is the registry running?"))
    if not left:
        click.echo(f"{done.persons} person snapshots published to care.persons.v1")


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
    from carebus.ops import trace

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
        fail(exc)
    if as_json:
        document = {"event_id": event_id, "sources": [trace.trace_json(t) for t in traces]}
        click.echo(json.dumps(document, indent=2))
    elif traces:
        click.echo("\n\n".join(trace.render(t) for t in traces))
    if not traces:
        source = f" from {source_org}" if source_org else ""
        fail(LookupError(f"no event {event_id}{source} in the event store or any other store"))
    missing = [t.source_org for t in traces if t.stored is None]
    if missing:
        fail(LookupError(f"no event {event_id} from {', '.join(missing)} in the event store"))


main.add_command(retention)
main.add_command(plo)


if __name__ == "__main__":
    main()
