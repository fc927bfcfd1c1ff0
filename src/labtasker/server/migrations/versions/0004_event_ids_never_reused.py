"""Event ids are never reused on SQLite (``AUTOINCREMENT``).

Without it SQLite hands out ``max(event_id) + 1``: after the newest events are deleted (a
queue deleted with its events), new events of another queue would get ids that listeners
resuming with ``Last-Event-ID`` have already passed, and those events would be missed.
PostgreSQL's sequence never reuses ids: nothing to do there.

Revision ID: 0004_event_ids_never_reused
Revises: 0003_events
"""

from alembic import op

revision = "0004_event_ids_never_reused"
down_revision = "0003_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # Rebuilds the table (copying its rows); sqlite_sequence starts at the highest copied id.
    with op.batch_alter_table(
        "events", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "events", recreate="always", table_kwargs={"sqlite_autoincrement": False}
    ):
        pass
