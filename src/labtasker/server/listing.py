"""One listing of a queue's tasks as one value: what ``Storage.search_tasks`` was asked for.

``SqlStorage.search_tasks`` builds a ``ListingQuery`` once from its keyword arguments and hands
that value on (to ``SqlStorage._search_tasks`` and ``leaf_sort.search``), instead of passing the
same ten arguments through each layer. The value holds the arguments as given (``sort`` and
``fields`` are checked where they are compiled, with the same errors as before).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from labtasker.server.leaf_sort import JsonSort, json_sort


@dataclass(frozen=True)
class ListingQuery:
    """One page of the queue ``queue_id``'s tasks meeting every given condition.

    ``extra_filter``: a compiled-later filter document (``None``: all tasks); ``task_id``,
    ``task_name``, ``status``: equality conditions when not ``None``; ``sort``: ``(field, ±1)``
    pairs (``None``: the default order, ``last_modified`` ascending); ``offset``/``limit``:
    rows skipped / at most returned; ``cursor``: the keyset cursor of the previous page (then
    ``offset`` is ignored); ``fields``: the projection (``None``: whole tasks)."""

    queue_id: str
    extra_filter: dict | None
    task_id: str | None
    task_name: str | None
    status: str | None
    sort: Sequence[Sequence[Any]] | None
    offset: int
    limit: int
    cursor: str | None = None
    fields: Sequence[str] | None = None

    @property
    def json_sort(self) -> JsonSort | None:
        """The sort as one JSON path read from the leaf index (``leaf_sort.json_sort``), or
        ``None`` when it is not exactly one key on such a path."""
        return json_sort(self.sort)
