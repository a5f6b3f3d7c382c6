"""Webhook signing secrets encrypted at rest, and the previous secret kept for a grace period.

`webhooks.secret` (clear text) becomes `secret_sealed` (AES-256-GCM under the key derived from
CAREBUS_WEBHOOK_SECRET_KEY, see carebus.adapters.webhook_registrations.SecretBox);
`previous_secret_sealed` signs beside it until `previous_secret_until` after a rotation.

The key is a setting, not something the database holds, so the existing secrets are sealed here,
in Python, with the key of the settings the migration runs with (the same environment the
services get: `carebus up`, the test stack, the compose migration job). Sealing them lazily on
first read instead would leave clear-text secrets in the table, and in its backups, for as long
as an organisation received nothing. In production the settings refuse the public local key,
so the migration cannot seal with it.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

from carebus.adapters.webhook_registrations import SecretBox
from carebus.runtime.config import Settings

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE webhooks
            ADD COLUMN secret_sealed bytea,
            ADD COLUMN previous_secret_sealed bytea,
            ADD COLUMN previous_secret_until timestamptz;
        """
    )
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT org_id, secret FROM webhooks")).all()
    if rows:
        box = SecretBox.from_settings(Settings())
        for org_id, secret in rows:
            bind.execute(
                sa.text("UPDATE webhooks SET secret_sealed = :sealed WHERE org_id = :org_id"),
                {"sealed": box.seal(org_id, secret), "org_id": org_id},
            )
    op.execute(
        """
        ALTER TABLE webhooks
            ALTER COLUMN secret_sealed SET NOT NULL,
            DROP COLUMN secret,
            ADD CONSTRAINT webhooks_previous_secret_whole
                CHECK ((previous_secret_sealed IS NULL) = (previous_secret_until IS NULL));
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE webhooks ADD COLUMN secret text;")
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT org_id, secret_sealed FROM webhooks")).all()
    if rows:
        box = SecretBox.from_settings(Settings())
        for org_id, sealed in rows:
            bind.execute(
                sa.text("UPDATE webhooks SET secret = :secret WHERE org_id = :org_id"),
                {"secret": box.open(org_id, bytes(sealed)), "org_id": org_id},
            )
    op.execute(
        """
        ALTER TABLE webhooks
            ALTER COLUMN secret SET NOT NULL,
            DROP CONSTRAINT webhooks_previous_secret_whole,
            DROP COLUMN secret_sealed,
            DROP COLUMN previous_secret_sealed,
            DROP COLUMN previous_secret_until;
        """
    )
