"""labtasker: a task queue for ML experiments."""

from labtasker.__version__ import __version__

__application__ = "labtasker"
__all__ = ["__version__"]
