"""Retention: the owner's function that removes rows past their retention, and the role that may
call it (docs/retention.md).

`retention_rules` holds, per table, the youngest cut-off the database accepts (`minimum`) and the
query of the rows that may go with the time their retention clock started (`candidates`: `row_id`
(ctid), `age`, and `at` to order ties). It is the owner's: no service reads or writes it.

`carebus_retention_purge(store, cutoff, batch_size, dry_run)` is SECURITY DEFINER, owned by the
owner that runs the migrations. It refuses a store it has no rule for, a cut-off younger than the
store's minimum (SQLSTATE 42501) and a batch outside 1..10000; `dry_run` counts what would go,
otherwise it removes at most `batch_size` rows, oldest first, and returns how many. The caller
repeats it until fewer than `batch_size` go, each call its own short transaction.

The append-only trigger of 0009 still refuses every UPDATE, DELETE and TRUNCATE of an audit table
— except a DELETE that the purge function itself runs (it is on the call stack, `PG_CONTEXT`) as
the table's owner, of the table it named for the statement (`carebus.retention_purge`,
transaction-local). A service's role is not the owner, so nothing it sets lets it remove an audit
row, and it cannot execute the function: only `carebus_svc_retention` (and the owner) may. The
owner by hand is refused as before; it can still `ALTER TABLE ... DISABLE TRIGGER`, as 0009 says.

`carebus_svc_retention` is a NOLOGIN group role like 0011's: CONNECT and EXECUTE on the function,
no table privilege at all. The job's login role (`carebus_retention` locally, created like every
service's) is its member.

Revision ID: 0016
Revises: 0015
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

RETENTION = "carebus_svc_retention"


# store -> (table, minimum, candidates). Candidates return (row_id, age, at): `age` NULL keeps it.
RULES: dict[str, tuple[str, str, str]] = {
    "person_sign_ins": (
        "person_sign_ins",
        "1 hour",
        "SELECT ctid AS row_id, created_at AS age, created_at AS at FROM person_sign_ins",
    ),
    "person_sessions": (
        "person_sessions",
        "1 day",
        "SELECT ctid AS row_id, LEAST(expires_at, ended_at) AS age, created_at AS at"
        " FROM person_sessions",
    ),
    # A token a newer one's `replaced_by` points to waits until that one is gone (the foreign key).
    "api_tokens": (
        "api_tokens",
        "30 days",
        "SELECT t.ctid AS row_id, LEAST(t.expires_at, t.revoked_at) AS age, t.created_at AS at"
        " FROM api_tokens t"
        " WHERE NOT EXISTS (SELECT 1 FROM api_tokens r WHERE r.replaced_by = t.token_id)",
    ),
    "outbox": (
        "outbox",
        "1 day",
        "SELECT ctid AS row_id, published_at AS age, created_at AS at FROM outbox"
        " WHERE published_at IS NOT NULL",
    ),
    "webhook_queue": (
        "webhook_queue",
        "7 days",
        "SELECT ctid AS row_id, finished_at AS age, enqueued_at AS at FROM webhook_queue"
        " WHERE status IN ('delivered', 'dead')",
    ),
    "deliveries": (
        "deliveries",
        "90 days",
        "SELECT ctid AS row_id, delivered_at AS age, delivered_at AS at FROM deliveries",
    ),
    "alerts": (
        "alerts",
        "30 days",
        "SELECT ctid AS row_id, coalesce(resolved_at, updated_at) AS age, stored_at AS at"
        " FROM alerts WHERE status = 'resolved'",
    ),
    "accepted_events": (
        "accepted_events",
        "30 days",
        "SELECT ctid AS row_id, accepted_at AS age, accepted_at AS at FROM accepted_events",
    ),
    "events": (
        "events",
        "30 days",
        # An obligation or an alert still open about the person keeps every event about them.
        """
        SELECT e.ctid AS row_id, e.stored_at AS age, e.stored_at AS at FROM events e
        WHERE NOT EXISTS (SELECT 1 FROM sla_deadlines d WHERE d.subject_key = e.subject_key)
          AND NOT EXISTS (SELECT 1 FROM alerts a
                          WHERE a.subject_key = e.subject_key AND a.status <> 'resolved')
          AND NOT EXISTS (SELECT 1 FROM sla_persons p, json_each(p.state -> 'obligations') o
                          WHERE p.subject_key = e.subject_key
                            AND o.value ->> 'status' IN ('open', 'breached'))
        """,
    ),
    # The ledger entry goes once the retracted event has gone from the event store.
    "retractions": (
        "retractions",
        "30 days",
        "SELECT r.ctid AS row_id, r.recorded_at AS age, r.recorded_at AS at FROM retractions r"
        " WHERE NOT EXISTS (SELECT 1 FROM events e"
        " WHERE e.source_org = r.source_org AND e.event_id = r.retracted_event_id)",
    ),
    "disclosure_lookups": (
        "disclosure_lookups",
        "1826 days",
        "SELECT ctid AS row_id, looked_at AS age, looked_at AS at FROM disclosure_lookups",
    ),
    "authority_refusals": (
        "authority_refusals",
        "1826 days",
        "SELECT ctid AS row_id, decided_at AS age, decided_at AS at FROM authority_refusals",
    ),
    "operator_actions": (
        "operator_actions",
        "1826 days",
        "SELECT ctid AS row_id, at AS age, at AS at FROM operator_actions",
    ),
    "disclosures": (
        "disclosures",
        "1826 days",
        "SELECT ctid AS row_id, decided_at AS age, decided_at AS at FROM disclosures",
    ),
    # A consent ends at its valid_to or when the next effective record for the same recipient
    # replaces it (the routing fold keeps the newest per recipient); the newest one without a
    # valid_to (given, withdrawn or an objection) never ends. A pending one that was never
    # confirmed ended when it was recorded. `age` is never before `recorded_at`, and older rows of
    # one recipient end no later than newer ones, so oldest-first never leaves an older record
    # standing alone as if it were the newest.
    "consents": (
        "consents",
        "1826 days",
        "SELECT ctid AS row_id,"
        " CASE WHEN state = 'pending' THEN recorded_at"
        " WHEN LEAST(valid_to, lead(recorded_at) OVER recipient) IS NULL THEN NULL"
        " ELSE GREATEST(recorded_at, LEAST(valid_to, lead(recorded_at) OVER recipient)) END AS age,"
        " recorded_at AS at FROM consents"
        " WINDOW recipient AS (PARTITION BY subject_key, recipient_agency, recipient_org,"
        " state = 'pending' ORDER BY recorded_at, consent_id)",
    ),
    # An organisation's membership of a person's care team has ended when no `member` record is
    # still in force: each is taken back by a later `removed` from the same recorder or from the
    # organisation itself (carebus.domain.routing). Then all its records go together, by the
    # last one's time, the `member` records before the removals that ended them.
    "care_team_changes": (
        "care_team_changes",
        "1826 days",
        "WITH in_force AS ("
        " SELECT DISTINCT m.subject_key, m.org_id FROM care_team_changes m"
        " WHERE m.status = 'member' AND NOT EXISTS (SELECT 1 FROM care_team_changes r"
        " WHERE r.subject_key = m.subject_key AND r.org_id = m.org_id AND r.status = 'removed'"
        " AND r.recorded_at > m.recorded_at"
        " AND (r.recorded_by_org = m.recorded_by_org OR r.recorded_by_org = r.org_id))),"
        " ended AS (SELECT c.subject_key, c.org_id, max(c.recorded_at) AS ended_at"
        " FROM care_team_changes c GROUP BY c.subject_key, c.org_id)"
        " SELECT c.ctid AS row_id, e.ended_at AS age, c.recorded_at AS at"
        " FROM care_team_changes c JOIN ended e USING (subject_key, org_id)"
        " WHERE NOT EXISTS (SELECT 1 FROM in_force f"
        " WHERE f.subject_key = c.subject_key AND f.org_id = c.org_id)",
    ),
    # The current entry of each register never ends; an entry ends when the next one is made.
    "register_changes": (
        "register_changes",
        "1826 days",
        "SELECT ctid AS row_id,"
        " lead(recorded_at) OVER (PARTITION BY subject_key, register"
        " ORDER BY recorded_at, change_id) AS age,"
        " recorded_at AS at FROM register_changes",
    ),
}

_APPEND_ONLY = """
CREATE OR REPLACE FUNCTION carebus_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    caller text;
BEGIN
    -- {retention_exception}
    RAISE EXCEPTION 'carebus: % is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit records are never changed or removed';
