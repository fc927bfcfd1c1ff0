"""Unique and idempotent submits: ``tasks.args_hash`` and the ``submit_keys`` table.

* ``tasks.args_hash`` (indexed): the identity of a task's args (``identity.args_hash``), so
  that a ``unique`` submit finds an equal task in one indexed read. Filled here for the tasks
  already stored, in chunks.
* ``submit_keys``: the answer of each submit sent with an ``Idempotency-Key``, so that a retry
  whose first answer was lost returns the same task ids instead of making new tasks.

Revision ID: 0008_unique_submit
Revises: 0007_task_runs
"""

import sqlalchemy as sa
from alembic import op

from labtasker.server.identity import args_hash
from labtasker.server.schema import JsonDoc, UTCDateTime

revision = "0008_unique_submit"
down_revision = "0007_task_runs"
branch_labels = None
depends_on = None

CHUNK = 2000


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("args_hash", sa.String(32)))
    bind = op.get_bind()
    tasks = sa.table(
        "tasks",
        sa.column("task_id", sa.String),
        sa.column("args", JsonDoc),
        sa.column("cmd", JsonDoc),
        sa.column("args_hash", sa.String),
    )
    update = (
        sa.update(tasks)
        .where(tasks.c.task_id == sa.bindparam("p_id"))
        .values(args_hash=sa.bindparam("p_hash"))
    )
    last = ""
    while True:  # keyset chunks: bounded memory on a large database
        rows = bind.execute(
            sa.select(tasks.c.task_id, tasks.c.args, tasks.c.cmd)
            .where(tasks.c.task_id > last)
            .order_by(tasks.c.task_id)
            .limit(CHUNK)
        ).fetchall()
        if not rows:
            break
        bind.execute(
            update, [{"p_id": r.task_id, "p_hash": args_hash(r.args, r.cmd)} for r in rows]
        )
        last = rows[-1].task_id
    op.create_index("ix_tasks_args_hash", "tasks", ["args_hash"])
    op.create_table(
        "submit_keys",
        sa.Column("queue_id", sa.String(36), primary_key=True),
        sa.Column("idempotency_key", sa.String(100), primary_key=True),
        sa.Column("request_hash", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("answer", JsonDoc),
    )
    op.create_index("ix_submit_keys_created", "submit_keys", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_submit_keys_created", table_name="submit_keys")
    op.drop_table("submit_keys")
    op.drop_index("ix_tasks_args_hash", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("args_hash")
