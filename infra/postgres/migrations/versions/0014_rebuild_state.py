"""`carebus rebuild-state`: the operator rebuilds each person's routing state from the registry's
history and the event store and hands the snapshots to the registry's outbox.

The operator's role reads the registry's history (consents, care-team and register changes; it
reads the events already) and adds snapshot records to the outbox, which the registry's relay
publishes in order with the person's changes (docs/reliability.md, "State that can be
rebuilt"). It may not mark outbox records published or change the history.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

OPERATOR = "carebus_svc_operator"


def upgrade() -> None:
    op.execute(
        f"""
        GRANT SELECT ON consents, care_team_changes, register_changes TO {OPERATOR};
        GRANT SELECT, INSERT ON outbox TO {OPERATOR};
        GRANT USAGE ON SEQUENCE outbox_id_seq TO {OPERATOR};
        """
    )


def downgrade() -> None:
    op.execute(
        f"""
        REVOKE USAGE ON SEQUENCE outbox_id_seq FROM {OPERATOR};
        REVOKE SELECT, INSERT ON outbox FROM {OPERATOR};
        REVOKE SELECT ON consents, care_team_changes, register_changes FROM {OPERATOR};
        """
    )
