"""Least privilege in PostgreSQL (issue 14, item 2; docs/security.md, control 2b): each service
logs in as its own role with exactly the grants its statements need, over SCRAM, and the owner
that runs the migrations is used by no service.

That every role can do what its service needs is shown by the rest of the suite, which runs every
service under its role; these tests show what the roles cannot do.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import psycopg
import pytest
import sqlalchemy.exc

from carebus.adapters import db
from carebus.adapters.auth import ensure_organisation
from carebus.runtime.config import with_local_password
from carebus_dev.stack.postgres import login_role, with_user
from carebus_dev.stack.process import pids_in_group
from carebus_dev.stack.supervisor import SERVICES
from carebus_dev.testing import ServiceProcess, TestStack, free_ports, run_cli
from tests.integration.test_audit_append_only import AUDIT_TABLES

pytestmark = pytest.mark.integration

# Every role the stack logs in with but the owner.
ROLES = (*(spec.name for spec in SERVICES), "operator")
# The router and the development OpenID Connect issuer never connect (migrations 0011, 0012).
CONNECTING = tuple(name for name in ROLES if name not in ("router", "oidc_issuer"))


def role_dsn(stack: TestStack, name: str) -> str:
    """The DSN `name`'s processes use, with its password (as they read it from the state dir)."""
    dsn = with_user(stack.settings.postgres_dsn, login_role(name))
    return with_local_password(dsn, stack.settings.state_dir)


async def connect_as(stack: TestStack, name: str) -> asyncpg.Connection:
    return await asyncpg.connect(role_dsn(stack, name))


