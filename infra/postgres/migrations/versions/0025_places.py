"""Patterns at a place (issue 17, item 6): the registry's housing places and the SLA engine's
count per place.

- `housing_places`: a place key (HMAC of `site:<housing_site_id>` or `unit:<housing_unit_id>`
  under the subject-key secret: a client's site id may be an address) -> the housing
  organisation that owns or runs it and the municipality it lies in, so a place alert has
  recipients. Written by the registry (`POST /v1/housing-places`), read by the SLA engine.
- `sla_places`: each place's window state (carebus.domain.places.PlaceState: the events of the
  last two windows as [time, event id, sender, type, subject key, agency, told...], and each
  recipient's last episode). Written by the SLA engine in the same transaction as the persons'
  states and the stream offsets, so an event counts once however often it is delivered. The
  retention job removes a place not counted for 60 days (two default windows: nothing in it
  can count again).

Revision ID: 0025
Revises: 0022
"""

from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

GRANTS = {
    "carebus_svc_registry": {"housing_places": "SELECT, INSERT, UPDATE"},
    "carebus_svc_sla": {"housing_places": "SELECT", "sla_places": "SELECT, INSERT, UPDATE"},
    "carebus_svc_operator": {"housing_places": "SELECT", "sla_places": "SELECT"},
}
# store -> (table, minimum, candidates), as 0016's RULES.
RULES = {
    "sla_places": (
        "sla_places",
        "60 days",
        "SELECT ctid AS row_id, updated_at AS age, updated_at AS at FROM sla_places",
    ),
}


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE housing_places (
            place_key         text PRIMARY KEY CHECK (place_key ~ '^[0-9a-f]{64}$'),
            owner_org         text NOT NULL CHECK (owner_org ~ '^[0-9]{9}$'),
            municipality_org  text NOT NULL CHECK (municipality_org ~ '^[0-9]{9}$'),
            recorded_by       text NOT NULL,
            recorded_at       timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        CREATE TABLE sla_places (
            place_key   text PRIMARY KEY,
            state       json NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        """
    )
    for role, tables in GRANTS.items():
        for table, privileges in tables.items():
            op.execute(f"GRANT {privileges} ON {table} TO {role}")
    for store, (table, minimum, candidates) in RULES.items():
        op.get_bind().exec_driver_sql(
            "INSERT INTO retention_rules (store, table_name, minimum, candidates)"
            " VALUES (%(store)s, %(table)s, %(minimum)s::interval, %(candidates)s)",
            {"store": store, "table": table, "minimum": minimum, "candidates": candidates},
        )


def downgrade() -> None:
    op.execute("DELETE FROM retention_rules WHERE store = 'sla_places'")
    op.execute("DROP TABLE sla_places; DROP TABLE housing_places;")
