"""Package version, kept in one place (read by the client and the server)."""

__version__ = "1.1.0"
