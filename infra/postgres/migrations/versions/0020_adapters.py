"""The adapters (services/adapters: PLO, HL7 v2, FHIR): their role, and each municipality's
kommunenummer in the organisation directory.

The adapters read the caller's token and the organisation directory (a PLO message names its
sender and receiver by HER-id or organisation number; HL7 v2 and FHIR name the patient's
municipality by its kommunenummer) and nothing else: they hand what they map to the gateway
over HTTP, with the caller's own token, so the gateway's authority, validation, idempotency and
sealing apply unchanged; they hold no Kafka credential and write no table.

`organisations.municipality_number`: the four-digit kommunenummer of a municipality (only a
municipality has one; each belongs to one organisation).

Revision ID: 0020
Revises: 0019
"""

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

ROLE = "carebus_svc_adapters"


def _on_database(statement: str) -> None:
    op.execute(
        "DO $$ BEGIN EXECUTE format("
        f"'{statement.replace('{db}', '%I')}', current_database()); END $$;"
    )


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE organisations ADD COLUMN municipality_number text UNIQUE
            CHECK (municipality_number ~ '^[0-9]{4}$');
        ALTER TABLE organisations ADD CONSTRAINT organisations_number_is_a_municipalitys
            CHECK (municipality_number IS NULL OR agency = 'municipality');
        """
    )
    op.execute(
        "DO $$ BEGIN "
        f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
        f"CREATE ROLE {ROLE} NOLOGIN; END IF; END $$;"
    )
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ROLE}")
    _on_database(f"GRANT CONNECT ON DATABASE {{db}} TO {ROLE}")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {ROLE}")
    op.execute(f"GRANT SELECT ON api_tokens, organisations TO {ROLE}")


def downgrade() -> None:
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ROLE}")
    op.execute(f"REVOKE ALL ON SCHEMA public FROM {ROLE}")
    _on_database(f"REVOKE ALL ON DATABASE {{db}} FROM {ROLE}")
    op.execute(f"DROP ROLE IF EXISTS {ROLE}")
    op.execute(
        """
        ALTER TABLE organisations DROP CONSTRAINT organisations_number_is_a_municipalitys;
        ALTER TABLE organisations DROP COLUMN municipality_number;
        """
    )
