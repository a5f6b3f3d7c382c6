"""Retention (issue 15, item 5) against the real database: every table loses the rows past its
retention and keeps the younger ones, what must outlive another store's retention stays, a dry
run removes nothing, a second run removes nothing more, and no service can remove recent audit
rows, not even through the retention function."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from carebus.adapters.retention import purge_store, run_retention
from carebus.domain.retention import Purge, plan
from carebus.runtime.config import with_local_password
from carebus.wire.retention_config import load_inventory
from carebus_dev.stack.postgres import login_role, with_user
from carebus_dev.testing import TestStack, free_ports, run_cli

pytestmark = pytest.mark.integration

INVENTORY = load_inventory()
ORG = "999000001"
OTHER_ORG = "999000002"

Insert = Callable[[asyncpg.Connection, str, datetime], Awaitable[int]]


def role_dsn(stack: TestStack, name: str) -> str:
    dsn = with_user(stack.settings.postgres_dsn, login_role(name))
    return with_local_password(dsn, stack.settings.state_dir)


@pytest.fixture
async def owner(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.settings.postgres_dsn)
    for org in (ORG, OTHER_ORG):
        await conn.execute(
            "INSERT INTO organisations (org_id, agency) VALUES ($1, 'dps') ON CONFLICT DO NOTHING",
            org,
        )
    yield conn
    await conn.close()


@pytest.fixture
async def retention_role(stack: TestStack) -> AsyncIterator[asyncpg.Connection]:
    """The job's own login role, a member of `carebus_svc_retention` (migration 0016)."""
    stack.local.postgres.ensure_login_roles(["retention"])
    conn = await asyncpg.connect(role_dsn(stack, "retention"))
    yield conn
    await conn.close()


def new_key() -> str:
    return f"sk-retention-{uuid.uuid4().hex}"


# -- one row (or the rows of one ended relation) per table whose retention clock started at `at`


