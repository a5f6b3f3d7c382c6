"""Webhook delivery: a durable queue per organisation, sent in order per person.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE webhook_queue (
            seq              bigserial PRIMARY KEY,
            delivery_id      text NOT NULL UNIQUE,
            org_id           text NOT NULL,
            agency           text NOT NULL,
            subject_key      text NOT NULL,
            -- The exact bytes POSTed and signed, so every retry sends the same body.
            body             bytea NOT NULL,
            status           text NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending','delivered','dead')),
            -- Incremented when a dispatcher claims the row; the claim's token, so a dispatcher
            -- whose lease ran out cannot overwrite the outcome of the one that took over.
            attempts         integer NOT NULL DEFAULT 0,
            first_attempt_at timestamptz,
            next_attempt_at  timestamptz NOT NULL DEFAULT now(),
            last_status      integer,
            last_error       text,
            enqueued_at      timestamptz NOT NULL DEFAULT now(),
            finished_at      timestamptz,
            -- Where the Delivery record came from, for the dead letter of an undeliverable row.
            source_topic     text NOT NULL,
            source_partition integer NOT NULL,
            source_offset    bigint NOT NULL,
            source_value     bytea NOT NULL
        );
        -- The head of each (organisation, person) line is its lowest pending seq.
        CREATE INDEX webhook_queue_pending_idx ON webhook_queue (org_id, subject_key, seq)
            WHERE status = 'pending';
        CREATE INDEX webhook_queue_due_idx ON webhook_queue (next_attempt_at) WHERE status = 'pending';
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE webhook_queue;")
