"""The client side: HTTP API wrappers, configuration, the loop runner, the CLI."""

import sys

# httpx imports its command-line tool (``httpx._main``: click, pygments and most of rich) on
# ``import httpx`` whenever those packages are installed -- about a third of the import time
# of a ``labtasker task submit``. A ``None`` entry in ``sys.modules`` makes that one import
# fail, and httpx then defines a stub ``httpx.main`` instead; httpx's client is unchanged.
# Every client module that uses httpx is imported through this package.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
