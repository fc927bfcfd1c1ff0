"""Answering filters and sorts from a leaf index: a table with one row per value of a JSON
document reached through objects (the server's ``task_leaves``, kept by triggers; see
``labtasker.server.leaf_rows`` for how the rows are made).

The compiler uses it for ``$eq``, ``$in`` and the range operators with scalar values (numbers,
strings, datetimes as ISO text, booleans) on a path below an indexed JSON column. The answer
stays the exact MongoDB answer (the semantics in this package's docstring):

* without an array on the way (no prefix of the path, the path itself included, holds an
  array), the candidates of the path are the one value stored there, or missing, or an
  object: a scalar condition holds exactly when the index has a row of the value's kind at
  the path that satisfies it;
* with an array on the way, the index cannot say (an array's elements are not indexed), so
  such tasks are judged from their JSON as before: ``hit OR (array on the way AND the JSON
  condition)``. The index finds these tasks too (arrays have a row of kind 4).

Two spellings of that condition, chosen per condition (``LeafIndex.selective``):

* *driven by the index* when few rows match (``SELECTIVE`` or fewer): ``task_id IN (hits
  UNION ALL tasks with an array on the way) AND (task_id IN hits OR the JSON condition)``,
  which a planner answers by looking the few tasks up by id;
* *checked per task* otherwise (a common value: walking the tasks in the listing's order
  finds a page quickly): with ``per_task`` (SQLite), equality and ``$in`` become an
  ``EXISTS`` that looks up the task's own row by the whole primary key; a range, and every
  common-value condition on PostgreSQL, keeps the JSON condition -- the statement of a
  database without the index, so such a filter cannot get slower than that.

The choice is made by a ``probe`` that counts the hits (up to ``LeafIndex.most_hits + 1``, an
index-only read; ``SELECTIVE`` on SQLite, ``PG_SELECTIVE`` on PostgreSQL, where the probe of a
common value is the dearer part; on PostgreSQL each value or range is read in the primary
key's order with its own ``LIMIT``, so that the planner cannot pick a scan that reads every
row of the path first: ``LeafIndex.probe_hits``) before the statement is built, on both backends: SQLite's planner knows no value
frequencies, and PostgreSQL's, left to choose between the index-driven spelling and its
JSON scan, chose badly for common values (``args.grp == 3`` at 10 % of 100k tasks 32 ->
91 ms, two such equalities 61 -> 1,538 ms). The choice changes the plan, never the answer.

Null values (which also match a missing path), arrays and objects as values, ``$regex``,
``$type``, ``$size``, ``$exists`` and ``$elemMatch`` are not answered from the index.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, false, literal, or_, select, union_all

from labtasker.filters.mongo_sql.common import SqlExpr, booleans_where, compare, value_kind

KIND = {"null": 0, "number": 1, "string": 2, "object": 3, "array": 4, "bool": 5}
"""Kind codes of the index, in the type order of sorting."""

SELECTIVE = 2000
"""At most this many hits: the index drives the query (see the module docstring)."""

PG_SELECTIVE = 500
"""``SELECTIVE`` on PostgreSQL."""

PROBE_RANGES = 16
"""At most this many ranges of the index (values of an ``$in``) are probed one by one."""


@dataclass(frozen=True)
class Leaf:
    """A condition on leaf rows (``kind``/``num``/``txt``; the path is added by the caller).

    ``where``: the condition as the statement spells it; ``ranges``: the same rows as
    conditions each selecting one contiguous stretch of the primary key after ``path_id``
    (one per value of an ``$in`` or boolean set, else ``(where,)``; empty: no row), for the
    probe (``LeafIndex.probe_hits``)."""

    where: SqlExpr
    ranges: tuple[SqlExpr, ...]
    # What the condition is (operator, kind, values), for ``CommonValues``: equal keys
    # select the same rows.
    key: tuple[Any, ...] = ()


class CommonValues:
    """Conditions that a probe recently found to hold for more than ``LeafIndex.most_hits``
    tasks, each remembered for ``ttl`` seconds (at most ``size`` of them, oldest dropped),
    so that filtering on them again (the next page, the match count, a dashboard that
    refreshes) skips the probe and uses the common-value spelling at once. Only common
    outcomes are kept: when one goes stale (the value became rare), the statement is the one
    of a database without the index, never worse than that, and only until it expires. The
    answers never depend on it. Thread-safe; one per storage (keys hold the queue id)."""

    def __init__(
        self, size: int = 512, ttl: float = 10.0, clock: Callable[[], float] = time.monotonic
    ):
        self.size, self.ttl, self.clock = size, ttl, clock
        self._until: OrderedDict[tuple[Any, ...], float] = OrderedDict()
        self._lock = threading.Lock()

    def holds(self, key: tuple[Any, ...]) -> bool:
        """Whether ``key`` was found common less than ``ttl`` seconds ago."""
        with self._lock:
            until = self._until.get(key)
            if until is None:
                return False
            if until < self.clock():
                del self._until[key]
                return False
            return True

    def add(self, key: tuple[Any, ...]) -> None:
        """Remember that ``key`` is common (for ``ttl`` seconds from now)."""
        with self._lock:
            self._until[key] = self.clock() + self.ttl
            self._until.move_to_end(key)
            while len(self._until) > self.size:
                self._until.popitem(last=False)


_BARE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


def leaf_path(column: str, segments: list[str]) -> str:
    """The index's name of a path: ``column`` then each key as SQLite's ``json_tree`` spells
    it in ``fullkey`` (bare when an ASCII letter followed by letters and digits, else in
    double quotes): ``("summary", ["val-acc"])`` -> ``'summary."val-acc"'``."""
    return column + "".join("." + (s if _BARE.match(s) else f'"{s}"') for s in segments)


@dataclass
class LeafIndex:
    """The leaf index of one queue, as the compiler sees it.

    ``paths``: the table numbering each queue's paths (``queue_id``, ``path``, ``path_id``);
    ``leaves``: the rows (``path_id``, ``kind``, ``num``, ``txt``, ``task_id``); ``task_id``:
    the id column of the filtered table; ``queue_id``: the queue every lookup is scoped to;
    ``columns``: the JSON columns that are indexed; ``number``: a function giving a bound
    number comparable with ``leaves.num`` on this database (the backend's
    ``number_literal``); ``probe``: a function counting the rows of a SELECT (up to the
    limit it is given), or ``None`` to let the index drive every condition it can answer;
    ``per_task``: a common equality or ``$in`` is checked through the task's own index row
    (else from the JSON, as without the index); ``driven_in``: how the index-driven spelling
    says ``task_id IN <select>`` (default: ``IN``); ``most_hits``: the most hits for which the
    index drives the query."""

    paths: Any
    leaves: Any
    task_id: Any
    queue_id: str
    number: Any
    probe: Callable[[Any, int], int] | None = None
    per_task: bool = True
    # ``task_id IN <select>`` for the index-driven spelling; PostgreSQL's planner estimates
    # an IN over the index from generic statistics (about 1,800 rows for five hits at 100k
    # tasks) and then walks the listing's index with the IN as a filter, so there it is
    # ``task_id = ANY(ARRAY(<select>))``: computed once, then looked up by primary key.
    driven_in: Callable[[Any, Any], SqlExpr] | None = None
    # At most this many hits: the index drives the query; the probe reads up to one more.
    most_hits: int = SELECTIVE
    # The probe reads each range of the index in the key's order (``probe_hits``): needed
    # by PostgreSQL's planner; SQLite reads the plain statement by its primary key anyway.
    ordered_probe: bool = False
    # Conditions recently found common: not probed again while remembered (``CommonValues``).
    common: CommonValues | None = None
    columns: frozenset[str] = field(
        default_factory=lambda: frozenset({"args", "metadata", "summary"})
    )
    # Set while compiling: whether an index-driven condition is required by the whole
    # filter (a top-level conjunct), so that the caller may make the planner start from it.
    drives: bool = False

    def condition(
        self,
        column: str,
        segments: list[str],
        leaf: Leaf,
        exact_key: bool,
        json_condition: SqlExpr,
        conjunct: bool = False,
    ) -> SqlExpr:
        """``json_condition`` on the path ``column``.``segments`` answered with the index.
        ``leaf``: the condition on leaf rows (``scalar_condition``/``in_condition``);
        ``exact_key``: ``leaf`` fixes ``kind``, ``num`` and ``txt`` to values, so that one
        task's row is found by the whole primary key; ``conjunct``: the whole filter requires
        this condition (see ``drives``)."""
        path_id = self.path_ids([leaf_path(column, segments)]).scalar_subquery()
        selective = self.selective(column, segments, path_id, leaf)
        if not selective and not (exact_key and self.per_task):
            return json_condition
        hits = select(self.leaves.c.task_id).where(self.leaves.c.path_id == path_id, leaf.where)
        arrays = self.array_on_the_way(column, segments)
        if selective:
            self.drives = self.drives or conjunct
            candidates = union_all(hits, arrays)
            driven = (
                self.driven_in(self.task_id, candidates)
                if self.driven_in is not None
                else self.task_id.in_(candidates)
            )
            return and_(driven, or_(self.task_id.in_(hits), json_condition))
        own = hits.where(self.leaves.c.task_id == self.task_id).exists()
        return or_(own, and_(self.task_id.in_(arrays), json_condition))

    def selective(self, column: str, segments: list[str], path_id: Any, leaf: Leaf) -> bool:
        """Whether the index should drive the query for ``leaf`` at the path (few hits, or
        no probe): the probe counts the rows of ``probe_hits`` up to ``most_hits + 1``,
        unless ``common`` remembers the condition as common."""
        if self.probe is None:
            return True
        if not leaf.ranges:
            return True  # no row can match: nothing to count
        key = (self.queue_id, leaf_path(column, segments), self.most_hits, leaf.key)
        if self.common is not None and leaf.key and self.common.holds(key):
            return False
        limit = self.most_hits + 1
        few = self.probe(self.probe_hits(path_id, leaf, limit), limit) <= self.most_hits
        if not few and self.common is not None and leaf.key:
            self.common.add(key)
        return few

    def probe_hits(self, path_id: Any, leaf: Leaf, limit: int) -> Any:
        """SELECT of (up to ``limit`` per range) ``task_id`` of the leaf rows of ``path_id``
        matching ``leaf``. With ``ordered_probe``, spelt so that the planner reads them as
        ranges of the primary key and stops at the limit: one ``ORDER BY`` the key's order and
        ``LIMIT`` per range of ``leaf.ranges``, joined by ``UNION ALL``. (Without the order, PostgreSQL, which
        cannot know how many rows the path's id -- a subquery -- has, chose a sequential
        scan of the whole table for a range of 56 hits (55 ms at 100k tasks) or a bitmap
        scan reading all 10,000 rows of a common value before counting 501 (3.7 ms).) Else, or
        with more than ``PROBE_RANGES`` ranges: one statement with ``leaf.where``."""
        c = self.leaves.c
        if not self.ordered_probe or len(leaf.ranges) > PROBE_RANGES:
            return select(c.task_id).where(c.path_id == path_id, leaf.where).limit(limit)
        branches = [
            select(c.task_id)
            .where(c.path_id == path_id, part)
            .order_by(c.path_id, c.kind, c.num, c.txt, c.task_id)
            .limit(limit)
            for part in leaf.ranges
        ]
        if len(branches) == 1:
            return branches[0]
        return union_all(*(select(b.subquery().c.task_id) for b in branches))

    def path_ids(self, paths: list[str]) -> Any:
        """SELECT of the ids of ``paths`` in this queue (at most one each)."""
        return select(self.paths.c.path_id).where(
            self.paths.c.queue_id == self.queue_id, self.paths.c.path.in_(paths)
        )

    def array_on_the_way(self, column: str, segments: list[str]) -> Any:
        """SELECT of the tasks in which some prefix of the path (the path included) holds
        an array."""
        prefixes = [leaf_path(column, segments[: i + 1]) for i in range(len(segments))]
        return select(self.leaves.c.task_id).where(
            self.leaves.c.path_id.in_(self.path_ids(prefixes)), self.leaves.c.kind == KIND["array"]
        )

    def scalar_condition(self, op: str, value: Any) -> Leaf | None:
        """The condition on leaf rows for ``<path> <op> value`` (``$eq $gt $gte $lt $lte``
        with a datetime-decoded scalar), or ``None`` when the index cannot answer it."""
        c = self.leaves.c
        kind = value_kind(value)
        if kind == "bool":
            allowed = sorted(booleans_where(op, value))
            if not allowed:
                return Leaf(false(), ())
            return Leaf(
                and_(
                    c.kind == KIND["bool"],
                    c.num.in_([self.number(int(b)) for b in allowed]),
                    c.txt == "",
                ),
                tuple(self._exact(KIND["bool"], int(b), "") for b in allowed),
                ("bool", tuple(int(b) for b in allowed)),
            )
        if kind == "number":
            where = and_(
                c.kind == KIND["number"], compare(c.num, op, self.number(value)), c.txt == ""
            )
            return Leaf(where, (where,), ("number", op, value))
        if kind in ("string", "datetime"):
            text = value.isoformat() if isinstance(value, datetime) else value
            where = and_(
                c.kind == KIND["string"],
                c.num == self.number(0),
                compare(c.txt, op, literal(text)),
            )
            return Leaf(where, (where,), ("string", op, text))
        return None

    def in_condition(self, values: list[Any]) -> Leaf | None:
        """The condition on leaf rows for ``$in: values`` (datetime-decoded), or ``None``
        when a member is null, an array or an object (or the list is empty)."""
        c = self.leaves.c
        numbers: list[Any] = []
        texts: list[str] = []
        booleans: set[int] = set()
        for v in values:
            kind = value_kind(v)
            if kind == "number":
                numbers.append(v)
            elif kind in ("string", "datetime"):
                texts.append(v.isoformat() if isinstance(v, datetime) else v)
            elif kind == "bool":
                booleans.add(int(v))
            else:
                return None
        parts = []
        if numbers:
            parts.append(
                and_(
                    c.kind == KIND["number"],
                    c.num.in_([self.number(v) for v in numbers]),
                    c.txt == "",
                )
            )
        if texts:
            parts.append(and_(c.kind == KIND["string"], c.num == self.number(0), c.txt.in_(texts)))
        if booleans:
            parts.append(
                and_(
                    c.kind == KIND["bool"],
                    c.num.in_([self.number(b) for b in sorted(booleans)]),
                    c.txt == "",
                )
            )
        if not parts:
            return None
        ranges = (
            [self._exact(KIND["number"], v, "") for v in numbers]
            + [self._exact(KIND["string"], 0, t) for t in texts]
            + [self._exact(KIND["bool"], b, "") for b in sorted(booleans)]
        )
        key = ("$in", tuple(numbers), tuple(texts), tuple(sorted(booleans)))
        return Leaf(or_(*parts) if len(parts) > 1 else parts[0], tuple(ranges), key)

    def _exact(self, kind: int, num: Any, txt: str) -> SqlExpr:
        """The leaf rows of one value: ``kind``, ``num`` and ``txt`` fixed."""
        c = self.leaves.c
        return and_(c.kind == kind, c.num == self.number(num), c.txt == txt)
