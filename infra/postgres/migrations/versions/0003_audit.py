"""Audit: every routing decision (the disclosure log) and every delivery, per organisation.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- One row per candidate decision (and one `no_candidate` row per event without any).
        CREATE TABLE disclosures (
            audit_id          text PRIMARY KEY,
            event_id          text NOT NULL,
            event_type        text NOT NULL,
            source_org        text NOT NULL,
            subject_key       text NOT NULL,
            recipient_agency  text,
            recipient_org     text,
            decision          text NOT NULL CHECK (decision IN ('delivered','withheld','no_candidate')),
            reason            text,
            basis             text,
            categories        text[] NOT NULL DEFAULT '{}',
            fields            text[] NOT NULL DEFAULT '{}',
            rule_id           text,
            policy_version    text NOT NULL,
            decided_at        timestamptz NOT NULL,
            delivery_id       text,
            emergency         boolean NOT NULL DEFAULT false,
            stored_at         timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX disclosures_subject_idx ON disclosures (subject_key, decided_at);
        CREATE INDEX disclosures_event_idx ON disclosures (event_id);

        -- Deliveries as the recipient organisation reads them over HTTP (the body holds the nin,
        -- which the recipient may see).
        CREATE TABLE deliveries (
            delivery_id       text PRIMARY KEY,
            recipient_org     text NOT NULL,
            recipient_agency  text NOT NULL,
            event_id          text NOT NULL,
            event_type        text NOT NULL,
            subject_key       text NOT NULL,
            occurred_at       timestamptz NOT NULL,
            delivered_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            body              jsonb NOT NULL
        );
        CREATE INDEX deliveries_recipient_idx ON deliveries (recipient_org, delivered_at, delivery_id);
        CREATE INDEX deliveries_event_idx ON deliveries (event_id);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE deliveries; DROP TABLE disclosures;")
