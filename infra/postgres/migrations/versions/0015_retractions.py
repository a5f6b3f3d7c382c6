"""Retractions: the gateway's ledger of retracted events, and the event store's mark on them.

`retractions` holds, per sender organisation, each event it retracted and the retraction that
did it (one per event: the primary key makes a second, concurrent retraction wait and see the
first). The gateway inserts and reads it in the transaction that accepts the retraction; the
operator's `carebus trace` reads it.

`events` gets `retracted_by` (the retraction's event_id), `retracted_at` and
`retraction_reason`: the event store sets them on the retracted event's row when it stores the
retraction, once (never cleared, never overwritten). The row stays: the event, its routing and
its audit trail are history; the mark says it is no longer a live fact. The event store may
update those three columns and no other (a column grant).

Revision ID: 0015
Revises: 0014
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE retractions (
            source_org           text NOT NULL,
            retracted_event_id   text NOT NULL,
            retraction_event_id  text NOT NULL,
            reason               text NOT NULL,
            subject_key          text NOT NULL,
            recorded_at          timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (source_org, retracted_event_id)
        );
        ALTER TABLE events
            ADD COLUMN retracted_by       text,
            ADD COLUMN retracted_at       timestamptz,
            ADD COLUMN retraction_reason  text;
        GRANT SELECT, INSERT ON retractions TO carebus_svc_gateway;
        GRANT SELECT ON retractions TO carebus_svc_operator;
        GRANT UPDATE (retracted_by, retracted_at, retraction_reason) ON events
            TO carebus_svc_event_store;
        -- Whether an event the audit service lists was retracted, never its payload.
        GRANT SELECT (source_org, event_id, retracted_by, retracted_at, retraction_reason)
            ON events TO carebus_svc_audit;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        REVOKE SELECT (source_org, event_id, retracted_by, retracted_at, retraction_reason)
            ON events FROM carebus_svc_audit;
        ALTER TABLE events
            DROP COLUMN retraction_reason,
            DROP COLUMN retracted_at,
            DROP COLUMN retracted_by;
        DROP TABLE retractions;
        """
    )
