"""Refused person-view look-ups in the person's log.

`GET /v1/persons/{subject_key}/timeline` answers 404 to an organisation with no relation to the
person (policy/authority.yaml, `person_view.relation`). When the key names a person carebus
knows, the inbox keeps the attempt in `authority_refusals`, beside the statements the gateway and
the registry refused, so the person's own log and a privacy officer's disclosure query show who
tried to look. The inbox has no broker connection: it writes the row itself, in the shape the
audit store writes an AuthorityRefusal record.

The inbox may only add rows, and only of its own statement: row-level security holds it to
`statement = 'person_view'`, so a compromised inbox cannot make up a refused care-team change or
consent in anyone's log, nor read the log. The audit store keeps adding and reading every row,
the audit service keeps reading them; the retention function runs as the owner (0016), which
row-level security does not bind.

Revision ID: 0026
Revises: 0025
"""

from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

INBOX = "carebus_svc_inbox"
AUDIT = "carebus_svc_audit"
AUDIT_STORE = "carebus_svc_audit_store"
COLUMNS = (
    "audit_id, subject_key, actor_org, actor_agency, actor_role, statement, rule_id, field, "
    "policy_version, decided_at"
)


def upgrade() -> None:
    op.execute("ALTER TABLE authority_refusals ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY authority_refusals_audit_store ON authority_refusals TO {AUDIT_STORE} "
        "USING (true) WITH CHECK (true)"
    )
    op.execute(
        f"CREATE POLICY authority_refusals_audit ON authority_refusals FOR SELECT TO {AUDIT} "
        "USING (true)"
    )
    op.execute(
        f"CREATE POLICY authority_refusals_inbox ON authority_refusals FOR INSERT TO {INBOX} "
        "WITH CHECK (statement = 'person_view')"
    )
    op.execute(f"GRANT INSERT ({COLUMNS}) ON authority_refusals TO {INBOX}")


def downgrade() -> None:
    op.execute(f"REVOKE INSERT ({COLUMNS}) ON authority_refusals FROM {INBOX}")
    for name in ("inbox", "audit", "audit_store"):
        op.execute(f"DROP POLICY authority_refusals_{name} ON authority_refusals")
    op.execute("ALTER TABLE authority_refusals DISABLE ROW LEVEL SECURITY")
