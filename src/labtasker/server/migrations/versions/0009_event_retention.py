"""Event retention per queue: ``queues.events_pruned_through``.

The event log is pruned per queue (the newest ``EVENT_LOG_SIZE`` events of each queue are
kept), and each queue records the highest event id pruned from its log, so that a listener
resuming with an older ``Last-Event-ID`` is told that events were lost (``sse.stream``).

Until now the newest events of all queues were kept, so every event below the oldest one
still stored may have been pruned: existing queues start with that id minus one.

Revision ID: 0009_event_retention
Revises: 0008_unique_submit
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_event_retention"
down_revision = "0008_unique_submit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("queues") as batch:
        batch.add_column(
            sa.Column("events_pruned_through", sa.BigInteger, nullable=False, server_default="0")
        )
    bind = op.get_bind()
    oldest = bind.execute(sa.text("SELECT min(event_id) FROM events")).scalar()
    if oldest is not None and oldest > 1:
        bind.execute(sa.text("UPDATE queues SET events_pruned_through = :n"), {"n": oldest - 1})


def downgrade() -> None:
    # Not a batch operation: on SQLite that copies and drops the queues table, and dropping it
    # cascades to every task and worker of every queue. SQLite (3.35+) drops the column in
    # place.
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE queues DROP COLUMN events_pruned_through")
    else:
        op.drop_column("queues", "events_pruned_through")
