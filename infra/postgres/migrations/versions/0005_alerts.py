"""Deadline alerts: the SLA engine's durable state and the coordinators' inbox.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- The SLA engine's state per person: its open obligations, early fulfilments, window
        -- history (`state`) and what routing needs to cut alerts (`routing`), both JSON. One
        -- row per person, locked while an event or the due scan changes it. `json`, not
        -- `jsonb`: event texts may hold characters jsonb refuses (U+0000), and nothing queries
        -- inside the documents.
        CREATE TABLE sla_persons (
            subject_key  text PRIMARY KEY,
            state        json NOT NULL,
            routing      json NOT NULL,
            updated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
        );

        -- The deadline index: one row per open obligation with a known deadline. The due
        -- scan reads it by `deadline`, never the persons' state.
        CREATE TABLE sla_deadlines (
            subject_key    text NOT NULL,
            obligation_id  text NOT NULL,
            deadline       timestamptz NOT NULL,
            PRIMARY KEY (subject_key, obligation_id)
        );
        CREATE INDEX sla_deadlines_due_idx ON sla_deadlines (deadline);

        -- The last care.events.v1 offset whose effects are in this database, per partition:
        -- written in the same transaction as the effects, so a replayed record is skipped.
        CREATE TABLE sla_offsets (
            topic       text NOT NULL,
            partition   integer NOT NULL,
            "offset"    bigint NOT NULL,
            PRIMARY KEY (topic, partition)
        );

        -- The inbox: one row per alert per recipient organisation (recipient_org NULL: the
        -- unassigned queue). `nin` is set only when routing lets the recipient know the person.
        CREATE TABLE alerts (
            alert_id          text PRIMARY KEY,
            rule_id           text NOT NULL,
            title             text NOT NULL,
            kind              text NOT NULL,
            status            text NOT NULL CHECK (status IN ('open','acknowledged','resolved')),
            resolution        text,
            escalated         boolean NOT NULL DEFAULT false,
            subject_key       text NOT NULL,
            nin               text,
            recipient_agency  text,
            recipient_org     text,
            audience          text NOT NULL CHECK (audience IN ('coordinator','privacy_officer')),
            contact_agency    text,
            contact_org       text,
            deadline          timestamptz,
            breached_at       timestamptz NOT NULL,
            escalate_at       timestamptz NOT NULL,
            summary           text NOT NULL,
            event_ids         text[] NOT NULL,
            rules_version     text NOT NULL,
            stored_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
            updated_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
            acknowledged_at   timestamptz,
            acknowledged_by   uuid,
            resolved_at       timestamptz,
            resolved_by       uuid,
            escalated_at      timestamptz
        );
        CREATE INDEX alerts_recipient_idx ON alerts (recipient_org, status, breached_at, alert_id);
        CREATE INDEX alerts_escalation_idx ON alerts (escalate_at)
            WHERE status = 'open' AND NOT escalated;
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP TABLE alerts; DROP TABLE sla_offsets; DROP TABLE sla_deadlines; "
        "DROP TABLE sla_persons;"
    )
