"""The request/response models under their labtasker 1.0.1 module name.

1.0.1 scripts build ``update_tasks`` items with ``from labtasker.api_models import
TaskUpdateRequest``; our models live in ``labtasker.wire``.
"""

from labtasker.wire import *  # noqa: F401,F403
from labtasker.wire import TaskUpdateRequest  # noqa: F401  (named explicitly for readers)
