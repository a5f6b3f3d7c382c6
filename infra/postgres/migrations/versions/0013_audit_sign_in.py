"""People sign in to the audit service: the privacy officer (HelseID) and the patient (ID-porten).

A session now belongs to the service that opened it (`service`: existing ones are the inbox's).
A patient's session has no organisation but the subject key of the identity number the issuer
vouched for (never the number itself); a staff session has an organisation and no subject key:
a CHECK holds it so.

A disclosure lookup is run with a token (its id, as before) or in a person's session (their
`sub` and issuer): exactly one of the two, another CHECK. The table stays append-only (0009).

The audit service's role gets what the shared sign-in code runs on the session tables (as the
inbox's in 0012).

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

AUDIT = "carebus_svc_audit"


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
        ALTER TABLE person_sessions ALTER COLUMN service DROP DEFAULT;

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
    op.execute(f"GRANT SELECT, INSERT, DELETE ON person_sign_ins TO {AUDIT}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON person_sessions TO {AUDIT}")


def downgrade() -> None:
    op.execute(f"REVOKE ALL ON person_sign_ins, person_sessions FROM {AUDIT}")
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