END
$$;
"""
_RETENTION_EXCEPTION = """Only the retention function (SECURITY DEFINER: it runs as the owner)
    -- may remove rows, of the table it named for this statement; no service, nor the owner by
    -- hand.
    IF TG_OP = 'DELETE'
       AND current_setting('carebus.retention_purge', true) = TG_TABLE_NAME
       AND current_user = (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID)
    THEN
        GET DIAGNOSTICS caller = PG_CONTEXT;
        IF position('function carebus_retention_purge(' IN caller) > 0 THEN
            RETURN NULL;
        END IF;
    END IF;"""

_PURGE = """
CREATE FUNCTION carebus_retention_purge(
    p_store text, p_cutoff timestamptz, p_batch_size integer, p_dry_run boolean DEFAULT false
) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    spec retention_rules%ROWTYPE;
    affected bigint;
BEGIN
    SELECT * INTO spec FROM retention_rules WHERE store = p_store;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'carebus retention: no rule for store %', p_store
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_cutoff IS NULL OR p_cutoff > now() - spec.minimum THEN
        RAISE EXCEPTION 'carebus retention: the cut-off for % is younger than its minimum '
            'retention (%)', p_store, spec.minimum
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF p_batch_size IS NULL OR p_batch_size < 1 OR p_batch_size > 10000 THEN
        RAISE EXCEPTION 'carebus retention: batch_size must be 1..10000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_dry_run THEN
        EXECUTE format('SELECT count(*) FROM (%s) c WHERE c.age < $1', spec.candidates)
            INTO affected USING p_cutoff;
        RETURN affected;
    END IF;
    PERFORM set_config('carebus.retention_purge', spec.table_name, true);
    EXECUTE format(
        'DELETE FROM %I WHERE ctid = ANY (ARRAY (SELECT c.row_id FROM (%s) c'
        ' WHERE c.age < $1 ORDER BY c.age, c.at LIMIT $2))',
        spec.table_name, spec.candidates
    ) USING p_cutoff, p_batch_size;
    GET DIAGNOSTICS affected = ROW_COUNT;
    PERFORM set_config('carebus.retention_purge', '', true);
    RETURN affected;
