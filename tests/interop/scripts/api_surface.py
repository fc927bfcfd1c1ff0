"""The 1.0.1 Python API surface, called the 1.0.1 way by the interop tests.

Runs in a project directory with ./.labtasker/client.toml; prints `RESULT {call: [ok|error, value]}`.
"""

import json

import labtasker

results = {}


def step(name):
    def deco(fn):
        try:
            value = fn()
            results[name] = ["ok", value]
        except BaseException as exc:  # noqa: BLE001
            results[name] = ["error", f"{type(exc).__name__}: {str(exc)[:300]}"]
        return fn

    return deco


state = {}


@step("health_check")
def _():
    return labtasker.health_check().status


@step("get_queue")
def _():
    q = labtasker.get_queue()
    return [q.queue_name == labtasker.get_client_config().queue.queue_name, bool(q.queue_id)]


@step("update_queue")
def _():
    return labtasker.update_queue(metadata_update={"surface": 1}).metadata


@step("submit_task")
def _():
    state["t"] = labtasker.submit_task(
        task_name="surface",
        args={"s": 1},
        metadata={"m": 1},
        heartbeat_timeout=30,
        task_timeout=120,
        max_retries=2,
        priority=20,
    ).task_id
    return True


@step("create_worker")
def _():
    wid = labtasker.create_worker(worker_name="surface-w", metadata={"gpu": 0}, max_retries=3)
    state["w"] = wid
    return isinstance(wid, str)


@step("fetch_task")
def _():
    resp = labtasker.fetch_task(
        worker_id=state["w"], required_fields=["s"], eta_max="1h", heartbeat_timeout=60
    )
    return [resp.found, resp.task.task_id == state["t"], resp.task.status]


@step("refresh_task_heartbeat")
def _():
    return labtasker.refresh_task_heartbeat(state["t"], worker_id=state["w"])


@step("report_task_status")
def _():
    return labtasker.report_task_status(
        state["t"], "success", summary={"acc": 1.0}, worker_id=state["w"]
    )


@step("ls_tasks")
def _():
    resp = labtasker.ls_tasks(task_id=state["t"])
    t = resp.content[0]
    return [resp.found, t.status, t.summary, t.priority, t.max_retries]


@step("ls_tasks_filter_sort")
def _():
    resp = labtasker.ls_tasks(
        extra_filter="args.s == 1 and priority >= 20", sort=[("created_at", -1)], limit=10, offset=0
    )
    return [t.task_id == state["t"] for t in resp.content]


@step("update_tasks_api_models")
def _():
    from labtasker.api_models import TaskUpdateRequest

    resp = labtasker.update_tasks(
        [TaskUpdateRequest(_id=state["t"], priority=5)], reset_pending=True
    )
    return [(t.status, t.priority) for t in resp.content]


@step("ls_workers")
def _():
    resp = labtasker.ls_workers(worker_name="surface-w")
    return [w.worker_id == state["w"] for w in resp.content]


@step("report_worker_status")
def _():
    labtasker.report_worker_status(state["w"], "suspended")
    labtasker.report_worker_status(state["w"], "active")
    return labtasker.ls_workers(worker_id=state["w"]).content[0].status


@step("worker_suspended_exception")
def _():
    labtasker.report_worker_status(state["w"], "suspended")
    try:
        labtasker.fetch_task(worker_id=state["w"])
    except labtasker.WorkerSuspended:
        return "WorkerSuspended"
    finally:
        labtasker.report_worker_status(state["w"], "active")


@step("http_status_error")
def _():
    try:
        labtasker.delete_task("00000000-0000-0000-0000-000000000000")
    except labtasker.LabtaskerHTTPStatusError as exc:
        return exc.response.status_code


@step("delete_task")
def _():
    return labtasker.delete_task(state["t"])


@step("delete_worker")
def _():
    return labtasker.delete_worker(state["w"], cascade_update=True)


@step("submit_requires_args_or_cmd")
def _():
    try:
        labtasker.submit_task()
    except labtasker.LabtaskerValueError:
        return "LabtaskerValueError"


@step("context_helpers")
def _():
    return [labtasker.is_enabled(), labtasker.current_task_id(), labtasker.current_worker_id()]


print("RESULT " + json.dumps(results))
