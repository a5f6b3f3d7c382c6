"""The inbox's person view (issue 17, item 7): what it may read, and its lookups in the disclosure
log.

Every answered `GET /v1/persons/{subject_key}/timeline` is a row of `disclosure_lookups`, the
log of who looked at a person's data (pasientjournalloven §18), which is append-only (0009),
kept five to ten years (0016) and read back in the person's own log. `what` tells a privacy
officer's disclosure query (`disclosure_query`, every row before this migration) from a look
at the person view (`person_timeline`). The inbox may only add rows, and only of its own kind:
row-level security holds each service to its `what` (the audit service keeps reading every
row), so a compromised inbox cannot record a privacy officer's query that never happened, nor
read the log.

The inbox reads, column by column, only what the view shows or needs to decide:

- `sla_persons` (state, routing): the person's relations, care team and obligations;
- `disclosures`: which events routing delivered to the caller's organisation, with which
  fields (the obligations' cut; never another organisation's decisions' reasons);
- `deliveries`: the caller's deliveries, the body exactly as delivered;
- `events` (subject_key, source_org, event_id, event_type, occurred_at, payload): the events
  the caller's organisation sent itself.

Revision ID: 0022
Revises: 0021
"""

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

INBOX = "carebus_svc_inbox"
AUDIT = "carebus_svc_audit"
READS = {
    "sla_persons": "subject_key, state, routing",
    "disclosures": (
        "subject_key, recipient_org, decision, delivery_id, source_org, event_id, fields"
    ),
    "deliveries": (
        "delivery_id, recipient_org, subject_key, event_id, event_type, occurred_at, body"
    ),
    "events": "subject_key, source_org, event_id, event_type, occurred_at, payload",
}
LOOKUP_COLUMNS = (
    "lookup_id, subject_key, org_id, role, token_id, looked_by_subject, looked_by_issuer, "
    "items, what"
)


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE disclosure_lookups
            ADD COLUMN what text NOT NULL DEFAULT 'disclosure_query'
                CONSTRAINT disclosure_lookups_what
                CHECK (what IN ('disclosure_query', 'person_timeline'));
        ALTER TABLE disclosure_lookups ENABLE ROW LEVEL SECURITY;
        -- The timeline of one organisation's deliveries about one person, newest first.
        CREATE INDEX deliveries_person_idx
            ON deliveries (recipient_org, subject_key, occurred_at DESC);
        CREATE INDEX disclosures_recipient_idx ON disclosures (subject_key, recipient_org);
        """
    )
    op.execute(
        f"CREATE POLICY disclosure_lookups_audit ON disclosure_lookups TO {AUDIT} "
        "USING (true) WITH CHECK (what = 'disclosure_query')"
    )
    op.execute(
        f"CREATE POLICY disclosure_lookups_inbox ON disclosure_lookups FOR INSERT TO {INBOX} "
        "WITH CHECK (what = 'person_timeline')"
    )
    op.execute(f"GRANT INSERT ({LOOKUP_COLUMNS}) ON disclosure_lookups TO {INBOX}")
    for table, columns in READS.items():
        op.execute(f"GRANT SELECT ({columns}) ON {table} TO {INBOX}")


def downgrade() -> None:
    for table, columns in READS.items():
        op.execute(f"REVOKE SELECT ({columns}) ON {table} FROM {INBOX}")
    op.execute(f"REVOKE INSERT ({LOOKUP_COLUMNS}) ON disclosure_lookups FROM {INBOX}")
    op.execute("DROP POLICY disclosure_lookups_inbox ON disclosure_lookups")
    op.execute("DROP POLICY disclosure_lookups_audit ON disclosure_lookups")
    op.execute(
        """
        DROP INDEX disclosures_recipient_idx;
        DROP INDEX deliveries_person_idx;
        ALTER TABLE disclosure_lookups DISABLE ROW LEVEL SECURITY;
        ALTER TABLE disclosure_lookups DROP CONSTRAINT disclosure_lookups_what,
            DROP COLUMN what;
        """
    )
