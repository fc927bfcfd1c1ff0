"""Former home of the shared test helpers, kept for test modules written before the
``support`` package: import from ``support.http`` / ``support.wait`` instead."""

from support.http import API, get_task, submit  # noqa: F401
from support.wait import alive, descendants, gone, proc_stat, wait_for  # noqa: F401
