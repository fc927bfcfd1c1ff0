"""What makes two tasks "the same": the canonical JSON of their args, and its hash.

``task submit --unique`` creates a task only when no task of the queue has equal args; the
server compares ``tasks.args_hash``, set on every insert and every args change (migration
0007 filled it for tasks stored before). Canonical JSON makes equal args equal text:

* keys sorted at every level;
* a float with an integral value is written as the int (``1.0`` and ``1`` are the same);
  ``True`` stays ``true`` (not ``1``);
* compact separators, UTF-8 (no ``\\u`` escapes).

A task without args (a ``cmd``-only task) is identified by its ``cmd`` instead, so that two
different commands are not taken for duplicates.

This text must never change: stored hashes would stop matching. The hash is the first 128
bits of SHA-256, as 32 hex digits.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

HASH_LENGTH = 32  # hex digits


def _canonical(value: Any) -> Any:
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        return value
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """The canonical JSON text of ``value`` (see the module docstring)."""
    return json.dumps(
        _canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True
    )


def args_hash(args: dict[str, Any] | None, cmd: Any = None) -> str:
    """32 hex digits identifying a task by its (nested) ``args``; by ``cmd`` when ``args`` is
    empty."""
    identity: Any = args if args else {"$cmd": cmd or ""}
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:HASH_LENGTH]


def request_hash(value: Any) -> str:
    """Hash of a whole submit request, to tell a retry from a different request that reuses
    an idempotency key. A retry resends the same body, so plain sorted JSON is enough (and
    half the cost of the canonical form)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]
