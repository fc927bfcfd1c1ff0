"""Compile MongoDB-syntax filters into SQL expressions (server side).

``compile_filter(filt, fields, dialect)`` returns a SQLAlchemy boolean expression; the database
does all the filtering (no per-row Python; on SQLite a registered ``labtasker_regexp`` function
evaluates ``$regex`` with RE2 inside the database). Every path segment and every value the user sends is
a bound parameter, never SQL text. Operators are allow-listed; anything else is refused with
``FilterError`` (HTTP 400 naming the operator).

Layers: ``common`` (limits, ``FieldMap``, ``FilterError``, value helpers), ``backends`` (JSON
access per database behind the ``JsonBackend`` protocol), ``regex`` (``$regex`` validation and
engines), ``compiler`` (query documents and field operators), ``expr`` (``$expr``) and
``leaf_filter`` (equality, ``$in`` and ranges answered from a leaf index, same answers).

MongoDB semantics (the model the SQL implements)
    *Candidates.* A dotted path names a set of candidate values. Walking segment ``s`` from a
    value ``v``: an object gives ``v[s]`` (or *missing*); an array gives ``v[int(s)]`` when ``s``
    is an index (``"0"``, ``"12"``; nothing when out of range), otherwise ``e[s]`` (or missing)
    for every element ``e`` that is an object (other elements, nested arrays included, give
    nothing); any other value, and missing, gives missing.
    *Leaf arrays.* ``$eq $gt ... $in $regex $type`` match a candidate or any element of a
    candidate that is an array (``{"metadata.tags": "x"}`` matches ``["x", "y"]``; ``{"a": [1]}``
    matches ``[1]`` and ``[[1], 2]``). ``$size`` and ``$elemMatch`` look at the array itself.
    *Type brackets.* Comparisons only happen within one bracket (numbers, strings, booleans with
    false < true, null): ``{"a": {"$gt": 1}}`` never matches a string. Strings compare by code
    point (``COLLATE "C"`` on PostgreSQL). Range operators on objects/arrays are refused.
    *Null.* ``{"a": null}`` (and ``$in: [null]``, ``$gte/$lte: null``) matches null and missing;
    ``$exists: true`` means at least one candidate is present.
    *Negation.* ``$ne $nin $not $nor`` are exact negations of the positive forms (every
    predicate is two-valued, see ``common.two_valued``); several operators on one field are independent
    conditions (``{"a": {"$gt": 1, "$lt": 5}}`` matches ``[0, 9]``), while inside
    ``$elemMatch`` they all apply to the same element.
    *Datetimes.* ``{"_dt": iso}`` (and ISO strings) compare with the datetime columns
    (``created_at`` ...); against JSON paths they compare as ISO text.
    *Columns.* ``task_id status priority retries created_at ...`` are plain columns and compile
    to plain, index-friendly comparisons; ``args.* metadata.* summary.* cmd`` are JSON paths.

Known differences from MongoDB
    * ``a.0`` on an array is the element at index 0 only; MongoDB also looks for a key "0"
      in objects inside the array.
    * ``$elemMatch`` with a query document matches object elements only (MongoDB also treats
      nested arrays as objects with keys "0", "1" ...).
    * ``$expr``: field paths do not traverse arrays (an array on the way gives missing);
      ``$lt/$gt...`` between two arrays or two objects, arithmetic on non-numbers and division
      by zero never match (MongoDB fails the whole query); missing < null < numbers < strings
      < objects < arrays < booleans < dates.
    * Sorting on a JSON path: MongoDB's type order, but an array sorts as a whole value
      (MongoDB uses its smallest/largest element).
    * PostgreSQL: jsonb forgets key order, so ``{"a": {"x": 1, "y": 2}}`` also matches
      ``{"y": 2, "x": 1}``; ``2.0`` equals ``2`` inside arrays/objects (on SQLite containers
      compare as normalised JSON text, so it does not); ``$type: "double"`` is judged from the
      number's text (``1e20`` counts as an integer). ``$regex`` is RE2's
      language (linear time) on both backends, see ``regex.py``: back-references,
      look-around, atomic groups, possessive quantifiers and scoped flags are refused with
      400 naming the construct; ``\\d \\w \\s`` and POSIX classes are ASCII; MongoDB
      (PCRE) has them all. Word boundaries ``\\b`` use PostgreSQL's word characters
      there (letters such as ``é`` count), ASCII ones on SQLite.
    * Datetimes (``{"_dt": ...}``) compared with JSON values compare as ISO text.

Cost: column conditions are plain comparisons (indexes apply). A JSON path becomes one
``EXISTS`` over a chain of ``json_each``/``jsonb_array_elements`` (one per path segment), so the
SQL grows linearly with the filter; ``$expr`` values are materialised as one-row FROM items
for the same reason. With a leaf index (``compile_filter(..., index=...)``), an equality,
``$in`` or range condition with scalar values on a JSON path is an ``IN`` over that index
instead, the JSON being read only for tasks with an array on the path. Limits: ``MAX_DEPTH``, ``MAX_NODES``, ``MAX_PATH_SEGMENTS``,
``MAX_PATTERN``, and a cost budget counted while the filter is built, before any SQL runs:
``MAX_PATH_STEPS`` (FROM items over JSON arrays) and ``MAX_PARAMETERS`` (bound values);
past it, ``filter too expensive: ... (limit N)``.
"""

from labtasker.filters.mongo_sql.backends import JsonBackend, PostgresJson, SqliteJson, backend_for
from labtasker.filters.mongo_sql.common import (
    MAX_DEPTH,
    MAX_NODES,
    MAX_PARAMETERS,
    MAX_PATH_SEGMENTS,
    MAX_PATH_STEPS,
    MAX_PATTERN,
    FieldMap,
    FilterError,
    decode_datetimes,
)
from labtasker.filters.mongo_sql.compiler import (
    Compiler,
    compile_filter,
    is_constant_filter,
    sort_expression,
    value_expression,
)
from labtasker.filters.mongo_sql.leaf_filter import (
    PG_SELECTIVE,
    SELECTIVE,
    CommonValues,
    LeafIndex,
    leaf_path,
)
from labtasker.filters.mongo_sql.regex import register_sqlite_functions

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_PARAMETERS",
    "MAX_PATH_SEGMENTS",
    "MAX_PATH_STEPS",
    "MAX_PATTERN",
    "PG_SELECTIVE",
    "SELECTIVE",
    "CommonValues",
    "Compiler",
    "FieldMap",
    "FilterError",
    "JsonBackend",
    "LeafIndex",
    "PostgresJson",
    "SqliteJson",
    "backend_for",
    "compile_filter",
    "decode_datetimes",
    "is_constant_filter",
    "leaf_path",
    "register_sqlite_functions",
    "sort_expression",
    "value_expression",
]
