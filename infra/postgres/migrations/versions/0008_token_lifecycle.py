"""Token lifecycle: every API token expires; rotation keeps the old one for a grace period.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- When the token stops being accepted (expiry, or the end of a rotation's grace
        -- period). Tokens issued before this revision get the default lifetime from now.
        ALTER TABLE api_tokens ADD COLUMN expires_at timestamptz;
        UPDATE api_tokens SET expires_at = now() + interval '90 days' WHERE expires_at IS NULL;
        ALTER TABLE api_tokens ALTER COLUMN expires_at SET NOT NULL;
        -- The token a rotation replaced this one with.
        ALTER TABLE api_tokens ADD COLUMN replaced_by uuid REFERENCES api_tokens (token_id);
        """
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE api_tokens DROP COLUMN replaced_by; "
        "ALTER TABLE api_tokens DROP COLUMN expires_at;"
    )
