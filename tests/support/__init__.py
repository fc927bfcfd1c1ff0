"""Test machinery shared by the test modules, imported as a package (``tests`` is on
``sys.path`` through ``pythonpath`` in pyproject.toml):

* :mod:`support.server` -- the backend under test, scratch databases, a real
  ``labtasker-server`` child process, queues with a client root;
* :mod:`support.http` -- task requests over HTTP (``submit``, ``get_task``, ``fetch``);
* :mod:`support.wait` -- polling with a deadline and ``/proc`` queries on process trees;
* :mod:`support.app` -- the app in-process behind an httpx ``ASGITransport``.

Fixtures stay in ``tests/conftest.py``; they are built from these classes.
"""
