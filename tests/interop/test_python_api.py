"""The 1.0.1 Python API surface, called exactly as a 1.x script calls it, by
the 1.0.1 client and by ours (``scripts/api_surface.py`` prints one result per call)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from interop_support import Project, skip_module_without_v1

skip_module_without_v1()

SCRIPT = Path(__file__).resolve().parent / "scripts" / "api_surface.py"


@pytest.fixture(scope="module")
def surface(client, interop_server, tmp_path_factory) -> dict:
    project = Project.create(
        client, interop_server.url, tmp_path_factory.mktemp(f"api-{client.name}"), "api"
    )
    project.create_queue_http()
    out = project.py(str(SCRIPT), timeout=120)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


EXPECTED = {
    "health_check": "healthy",
    "get_queue": [True, True],
    "update_queue": {"surface": 1},
    "submit_task": True,
    "create_worker": True,  # a str id, as in 1.0.1
    "fetch_task": [True, True, "running"],
    "refresh_task_heartbeat": None,
    "report_task_status": None,
    "ls_tasks": [True, "success", {"acc": 1.0}, 20, 2],
    "ls_tasks_filter_sort": [True],
    "ls_workers": [True],
    "report_worker_status": "active",
    "worker_suspended_exception": "WorkerSuspended",
    "http_status_error": 404,
    "delete_task": None,
    "delete_worker": None,
    "submit_requires_args_or_cmd": "LabtaskerValueError",
    "context_helpers": [False, None, None],
}


@pytest.mark.parametrize("call", list(EXPECTED))
def test_api_call(surface, call):
    assert surface[call] == ["ok", EXPECTED[call]]


def test_update_tasks_with_api_models_request(surface):
    """1.0.1 scripts build ``update_tasks`` items with ``labtasker.api_models.TaskUpdateRequest``
    (the only public way: it is not re-exported by ``labtasker``). Our client lacked that
    module (I4, fixed by the ``labtasker.api_models`` alias)."""
    assert surface["update_tasks_api_models"] == ["ok", [["pending", 5]]]
