"""Find an event by its id alone, as `carebus trace <event_id>` does without --source-org.

The primary keys of the gateway ledger and the event store start with the source organisation,
so a lookup by event_id alone would read the whole table. Built CONCURRENTLY (outside a
transaction), so a production upgrade does not block the gateway or the event-store sink.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS accepted_events_event_id_idx "
            "ON accepted_events (event_id)"
        )
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS events_event_id_idx ON events (event_id)"
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS events_event_id_idx")
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS accepted_events_event_id_idx")
