"""Errors raised by storage and claim logic. They know nothing of HTTP; ``app.py`` maps each
class to a status code (NotFound 404, Forbidden 403, Conflict 409, Invalid 400)."""


class StorageError(Exception):
    """Base class; ``str(exc)`` is a message for the API client."""


class NotFound(StorageError):
    pass


class Forbidden(StorageError):
    pass


class Conflict(StorageError):
    pass


class Invalid(StorageError):
    pass
