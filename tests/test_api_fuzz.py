"""Every operation of the OpenAPI document, fuzzed with schemathesis against the app in
process (real storage on the backend under test): no input answers 5xx.

Bounded: a fixed number of examples per operation (``FUZZ_EXAMPLES``), derandomized so a
failure reproduces. The event stream is left out (it never ends by design; its bad inputs
are covered in ``test_tenant_limits.py``)."""

from __future__ import annotations

import base64

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from labtasker.server.app import create_app

FUZZ_EXAMPLES = 5
QUEUE, PASSWORD = "fuzz-queue", "fuzz-password"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{QUEUE}:{PASSWORD}".encode()).decode()}


@pytest.fixture(scope="module")
def fuzz_app(scratch_dbs):
    app = create_app(scratch_dbs.new_url())
    yield app
    app.state.db.dispose()


def _ensure_queue(app) -> None:
    """The fuzzer may delete the queue or change its name or password: put it back."""
    storage = app.state.storage
    if storage.queue_credentials(QUEUE) is None:
        storage.create_queue(QUEUE, PASSWORD, None)


def test_no_input_answers_5xx(fuzz_app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    failures, operations = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if "/events" in operation.path:
            continue
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            _ensure_queue(fuzz_app)
            headers = dict(case.headers or {})
            headers.setdefault("Authorization", AUTH["Authorization"])
            response = case.call(headers=headers)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:200]}\n  {case.as_curl_command()[:600]}"
                )

        run()
    assert operations >= 20
    assert not failures, f"{len(failures)} x 5xx:\n" + "\n".join(failures[:30])