@pytest.fixture
async def owner(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    yield conn
    await conn.close()


async def test_the_gateway_can_neither_read_disclosures_nor_issue_tokens(stack: TestStack) -> None:
    """The gateway reads tokens to authenticate, but no audit record, and cannot make a token."""
    conn = await connect_as(stack, "gateway")
    try:
        await conn.fetchval("SELECT count(*) FROM api_tokens")  # what it needs still works
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await conn.fetchval("SELECT count(*) FROM disclosures")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await conn.execute(
                "INSERT INTO api_tokens (token_id, token_hash, org_id, role, expires_at)"
                " VALUES (gen_random_uuid(), '\\x00', '974705788', 'admin', now())"
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE false")
    finally:
        await conn.close()


async def test_the_operator_queues_person_snapshots_and_no_other_outbox_record(
    stack: TestStack,
) -> None:
    """The registry's relay publishes every outbox row under the registry's Kafka principal, so
    the operator's role may not write one: it may queue a care.persons.v1 snapshot of a subject
    key, through the owner's function, and nothing else."""
    conn = await connect_as(stack, "operator")
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await conn.execute(
                "INSERT INTO outbox (topic, key, value) VALUES ('care.events.v1', 'k', 'v')"
            )
        with pytest.raises(asyncpg.InvalidParameterValueError, match="not a subject key"):
            await conn.fetchval("SELECT carebus_queue_person_snapshot('care.events.v1', 'v')")
        key = "ab" * 32
        looking = conn.transaction()  # rolled back: nothing is left for the relay to publish
        await looking.start()
        try:
            queued = await conn.fetchval(
                "SELECT carebus_queue_person_snapshot($1, $2)", key, b"snapshot"
            )
            row = await conn.fetchrow("SELECT topic, key FROM outbox WHERE id = $1", queued)
            assert row is not None
            assert (row["topic"], bytes(row["key"])) == ("care.persons.v1", key.encode())
        finally:
            await looking.rollback()
    finally:
        await conn.close()


async def test_the_webhooks_role_cannot_read_the_events(stack: TestStack) -> None:
    """Webhook delivery sees its queue and registrations, never the unminimised events."""
    conn = await connect_as(stack, "webhooks")
    try:
        await conn.fetchval("SELECT count(*) FROM webhook_queue")
        for table in ("events", "accepted_events", "disclosures", "api_tokens"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed names
    finally:
        await conn.close()


async def test_only_the_registry_writes_housing_places_and_only_the_sla_engine_counts(
    stack: TestStack,
) -> None:
    """Who gets a place's alerts is the registry's to record (migration 0025): the SLA engine
    reads the housing places but cannot change them; the registry cannot read the counts, which
    hold subject keys; no other service sees either."""
    sla = await connect_as(stack, "sla")
    registry = await connect_as(stack, "registry")
    inbox = await connect_as(stack, "inbox")
    try:
        await sla.fetchval("SELECT count(*) FROM housing_places")
        await sla.fetchval("SELECT count(*) FROM sla_places")
        await registry.fetchval("SELECT count(*) FROM housing_places")
        denied = [
            (sla, "INSERT INTO housing_places VALUES ('" + "0" * 64 + "', '1', '2', 'x')"),
            (sla, "UPDATE housing_places SET owner_org = owner_org"),
            (registry, "SELECT count(*) FROM sla_places"),
            (inbox, "SELECT count(*) FROM housing_places"),
            (inbox, "SELECT count(*) FROM sla_places"),
        ]
        for conn, statement in denied:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(statement)
    finally:
        for conn in (sla, registry, inbox):
            await conn.close()


async def test_the_audit_api_sees_who_sent_events_but_never_their_payloads(
    stack: TestStack,
) -> None:
    """The audit API checks an organisation's standing to ask about a person by whether it sent
    events about them; it may read those two columns of the events and nothing else."""
    conn = await connect_as(stack, "audit")
    try:
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM events WHERE subject_key = $1 AND source_org = $2)",
            "k",
            "o",
        )
        for query in ("SELECT payload FROM events", "SELECT * FROM events"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.fetch(query)
    finally:
        await conn.close()


async def test_the_audit_api_keeps_sessions_but_may_not_delete_them_or_change_lookups(
    stack: TestStack, owner: asyncpg.Connection
) -> None:
    """Migration 0013: the audit service's role opens, touches and ends people's sessions and
    forgets finished sign-ins, as the inbox's does; it may not delete a session, nor change or
    remove a recorded lookup; a patient session must have a subject key and no organisation."""
    conn = await connect_as(stack, "audit")
    try:
        trying = conn.transaction()
        await trying.start()
        await conn.execute(
            "INSERT INTO person_sign_ins (sign_in_hash, state, nonce, code_verifier, service,"
            " door) VALUES ('\\x01', 's', 'n', 'v', 'audit', 'patient')"
        )
        await conn.execute("DELETE FROM person_sign_ins WHERE sign_in_hash = '\\x01'")
        await conn.execute(
            "INSERT INTO person_sessions (session_id, session_hash, service, issuer, subject,"
            " role, subject_key, expires_at) VALUES (gen_random_uuid(), '\\x02', 'audit', 'i',"
            " 's', 'patient', 'k', now())"
        )
        await conn.execute("UPDATE person_sessions SET ended_at = now() WHERE service = 'audit'")
        await trying.rollback()
        for statement in (
            "DELETE FROM person_sessions WHERE false",
            "UPDATE disclosure_lookups SET purpose = purpose WHERE false",
            "DELETE FROM disclosure_lookups WHERE false",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(statement)
    finally:
        await conn.close()
    await owner.execute(
        "INSERT INTO organisations (org_id, agency) VALUES ('974705788', 'dps')"
        " ON CONFLICT DO NOTHING"
    )
    for org_id, role, subject_key, *service in (
        ("974705788", "patient", "k"),
        (None, "patient", None),
        ("974705788", "coordinator", "k"),
        (None, "privacy_officer", None),
        # A patient's session is the audit service's only.
        (None, "patient", "k", "inbox"),
    ):
        with pytest.raises(asyncpg.CheckViolationError):
            await owner.execute(
                "INSERT INTO person_sessions (session_id, session_hash, service, issuer, subject,"
                " org_id, role, subject_key, expires_at) VALUES (gen_random_uuid(),"
                " '\\x03', $4, 'i', 's', $1, $2, $3, now())",
                org_id,
                role,
                subject_key,
                service[0] if service else "audit",
            )


@pytest.mark.parametrize(("service", "other"), [("inbox", "audit"), ("audit", "inbox")])
async def test_a_service_cannot_touch_the_other_services_sessions(
    stack: TestStack, owner: asyncpg.Connection, service: str, other: str
) -> None:
    """Review H1: the inbox and the audit service share the session tables, but each service's
    role sees and writes only its own rows (row-level security), and may change a session only
    in its idle clock and its end. Otherwise a compromised inbox could open an audit session as
    the operator's privacy officer (every disclosure about anyone), or the audit service an
    inbox session for any organisation's coordinator."""
    await owner.execute(
        "INSERT INTO organisations (org_id, agency) VALUES ('974705788', 'dps')"
        " ON CONFLICT DO NOTHING"
    )
    theirs = os.urandom(16)
    await owner.execute(
        "INSERT INTO person_sessions (session_id, session_hash, service, issuer, subject,"
        " org_id, role, expires_at) VALUES (gen_random_uuid(), $1, $2, 'i', 's', '974705788',"
        " 'privacy_officer', now() + interval '1 hour')",
        theirs,
        other,
    )
    conn = await connect_as(stack, service)
    try:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM person_sessions WHERE session_hash = $1", theirs
            )
            == 0
        )
        assert (
            await conn.fetchval(
                "UPDATE person_sessions SET last_seen_at = now() WHERE session_hash = $1"
                " RETURNING session_id",
                theirs,
            )
            is None
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn.execute(
                "INSERT INTO person_sessions (session_id, session_hash, service, issuer,"
                " subject, org_id, role, expires_at) VALUES (gen_random_uuid(), $1, $2, 'i',"
                " 's', '974705788', 'privacy_officer', now() + interval '1 hour')",
                os.urandom(16),
                other,
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn.execute(
                "INSERT INTO person_sign_ins (sign_in_hash, state, nonce, code_verifier,"
                " service, door) VALUES ($1, 's', 'n', 'v', $2, 'staff')",
                os.urandom(16),
                other,
            )
        for column in ("expires_at = now() + interval '1 year'", "role = 'operator'"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(
                    f"UPDATE person_sessions SET {column} WHERE service = $1",  # noqa: S608
                    service,
                )
    finally:
        await conn.close()


LOOKUP = (
    "INSERT INTO disclosure_lookups (lookup_id, subject_key, org_id, role, token_id, items, what)"
    " VALUES (gen_random_uuid(), 'k', '974705788', 'coordinator', gen_random_uuid(), 0, $1)"
)


async def test_the_inbox_only_adds_person_view_lookups_and_never_reads_the_log(
    stack: TestStack,
) -> None:
    """Migration 0022: the inbox records each person-view answer in the disclosure log, but
    only as `person_timeline` (row-level security), so it cannot forge a privacy officer's
    query; it may not read, change or remove a lookup; the audit service, for its part, may
    not record a person-view lookup."""
    conn = await connect_as(stack, "inbox")
    try:
        trying = conn.transaction()
        await trying.start()
        assert await conn.execute(LOOKUP, "person_timeline") == "INSERT 0 1"
        await trying.rollback()  # leave no row behind: the audit trail cannot lose it later
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn.execute(LOOKUP, "disclosure_query")
        for statement in (
            "SELECT count(*) FROM disclosure_lookups",
            "UPDATE disclosure_lookups SET items = items WHERE false",
            "DELETE FROM disclosure_lookups WHERE false",
            "TRUNCATE disclosure_lookups",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(statement)
    finally:
        await conn.close()
    audit = await connect_as(stack, "audit")
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await audit.execute(LOOKUP, "person_timeline")
        await audit.fetchval("SELECT count(*) FROM disclosure_lookups")  # still reads them all
    finally:
        await audit.close()


REFUSAL = (
    "INSERT INTO authority_refusals (audit_id, subject_key, actor_org, actor_agency, actor_role,"
    " statement, rule_id, field, policy_version, decided_at) VALUES (gen_random_uuid()::text,"
    " $1, $2, $3, 'coordinator', $4, $5, 'subject_key', 'v', now() + $6::text::interval)"
)


async def test_the_inbox_only_adds_refused_person_views_to_the_refusals(
    stack: TestStack, owner: asyncpg.Connection
) -> None:
    """Migration 0026: the inbox keeps a refused person-view look-up in `authority_refusals`,
    but only its own kind (row-level security): statement `person_view` under its rule, about a
    person carebus knows, by an organisation of the directory as its agency, decided now. So it
    cannot make up a refused care-team change in anyone's log, plant rows for keys no one has
    or date one past retention; it may not read, change or remove a refusal. The audit store
    still adds every statement, and the audit service still reads them all."""
    person = uuid.uuid4().hex * 2
    await owner.execute(
        "INSERT INTO sla_persons (subject_key, state, routing) VALUES ($1, '{}', '{}')", person
    )
    await ensure_organisation(owner, agency="dps", org_id="974705788")
    good = (person, "974705788", "dps", "person_view", "person_view.relation", "0 seconds")
    conn = await connect_as(stack, "inbox")
    try:
        trying = conn.transaction()
        await trying.start()
        assert await conn.execute(REFUSAL, *good) == "INSERT 0 1"
        await trying.rollback()  # leave no row behind: the audit trail cannot lose it later
        for position, wrong in (
            (3, "care_team_change"),
            (3, "consent"),
            (3, "event:admission"),
            (4, "contact.own_staff"),
            (0, "f" * 64),  # a key no person has
            (2, "municipality"),  # not the organisation's agency
            (1, "999999999"),  # not in the directory
            (5, "100 years"),  # past retention
            (5, "-1 day"),
        ):
            values = list(good)
            values[position] = wrong
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                await conn.execute(REFUSAL, *values)
        for statement in (
            "SELECT count(*) FROM authority_refusals",
            "UPDATE authority_refusals SET field = field WHERE false",
            "DELETE FROM authority_refusals WHERE false",
            "TRUNCATE authority_refusals",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(statement)
    finally:
        await conn.close()
    store = await connect_as(stack, "audit_store")
    audit = await connect_as(stack, "audit")
    try:
        # The audit store writes every statement, about any key (a refused statement may name
        # a person carebus does not know yet); committed, so the readers below must see it.
        stranger = uuid.uuid4().hex * 2
        other = (
            stranger,
            "974705788",
            "dps",
            "care_team_change",
            "care_team.recorder",
            "0 seconds",
        )
        assert await store.execute(REFUSAL, *other) == "INSERT 0 1"
        everything = await owner.fetchval("SELECT count(*) FROM authority_refusals")
        assert everything > 0
        assert await store.fetchval("SELECT count(*) FROM authority_refusals") == everything
        assert await audit.fetchval("SELECT count(*) FROM authority_refusals") == everything
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await audit.execute(REFUSAL, *good)
    finally:
        await store.close()
        await audit.close()


@pytest.mark.parametrize(
    "query",
    [
        # What the view shows or decides by, column by column: nothing more.
        "SELECT emergency FROM events",
        "SELECT source_system FROM events",
        "SELECT * FROM events",
        "SELECT reason, basis, rule_id FROM disclosures",
        "SELECT * FROM disclosures",
        "SELECT delivered_at FROM deliveries",
        "SELECT updated_at FROM sla_persons",
        "SELECT * FROM sla_deadlines",
        "SELECT * FROM consents",
        "SELECT * FROM care_team_changes",
        "SELECT * FROM person_facts",
        "SELECT * FROM authority_refusals",
    ],
)
async def test_the_inbox_reads_only_the_columns_the_person_view_needs(
    stack: TestStack, query: str
) -> None:
    """The person view reads the SLA engine's person rows, the caller's delivered disclosures,
    deliveries and sent events (migration 0022's column grants); anything else is refused."""
    conn = await connect_as(stack, "inbox")
    try:
        await conn.fetchval(
            "SELECT count(*) FROM events WHERE subject_key = 'k' AND source_org = 'o'"
            " AND payload IS NOT NULL"
        )  # what it needs still works
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await conn.fetch(query)
    finally:
        await conn.close()


async def test_contact_persons_are_added_by_the_registry_and_read_by_inbox_and_audit(
    stack: TestStack, owner: asyncpg.Connection
) -> None:
    """Migration 0024: the registry adds contact persons (a history: never changed or removed
    by a service) and takes the person's data key to seal the name; the inbox and the audit
    service only read them; no other service sees them at all."""
    insert = (
        "INSERT INTO care_team_contacts (contact_id, subject_key, org_id, role, position, name,"
        " status, recorded_by_org) VALUES (gen_random_uuid(), $1, '940493021', 'coordinator',"
        " 'accountable', 'sealed:v1:1:AAAA', 'active', '940493021')"
    )
    await owner.execute(
        "INSERT INTO organisations (org_id, agency) VALUES ('940493021', 'municipality')"
        " ON CONFLICT DO NOTHING"
    )
    registry = await connect_as(stack, "registry")
    try:
        trying = registry.transaction()  # rolled back: nothing stays
        await trying.start()
        try:
            await registry.execute(insert, "cd" * 32)
            assert await registry.fetchval("SELECT count(*) FROM care_team_contacts") >= 1
            await registry.fetchval("SELECT count(*) FROM person_keys")
        finally:
            await trying.rollback()
        for statement in (
            "UPDATE care_team_contacts SET status = 'ended' WHERE false",
            "DELETE FROM care_team_contacts WHERE false",
            "UPDATE person_keys SET wrapped_key = NULL WHERE false",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await registry.execute(statement)
    finally:
        await registry.close()
    for reader in ("inbox", "audit"):
        conn = await connect_as(stack, reader)
        try:
            await conn.fetchval("SELECT count(*) FROM care_team_contacts")
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(insert, "cd" * 32)
        finally:
            await conn.close()
    for outsider in ("gateway", "webhooks", "sla", "alert_store", "operator"):
        conn = await connect_as(stack, outsider)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.fetchval("SELECT count(*) FROM care_team_contacts")
        finally:
            await conn.close()


async def test_the_audit_store_inserts_disclosures_but_may_not_change_them(
    stack: TestStack,
) -> None:
    """The audit store's role may INSERT into the audit tables, and the grant itself (not only
    the append-only trigger) refuses UPDATE, DELETE and TRUNCATE."""
    conn = await connect_as(stack, "audit_store")
    try:
        trying = conn.transaction()
        await trying.start()
        inserted = await conn.execute(
            "INSERT INTO disclosures (audit_id, event_id, event_type, source_org, subject_key,"
            " decision, policy_version, decided_at) VALUES ('roles-test', 'e', 'admission',"
            " '974705788', 'k', 'no_candidate', 'v', now())"
        )
        assert inserted == "INSERT 0 1"
        await trying.rollback()  # leave no row behind: the audit trail cannot lose it later
        for statement in (
            "UPDATE disclosures SET reason = reason WHERE false",
            "DELETE FROM disclosures WHERE false",
            "TRUNCATE disclosures",
            "DELETE FROM deliveries WHERE false",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(statement)
    finally:
        await conn.close()


async def test_no_role_but_the_owner_may_change_an_audit_table(owner: asyncpg.Connection) -> None:
    """No service, no operator and no group role holds UPDATE, DELETE or TRUNCATE on an audit
    table, directly or through a role it belongs to."""
    rows = await owner.fetch(
        """
        SELECT r.rolname, t.table_name, p.privilege
        FROM pg_roles r
        CROSS JOIN unnest($1::text[]) AS t(table_name)
        CROSS JOIN unnest(ARRAY['UPDATE', 'DELETE', 'TRUNCATE']) AS p(privilege)
        WHERE r.rolname LIKE 'carebus\\_%' AND r.rolname <> current_user
          AND has_table_privilege(r.oid, t.table_name, p.privilege)
        """,
        list(AUDIT_TABLES),
    )
    assert [tuple(row) for row in rows] == []
    roles = await owner.fetchval("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'carebus\\_%'")
    assert roles >= 2 * len(ROLES)  # the check above looked at every login and group role


@pytest.mark.parametrize("name", CONNECTING)
async def test_no_service_role_can_create_tables_or_run_migrations(
    stack: TestStack, name: str
) -> None:
    """A service's role cannot change the schema, nor even read where the migrations stand; only
    the two bulk sinks may make (their own, temporary) staging tables."""
    conn = await connect_as(stack, name)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await conn.execute("CREATE TABLE roles_test (id int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="must be owner"):
            await conn.execute("ALTER TABLE organisations ADD COLUMN roles_test int")
        temporary = "CREATE TEMPORARY TABLE roles_test (id int)"
        if name in ("event_store", "audit_store"):
            await conn.execute(temporary)
        else:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(temporary)
    finally:
        await conn.close()
    with pytest.raises(sqlalchemy.exc.ProgrammingError, match="permission denied"):
        await asyncio.to_thread(db.migrate, role_dsn(stack, name))


async def test_the_router_may_not_even_connect(stack: TestStack) -> None:
    """The router keeps its state in Kafka: its role may not connect to the database."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for database"):
        await connect_as(stack, "router")


async def test_the_development_issuer_may_not_connect(stack: TestStack) -> None:
    """The development OpenID Connect issuer keeps its state in memory (migration 0012)."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for database"):
        await connect_as(stack, "oidc_issuer")


def test_a_tcp_connection_without_the_right_password_is_refused(
    stack: TestStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SCRAM on TCP as in production: no password, or a wrong one, gets no session, for the
    owner and the services alike."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", os.devnull)
    for dsn in (stack.settings.postgres_dsn, role_dsn(stack, "gateway")):
        bare = with_user(dsn, str(urlsplit(dsn).username))
        with pytest.raises(psycopg.OperationalError, match="no password supplied"):
            psycopg.connect(bare, connect_timeout=5).close()
        wrong = bare.replace("@", ":not-the-password@", 1)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(wrong, connect_timeout=5).close()
        psycopg.connect(dsn, connect_timeout=5).close()  # the right one works


def test_operator_commands_run_as_the_operator_role(stack: TestStack) -> None:
    """`carebus token add/rotate/revoke`, `org list` and `webhook set` work with the operator's
    role alone, as in production."""
    env = stack.env(CAREBUS_POSTGRES_DSN=with_user(stack.settings.postgres_dsn, "carebus_operator"))
    added = run_cli(
        env, "token", "add", "--agency", "nav", "--org", "889640782", "--role", "system"
    )
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    rotated = run_cli(env, "token", "rotate", token, "--grace-hours", "1")
    assert rotated.returncode == 0, rotated.stderr
    revoked = run_cli(env, "token", "revoke", token)
    assert revoked.returncode == 0, revoked.stderr
    listed = run_cli(env, "org", "list", "--agency", "nav")
    assert listed.returncode == 0, listed.stderr
    assert "889640782" in listed.stdout
    webhook = run_cli(env, "webhook", "set", "--org", "889640782", "--url", "https://nav.example/x")
    assert webhook.returncode == 0, webhook.stderr


# -- no running service uses the owner -------------------------------------------------------


@pytest.fixture(scope="module")
def every_service(stack: TestStack) -> Iterator[dict[str, ServiceProcess]]:
    """Every service of the stack, HTTP ones on ports of their own, running side by side."""
    started: dict[str, ServiceProcess] = {}
    try:
        for spec in SERVICES:
            port = free_ports(1)[0] if spec.port_setting is not None else None
            started[spec.name] = stack.start_service(
                spec.name, name=f"roles-{spec.name}", port=port
            )
        yield started
    finally:
        for process in started.values():
            process.stop()


def _tcp_ports_to(pids: set[int], server_port: int) -> set[int]:
    """The local ports of the TCP connections to `server_port` that processes `pids` hold."""
    inodes = set()
    for pid in pids:
        try:
            descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue  # the process has just ended
        for descriptor in descriptors:
            try:
                link = str(descriptor.readlink())
            except OSError:
                continue  # closed meanwhile
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == server_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def test_no_running_service_uses_the_owner_role(
    stack: TestStack, every_service: dict[str, ServiceProcess]
) -> None:
    """While every service runs, each one's database sessions (found by their client ports in
    pg_stat_activity) are its own role's, and none is the owner's."""
    server_port = stack.local.postgres.dsn.port
    expected = {name: login_role(name) for name in CONNECTING if name in every_service}
    deadline = time.monotonic() + 60
    while True:
        with stack.local.postgres.superuser(stack.local.postgres.dsn.database) as conn:
            rows = conn.execute(
                "SELECT client_port, usename FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND client_port IS NOT NULL"
            ).fetchall()
        sessions = {int(str(port)): str(user) for port, user in rows}
        used: dict[str, set[str]] = {}
        for name, process in every_service.items():
            pids = {process.pid, *pids_in_group(process.pid)}
            used[name] = {sessions[p] for p in _tcp_ports_to(pids, server_port) if p in sessions}
        if all(used[name] for name in expected) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert used == {name: ({expected[name]} if name in expected else set()) for name in used}
    assert all(stack.local.postgres.owner not in roles for roles in used.values())
