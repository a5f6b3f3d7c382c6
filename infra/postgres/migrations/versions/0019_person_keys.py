"""Per-person data keys for erasure by crypto-shredding (docs/retention.md, "Erasure").

`person_keys` holds, per subject key and key version, the person's 256-bit data key wrapped
(AES-256-GCM) under the key-encryption key of the `person_key_secret` setting: every nin and
free text of the person's records is sealed under it (`carebus.wire.sealing`). At most one
version per person is current (not erased); the gateway creates it (`INSERT ... ON CONFLICT DO
NOTHING`, then `SELECT`), the readers that show data to a recipient (audit, inbox, webhook
delivery) read it.

`carebus_erase_person(subject_key, erasure_ref, operator_org, erasure_id)` is SECURITY DEFINER, owned by the owner that
runs the migrations: it destroys the wrapped key of the person's current version (NULL) and
records when and under which request; it returns how many versions it erased (0 or 1). Only the
registry (`POST /v1/erasures`, the operator's data protection officer) may execute it: not the
operator's command role, which would let anyone holding the operator's database credentials
erase without the data protection officer's token. No role has UPDATE or
DELETE on the table, and a trigger refuses, to the owner as well, any change but that one: a key
once erased can never be put back, a row never goes (the skeleton of the erasure stays).

The wrapped key of an erased version remains in dead tuples, WAL and backups until they turn
over (docs/retention.md, "Erasure": the backups' retention bounds how long).

Revision ID: 0019
Revises: 0018
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

SELECT, INSERT = "SELECT", "INSERT"
# Who reads wrapped keys: the gateway (sealing) and the three readers that open values for a
# recipient. The registry erases through the function only; the operator's role has nothing.
# The gateway inserts only a key (subject key, version, wrapped key): never an erased row.
GRANTS: dict[str, tuple[str, ...]] = {
    "gateway": (SELECT, "INSERT (subject_key, version, wrapped_key)"),
    "audit": (SELECT,),
    "inbox": (SELECT,),
    "webhooks": (SELECT,),
}
# The advisory lock class of a person's keys: the gateway holds it shared while it seals and
# publishes, the erasure exclusively, so an event is sealed either before an erasure (and is
# erased with it) or after it (under the next version) — never under a key erased meanwhile.
KEY_LOCK_CLASS = 0x0CB0_0E5E
ERASERS = ("registry",)
_FUNCTION = "carebus_erase_person(text, text, text, uuid)"

_GUARD = """
CREATE FUNCTION carebus_person_keys_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- The one change allowed: erasing a current key (wrapped key gone, time and reference set).
    IF TG_OP = 'UPDATE'
       AND OLD.erased_at IS NULL AND OLD.wrapped_key IS NOT NULL
       AND NEW.wrapped_key IS NULL AND NEW.erased_at IS NOT NULL AND NEW.erasure_ref IS NOT NULL
       AND NEW.subject_key = OLD.subject_key AND NEW.version = OLD.version
       AND NEW.created_at = OLD.created_at
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'person_keys: a key is only ever erased, never changed, restored or removed'
        USING ERRCODE = '42501';
END
$$;
"""

_ERASE = """
CREATE FUNCTION carebus_erase_person(
    p_subject_key text, p_erasure_ref text, p_operator_org text, p_erasure_id uuid
) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    erased integer;
BEGIN
    IF p_operator_org IS NULL OR p_operator_org !~ '^[0-9]{9}$' OR p_erasure_id IS NULL THEN
        RAISE EXCEPTION 'carebus_erase_person: the operator organisation and erasure id are '
            'required' USING ERRCODE = '22023';
    END IF;
    IF p_subject_key IS NULL OR p_subject_key !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'carebus_erase_person: not a subject key' USING ERRCODE = '22023';
    END IF;
    IF p_erasure_ref IS NULL OR length(p_erasure_ref) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'carebus_erase_person: erasure_ref must be 1 to 200 characters'
            USING ERRCODE = '22023';
    END IF;
    PERFORM pg_advisory_xact_lock({lock_class}, hashtext(p_subject_key));
    -- The same request again (a client's retry) erases nothing more: not the key of a new
    -- lifecycle begun since.
    IF EXISTS (SELECT 1 FROM person_keys
               WHERE subject_key = p_subject_key AND erasure_ref = p_erasure_ref) THEN
        RETURN 0;
    END IF;
    UPDATE person_keys
       SET wrapped_key = NULL, erased_at = clock_timestamp(), erasure_ref = p_erasure_ref
     WHERE subject_key = p_subject_key AND erased_at IS NULL;
    GET DIAGNOSTICS erased = ROW_COUNT;
    -- The idempotency ledger's fingerprint is a plain hash of the event, nin included: with the
    -- rest of the event in the store it would give the nin back to a brute force. A retry of
    -- such an event is still recognised as a repeat (the gateway reads this marker).
    UPDATE accepted_events SET content_hash = '\\x00'::bytea WHERE subject_key = p_subject_key;
    -- Recorded here, not by the caller: no erasure happens unrecorded, whoever calls.
    INSERT INTO operator_actions (action_id, action, operator_org, target_org, subject_key, detail)
    VALUES (p_erasure_id, 'person_erased', p_operator_org, NULL, p_subject_key,
            jsonb_build_object('erasure_id', p_erasure_id::text, 'request_ref', p_erasure_ref,
                               'keys_erased', erased));
    RETURN erased;
END
$$;
"""


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE person_keys (
            subject_key  text NOT NULL CHECK (subject_key ~ '^[0-9a-f]{64}$'),
            version      integer NOT NULL CHECK (version >= 1),
            -- 1 format byte, a 96-bit nonce, the 256-bit key and the 128-bit tag.
            wrapped_key  bytea CHECK (wrapped_key IS NULL OR length(wrapped_key) = 61),
            created_at   timestamptz NOT NULL DEFAULT now(),
            erased_at    timestamptz,
            erasure_ref  text,
            PRIMARY KEY (subject_key, version),
            CHECK ((erased_at IS NULL) = (wrapped_key IS NOT NULL)),
            CHECK ((erased_at IS NULL) = (erasure_ref IS NULL))
        );
        -- One current key per person: a concurrent second insert conflicts and does nothing.
        CREATE UNIQUE INDEX person_keys_current ON person_keys (subject_key)
            WHERE erased_at IS NULL;
        REVOKE ALL ON person_keys FROM PUBLIC;
        """
    )
    op.execute(_GUARD)
    op.execute(
        """
        CREATE TRIGGER person_keys_guard BEFORE UPDATE OR DELETE ON person_keys
            FOR EACH ROW EXECUTE FUNCTION carebus_person_keys_guard();
        CREATE TRIGGER person_keys_no_truncate BEFORE TRUNCATE ON person_keys
            FOR EACH STATEMENT EXECUTE FUNCTION carebus_person_keys_guard();
        """
    )
    op.execute(_ERASE.replace("{lock_class}", str(KEY_LOCK_CLASS)))
    op.execute(f"REVOKE ALL ON FUNCTION {_FUNCTION} FROM PUBLIC")
    for service, privileges in GRANTS.items():
        op.execute(f"GRANT {', '.join(privileges)} ON person_keys TO carebus_svc_{service}")
    for service in ERASERS:
        op.execute(f"GRANT EXECUTE ON FUNCTION {_FUNCTION} TO carebus_svc_{service}")


def downgrade() -> None:
    op.execute(
        f"""
        DROP FUNCTION {_FUNCTION};
        DROP TABLE person_keys;
        DROP FUNCTION carebus_person_keys_guard();
        """
    )
