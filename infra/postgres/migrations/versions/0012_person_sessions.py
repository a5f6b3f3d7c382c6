"""People sign in to the inbox: sign-ins in progress, sessions, and who acted on an alert.

`person_sign_ins` holds an OpenID Connect sign-in between `GET /login` and `GET /callback`
(state, nonce, PKCE verifier), `person_sessions` a signed-in person's session. Both are found by
the SHA-256 of the random value in the browser's cookie, never the value itself. A person is
their issuer's `sub` (pseudonymous) and the issuer: no name, no national identity number.

An alert acknowledged or resolved in a person's session records their `sub` and issuer beside
the (then NULL) token id; a system token's action leaves them NULL.

The inbox's role gets exactly what the inbox runs on the new tables (0011's scheme). The
development OpenID Connect issuer of the local stack is a service with a group role and no
grants at all: it never connects.

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

INBOX = "carebus_svc_inbox"
ISSUER = "carebus_svc_oidc_issuer"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE person_sign_ins (
            sign_in_hash   bytea PRIMARY KEY,
            state          text NOT NULL,
            nonce          text NOT NULL,
            code_verifier  text NOT NULL,
            created_at     timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE INDEX person_sign_ins_created_idx ON person_sign_ins (created_at);

        CREATE TABLE person_sessions (
            session_id     uuid PRIMARY KEY,
            session_hash   bytea NOT NULL UNIQUE,
            issuer         text NOT NULL,
            subject        text NOT NULL,
            org_id         text NOT NULL REFERENCES organisations (org_id),
            role           text NOT NULL,
            created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
            last_seen_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
            expires_at     timestamptz NOT NULL,
            ended_at       timestamptz
        );
        CREATE INDEX person_sessions_expires_idx ON person_sessions (expires_at);

        ALTER TABLE alerts
            ADD COLUMN acknowledged_by_subject text,
            ADD COLUMN acknowledged_by_issuer  text,
            ADD COLUMN resolved_by_subject     text,
            ADD COLUMN resolved_by_issuer      text;
        """
    )
    op.execute(f"GRANT SELECT, INSERT, DELETE ON person_sign_ins TO {INBOX}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE ON person_sessions TO {INBOX}")
    op.execute(
        "DO $$ BEGIN "
        f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ISSUER}') THEN "
        f"CREATE ROLE {ISSUER} NOLOGIN; END IF; END $$;"
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE alerts DROP COLUMN acknowledged_by_subject,"
        " DROP COLUMN acknowledged_by_issuer, DROP COLUMN resolved_by_subject,"
        " DROP COLUMN resolved_by_issuer"
    )
    op.execute("DROP TABLE person_sessions; DROP TABLE person_sign_ins")
    op.execute(f"DROP ROLE IF EXISTS {ISSUER}")
