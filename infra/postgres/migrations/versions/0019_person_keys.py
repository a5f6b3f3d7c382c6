"""Per-person data keys for erasure by crypto-shredding (docs/retention.md, "Erasure").

`person_keys` holds, per subject key and key version, the person's 256-bit data key wrapped
(AES-256-GCM) under the key-encryption key of the `person_key_secret` setting: every nin and
free text of the person's records is sealed under it (`carebus.wire.sealing`). At most one
version per person is current (not erased); the gateway creates it (`INSERT ... ON CONFLICT DO
NOTHING`, then `SELECT`), the readers that show data to a recipient (audit, inbox, webhook
delivery) read it.

`carebus_erase_person(subject_key, erasure_ref)` is SECURITY DEFINER, owned by the owner that
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
GRANTS: dict[str, tuple[str, ...]] = {
    "gateway": (SELECT, INSERT),
    "audit": (SELECT,),
    "inbox": (SELECT,),
    "webhooks": (SELECT,),
    "registry": (SELECT,),
    "operator": (SELECT,),
}
ERASERS = ("registry",)
_FUNCTION = "carebus_erase_person(text, text)"

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
CREATE FUNCTION carebus_erase_person(p_subject_key text, p_erasure_ref text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    erased integer;
BEGIN
    IF p_subject_key IS NULL OR p_subject_key !~ '^[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'carebus_erase_person: not a subject key' USING ERRCODE = '22023';
    END IF;
    IF p_erasure_ref IS NULL OR length(p_erasure_ref) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'carebus_erase_person: erasure_ref must be 1 to 200 characters'
            USING ERRCODE = '22023';
    END IF;
    UPDATE person_keys
       SET wrapped_key = NULL, erased_at = clock_timestamp(), erasure_ref = p_erasure_ref
     WHERE subject_key = p_subject_key AND erased_at IS NULL;
    GET DIAGNOSTICS erased = ROW_COUNT;
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
    op.execute(_ERASE)
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
