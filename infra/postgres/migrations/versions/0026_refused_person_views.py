"""Refused person-view look-ups in the person's log, and the alerts by person.

`GET /v1/persons/{subject_key}/timeline` answers 404 to an organisation with no relation to the
person (policy/authority.yaml, `person_view.relation`). When the key names a person carebus
knows, the inbox keeps the attempt in `authority_refusals`, beside the statements the gateway and
the registry refused, so the person's own log and a privacy officer's disclosure query show who
tried to look. The inbox has no broker connection: it writes the row itself, in the shape the
audit store writes an AuthorityRefusal record.

The inbox may only add rows, and only of its own kind: row-level security holds it to
statement `person_view` under rule `person_view.relation`, about a person carebus knows (a
subject key of `sla_persons`), by an organisation of the directory as its agency, decided now
(within five minutes), so a compromised inbox cannot make up a refused care-team change or
consent in anyone's log, date a row past retention, or plant rows for keys no one has; nor may
it read the log. Its audit ids are one per organisation, role, person and hour, inserted with
ON CONFLICT DO NOTHING, so repeating a refused look does not flood the person's log. The audit store keeps adding and reading every row,
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
# What an inbox row must be (the policy's check; the inbox may read both tables it consults).
INBOX_ROWS = """
    statement = 'person_view' AND rule_id = 'person_view.relation' AND field = 'subject_key'
    AND decided_at BETWEEN now() - interval '5 minutes' AND now() + interval '5 minutes'
    AND EXISTS (SELECT 1 FROM sla_persons p WHERE p.subject_key = authority_refusals.subject_key)
    AND EXISTS (SELECT 1 FROM organisations o
                WHERE o.org_id = authority_refusals.actor_org
                  AND o.agency = authority_refusals.actor_agency)
"""
COLUMNS = (
    "audit_id, subject_key, actor_org, actor_agency, actor_role, statement, rule_id, field, "
    "policy_version, decided_at"
)


def upgrade() -> None:
    # The person view asks, for every key, whether an unresolved alert names the person to the
    # caller (services/inbox/person_store.py): by person, not a scan of the organisation's alerts.
    op.execute("CREATE INDEX alerts_subject_idx ON alerts (subject_key, recipient_org)")
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
        f"WITH CHECK ({INBOX_ROWS})"
    )
    op.execute(f"GRANT INSERT ({COLUMNS}) ON authority_refusals TO {INBOX}")


def downgrade() -> None:
    op.execute(f"REVOKE INSERT ({COLUMNS}) ON authority_refusals FROM {INBOX}")
    for name in ("inbox", "audit", "audit_store"):
        op.execute(f"DROP POLICY authority_refusals_{name} ON authority_refusals")
    op.execute("ALTER TABLE authority_refusals DISABLE ROW LEVEL SECURITY")
    op.execute("DROP INDEX alerts_subject_idx")
