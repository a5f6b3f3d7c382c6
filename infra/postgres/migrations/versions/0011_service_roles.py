"""One role per service: each gets exactly the statements its code runs, and nothing else.

Every service (and the operator's `carebus` command) logs in as its own login role, a member of
the NOLOGIN group role created here, `carebus_svc_<service>`, which holds the grants. The login
roles and their passwords are not a migration's business: the local stack creates them
(carebus_dev/stack/postgres.py), production's DBA does (docs/operations.md, "Database roles").
The migrations themselves run as the database owner, which no service uses.

The grants follow the SQL each service runs (services/, consumers/, carebus/adapters/,
carebus/ops/): a table a service does not name gets nothing. The audit tables get INSERT (and
SELECT where a reader needs it), never UPDATE, DELETE or TRUNCATE, for anyone; the triggers of
0009 refuse those to the owner as well. A `LIKE <table>` staging table needs SELECT on the table
and TEMPORARY on the database (the event and audit stores). The router does not use the database
at all: its role may not even connect.

CREATE ROLE needs CREATEROLE; if the roles exist already (a DBA created them beforehand), the
owner needs nothing beyond owning the tables. Role names are per cluster, so two carebus
databases in one cluster share them.

A table added by a later migration gets no grant from here: that migration grants it.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

SELECT, INSERT, UPDATE, DELETE = "SELECT", "INSERT", "UPDATE", "DELETE"

# service -> table -> privileges. INSERT ... ON CONFLICT DO UPDATE and SELECT ... FOR UPDATE need
# UPDATE; RETURNING, WHERE and ON CONFLICT need SELECT.
GRANTS: dict[str, dict[str, tuple[str, ...]]] = {
    "gateway": {
        "api_tokens": (SELECT,),
        "organisations": (SELECT,),
        "accepted_events": (SELECT, INSERT),
        "person_facts": (SELECT, INSERT, UPDATE),
    },
    "registry": {
        "api_tokens": (SELECT, INSERT, UPDATE),
        "organisations": (SELECT, INSERT, UPDATE),
        "consents": (SELECT, INSERT, UPDATE),
        "care_team_changes": (INSERT,),
        "register_changes": (SELECT, INSERT),
        "operator_actions": (INSERT,),
        "person_facts": (SELECT, INSERT, UPDATE),
        "outbox": (SELECT, INSERT, UPDATE),
        "webhooks": (SELECT, INSERT, UPDATE, DELETE),
    },
    "audit": {
        "api_tokens": (SELECT,),
        "organisations": (SELECT,),
        "deliveries": (SELECT,),
        "disclosures": (SELECT,),
        "authority_refusals": (SELECT,),
        "disclosure_lookups": (SELECT, INSERT),
        # Only whether an organisation has sent events about a person (its standing to ask
        # about them), never the events' payloads: a column grant.
        "events": (f"{SELECT} (subject_key, source_org)",),
        "consents": (SELECT,),
        "care_team_changes": (SELECT,),
    },
    "inbox": {
        "api_tokens": (SELECT,),
        "organisations": (SELECT,),
        "alerts": (SELECT, UPDATE),
    },
    "event_store": {"events": (SELECT, INSERT)},
    "router": {},
    "sla": {
        "sla_offsets": (SELECT, INSERT, UPDATE),
        "sla_persons": (SELECT, INSERT, UPDATE),
        "sla_deadlines": (SELECT, INSERT, DELETE),
    },
    "audit_store": {
        "disclosures": (SELECT, INSERT),
        "deliveries": (SELECT, INSERT),
        # SELECT: `ON CONFLICT (audit_id) DO NOTHING` reads the arbiter index's column.
        "authority_refusals": (SELECT, INSERT),
    },
    "webhooks": {
        "webhooks": (SELECT,),
        "webhook_queue": (SELECT, INSERT, UPDATE),
    },
    "alert_store": {"alerts": (SELECT, INSERT, UPDATE)},
    # `carebus token add/rotate/revoke`, `org add/list`, `webhook set/redrive` and `trace`.
    "operator": {
        "api_tokens": (SELECT, INSERT, UPDATE),
        "organisations": (SELECT, INSERT, UPDATE),
        "webhooks": (SELECT, INSERT, UPDATE),
        "webhook_queue": (SELECT, UPDATE),
        "operator_actions": (INSERT,),
        "accepted_events": (SELECT,),
        "events": (SELECT,),
        "disclosures": (SELECT,),
        "deliveries": (SELECT,),
        "sla_offsets": (SELECT,),
        "sla_persons": (SELECT,),
        "sla_deadlines": (SELECT,),
        "alerts": (SELECT,),
    },
}
# The sequences behind bigserial columns the service inserts into.
SEQUENCES: dict[str, tuple[str, ...]] = {
    "registry": ("outbox_id_seq",),
    "webhooks": ("webhook_queue_seq_seq",),
}
# Staging tables (CREATE TEMPORARY TABLE ... LIKE) for bulk inserts.
TEMPORARY = ("event_store", "audit_store")
# Services that never connect.
NO_DATABASE = ("router",)


def group(service: str) -> str:
    return f"carebus_svc_{service}"


def _on_database(statement: str) -> None:
    """`statement` with `{db}` replaced by the current database's quoted name."""
    op.execute(
        "DO $$ BEGIN EXECUTE format("
        f"'{statement.replace('{db}', '%I')}', current_database()); END $$;"
    )


def upgrade() -> None:
    # Nothing is anyone's by default: no connecting, no temporary tables, no creating objects.
    _on_database("REVOKE ALL ON DATABASE {db} FROM PUBLIC")
    op.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
    for service, tables in GRANTS.items():
        role = group(service)
        op.execute(
            "DO $$ BEGIN "
            f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
            f"CREATE ROLE {role} NOLOGIN; END IF; END $$;"
        )
        # Exactly the grants below, even where the role existed with more.
        op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
        op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}")
        _on_database(f"REVOKE ALL ON DATABASE {{db}} FROM {role}")
        if service in NO_DATABASE:
            continue
        _on_database(f"GRANT CONNECT ON DATABASE {{db}} TO {role}")
        if service in TEMPORARY:
            _on_database(f"GRANT TEMPORARY ON DATABASE {{db}} TO {role}")
        op.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        for table, privileges in tables.items():
            op.execute(f"GRANT {', '.join(privileges)} ON {table} TO {role}")
        for sequence in SEQUENCES.get(service, ()):
            op.execute(f"GRANT USAGE ON SEQUENCE {sequence} TO {role}")


def downgrade() -> None:
    for service in GRANTS:
        role = group(service)
        op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
        op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}")
        op.execute(f"REVOKE ALL ON SCHEMA public FROM {role}")
        _on_database(f"REVOKE ALL ON DATABASE {{db}} FROM {role}")
        op.execute(f"DROP ROLE IF EXISTS {role}")
    op.execute("GRANT USAGE ON SCHEMA public TO PUBLIC")
    _on_database("GRANT CONNECT, TEMPORARY ON DATABASE {db} TO PUBLIC")
