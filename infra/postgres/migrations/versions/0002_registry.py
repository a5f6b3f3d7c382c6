"""Registry: consent and care-team history, webhooks, and the transactional outbox.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- Consents, withdrawals and objections: a history, never updated in place. The person
        -- is the subject key; the registry never stores the nin.
        CREATE TABLE consents (
            consent_id        uuid PRIMARY KEY,
            subject_key       text NOT NULL,
            recipient_agency  text NOT NULL,
            recipient_org     text,
            categories        text[] NOT NULL,
            status            text NOT NULL CHECK (status IN ('given','withdrawn','objection')),
            valid_from        timestamptz NOT NULL,
            valid_to          timestamptz,
            recorded_by       text NOT NULL,
            recorded_by_org   text NOT NULL,
            recorded_at       timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX consents_subject_idx ON consents (subject_key, recorded_at);

        CREATE TABLE care_team_changes (
            change_id        uuid PRIMARY KEY,
            subject_key      text NOT NULL,
            agency           text NOT NULL,
            org_id           text NOT NULL,
            role             text NOT NULL CHECK (role IN ('coordinator','gp','participant')),
            status           text NOT NULL CHECK (status IN ('member','removed')),
            recorded_by_org  text NOT NULL,
            recorded_at      timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX care_team_changes_subject_idx ON care_team_changes (subject_key, recorded_at);

        -- Where an organisation receives its deliveries, and the secret its signatures use.
        CREATE TABLE webhooks (
            org_id      text PRIMARY KEY REFERENCES organisations (org_id),
            url         text NOT NULL,
            secret      text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now()
        );

        -- Records committed with a registry change and published after it; a relay republishes
        -- whatever a crash left unpublished, in id order.
        CREATE TABLE outbox (
            id            bigserial PRIMARY KEY,
            topic         text NOT NULL,
            key           bytea NOT NULL,
            value         bytea NOT NULL,
            created_at    timestamptz NOT NULL DEFAULT now(),
            published_at  timestamptz
        );
        CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE outbox; DROP TABLE webhooks; DROP TABLE care_team_changes; DROP TABLE consents;")
