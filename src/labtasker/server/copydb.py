"""Copy a whole labtasker database into another one (e.g. SQLite -> PostgreSQL).

Used by ``labtasker-server copy-db``: the target is migrated to the newest schema, must hold no
queue yet, and receives every row of every table in one transaction (ids, timestamps, run ids
and the events log are kept). Serial counters are advanced past the copied ids on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, insert, select, text

from labtasker.server.db import Database
from labtasker.server.schema import arg_shapes, events, queues, submit_keys, tasks, workers

TABLES = (queues, arg_shapes, workers, tasks, events, submit_keys)  # parents before children
CHUNK = 2000


class CopyError(RuntimeError):
    """The copy was refused; nothing was written."""


def copy_database(
    source_url: str, target_url: str, progress: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """Copy every row from ``source_url`` into ``target_url``; returns rows per table.

    Raises ``CopyError`` when the target already holds queues. Both URLs are migrated first
    (the source only moves forward to the newest schema, which is what a server start does).
    """
    source, target = Database(source_url), Database(target_url)
    try:
        source.migrate()
        target.migrate()
        with target.read() as conn:
            if conn.execute(select(func.count()).select_from(queues)).scalar_one():
                raise CopyError(
                    "the target database already holds queues; copy into an empty database"
                )
        counts: dict[str, int] = {}
        with source.read() as src, target.write() as dst:
            for table in TABLES:
                n = 0
                result = src.execute(select(table)).mappings()
                while rows := result.fetchmany(CHUNK):
                    dst.execute(insert(table), [dict(r) for r in rows])
                    n += len(rows)
                    if progress:
                        progress(table.name, n)
                counts[table.name] = n
            if dst.dialect.name == "postgresql":
                for table, column in ((arg_shapes, "shape_id"), (events, "event_id")):
                    dst.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column}'), "
                            f"COALESCE((SELECT MAX({column}) FROM {table.name}), 0) + 1, false)"
                        )
                    )
        return counts
    finally:
        source.dispose()
        target.dispose()
