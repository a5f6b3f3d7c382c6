"""People sign in to the audit service: the privacy officer (HelseID) and the patient (ID-porten).

A session now belongs to the service that opened it (`service`: existing ones are the inbox's).
A patient's session has no organisation but the subject key of the identity number the issuer
vouched for (never the number itself); a staff session has an organisation and no subject key:
a CHECK holds it so.

A disclosure lookup is run with a token (its id, as before) or in a person's session (their
`sub` and issuer): exactly one of the two, another CHECK. The table stays append-only (0009).

Sign-ins in progress also name their service and door, so a callback finishes only the sign-in
its own door began.

The inbox and the audit service share these tables, and neither may touch the other's rows:
row-level security gives each service's role only the rows of its own `service` (read and
write), and sessions may be updated only in `last_seen_at` and `ended_at`. Without that, a
compromised inbox could insert an audit session for the operator's privacy officer (every
disclosure about anyone) or a patient's session, and the audit service an inbox session for any
organisation's coordinator (review H1). A patient's session is the audit service's only.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

AUDIT = "carebus_svc_audit"
INBOX = "carebus_svc_inbox"
SERVICES = {"inbox": INBOX, "audit": AUDIT}


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE person_sessions
            ADD COLUMN service     text NOT NULL DEFAULT 'inbox',
            ADD COLUMN subject_key text,
            ALTER COLUMN org_id DROP NOT NULL,
            ADD CONSTRAINT person_sessions_patient_or_staff CHECK (
                (role = 'patient' AND subject_key IS NOT NULL AND org_id IS NULL)
                OR (role <> 'patient' AND subject_key IS NULL AND org_id IS NOT NULL)
            );
        ALTER TABLE person_sessions
            ALTER COLUMN service DROP DEFAULT,
            ADD CONSTRAINT person_sessions_service CHECK (service IN ('inbox', 'audit')),
            ADD CONSTRAINT person_sessions_patient_at_audit CHECK (
                role <> 'patient' OR service = 'audit'
            );

        -- Sign-ins in progress are short-lived (10 min): the ones under way are the inbox's.
        ALTER TABLE person_sign_ins
            ADD COLUMN service text NOT NULL DEFAULT 'inbox'
                CONSTRAINT person_sign_ins_service CHECK (service IN ('inbox', 'audit')),
            ADD COLUMN door    text NOT NULL DEFAULT 'staff';
        ALTER TABLE person_sign_ins
            ALTER COLUMN service DROP DEFAULT,
            ALTER COLUMN door DROP DEFAULT;

        ALTER TABLE person_sessions ENABLE ROW LEVEL SECURITY;
        ALTER TABLE person_sign_ins ENABLE ROW LEVEL SECURITY;

        ALTER TABLE disclosure_lookups
            ALTER COLUMN token_id DROP NOT NULL,
            ADD COLUMN looked_by_subject text,
            ADD COLUMN looked_by_issuer  text,
            ADD CONSTRAINT disclosure_lookups_token_or_person CHECK (
                (token_id IS NOT NULL AND looked_by_subject IS NULL AND looked_by_issuer IS NULL)
                OR (token_id IS NULL AND looked_by_subject IS NOT NULL
                    AND looked_by_issuer IS NOT NULL)
            );
        """
    )
    for service, role in SERVICES.items():
        for table in ("person_sessions", "person_sign_ins"):
            op.execute(
                f"CREATE POLICY {table}_{service} ON {table} TO {role} "
                f"USING (service = '{service}') WITH CHECK (service = '{service}')"
            )
        op.execute(f"GRANT SELECT, INSERT, DELETE ON person_sign_ins TO {role}")
        op.execute(f"REVOKE UPDATE ON person_sessions FROM {role}")
        op.execute(
            f"GRANT SELECT, INSERT, UPDATE (last_seen_at, ended_at) ON person_sessions TO {role}"
        )


def downgrade() -> None:
    op.execute(f"REVOKE ALL ON person_sign_ins, person_sessions FROM {AUDIT}")
    op.execute(f"REVOKE UPDATE (last_seen_at, ended_at) ON person_sessions FROM {INBOX}")
    op.execute(f"GRANT UPDATE ON person_sessions TO {INBOX}")
    for service in SERVICES:
        for table in ("person_sessions", "person_sign_ins"):
            op.execute(f"DROP POLICY {table}_{service} ON {table}")
    op.execute(
        """
        ALTER TABLE person_sessions DISABLE ROW LEVEL SECURITY;
        ALTER TABLE person_sign_ins DISABLE ROW LEVEL SECURITY;
        ALTER TABLE person_sign_ins DROP COLUMN service, DROP COLUMN door;
        ALTER TABLE person_sessions
            DROP CONSTRAINT person_sessions_service,
            DROP CONSTRAINT person_sessions_patient_at_audit;
        """
    )
    op.execute(
        """
        ALTER TABLE disclosure_lookups
            DROP CONSTRAINT disclosure_lookups_token_or_person,
            DROP COLUMN looked_by_subject,
            DROP COLUMN looked_by_issuer;
        DELETE FROM person_sessions WHERE service <> 'inbox' OR org_id IS NULL;
        ALTER TABLE person_sessions
            DROP CONSTRAINT person_sessions_patient_or_staff,
            DROP COLUMN subject_key,
            DROP COLUMN service,
            ALTER COLUMN org_id SET NOT NULL;
        """
    )
