"""Rebuilt snapshots go through a function, not the outbox: the operator may queue a person's
snapshot for care.persons.v1 and nothing else.

0014 let the operator's role (the `carebus` command's) INSERT into `outbox`, whose relay
publishes every row's topic, key and value under the registry's Kafka principal — so that role
could have published any record the registry may write (a consent change on care.events.v1,
say) with nothing in the registry's history. Now it has no privilege on `outbox`;
`carebus_queue_person_snapshot(subject_key, value)` (SECURITY DEFINER, owned by the owner) adds
one row whose topic is care.persons.v1 and whose key is the subject key, which must be one
(64 lowercase hex digits), and returns its id. The router checks the snapshot inside (its
subject key is the record's key; nothing in it is from the future: services/router/snapshots.py).

Revision ID: 0017
Revises: 0016
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

OPERATOR = "carebus_svc_operator"


def upgrade() -> None:
    op.execute(
        f"""
        REVOKE USAGE ON SEQUENCE outbox_id_seq FROM {OPERATOR};
        REVOKE INSERT ON outbox FROM {OPERATOR};

        CREATE FUNCTION carebus_queue_person_snapshot(p_subject_key text, p_value bytea)
        RETURNS bigint
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
        DECLARE
            queued bigint;
        BEGIN
            IF p_subject_key IS NULL OR p_subject_key !~ '^[0-9a-f]{{64}}$' THEN
                RAISE EXCEPTION 'carebus snapshot: the key is not a subject key'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF p_value IS NULL OR length(p_value) = 0 THEN
                RAISE EXCEPTION 'carebus snapshot: no value'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            INSERT INTO outbox (topic, key, value)
            VALUES ('care.persons.v1', convert_to(p_subject_key, 'UTF8'), p_value)
            RETURNING id INTO queued;
            RETURN queued;
        END
        $$;
        REVOKE ALL ON FUNCTION carebus_queue_person_snapshot(text, bytea) FROM PUBLIC;
        GRANT EXECUTE ON FUNCTION carebus_queue_person_snapshot(text, bytea) TO {OPERATOR};
        """
    )


def downgrade() -> None:
    op.execute(
        f"""
        DROP FUNCTION carebus_queue_person_snapshot(text, bytea);
        GRANT INSERT ON outbox TO {OPERATOR};
        GRANT USAGE ON SEQUENCE outbox_id_seq TO {OPERATOR};
        """
    )
