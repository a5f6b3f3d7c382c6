"""Authority: the organisation directory, the operator realm, patient tokens, the operator's
registers, the facts the edge judges claims by, pending consents, and the records of who looked.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- The organisation directory. `operator` is the realm of the organisation that runs
        -- carebus: it is not an agency, sends no events and receives no deliveries.
        ALTER TABLE organisations DROP CONSTRAINT organisations_agency_check;
        ALTER TABLE organisations ADD CONSTRAINT organisations_agency_check CHECK (
            agency IN ('dps','municipality','fastlege','nav','police','housing','operator'));
        -- HER-id: the organisation's address in the national address register (adapters resolve
        -- a PLO sender by it).
        ALTER TABLE organisations ADD COLUMN her_id text UNIQUE CHECK (her_id ~ '^[0-9]{1,9}$');

        -- `operator`: the operator's administration; `patient`: a person reading their own log,
        -- bound to their subject key (never the nin).
        ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
        ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check CHECK (
            role IN ('system','coordinator','privacy_officer','admin','operator','patient'));
        ALTER TABLE api_tokens ADD COLUMN subject_key text;
        ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_patient_bound
            CHECK ((role = 'patient') = (subject_key IS NOT NULL));

        -- What the gateway and the registry judge claims by: each person's relations (care
        -- team with who put each member there, home municipality, GP, open admissions), the
        -- same state the router folds from the stream. Changed under the row lock in the
        -- transaction that accepts the statement, so two claims about one person are judged in
        -- the order they are accepted.
        CREATE TABLE person_facts (
            subject_key  text PRIMARY KEY,
            state        text NOT NULL,
            updated_at   timestamptz NOT NULL DEFAULT now()
        );

        -- The operator's registers (stand-ins for the national population register and GP
        -- register): a history, never updated in place.
        CREATE TABLE register_changes (
            change_id        uuid PRIMARY KEY,
            subject_key      text NOT NULL,
            register         text NOT NULL CHECK (register IN ('home_municipality','gp')),
            org_id           text REFERENCES organisations (org_id),
            recorded_by_org  text NOT NULL,
            recorded_at      timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX register_changes_subject_idx ON register_changes (subject_key, recorded_at);

        -- A consent that widens access and was not recorded by a health organisation for a
        -- third party waits for confirmation; it is streamed only when confirmed.
        ALTER TABLE consents ADD COLUMN state text NOT NULL DEFAULT 'effective'
            CHECK (state IN ('effective','pending','confirmed'));
        ALTER TABLE consents ADD COLUMN statement_ref text;
        ALTER TABLE consents ADD COLUMN recorded_by_role text;
        ALTER TABLE consents ADD COLUMN confirmed_by_org text;
        ALTER TABLE consents ADD COLUMN confirmed_at timestamptz;

        -- Who touched whose data from the operator's realm, and who asked about a person.
        CREATE TABLE operator_actions (
            action_id      uuid PRIMARY KEY,
            action         text NOT NULL,
            operator_org   text NOT NULL,
            target_org     text,
            subject_key    text,
            detail         jsonb NOT NULL DEFAULT '{}',
            at             timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX operator_actions_target_idx ON operator_actions (target_org, at);

        CREATE TABLE disclosure_lookups (
            lookup_id    uuid PRIMARY KEY,
            subject_key  text NOT NULL,
            org_id       text NOT NULL,
            role         text NOT NULL,
            token_id     uuid NOT NULL,
            purpose      text,
            items        integer NOT NULL,
            looked_at    timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX disclosure_lookups_subject_idx ON disclosure_lookups (subject_key, looked_at);

        -- Statements refused for want of authority (care.audit.v1 AuthorityRefusal records).
        CREATE TABLE authority_refusals (
            audit_id        text PRIMARY KEY,
            subject_key     text,
            actor_org       text NOT NULL,
            actor_agency    text NOT NULL,
            actor_role      text NOT NULL,
            statement       text NOT NULL,
            rule_id         text NOT NULL,
            field           text,
            policy_version  text NOT NULL,
            decided_at      timestamptz NOT NULL,
            stored_at       timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX authority_refusals_subject_idx ON authority_refusals (subject_key, decided_at);
        CREATE INDEX authority_refusals_actor_idx ON authority_refusals (actor_org, decided_at);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE authority_refusals; DROP TABLE disclosure_lookups; DROP TABLE operator_actions;
        ALTER TABLE consents DROP COLUMN state, DROP COLUMN statement_ref,
            DROP COLUMN recorded_by_role, DROP COLUMN confirmed_by_org, DROP COLUMN confirmed_at;
        DROP TABLE register_changes; DROP TABLE person_facts;
        ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_patient_bound;
        ALTER TABLE api_tokens DROP COLUMN subject_key;
        ALTER TABLE organisations DROP COLUMN her_id;
        """
    )