END
$$;
"""


def _on_database(statement: str) -> None:
    """`statement` with `{db}` replaced by the current database's quoted name."""
    op.execute(
        "DO $$ BEGIN EXECUTE format("
        f"'{statement.replace('{db}', '%I')}', current_database()); END $$;"
    )


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE retention_rules (
            store       text PRIMARY KEY,
            table_name  text NOT NULL,
            minimum     interval NOT NULL CHECK (minimum > interval '0'),
            candidates  text NOT NULL
        );
        REVOKE ALL ON retention_rules FROM PUBLIC;
        """
    )
    for store, (table, minimum, candidates) in RULES.items():
        op.get_bind().exec_driver_sql(
            "INSERT INTO retention_rules (store, table_name, minimum, candidates)"
            " VALUES (%(store)s, %(table)s, %(minimum)s::interval, %(candidates)s)",
            {"store": store, "table": table, "minimum": minimum, "candidates": candidates},
        )
    op.execute(_APPEND_ONLY.replace("{retention_exception}", _RETENTION_EXCEPTION))
    op.execute(_PURGE)
    op.execute(
        "REVOKE ALL ON FUNCTION carebus_retention_purge(text, timestamptz, integer, boolean)"
        " FROM PUBLIC"
    )
    op.execute(
        "DO $$ BEGIN "
        f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{RETENTION}') THEN "
        f"CREATE ROLE {RETENTION} NOLOGIN; END IF; END $$;"
    )
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {RETENTION}")
    _on_database(f"GRANT CONNECT ON DATABASE {{db}} TO {RETENTION}")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {RETENTION}")
    op.execute(
        "GRANT EXECUTE ON FUNCTION carebus_retention_purge(text, timestamptz, integer, boolean)"
        f" TO {RETENTION}"
    )


def downgrade() -> None:
    op.execute(
        "REVOKE ALL ON FUNCTION carebus_retention_purge(text, timestamptz, integer, boolean)"
        f" FROM {RETENTION}"
    )
    op.execute(f"REVOKE ALL ON SCHEMA public FROM {RETENTION}")
    _on_database(f"REVOKE ALL ON DATABASE {{db}} FROM {RETENTION}")
    op.execute(f"DROP ROLE IF EXISTS {RETENTION}")
    op.execute("DROP FUNCTION carebus_retention_purge(text, timestamptz, integer, boolean)")
    op.execute(_APPEND_ONLY.replace("{retention_exception}", "(0009: no exception)"))
    op.execute("DROP TABLE retention_rules")
