"""The disclosure log keeps saying an event was withdrawn for as long as it lists the event.

The audit service marked a disclosure `retracted_by` from the event store's row of the event,
and the gateway's ledger of retractions went once that event was purged: a year on, the wrong
person's log (and the privacy officer's query) listed "DPS told the municipality about your
admission" as a live fact again, for the ten years the disclosures are kept. Now the audit
service reads the ledger itself (a column grant: which sender withdrew which of its events, by
which retraction, why and when — not the subject key), and the ledger's retention follows the
disclosures: a row goes once no disclosure of the retracted event is left, never before the
disclosures' own floor (five years).

Revision ID: 0018
Revises: 0017
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

AUDIT = "carebus_svc_audit"

# store -> (table, minimum, candidates), replacing 0016's rule of the same store.
RULE_CHANGES = {
    "retractions": (
        "retractions",
        "1826 days",
        "SELECT r.ctid AS row_id, r.recorded_at AS age, r.recorded_at AS at FROM retractions r"
        " WHERE NOT EXISTS (SELECT 1 FROM disclosures d"
        " WHERE d.source_org = r.source_org AND d.event_id = r.retracted_event_id)",
    ),
}
_BEFORE = {
    "retractions": (
        "retractions",
        "30 days",
        "SELECT r.ctid AS row_id, r.recorded_at AS age, r.recorded_at AS at FROM retractions r"
        " WHERE NOT EXISTS (SELECT 1 FROM events e"
        " WHERE e.source_org = r.source_org AND e.event_id = r.retracted_event_id)",
    ),
}


def _set_rules(rules: dict[str, tuple[str, str, str]]) -> None:
    for store, (table, minimum, candidates) in rules.items():
        op.get_bind().exec_driver_sql(
            "UPDATE retention_rules SET table_name = %(table)s,"
            " minimum = %(minimum)s::interval, candidates = %(candidates)s"
            " WHERE store = %(store)s",
            {"store": store, "table": table, "minimum": minimum, "candidates": candidates},
        )


def upgrade() -> None:
    op.execute(
        f"""
        GRANT SELECT (source_org, retracted_event_id, retraction_event_id, reason, recorded_at)
            ON retractions TO {AUDIT};
        """
    )
    _set_rules(RULE_CHANGES)


def downgrade() -> None:
    _set_rules(_BEFORE)
    op.execute(
        f"""
        REVOKE SELECT (source_org, retracted_event_id, retraction_event_id, reason, recorded_at)
            ON retractions FROM {AUDIT};
        """
    )
