"""Contact persons (issue 17, item 4): named staff of a care-team organisation, and the alert's
recipient role that the inbox names them by.

`care_team_contacts` is a history like `care_team_changes`: the current contact of a
(person, organisation, role, position) is its latest row, `ended` takes it off. The name is
sealed under the person's data key (carebus.wire.sealing, path `contact.name`), so erasing the
person makes it unreadable with the rest. The registry writes (only after the authority rule
`contact.own_staff`) and so takes the person's current data key, creating one as the gateway
does (SELECT and INSERT of a key on `person_keys`; it still erases through the function only);
the inbox reads the contacts to name them on alerts and in the person view; the audit service
reads them for a privacy officer.

`care_team_changes.role` and the new table accept `pathway_coordinator` (the DPS's
forløpskoordinator). `alerts.recipient_role` is the SLA rule's role that chose the recipient.

Revision ID: 0024
Revises: 0022
"""

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

SELECT, INSERT = "SELECT", "INSERT"
GRANTS: dict[str, tuple[str, ...]] = {
    "registry": (SELECT, INSERT),
    "inbox": (SELECT,),
    "audit": (SELECT,),
}
KEY_GRANTS = (SELECT, "INSERT (subject_key, version, wrapped_key)")
# A contact row ends when a later one of the same person, organisation, role and position
# replaces it, or when it says `ended`; a current, active contact is never removed by age.
RETENTION_CANDIDATES = (
    "SELECT ctid AS row_id,"
    " CASE WHEN status = 'ended' THEN COALESCE(lead(recorded_at) OVER slot, recorded_at)"
    " ELSE lead(recorded_at) OVER slot END AS age,"
    " recorded_at AS at FROM care_team_contacts"
    " WINDOW slot AS (PARTITION BY subject_key, org_id, role, position"
    " ORDER BY recorded_at, contact_id)"
)
RULE_CHANGES = {"care_team_contacts": ("care_team_contacts", "365 days", RETENTION_CANDIDATES)}


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE care_team_changes DROP CONSTRAINT care_team_changes_role_check;
        ALTER TABLE care_team_changes ADD CONSTRAINT care_team_changes_role_check
            CHECK (role IN ('coordinator', 'pathway_coordinator', 'gp', 'participant'));
        CREATE TABLE care_team_contacts (
            contact_id      uuid PRIMARY KEY,
            subject_key     text NOT NULL,
            org_id          text NOT NULL REFERENCES organisations (org_id),
            role            text NOT NULL CHECK (role IN
                                ('coordinator', 'pathway_coordinator', 'gp', 'contact')),
            position        text NOT NULL CHECK (position IN ('accountable', 'deputy')),
            name            text NOT NULL CHECK (name LIKE 'sealed:v1:%'),
            hpr_number      text CHECK (hpr_number ~ '^[0-9]{6,9}$'),
            phone           text CHECK (phone ~ '^\\+?[0-9]{8,15}$'),
            status          text NOT NULL CHECK (status IN ('active', 'ended')),
            recorded_by_org text NOT NULL,
            recorded_at     timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX care_team_contacts_subject_idx
            ON care_team_contacts (subject_key, org_id, recorded_at);
        REVOKE ALL ON care_team_contacts FROM PUBLIC;
        ALTER TABLE alerts ADD COLUMN recipient_role text;
        """
    )
    for service, privileges in GRANTS.items():
        op.execute(
            f"GRANT {', '.join(privileges)} ON care_team_contacts TO carebus_svc_{service}"
        )
    op.execute(f"GRANT {', '.join(KEY_GRANTS)} ON person_keys TO carebus_svc_registry")
    for store, (table, minimum, candidates) in RULE_CHANGES.items():
        op.get_bind().exec_driver_sql(
            "INSERT INTO retention_rules (store, table_name, minimum, candidates)"
            " VALUES (%(store)s, %(table)s, %(minimum)s::interval, %(candidates)s)",
            {"store": store, "table": table, "minimum": minimum, "candidates": candidates},
        )


def downgrade() -> None:
    op.execute("DELETE FROM retention_rules WHERE store = 'care_team_contacts'")
    op.execute(f"REVOKE {', '.join(KEY_GRANTS)} ON person_keys FROM carebus_svc_registry")
    op.execute(
        """
        ALTER TABLE alerts DROP COLUMN recipient_role;
        DROP TABLE care_team_contacts;
        -- History is never rewritten: rows naming a pathway coordinator stay (NOT VALID).
        ALTER TABLE care_team_changes DROP CONSTRAINT care_team_changes_role_check;
        ALTER TABLE care_team_changes ADD CONSTRAINT care_team_changes_role_check
            CHECK (role IN ('coordinator', 'gp', 'participant')) NOT VALID;
        """
    )
