"""The correctional service (`corrections`) joins the organisation directory (issue 17, item 3).

It sends one event type, `prison_release`, and receives nothing: no routing rule names it, and
its deliveries topic stays empty. Only the directory's CHECK lists agencies; consents and
deliveries name categories and agencies through the application (the new category `justice`
needs no schema change).

Revision ID: 0023
Revises: 0022
"""

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

_WITH = "'dps','municipality','fastlege','nav','police','housing','corrections','operator'"
_WITHOUT = "'dps','municipality','fastlege','nav','police','housing','operator'"


def upgrade() -> None:
    op.execute(
        f"""
        ALTER TABLE organisations DROP CONSTRAINT organisations_agency_check;
        ALTER TABLE organisations ADD CONSTRAINT organisations_agency_check
            CHECK (agency IN ({_WITH}));
        """
    )


def downgrade() -> None:
    # Refused (the CHECK fails) while a corrections organisation is registered: remove it first.
    op.execute(
        f"""
        ALTER TABLE organisations DROP CONSTRAINT organisations_agency_check;
        ALTER TABLE organisations ADD CONSTRAINT organisations_agency_check
            CHECK (agency IN ({_WITHOUT}));
        """
    )
