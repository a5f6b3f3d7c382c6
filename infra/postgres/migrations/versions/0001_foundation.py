"""Foundation: organisations, API tokens, the gateway's idempotency ledger and the event store.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE organisations (
            org_id      text PRIMARY KEY CHECK (org_id ~ '^[0-9]{9}$'),
            agency      text NOT NULL
                        CHECK (agency IN ('dps','municipality','fastlege','nav','police','housing')),
            name        text NOT NULL DEFAULT '',
            created_at  timestamptz NOT NULL DEFAULT now()
        );

        -- Tokens are stored as SHA-256 of the secret: they are long random strings, so a
        -- slow password hash would add latency to every request and no protection.
        CREATE TABLE api_tokens (
            token_id    uuid PRIMARY KEY,
            token_hash  bytea NOT NULL UNIQUE,
            org_id      text NOT NULL REFERENCES organisations (org_id),
            role        text NOT NULL
                        CHECK (role IN ('system','coordinator','privacy_officer','admin')),
            label       text NOT NULL DEFAULT '',
            created_at  timestamptz NOT NULL DEFAULT now(),
            revoked_at  timestamptz
        );

        -- The gateway's idempotency ledger: one row per (source organisation, event_id),
        -- written in the same transaction that waits for the broker's acknowledgement.
        CREATE TABLE accepted_events (
            source_org    text NOT NULL,
            event_id      text NOT NULL,
            content_hash  bytea NOT NULL,
            event_type    text NOT NULL,
            subject_key   text NOT NULL,
            accepted_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (source_org, event_id)
        );

        -- The event store: every event on care.events.v1, for search and replay. The nin is
        -- not stored here; the subject key finds a person's events.
        CREATE TABLE events (
            source_org          text NOT NULL,
            event_id            text NOT NULL,
            event_type          text NOT NULL,
            occurred_at         timestamptz NOT NULL,
            received_at         timestamptz,
            source_agency       text NOT NULL,
            source_system       text,
            subject_key         text NOT NULL,
            payload             jsonb NOT NULL,
            emergency           jsonb,
            schema_fingerprint  text NOT NULL,
            kafka_partition     integer NOT NULL,
            kafka_offset        bigint NOT NULL,
            stored_at           timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (source_org, event_id)
        );
        CREATE INDEX events_subject_idx ON events (subject_key, occurred_at);
        CREATE INDEX events_type_idx ON events (event_type, occurred_at);
        CREATE INDEX events_stored_idx ON events (stored_at);
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP TABLE events; DROP TABLE accepted_events; DROP TABLE api_tokens; "
        "DROP TABLE organisations;"
    )
