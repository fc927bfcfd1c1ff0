"""Errors raised by storage and claim logic. They know nothing of HTTP; ``app.py`` maps each
class to a status code (NotFound 404, Forbidden 403, Conflict 409, TooLarge 413, Invalid 400,
Unavailable 503) and puts ``code`` (``labtasker.error_codes``) beside the message in the answer."""

from __future__ import annotations

from labtasker import error_codes


class StorageError(Exception):
    """Base class; ``str(exc)`` is a message for the API client, ``code`` a machine-readable
    name of the error (the class's default unless given)."""

    default_code = error_codes.INVALID_REQUEST

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.code = code or self.default_code


class NotFound(StorageError):
    default_code = error_codes.NOT_FOUND


class Forbidden(StorageError):
    default_code = error_codes.FORBIDDEN


class Conflict(StorageError):
    default_code = error_codes.CONFLICT


class Invalid(StorageError):
    default_code = error_codes.INVALID_REQUEST


class Unavailable(StorageError):
    """The database could not complete the request for a reason that passes (disk full,
    locked, connection lost, serialization failure, server restarting); nothing was written.
    ``retry_after``: seconds the client should wait before trying again."""

    default_code = error_codes.STORAGE_UNAVAILABLE

    def __init__(self, message: str, *, retry_after: float = 1.0, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class TooLarge(Invalid):
    """A value over a configured size limit (the message names the limit)."""

    default_code = error_codes.TOO_LARGE
