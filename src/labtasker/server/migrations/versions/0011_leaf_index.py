"""The leaf index of tasks (``leaf_rows.py``): ``leaf_paths``, ``task_leaves``, ``leaf_writer``
and the triggers on ``tasks`` that keep the index, filled here from the tasks already stored.

Revision ID: 0011_leaf_index
Revises: 0010_run_ends
"""

import sqlalchemy as sa
from alembic import op

from labtasker.server import leaf_rows

revision = "0011_leaf_index"
down_revision = "0010_run_ends"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leaf_paths",
        sa.Column("path_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("queue_id", sa.String(36), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.UniqueConstraint("queue_id", "path", name="uq_leaf_paths_queue_path"),
    )
    op.create_table(
        "task_leaves",
        sa.Column("path_id", sa.Integer, nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("num", sa.Numeric, nullable=False),
        sa.Column(
            "txt", sa.Text().with_variant(sa.Text(collation="C"), "postgresql"), nullable=False
        ),
        sa.Column("task_id", sa.String(36), nullable=False),
        sa.PrimaryKeyConstraint("path_id", "kind", "num", "txt", "task_id", name="pk_task_leaves"),
        sqlite_with_rowid=False,
    )
    op.create_table("leaf_writer", sa.Column("app_writes", sa.Integer, nullable=False))
    bind = op.get_bind()
    bind.execute(sa.text("INSERT INTO leaf_writer (app_writes) VALUES (0)"))
    leaf_rows.create_triggers(bind)
    leaf_rows.backfill(bind)


def downgrade() -> None:
    bind = op.get_bind()
    leaf_rows.drop_triggers(bind)
    op.drop_table("leaf_writer")
    op.drop_table("task_leaves")
    op.drop_table("leaf_paths")