async def sign_in(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    await conn.execute(
        "INSERT INTO person_sign_ins (sign_in_hash, state, nonce, code_verifier, created_at,"
        " service, door) VALUES ($1, $2, 'n', 'v', $3, 'inbox', 'staff')",
        key.encode(),
        key,
        at,
    )
    return 1


async def session(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    await conn.execute(
        "INSERT INTO person_sessions (session_id, session_hash, issuer, subject, role, service,"
        " subject_key, created_at, last_seen_at, expires_at)"
        " VALUES ($1, $2, 'i', 's', 'patient', 'audit', $3, $4, $4, $5)",
        uuid.uuid4(),
        key.encode(),
        key,
        at - timedelta(hours=8),
        at,
    )
    return 1


async def token(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    await conn.execute(
        "INSERT INTO api_tokens (token_id, token_hash, org_id, role, subject_key, created_at,"
        " expires_at) VALUES ($1, $2, $3, 'patient', $4, $5, $6)",
        uuid.uuid4(),
        key.encode(),
        ORG,
        key,
        at - timedelta(days=90),
        at,
    )
    return 1


async def outbox(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    await conn.execute(
        "INSERT INTO outbox (topic, key, value, created_at, published_at)"
        " VALUES ('care.events.v1', $1, '\\x00', $2, $2)",
        key.encode(),
        at,
    )
    return 1


async def webhook(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    await conn.execute(
        "INSERT INTO webhook_queue (delivery_id, org_id, agency, subject_key, body, status,"
        " enqueued_at, finished_at, source_topic, source_partition, source_offset, source_value)"
        " VALUES ($1, $2, 'dps', $3, '\\x00', 'delivered', $4, $4, 't', 0, 0, '\\x00')",
        key,
        ORG,
        key,
        at,
    )
    return 1


async def delivery(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    await conn.execute(
        "INSERT INTO deliveries (delivery_id, recipient_org, recipient_agency, event_id,"
        " event_type, subject_key, occurred_at, delivered_at, body)"
        " VALUES ($1, $2, 'dps', $1, 'admission', $3, $4, $4, '{}')",
        key,
        ORG,
        key,
        at,
    )
    return 1


async def alert(conn: asyncpg.Connection, key: str, at: datetime, status: str = "resolved") -> int:
    await conn.execute(
        "INSERT INTO alerts (alert_id, rule_id, title, kind, status, subject_key, audience,"
        " breached_at, escalate_at, summary, event_ids, rules_version, resolved_at)"
        " VALUES ($1, 'r', 't', 'deadline', $2, $3, 'coordinator', $4, $4, 's', '{}', 'v',"
        " CASE WHEN $2 = 'resolved' THEN $4::timestamptz END)",
        f"alert-{uuid.uuid4().hex}",
        status,
        key,
        at,
    )
    return 1


async def accepted(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    await conn.execute(
        "INSERT INTO accepted_events (source_org, event_id, content_hash, event_type,"
        " subject_key, accepted_at) VALUES ($1, $2, '\\x00', 'admission', $2, $3)",
        ORG,
        key,
        at,
    )
    return 1


async def event(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    await conn.execute(
        "INSERT INTO events (source_org, event_id, event_type, occurred_at, source_agency,"
        " subject_key, payload, schema_fingerprint, kafka_partition, kafka_offset, stored_at)"
        " VALUES ($1, $2, 'admission', $3, 'dps', $4, '{}', 'f', 0, 0, $3)",
        ORG,
        uuid.uuid4().hex,
        at,
        key,
    )
    return 1


async def retraction(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    await conn.execute(
        "INSERT INTO retractions (source_org, retracted_event_id, retraction_event_id, reason,"
        " subject_key, recorded_at) VALUES ($1, $2, $2, 'wrong_person', $3, $4)",
        ORG,
        uuid.uuid4().hex,
        key,
        at,
    )
    return 1


async def lookup(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    await conn.execute(
        "INSERT INTO disclosure_lookups (lookup_id, subject_key, org_id, role, token_id, items,"
        " looked_at) VALUES ($1, $2, $3, 'privacy_officer', $1, 0, $4)",
        uuid.uuid4(),
        key,
        ORG,
        at,
    )
    return 1


async def refusal(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    await conn.execute(
        "INSERT INTO authority_refusals (audit_id, subject_key, actor_org, actor_agency,"
        " actor_role, statement, rule_id, policy_version, decided_at)"
        " VALUES ($1, $2, $3, 'dps', 'system', 'consent', 'r', 'v', $4)",
        uuid.uuid4().hex,
        key,
        ORG,
        at,
    )
    return 1


async def operator_action(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    await conn.execute(
        "INSERT INTO operator_actions (action_id, action, operator_org, subject_key, at)"
        " VALUES ($1, 'register_change', $2, $3, $4)",
        uuid.uuid4(),
        ORG,
        key,
        at,
    )
    return 1


async def disclosure(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    await conn.execute(
        "INSERT INTO disclosures (audit_id, event_id, event_type, source_org, subject_key,"
        " decision, policy_version, decided_at) VALUES ($1, $1, 'admission', $2, $3,"
        " 'no_candidate', 'v', $4)",
        uuid.uuid4().hex,
        ORG,
        key,
        at,
    )
    return 1


async def consent(
    conn: asyncpg.Connection,
    key: str,
    recorded_at: datetime,
    *,
    status: str = "given",
    valid_to: datetime | None = None,
    org: str | None = None,
) -> uuid.UUID:
    consent_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO consents (consent_id, subject_key, recipient_agency, recipient_org,"
        " categories, status, valid_from, valid_to, recorded_by, recorded_by_org, recorded_at)"
        " VALUES ($1, $2, 'nav', $3, '{}', $4, $5, $6, 'x', $7, $5)",
        consent_id,
        key,
        org,
        status,
        recorded_at,
        valid_to,
        ORG,
    )
    return consent_id


async def expired_consent(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    await consent(conn, key, at - timedelta(days=30), valid_to=at)
    return 1


async def care_team_change(
    conn: asyncpg.Connection, key: str, at: datetime, status: str, recorder: str = ORG
) -> None:
    await conn.execute(
        "INSERT INTO care_team_changes (change_id, subject_key, agency, org_id, role, status,"
        " recorded_by_org, recorded_at) VALUES ($1, $2, 'dps', $3, 'participant', $4, $5, $6)",
        uuid.uuid4(),
        key,
        ORG,
        status,
        recorder,
        at,
    )


async def ended_membership(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    await care_team_change(conn, key, at - timedelta(days=30), "member")
    await care_team_change(conn, key, at, "removed")
    return 2


async def register(conn: asyncpg.Connection, key: str, at: datetime) -> None:
    await conn.execute(
        "INSERT INTO register_changes (change_id, subject_key, register, org_id,"
        " recorded_by_org, recorded_at) VALUES ($1, $2, 'gp', $3, $3, $4)",
        uuid.uuid4(),
        key,
        ORG,
        at,
    )


async def superseded_register_entry(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    """An entry superseded at `at`: the earlier one may go, the current one never does."""
    await register(conn, key, at - timedelta(days=30))
    await register(conn, key, at)
    return 2


async def contact(
    conn: asyncpg.Connection, key: str, at: datetime, position: str, status: str
) -> None:
    await conn.execute(
        "INSERT INTO care_team_contacts (contact_id, subject_key, org_id, role, position, name,"
        " status, recorded_by_org, recorded_at) VALUES ($1, $2, $3, 'coordinator', $4,"
        " 'sealed:v1:1:AAAA', $5, $3, $6)",
        uuid.uuid4(),
        key,
        ORG,
        position,
        status,
        at,
    )


async def replaced_and_ended_contacts(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    """An accountable person replaced at `at` and a deputy ended at `at`: all but the current
    accountable person may go."""
    await contact(conn, key, at - timedelta(days=30), "accountable", "active")
    await contact(conn, key, at, "accountable", "active")
    await contact(conn, key, at - timedelta(days=30), "deputy", "active")
    await contact(conn, key, at, "deputy", "ended")
    return 4


async def place(conn: asyncpg.Connection, key: str, at: datetime) -> int:
    """A place whose last event was counted at `at` (the key stands in for a place key)."""
    await conn.execute(
        "INSERT INTO sla_places (place_key, state, updated_at) VALUES ($1, '{}', $2)", key, at
    )
    return 1


# store -> (insert, the column a row's test key is in, rows of the key that must stay anyway)
TABLES: dict[str, tuple[Insert, str, int]] = {
    "person_sign_ins": (sign_in, "state", 0),
    "person_sessions": (session, "subject_key", 0),
    "api_tokens": (token, "subject_key", 0),
    "outbox": (outbox, "convert_from(key, 'UTF8')", 0),
    "webhook_queue": (webhook, "subject_key", 0),
    "deliveries": (delivery, "subject_key", 0),
    "alerts": (alert, "subject_key", 0),
    "sla_places": (place, "place_key", 0),
    "accepted_events": (accepted, "subject_key", 0),
    "events": (event, "subject_key", 0),
    "retractions": (retraction, "subject_key", 0),
    "disclosure_lookups": (lookup, "subject_key", 0),
    "authority_refusals": (refusal, "subject_key", 0),
    "operator_actions": (operator_action, "subject_key", 0),
    "disclosures": (disclosure, "subject_key", 0),
    "consents": (expired_consent, "subject_key", 0),
    "care_team_changes": (ended_membership, "subject_key", 0),
    "care_team_contacts": (replaced_and_ended_contacts, "subject_key", 1),
    "register_changes": (superseded_register_entry, "subject_key", 1),
}


async def count(conn: asyncpg.Connection, table: str, column: str, key: str) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", key))  # noqa: S608 - test's own names


def test_every_table_the_job_purges_has_a_case_here() -> None:
    """The cases below cover every table of the inventory that the job purges."""
    assert {store.name for store in INVENTORY.purged()} == set(TABLES)


@pytest.mark.parametrize("store", sorted(TABLES))
async def test_rows_past_retention_go_and_younger_rows_stay(
    owner: asyncpg.Connection, retention_role: asyncpg.Connection, store: str
) -> None:
    """Through the retention role, each table loses what is past its retention and keeps the
    rest; running it again removes nothing more."""
    insert, column, kept = TABLES[store]
    retention = INVENTORY.store(store).retention
    assert retention is not None
    now = datetime.now(UTC)
    margin = min(timedelta(days=1), retention / 4)
    old, young = new_key(), new_key()
    await insert(owner, old, now - retention - margin)
    inserted = await insert(owner, young, now - retention + margin)

    purge = Purge(store, now - retention)
    await purge_store(retention_role, purge, batch_size=10_000)

    assert await count(owner, store, column, old) == kept
    assert await count(owner, store, column, young) == inserted
    again = await purge_store(retention_role, purge, batch_size=10_000)
    assert again.rows == 0


async def test_a_dry_run_counts_and_removes_nothing(
    owner: asyncpg.Connection, retention_role: asyncpg.Connection
) -> None:
    """`dry_run` reports how many rows are due, per table, and leaves every one in place."""
    now = datetime.now(UTC)
    keys = [new_key() for _ in range(3)]
    for key in keys:
        await disclosure(owner, key, now - timedelta(days=4000))
    cutoff = now - timedelta(days=3650)
    outcome = await purge_store(
        retention_role, Purge("disclosures", cutoff), batch_size=1, dry_run=True
    )
    assert outcome.rows >= 3
    for key in keys:
        assert await count(owner, "disclosures", "subject_key", key) == 1
    real = await purge_store(retention_role, Purge("disclosures", cutoff), batch_size=1)
    assert real.rows == outcome.rows
    assert real.statements == real.rows + 1  # one row per statement: short transactions
    for key in keys:
        assert await count(owner, "disclosures", "subject_key", key) == 0


async def test_events_of_a_person_with_an_open_obligation_or_alert_stay(
    owner: asyncpg.Connection, retention_role: asyncpg.Connection
) -> None:
    """An open obligation or an unresolved alert outlives the event store's retention: the
    events about that person stay until it is closed."""
    now = datetime.now(UTC)
    old = now - timedelta(days=400)
    pending, alerted, done = new_key(), new_key(), new_key()
    for key in (pending, alerted, done):
        await event(owner, key, old)
    await owner.execute(
        "INSERT INTO sla_deadlines (subject_key, obligation_id, deadline) VALUES ($1, 'o', $2)",
        pending,
        now + timedelta(days=1),
    )
    await alert(owner, alerted, old, status="open")
    await purge_store(retention_role, Purge("events", now - timedelta(days=365)), batch_size=100)
    assert await count(owner, "events", "subject_key", pending) == 1
    assert await count(owner, "events", "subject_key", alerted) == 1
    assert await count(owner, "events", "subject_key", done) == 0
    # Alerts are their own store: the open one is not touched by any retention.
    await purge_store(retention_role, Purge("alerts", now - timedelta(days=365)), batch_size=100)
    assert await count(owner, "alerts", "subject_key", alerted) == 1


async def test_consents_in_force_and_objections_stay_and_nothing_old_resurfaces(
    owner: asyncpg.Connection, retention_role: asyncpg.Connection
) -> None:
    """The newest record per recipient stays while in force (an objection for good); replaced
    records go; an expired newest record goes only with the older ones it replaced, even one
    row per statement, so no older consent is left looking current."""
    now = datetime.now(UTC)
    long_ago = now - timedelta(days=5000)
    replaced_then_current, objection, expired = new_key(), new_key(), new_key()
    await consent(owner, replaced_then_current, long_ago)
    current = await consent(owner, replaced_then_current, long_ago + timedelta(days=10))
    await consent(owner, objection, long_ago, status="objection")
    await consent(owner, expired, long_ago)
    await consent(owner, expired, long_ago + timedelta(days=1), valid_to=long_ago + timedelta(2))

    done = await purge_store(
        retention_role, Purge("consents", now - timedelta(days=3650)), batch_size=1
    )

    assert done.rows >= 3
    left = await owner.fetch(
        "SELECT consent_id FROM consents WHERE subject_key = $1", replaced_then_current
    )
    assert [row["consent_id"] for row in left] == [current]
    assert await count(owner, "consents", "subject_key", objection) == 1
    assert await count(owner, "consents", "subject_key", expired) == 0


async def test_a_current_care_team_membership_stays(
    owner: asyncpg.Connection, retention_role: asyncpg.Connection
) -> None:
    """A membership still in force is never removed by age, nor one another recorder's removal
    did not end; an organisation that stepped out goes with all its records."""
    now = datetime.now(UTC)
    long_ago = now - timedelta(days=5000)
    member, half_removed, stepped_out = new_key(), new_key(), new_key()
    await care_team_change(owner, member, long_ago, "member")
    # Recorded by ORG, "removed" by OTHER_ORG, which may take back only its own.
    await care_team_change(owner, half_removed, long_ago, "member")
    await care_team_change(owner, half_removed, long_ago + timedelta(1), "removed", OTHER_ORG)
    await care_team_change(owner, stepped_out, long_ago, "member", OTHER_ORG)
    await care_team_change(owner, stepped_out, long_ago + timedelta(1), "removed", ORG)

    await purge_store(
        retention_role, Purge("care_team_changes", now - timedelta(days=3650)), batch_size=1
    )

    assert await count(owner, "care_team_changes", "subject_key", member) == 1
    assert await count(owner, "care_team_changes", "subject_key", half_removed) == 2
    assert await count(owner, "care_team_changes", "subject_key", stepped_out) == 0


async def test_work_in_progress_stays(
    owner: asyncpg.Connection, retention_role: asyncpg.Connection
) -> None:
    """Pending webhooks and unpublished outbox records are never removed by age, and a token a
    rotation replaced goes before the token it points to (no dangling reference)."""
    now = datetime.now(UTC)
    old = now - timedelta(days=1000)
    key = new_key()
    await owner.execute(
        "INSERT INTO webhook_queue (delivery_id, org_id, agency, subject_key, body,"
        " enqueued_at, source_topic, source_partition, source_offset, source_value)"
        " VALUES ($1, $2, 'dps', $1, '\\x00', $3, 't', 0, 0, '\\x00')",
        key,
        ORG,
        old,
    )
    await owner.execute(
        "INSERT INTO outbox (topic, key, value, created_at) VALUES ('t', $1, '\\x00', $2)",
        key.encode(),
        old,
    )
    newer, older = uuid.uuid4(), uuid.uuid4()
    for token_id, replaced_by in ((newer, None), (older, newer)):
        await owner.execute(
            "INSERT INTO api_tokens (token_id, token_hash, org_id, role, label, expires_at,"
            " replaced_by) VALUES ($1, $2, $3, 'system', $4, $5, $6)",
            token_id,
            token_id.bytes,
            ORG,
            key,
            old,
            replaced_by,
        )
    try:
        for store in ("webhook_queue", "outbox", "api_tokens"):
            retention = INVENTORY.store(store).retention
            assert retention is not None
            await purge_store(retention_role, Purge(store, now - retention), batch_size=1)
        assert await count(owner, "webhook_queue", "delivery_id", key) == 1
        assert await count(owner, "outbox", "convert_from(key, 'UTF8')", key) == 1
        assert await count(owner, "api_tokens", "label", key) == 0
    finally:
        # The unpublishable outbox record (topic `t`) would be the oldest the registry's relay
        # sees: every later relay pass on this stack would stop at it. The queued delivery
        # would be sent by any dispatcher started later.
        await owner.execute("DELETE FROM outbox WHERE key = $1", key.encode())
        await owner.execute("DELETE FROM webhook_queue WHERE delivery_id = $1", key)


async def test_no_service_can_remove_recent_audit_rows(
    stack: TestStack, owner: asyncpg.Connection, retention_role: asyncpg.Connection
) -> None:
    """The function refuses a cut-off younger than the table's minimum, even to the retention
    role; a service role may not call it at all; and the audit tables stay append-only to
    everyone else, the owner included, outside the function."""
    key = new_key()
    await disclosure(owner, key, datetime.now(UTC) - timedelta(days=1))
    too_young = datetime.now(UTC) - timedelta(days=1826) + timedelta(hours=1)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="younger than its minimum"):
        await retention_role.fetchval(
            "SELECT carebus_retention_purge('disclosures', $1, 10)", too_young
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await retention_role.execute("DELETE FROM disclosures WHERE subject_key = $1", key)
    with pytest.raises(asyncpg.InvalidParameterValueError, match="no rule"):
        await retention_role.fetchval(
            "SELECT carebus_retention_purge('organisations', now() - interval '99 years', 10)"
        )
    audit_store = await asyncpg.connect(role_dsn(stack, "audit_store"))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await audit_store.fetchval(
                "SELECT carebus_retention_purge('disclosures', now() - interval '99 years', 10)"
            )
    finally:
        await audit_store.close()
    async with owner.transaction():
        await owner.execute("SELECT set_config('carebus.retention_purge', 'disclosures', true)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await owner.execute("DELETE FROM disclosures WHERE subject_key = $1", key)
    assert await count(owner, "disclosures", "subject_key", key) == 1


async def test_a_whole_run_is_idempotent(owner: asyncpg.Connection) -> None:
    """A run over every table with the inventory's periods, then another: the second removes
    nothing."""
    now = datetime.now(UTC)
    for store, (insert, _, _) in TABLES.items():
        retention = INVENTORY.store(store).retention
        assert retention is not None
        await insert(owner, new_key(), now - retention - timedelta(days=1))
    first = await run_retention(owner, plan(INVENTORY.purged(), now), batch_size=500)
    second = await run_retention(owner, plan(INVENTORY.purged(), now), batch_size=500)
    assert (
        [o.store for o in first]
        == [o.store for o in second]
        == [p.store for p in plan(INVENTORY.purged(), now)]
    )
    assert all(o.rows >= 1 for o in first if o.store in TABLES), first
    assert [o.rows for o in second] == [0] * len(second)


def test_the_command_reports_a_line_per_table_and_removes_in_the_real_run(
    stack: TestStack,
) -> None:
    """`carebus retention run --dry-run` logs one line per table with its count; the real run,
    as the retention role, removes them; no line carries a subject key."""
    stack.local.postgres.ensure_login_roles(["retention"])
    env = stack.env(
        CAREBUS_POSTGRES_DSN=with_user(stack.settings.postgres_dsn, "carebus_retention")
    )
    env.pop("CAREBUS_POSTGRES_PASSWORD", None)
    dry = run_cli(env, "retention", "run", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = [json.loads(line) for line in dry.stdout.splitlines() if line.startswith("{")]
    per_store = {line["store"]: line for line in lines if line.get("event") == "retention.store"}
    assert set(per_store) == {store.name for store in INVENTORY.purged()}
    assert all(line["dry_run"] is True for line in per_store.values())
    real = run_cli(env, "retention", "run")
    assert real.returncode == 0, real.stderr
    assert "sk-" not in real.stdout + dry.stdout
    again = run_cli(env, "retention", "run", "--dry-run")
    due = [json.loads(line) for line in again.stdout.splitlines() if line.startswith("{")]
    assert all(line["rows"] == 0 for line in due if line.get("event") == "retention.store")


def test_the_command_refuses_an_override_below_the_minimum(stack: TestStack) -> None:
    """A deployment's override shorter than a table's minimum is refused before anything is
    touched, naming the setting and the table."""
    env = stack.env(CAREBUS_RETENTION_OVERRIDES='{"disclosures": "P30D"}')
    result = run_cli(env, "retention", "run")
    assert result.returncode == 1
    assert "CAREBUS_RETENTION_OVERRIDES.disclosures" in result.stderr


async def test_the_periodic_runner_purges_and_reports_metrics(
    stack: TestStack, owner: asyncpg.Connection
) -> None:
    """`carebus retention serve` runs a pass every interval as the retention role, removes what
    is due, answers /healthz and counts the removed rows per store on /metrics."""
    stack.local.postgres.ensure_login_roles(["retention"])
    key = new_key()
    await sign_in(owner, key, datetime.now(UTC) - timedelta(days=2))
    port = free_ports(1)[0]
    runner = stack.start_service(
        [sys.executable, "-m", "carebus.ops.cli", "retention", "serve"],
        name="retention-serve",
        url=f"http://127.0.0.1:{port}",
        env={
            "CAREBUS_METRICS_PORT": str(port),
            "CAREBUS_RETENTION_INTERVAL_S": "0.5",
            "CAREBUS_POSTGRES_DSN": with_user(stack.settings.postgres_dsn, login_role("retention")),
        },
    )
    try:
        for _ in range(150):  # 30 s at most
            if runner.log_text().count('"retention.run"') >= 2:
                break
            await asyncio.sleep(0.2)
        assert runner.log_text().count('"retention.run"') >= 2, runner.log_tail()
        assert await count(owner, "person_sign_ins", "state", key) == 0
        async with httpx.AsyncClient(timeout=5) as client:
            metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        assert 'carebus_retention_rows_removed_total{store="person_sign_ins"}' in metrics
        assert "carebus_retention_last_success_timestamp_seconds" in metrics
        assert key not in runner.log_text() + metrics
    finally:
        runner.stop()
