"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright for Python against the real ``labtasker-server`` of the session (``server``
fixture: SQLite, and PostgreSQL in the other half of the suite), with real ``labtasker loop``
processes where a job must run. Each test saves a screenshot when it fails
(``LABTASKER_TEST_ARTIFACTS``, default ``/tmp/labtasker-test-artifacts``).

Without Chromium or Playwright the tests are skipped, except in CI
(``LABTASKER_REQUIRE_BROWSER=1``, set by ``.ci/run``, which installs both), where that is a
failure.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from support.http import API, get_task
from support.wait import wait_for

CHROMIUM = os.environ.get("LABTASKER_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("LABTASKER_TEST_ARTIFACTS", "/tmp/labtasker-test-artifacts"))
LABTASKER = str(Path(sys.executable).parent / "labtasker")

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - dev extra missing
    sync_playwright = None

_missing = (
    None
    if sync_playwright is not None and shutil.which(CHROMIUM)
    else f"needs Playwright and {CHROMIUM}"
)
if _missing and os.environ.get("LABTASKER_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"dashboard tests {_missing} (LABTASKER_REQUIRE_BROWSER=1)")
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    """A fresh browser context (no cookies) and page; screenshot on failure."""
    context = browser.new_context(
        viewport={"width": 1400, "height": 900}, timezone_id="Europe/Berlin"
    )
    context.set_default_timeout(10_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    failed = any(
        getattr(getattr(request.node, "rep_" + phase, None), "failed", False)
        for phase in ("setup", "call")
    )
    if failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.nodeid.split("::")[-1])
        path = ARTIFACTS / f"{name}-{os.environ.get('LABTASKER_TEST_BACKEND', 'sqlite')}.png"
        try:
            pg.screenshot(path=str(path), full_page=True)
            print(f"screenshot of the failed test: {path}", file=sys.stderr)
        except Exception as exc:  # the page may be gone
            print(f"no screenshot: {exc}", file=sys.stderr)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def log_in(page, queue_env, target: str = "/ui/") -> None:
    page.goto(queue_env.url + target)
    page.get_by_label("Queue name").fill(queue_env.queue_name)
    page.get_by_label("Password").fill(queue_env.password)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#queue-name")).to_have_text(queue_env.queue_name)
    # the page's module script has run (its handlers are attached) once the DOM is loaded;
    # typing before that races with it on a loaded machine
    page.wait_for_load_state("domcontentloaded")


def submit_batch(http, tasks: list[dict]) -> list[str]:
    resp = http.post(f"{API}/tasks/batch", json={"tasks": tasks})
    assert resp.status_code == 201, resp.text
    return resp.json()["task_ids"]


def worker(http) -> str:
    resp = http.post(
        f"{API}/workers", json={"worker_name": "w-" + uuid.uuid4().hex[:6], "max_retries": 1000}
    )
    assert resp.status_code == 201, resp.text
    return resp.json()["worker_id"]


def run_one(http, worker_id: str, status: str = "success", summary: dict | None = None) -> dict:
    """Claim the next task and report it with ``status``/``summary``; returns the task."""
    resp = http.post(f"{API}/tasks/next", json={"worker_id": worker_id, "eta_max": "1h"})
    task = resp.json()["task"]
    assert task is not None, resp.text
    resp = http.post(
        f"{API}/tasks/{task['task_id']}/status",
        json={
            "status": status,
            "worker_id": worker_id,
            "run_id": task["run_id"],
            "summary": summary or {},
        },
    )
    assert resp.status_code == 200, resp.text
    return task


def table_ids(page) -> list[str]:
    return page.locator("#tasks tbody tr[data-task-id]").evaluate_all(
        "rows => rows.map(r => r.dataset.taskId)"
    )


def wait_table(page, count: int) -> None:
    expect(page.locator("#tasks tbody tr[data-task-id]")).to_have_count(count)


# ------------------------------------------------------------------ log in
def test_log_in_wrong_then_right_password_and_log_out(page, queue_env):
    page.goto(queue_env.url + "/")  # a browser at / lands on the dashboard's log-in form
    assert page.url.endswith("/ui/login?next=/ui/")
    page.get_by_label("Queue name").fill(queue_env.queue_name)
    page.get_by_label("Password").fill(queue_env.password + "-wrong")
    with page.expect_response(lambda r: r.url.endswith("/ui/login")) as answer:
        page.get_by_role("button", name="Log in").click()
    assert answer.value.status == 401
    expect(page.locator("#login-error")).to_have_text("Wrong queue name or password.")
    assert not page.context.cookies()
    page.get_by_label("Password").fill(queue_env.password)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#queue-name")).to_have_text(queue_env.queue_name)
    # the page's module script has run (its handlers are attached) once the DOM is loaded;
    # typing before that races with it on a loaded machine
    page.wait_for_load_state("domcontentloaded")
    (cookie,) = page.context.cookies()
    assert cookie["name"] == "labtasker_session"
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert 11 * 3600 < cookie["expires"] - time.time() <= 12 * 3600 + 60
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    assert not page.context.cookies()
    page.goto(queue_env.url + "/ui/tasks")
    assert "/ui/login" in page.url


def test_session_cookie_is_checked_and_actions_need_the_csrf_token(queue_env):
    """Without the page's CSRF token (or from another origin) an action is refused; a forged
    or stale cookie is no session; a password change ends the session."""
    with httpx.Client(base_url=queue_env.url, timeout=30) as c:
        login = c.get("/ui/login")
        token = re.search(r'name="login_token" value="([^"]+)"', login.text).group(1)
        assert (
            c.post(
                "/ui/login", data={"queue": queue_env.queue_name, "password": queue_env.password}
            ).status_code
            == 403
        )  # no token
        resp = c.post(
            "/ui/login",
            data={
                "queue": queue_env.queue_name,
                "password": queue_env.password,
                "login_token": token,
            },
        )
        assert resp.status_code == 303 and "labtasker_session" in c.cookies
        page = c.get("/ui/tasks")
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
        body = {"action": "delete", "filter": ""}
        with queue_env.http() as api:
            task_id = submit_batch(api, [{"args": {"x": 1}}])[0]
        assert c.post("/ui/api/actions", json=body).status_code == 403
        assert (
            c.post("/ui/api/actions", json=body, headers={"X-CSRF-Token": "0" * 64}).status_code
            == 403
        )
        assert (
            c.post(
                "/ui/api/actions",
                json=body,
                headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
            ).status_code
            == 403
        )
        with queue_env.http() as api:
            assert api.get(f"{API}/tasks/{task_id}").status_code == 200  # nothing deleted
        ok = c.post(
            "/ui/api/actions", json={**body, "dry_run": True}, headers={"X-CSRF-Token": csrf}
        )
        assert ok.status_code == 200 and ok.json()["matched"] == 1
        forged = httpx.Client(
            base_url=queue_env.url,
            timeout=30,
            cookies={"labtasker_session": c.cookies["labtasker_session"][:-2] + "xx"},
        )
        assert forged.get("/ui/api/overview").status_code == 401
        with queue_env.http() as api:
            assert api.put(f"{API}", json={"new_password": "changed-pw"}).status_code == 200
        assert c.get("/ui/api/overview").status_code == 401


# ------------------------------------------------------------------ overview
def test_overview_counts_match_the_api(page, queue_env):
    with queue_env.http() as http:
        submit_batch(http, [{"args": {"i": i}} for i in range(9)])
        w = worker(http)
        for status in ("success", "success", "success", "failed"):
            run_one(http, w, status, {"score": 1.0})
        http.post(f"{API}/tasks/next", json={"worker_id": w, "eta_max": "1h"})  # running
        ids = [
            t["task_id"]
            for t in http.post(
                f"{API}/tasks/search", json={"status": "pending", "limit": 1}
            ).json()["content"]
        ]
        http.post(f"{API}/tasks/{ids[0]}/status", json={"status": "cancelled"})
        counts = http.post(f"{API}/tasks/count", json={}).json()
    expected = {g["value"]: g["count"] for g in counts["groups"]}
    assert sum(expected.values()) == counts["total"] == 9
    log_in(page, queue_env)
    for status, n in expected.items():
        expect(page.locator(f'.n[data-status="{status}"]')).to_have_text(str(n))
    expect(page.locator("#count-total")).to_have_text("9")
    expect(page.locator("#rate")).to_contain_text("runs finished in the last 10 minutes")
    row = page.locator("#workers tbody tr").first
    expect(row).to_contain_text("1 / 1000")  # the failure charged to the worker
    expect(row).to_contain_text("i=")  # the args of the task it runs


def test_overview_with_only_gone_workers_says_how_many_are_gone(page, queue_env):
    with queue_env.http() as http:
        log_in(page, queue_env)
        empty = page.locator("#workers tbody td.empty")
        expect(empty).to_have_text("No workers yet.")
        ids = [worker(http) for _ in range(3)]
        for wid in ids:
            resp = http.post(f"{API}/workers/{wid}/gone")
            assert resp.status_code == 200, resp.text
        page.reload()
        expect(empty).to_have_text("No live worker (3 gone).")
        worker(http)  # one live worker: listed, no empty-table line
        page.reload()
        expect(page.locator("#workers tbody tr[data-worker-id]")).to_have_count(1)
        expect(page.locator("#workers tbody")).not_to_contain_text("No live worker")


# ------------------------------------------------------------------ tasks table
def test_filter_narrows_rows_and_a_bad_filter_shows_the_error(page, queue_env):
    with queue_env.http() as http:
        submit_batch(
            http, [{"args": {"x": i, "tag": "even" if i % 2 == 0 else "odd"}} for i in range(10)]
        )
    log_in(page, queue_env, "/ui/tasks")
    wait_table(page, 10)
    page.get_by_label("Filter").fill("args.x < 3")
    page.get_by_role("button", name="Apply").click()
    wait_table(page, 3)
    expect(page.locator("#match-count")).to_contain_text("3 tasks match")
    page.get_by_label("Filter").fill('{"args.tag": "odd"}')  # the Mongo-style syntax
    page.get_by_role("button", name="Apply").click()
    wait_table(page, 5)
    page.get_by_label("Filter").fill("args.x <<< 3")
    page.get_by_role("button", name="Apply").click()
    error = page.locator("#filter-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("syntax")
    assert re.search(r"args\.x <<< 3\n\s*\^", error.inner_text()), error.inner_text()
    expect(page.get_by_label("Filter")).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Filter").fill('{"args.x": {"$nope": 1}}')  # parsed, refused by the server
    page.get_by_role("button", name="Apply").click()
    expect(error).to_contain_text("$nope")
    page.get_by_label("Filter").fill("args.x >= 8")
    page.get_by_role("button", name="Apply").click()
    wait_table(page, 2)
    expect(error).to_be_hidden()
    # the CSV export is the current view
    href = page.locator("#export").get_attribute("href")
    text = page.request.get(queue_env.url + href).text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(int(r["args.x"]) for r in rows) == [8, 9]


def test_sorting_by_a_summary_column_orders_the_rows(page, queue_env):
    scores = [0.5, 0.9, 0.1, 0.7, 0.3]
    with queue_env.http() as http:
        submit_batch(http, [{"args": {"i": i}} for i in range(5)])
        w = worker(http)
        by_id = {}
        for score in scores:
            by_id[run_one(http, w, "success", {"score": score})["task_id"]] = score
    log_in(page, queue_env, "/ui/tasks")
    wait_table(page, 5)
    # finished tasks have no current worker: the column shows their last run's worker
    last_run = page.locator(f'#tasks tbody tr[data-task-id] td[title="{w} (last run)"]')
    expect(last_run).to_have_count(5)
    expect(last_run.first).to_have_text(w[:8])
    header = page.get_by_role("button", name="summary.score")
    header.click()
    expect(page.locator('th[data-key="summary.score"]')).to_have_attribute("aria-sort", "ascending")
    wait_for(
        lambda: [by_id[t] for t in table_ids(page)] == sorted(scores),
        timeout=10,
        what="ascending order",
    )
    # anywhere in the header cell, not only on its label (here: 2 px from its right edge)
    cell = page.locator('th[data-key="summary.score"]')
    box = cell.bounding_box()
    cell.click(position={"x": box["width"] - 2, "y": box["height"] / 2})
    expect(cell).to_have_attribute("aria-sort", "descending")
    wait_for(
        lambda: [by_id[t] for t in table_ids(page)] == sorted(scores, reverse=True),
        timeout=10,
        what="descending order",
    )


def test_a_summary_sort_pages_by_cursor_through_every_task_once(queue_env):
    """A sort on one ``summary.*`` path pages by keyset cursor (read from the leaf index):
    the pages hold every task once, in the sort's order, tasks without the key last when
    descending, ties by task id."""
    scores = [0.5, 0.9, 0.1, 0.9, 0.3]
    with queue_env.http() as http:
        submit_batch(http, [{"args": {"i": i}} for i in range(7)])  # 2 stay without a score
        w = worker(http)
        by_id = {}
        for score in scores:
            by_id[run_one(http, w, "success", {"score": score})["task_id"]] = score
    with httpx.Client(base_url=queue_env.url, timeout=30) as c:
        token = re.search(r'name="login_token" value="([^"]+)"', c.get("/ui/login").text)
        c.post(
            "/ui/login",
            data={
                "queue": queue_env.queue_name,
                "password": queue_env.password,
                "login_token": token.group(1),
            },
        )
        seen, params = [], {"limit": 2, "sort": "summary.score:-1"}
        while True:
            data = c.get("/ui/api/tasks", params=params).json()
            seen += [r["task_id"] for r in data["rows"]]
            for r in data["rows"]:  # the last run's worker; none for a task never run
                assert r["worker_id"] is None
                assert r["run_worker_id"] == (w if r["task_id"] in by_id else None)
            assert data["next_offset"] is None
            if not data["next_cursor"]:
                break
            params = {**params, "cursor": data["next_cursor"], "count": "false"}
        # a page that ends exactly at the last task has no next page (not an empty one)
        for params in ({"limit": 7, "sort": "summary.score:-1"}, {"limit": 7}):
            data = c.get("/ui/api/tasks", params=params).json()
            assert len(data["rows"]) == 7, params
            assert data["next_cursor"] is None and data["next_offset"] is None, params
        # the CSV export walks the same cursor pages; its worker column is the table's
        text = c.get(
            "/ui/api/tasks.csv", params={"sort": "summary.score:-1", "columns": "task_id,worker_id"}
        ).text
        exported = list(csv.DictReader(io.StringIO(text)))
    assert [r["task_id"] for r in exported] == seen
    assert {r["task_id"]: r["worker_id"] for r in exported} == {
        t: (w if t in by_id else "") for t in seen
    }
    assert len(seen) == 7 == len(set(seen))
    scored = sorted(by_id, key=lambda t: (by_id[t], t), reverse=True)
    assert seen[:5] == scored
    assert seen[5:] == sorted(set(seen) - set(by_id), reverse=True)


def test_a_task_submitted_through_the_api_appears_within_two_seconds(page, queue_env):
    with queue_env.http() as http:
        submit_batch(http, [{"args": {"i": 0}}])
        log_in(page, queue_env, "/ui/tasks")
        wait_table(page, 1)
        expect(page.locator("#live")).to_have_text("live")
        url_before = page.url
        task_id = submit_batch(http, [{"task_name": "fresh", "args": {"i": 1}}])[0]
        start = time.monotonic()
        expect(page.locator(f'#tasks tr[data-task-id="{task_id}"]')).to_be_visible(timeout=2000)
        assert time.monotonic() - start < 2.0
        assert page.url == url_before  # no reload
        expect(page.locator("#match-count")).to_contain_text("2 tasks match")


def test_cancelling_a_running_task_stops_its_job(page, queue_env, tmp_path):
    pid_file = tmp_path / "job.pid"
    job = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    with queue_env.http() as http:
        task_id = submit_batch(http, [{"task_name": "long", "args": {"n": 1}}])[0]
        loop = subprocess.Popen(
            [LABTASKER, "loop", "--", sys.executable, "-c", job],
            env=queue_env.env(),
            cwd=queue_env.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for(
                lambda: pid_file.exists() and pid_file.read_text(),
                timeout=30,
                what="the job started",
            )
            job_pid = int(pid_file.read_text())
            log_in(page, queue_env, "/ui/tasks")
            row = page.locator(f'#tasks tr[data-task-id="{task_id}"]')
            expect(row).to_have_attribute("data-status", "running")
            row.get_by_role("checkbox").check()
            page.locator('#actions button[data-action="cancel"][data-scope="selected"]').click()
            dialog = page.locator("#confirm")
            expect(dialog).to_be_visible()
            expect(dialog).to_contain_text("Cancel 1 selected task")
            dialog.get_by_role("button", name="Cancel 1").click()
            expect(page.locator("#action-result")).to_have_text("1 task cancelled.")
            expect(row).to_have_attribute("data-status", "cancelled")
            assert get_task(http, task_id)["status"] == "cancelled"
            wait_for(
                lambda: (
                    not Path(f"/proc/{job_pid}").exists()
                    or Path(f"/proc/{job_pid}/stat").read_text().split()[2] == "Z"
                ),
                timeout=20,
                what="the job stopped",
            )
        finally:
            os.killpg(loop.pid, signal.SIGTERM)
            loop.wait(timeout=30)


def test_actions_on_every_task_matching_the_filter_say_how_many(page, queue_env):
    with queue_env.http() as http:
        ids = submit_batch(http, [{"args": {"x": i}, "max_retries": 1} for i in range(6)])
        w = worker(http)
        for _ in range(6):
            run_one(http, w, "failed", {"error": "boom"})
        log_in(page, queue_env, "/ui/tasks")
        page.get_by_label("Filter").fill("args.x >= 2")
        page.get_by_role("button", name="Apply").click()
        wait_table(page, 4)
        page.locator('#actions button[data-action="priority"][data-scope="filter"]').click()
        expect(page.locator("#confirm")).to_contain_text("all 4 tasks matching the filter")
        page.get_by_role("button", name="Keep").click()  # nothing happens
        page.get_by_label("Priority", exact=True).fill("42")
        page.locator('#actions button[data-action="priority"][data-scope="filter"]').click()
        page.locator("#confirm").get_by_role("button", name="Set 4").click()
        expect(page.locator("#action-result")).to_have_text("4 tasks reprioritised.")
        page.locator('#actions button[data-action="requeue"][data-scope="filter"]').click()
        page.locator("#confirm").get_by_role("button", name="Requeue 4").click()
        expect(page.locator("#action-result")).to_have_text("4 tasks requeued.")
        tasks = {i: get_task(http, i) for i in ids}
        changed = {i for i, t in tasks.items() if t["args"]["x"] >= 2}
        assert all(tasks[i]["priority"] == 42 and tasks[i]["status"] == "pending" for i in changed)
        assert all(
            tasks[i]["priority"] == 10 and tasks[i]["status"] == "failed"
            for i in set(ids) - changed
        )
        page.locator('#actions button[data-action="delete"][data-scope="filter"]').click()
        page.locator("#confirm").get_by_role("button", name="Delete 4").click()
        expect(page.locator("#action-result")).to_have_text("4 tasks deleted.")
        wait_table(page, 0)
        assert http.post(f"{API}/tasks/count", json={}).json()["total"] == 2


# ------------------------------------------------------------------ plot
def test_the_plot_draws_one_mark_per_finished_task(page, queue_env):
    with queue_env.http() as http:
        grid = [{"args": {"C": c, "seed": s}} for c in (0.01, 0.1, 1, 10) for s in range(3)]
        submit_batch(http, grid)
        w = worker(http)
        for _ in range(10):
            run_one(http, w, "success", {"accuracy": 0.8, "loss": 0.2})
        run_one(http, w, "failed", {})  # not a finished result: no mark
        log_in(page, queue_env, "/ui/plot")
        marks = page.locator("svg#plot circle.mark")
        expect(marks).to_have_count(10)
        expect(page.locator("#metric")).to_have_value("accuracy")
        expect(page.locator("#xarg")).to_have_value("C")
        expect(page.locator("#xscale")).to_have_value("log")  # C spans three decades
        marks.first.focus()  # keyboard-reachable; hover shows the same text
        expect(page.locator("#tooltip")).to_contain_text("summary.accuracy = 0.8")
        expect(page.locator("#tooltip")).to_contain_text("seed = ")
        page.locator("#mode").select_option("mean")
        means = {
            (t["args"]["C"])
            for t in http.post(
                f"{API}/tasks/search", json={"status": "success", "limit": 100}
            ).json()["content"]
        }
        expect(marks).to_have_count(len(means))
        page.locator("#mode").select_option("points")
        page.locator("#carg").select_option("seed")  # asks the server for a colour column
        expect(page.locator("svg#plot .legend")).to_contain_text("args.seed")
        expect(marks).to_have_count(10)
        page.locator("#metric").select_option("loss")
        expect(page.locator("#plot-caption")).to_contain_text("summary.loss against args.C")
        expect(marks).to_have_count(10)
        run_one(http, w, "success", {"accuracy": 0.9, "loss": 0.1})  # live: one more mark
        expect(marks).to_have_count(11, timeout=3000)
        expect(page.locator("#carg")).to_have_value("seed")


# ------------------------------------------------------------------ isolation
def test_another_queues_tasks_never_appear(page, queue_env, server):
    other_name = "other-" + uuid.uuid4().hex[:8]
    assert (
        httpx.post(
            server.url + "/api/v1/queues", json={"queue_name": other_name, "password": "other-pw"}
        ).status_code
        == 201
    )
    with httpx.Client(base_url=server.url, auth=(other_name, "other-pw"), timeout=30) as other:
        foreign = submit_batch(other, [{"task_name": "foreign", "args": {"secret": 1}}])[0]
        w = worker(other)
        run_one(other, w, "success", {"secret_score": 1.0})
        with queue_env.http() as http:
            mine = submit_batch(http, [{"task_name": "mine", "args": {"x": 1}}])[0]
        log_in(page, queue_env, "/ui/tasks")
        wait_table(page, 1)
        assert table_ids(page) == [mine]
        expect(page.locator("#tasks thead")).not_to_contain_text("secret")
        submit_batch(other, [{"task_name": "foreign2", "args": {"secret": 2}}])
        page.wait_for_timeout(1500)  # its event must not reach this page
        assert table_ids(page) == [mine]
        page.goto(queue_env.url + f"/ui/tasks/{foreign}")
        expect(page.locator("h1")).to_have_text("Task not found")
        api = page.request
        assert api.get(queue_env.url + "/ui/api/tasks").json()["total"] == 1
        assert api.get(queue_env.url + "/ui/api/plot").json()["task_id"] == []
        overview = api.get(queue_env.url + "/ui/api/overview").json()
        assert overview["total"] == 1 and overview["workers"] == []
        page.goto(queue_env.url + "/ui/tasks")
        csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
        resp = api.post(
            queue_env.url + "/ui/api/actions",
            data={"action": "delete", "task_ids": [foreign]},
            headers={"X-CSRF-Token": csrf, "Origin": queue_env.url},
        )
        assert resp.status == 200 and resp.json()["changed"] == 0
        assert other.get(f"{API}/tasks/{foreign}").status_code == 200


# ------------------------------------------------------------------ detail
def test_task_detail_shows_args_summary_runs_and_events(page, queue_env):
    with queue_env.http() as http:
        task_id = submit_batch(
            http,
            [
                {
                    "task_name": "detail",
                    "args": {"lr": 0.1},
                    "metadata": {"tag": "t1"},
                    "max_retries": 3,
                }
            ],
        )[0]
        w = worker(http)
        run_one(http, w, "failed", {"exit_code": 3, "output_tail": "Traceback: boom"})
        run_one(http, w, "success", {"accuracy": 0.93})
    log_in(page, queue_env, f"/ui/tasks/{task_id}")
    expect(page.locator("#task-status")).to_have_text("success")
    expect(page.locator(".docs")).to_contain_text('"lr": 0.1')
    expect(page.locator(".docs")).to_contain_text('"tag": "t1"')
    expect(page.locator("#task-summary")).to_contain_text('"accuracy": 0.93')
    timeouts = page.locator("dt:text-is('Timeouts') + dd")
    expect(timeouts).to_have_text("task none, heartbeat none")
    runs = page.locator("#runs tbody tr")
    expect(runs).to_have_count(2)
    expect(runs.nth(0)).to_contain_text("failed")
    expect(runs.nth(0)).to_contain_text("boom")
    expect(runs.nth(1)).to_contain_text("success")
    expect(page.locator("#events tbody tr")).to_have_count(5)  # created, 2 runs of 2 steps
    # times in the browser's zone (Europe/Berlin here), UTC on hover
    first = page.locator("#events time").first
    assert first.get_attribute("title").endswith(" UTC")
    assert first.inner_text() != first.get_attribute("title")


# ------------------------------------------------------------------ serve options
def _log_in_http(url: str, queue: str, password: str) -> httpx.Client:
    c = httpx.Client(base_url=url, timeout=30)
    token = re.search(r'name="login_token" value="([^"]+)"', c.get("/ui/login").text).group(1)
    resp = c.post("/ui/login", data={"queue": queue, "password": password, "login_token": token})
    assert resp.status_code == 303, resp.text
    return c


def test_servers_on_one_database_accept_each_others_sessions_and_no_ui_turns_it_off(
    server, queue_env, tmp_path
):
    """The signing key is kept in the database: a second server on it accepts a session of
    the first. ``--no-ui`` (env ``LABTASKER_UI=0``): no dashboard, ``/`` is the 1.0.1
    welcome even for a browser."""
    from support.server import ServerProcess

    first = _log_in_http(server.url, queue_env.queue_name, queue_env.password)
    assert first.get("/ui/api/overview").status_code == 200
    cookie = first.cookies["labtasker_session"]
    first.close()
    second = ServerProcess(db_url=server.db_url, workdir=tmp_path).start(timeout=120)
    try:
        with httpx.Client(
            base_url=second.url, timeout=30, cookies={"labtasker_session": cookie}
        ) as c:
            assert c.get("/ui/api/overview").status_code == 200
        with httpx.Client(
            base_url=second.url, timeout=30, cookies={"labtasker_session": "x" + cookie}
        ) as c:
            assert c.get("/ui/api/overview").status_code == 401
    finally:
        second.kill(signal.SIGTERM)
    off = ServerProcess(
        db_url=server.db_url, workdir=tmp_path, extra_env={"LABTASKER_UI": "0"}
    ).start(timeout=120)
    try:
        assert httpx.get(off.url + "/ui/login").status_code == 404
        resp = httpx.get(off.url + "/", headers={"Accept": "text/html"})
        assert resp.status_code == 200 and resp.json()["message"] == "Welcome to Labtasker!"
    finally:
        off.kill(signal.SIGTERM)


def test_plot_columns_keep_finished_tasks_with_a_numeric_metric_and_an_x():
    from labtasker.server.dashboard import views

    def task(n, x, y, c="a"):
        return {"task_id": f"t{n}", "task_name": None, "args.lr": x, "summary.acc": y, "args.m": c}

    tasks = [task(1, 0.1, 0.5), task(2, None, 0.6), task(3, 0.2, "n/a"), task(4, 0.3, True)]
    tasks.append(task(5, {"a": 1}, 0.7, None))
    cols = views.plot_columns(iter(tasks), "lr", "acc", "m")
    assert cols == {
        "task_id": ["t1", "t5"],
        "task_name": [None, None],
        "x": [0.1, {"a": 1}],
        "y": [0.5, 0.7],
        "c": ["a", None],
        "truncated": False,
    }
    assert views.plot_columns(iter(tasks), "lr", "acc", None)["c"] is None
    many = (task(n, n, 1.0) for n in range(views.PLOT_MAX_POINTS + 5))
    cols = views.plot_columns(many, "lr", "acc", None)
    assert cols["truncated"] and len(cols["x"]) == views.PLOT_MAX_POINTS


def test_plot_guesses_an_accuracy_metric_and_the_most_varied_numeric_argument():
    from labtasker.server.dashboard.views import _plottable, guess_arg, guess_metric

    assert guess_metric(["loss", "top1_acc", "zeta"]) == "top1_acc"
    assert guess_metric(["a", "val_loss"]) == "val_loss" and guess_metric([]) is None
    rows = [{"args.seed": n % 3, "args.model": f"m{n}", "args.lr": 0.1 * n} for n in range(9)]
    assert guess_arg(rows, ["model", "seed", "lr"]) == "lr"  # numeric first, then distinct
    assert guess_arg(rows, ["model", "seed"]) == "seed"
    assert _plottable("opt.lr") and not _plottable("a b") and not _plottable("")
