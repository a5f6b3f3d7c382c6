"""The audit trail is append-only: no UPDATE, DELETE or TRUNCATE of an audit table, by anyone.

Disclosures and withholdings, deliveries, authority refusals, the operator's actions, register
changes and the records of who looked are the privacy officer's and the patient's evidence;
a component that could change them could hide what it disclosed. A trigger refuses every
change but INSERT (SQLSTATE 42501), whatever role the statement runs as. Retention deletes,
when the retention rules require them, are the database owner's deliberate act: `ALTER TABLE
... DISABLE TRIGGER` in a reviewed migration, which the database logs.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

AUDIT_TABLES = (
    "disclosures",
    "deliveries",
    "authority_refusals",
    "operator_actions",
    "register_changes",
    "disclosure_lookups",
)


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION carebus_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'carebus: % is append-only', TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'audit records are never changed or removed';
        END
        $$;
        """
    )
    for table in AUDIT_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION carebus_append_only();"
        )


def downgrade() -> None:
    for table in AUDIT_TABLES:
        op.execute(f"DROP TRIGGER {table}_append_only ON {table};")
    op.execute("DROP FUNCTION carebus_append_only();")
