"""Webhook formats: each organisation receives its deliveries as carebus JSON, PLO or FHIR.

`webhooks.format`: what the organisation's webhook receives ('carebus', the default and every
earlier registration's; 'plo': PLO 1.6 in MsgHead 1.2; 'fhir': a FHIR R4 message Bundle).

`webhook_queue.source_org_id` / `source_agency`: the organisation the delivered event came from,
which a standard message names as its sender (MsgHead's Sender, MessageHeader.sender). Rows
queued before this revision have none and are sent as carebus JSON.

The webhook dispatcher reads the organisation directory (names and HER-ids of the sender and
the recipient), nothing more of it.

Revision ID: 0021
Revises: 0020
"""

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

WEBHOOKS = "carebus_svc_webhooks"


def upgrade() -> None:
    op.execute(
        f"""
        ALTER TABLE webhooks ADD COLUMN format text NOT NULL DEFAULT 'carebus'
            CHECK (format IN ('carebus', 'plo', 'fhir'));
        ALTER TABLE webhook_queue ADD COLUMN source_org_id text;
        ALTER TABLE webhook_queue ADD COLUMN source_agency text;
        GRANT SELECT ON organisations TO {WEBHOOKS};
        """
    )


def downgrade() -> None:
    op.execute(
        f"""
        REVOKE SELECT ON organisations FROM {WEBHOOKS};
        ALTER TABLE webhook_queue DROP COLUMN source_agency;
        ALTER TABLE webhook_queue DROP COLUMN source_org_id;
        ALTER TABLE webhooks DROP COLUMN format;
        """
    )
