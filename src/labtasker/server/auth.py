"""Queue passwords: Argon2id hashing (argon2-cffi) with a short-lived cache of verifications.

A password is verified with the KDF once for each (queue, stored hash, supplied password)
triple; the verification is kept while that triple is used at least every ``CACHE_SECONDS``
(a working client never pays the KDF again, even during a flood of wrong passwords). The cache key includes the stored hash, so a
password change — made by this server or by another one on the same database — invalidates
every cached verification at once. Supplied passwords are kept only as SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import threading
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

CACHE_SECONDS = 600.0  # a verification is kept while it is used at least this often
CACHE_MAX = 10_000

# One lane (``parallelism=1``): a check runs on one thread, so the KDF pool
# (``deps.KDF_CONCURRENCY``) bounds the cores that password checks can take. Hashes made
# before (argon2-cffi's default, 4 lanes) still verify: the parameters are in the hash.
_hasher = PasswordHasher(parallelism=1)
_dummy_hash: str | None = None  # made on first use, not at import (it costs one Argon2 hash)
_cache: dict[tuple[str, str, bytes], float] = {}
_lock = threading.Lock()


def hash_password(password: str) -> str:
    """Return an Argon2id hash string for ``password``."""
    return _hasher.hash(password)


def password_fingerprint(password_hash: str) -> str:
    """A short digest of a stored password hash (never the hash itself in a cookie); equal
    fingerprints: the same password hash, so the same password."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:24]


def _cache_key(queue_id: str, stored_hash: str, password: str) -> tuple[str, str, bytes]:
    return queue_id, stored_hash, hashlib.sha256(password.encode()).digest()


def verified_recently(queue_id: str | None, stored_hash: str | None, password: str) -> bool:
    """True when this (queue, stored hash, password) was verified by the KDF and used in the
    last ``CACHE_SECONDS``; a hit keeps it for another ``CACHE_SECONDS``. Cheap (one
    SHA-256): safe to call on the event loop; ``False`` means "run ``verify_password``", not
    "wrong password"."""
    if queue_id is None or stored_hash is None:
        return False
    key = _cache_key(queue_id, stored_hash, password)
    now = time.monotonic()
    with _lock:
        expiry = _cache.get(key)
        if expiry is None or expiry <= now:
            return False
        _cache[key] = now + CACHE_SECONDS
    return True


def _dummy() -> str:
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash("labtasker-dummy-password")
    return _dummy_hash


def verify_password(queue_id: str | None, stored_hash: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored_hash`` (constant time, via argon2); CPU-heavy
    (tens of ms) unless ``verified_recently`` already holds, so run it off the event loop.

    ``queue_id``/``stored_hash`` are ``None`` when no such queue exists: a dummy hash is then
    verified so that the answer takes as long as for a real queue (no name enumeration by
    timing).
    """
    if verified_recently(queue_id, stored_hash, password):
        return True
    try:
        ok: bool = _hasher.verify(stored_hash or _dummy(), password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    if not ok or stored_hash is None or queue_id is None:
        return False
    with _lock:
        if len(_cache) >= CACHE_MAX:
            _cache.clear()
        _cache[_cache_key(queue_id, stored_hash, password)] = time.monotonic() + CACHE_SECONDS
    return True
