"""The dashboard's pages (Jinja2, under ``/ui``) and the JSON its scripts read (``/ui/api``).

Every handler authenticates with the session cookie (``session.py``) and then calls the same
``Storage`` methods as the REST API, scoped to the session's queue: nothing of another queue
is reachable. Reads are GET; actions are POST with the session's CSRF token. Times on the wire
are UTC ISO-8601; the browser shows them in its own time zone.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import anyio
from fastapi import APIRouter, Depends, Form, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from labtasker.exceptions import QueryTranspilerError
from labtasker.filters.mongo_sql.common import MAX_PATH_SEGMENTS, SEGMENT
from labtasker.filters.pyquery import parse_filter_text
from labtasker.server import leaf_sort, paging
from labtasker.server.dashboard.session import COOKIE, COOKIE_PATH, Session, Sessions, fingerprint
from labtasker.server.deps import authenticate
from labtasker.server.errors import Conflict, Invalid, NotFound
from labtasker.server.storage import Storage
from labtasker.timeutil import utc_now

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))

PAGE_SIZES = (25, 50, 100, 200)
FETCH_BATCH = 1000  # tasks read per storage call when a request walks many of them
CSV_MAX_ROWS = 100_000  # rows of one CSV export
PLOT_MAX_POINTS = 10_000  # finished tasks of one plot
ACTION_MAX_TASKS = 10_000  # tasks one "all matching the filter" action may change
ENDED = ("success", "failed", "cancelled")
# Table columns that are task fields (sortable on the server as they are).
TASK_COLUMNS = (
    "task_id",
    "task_name",
    "status",
    "retries",
    "priority",
    "worker_id",
    "created_at",
    "start_time",
    "last_modified",
)


# ------------------------------------------------------------------ sessions
def _sessions(request: Request) -> Sessions:
    return request.app.state.dashboard_sessions


def _store(request: Request) -> Storage:
    return request.app.state.storage


async def _run(request: Request, fn, *args, **kwargs):
    """Run a storage call off the event loop (it may wait for the database)."""
    return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def current_session(request: Request) -> tuple[Session, str] | None:
    """``(session, queue_name)`` of a valid cookie whose queue still has the password it
    had at log-in; ``None`` otherwise."""
    session = _sessions(request).read(request.cookies.get(COOKIE))
    if session is None:
        return None
    store = _store(request)
    found = await _run(request, store.queue_credentials, session.queue_id)
    if found is None or found[0] != session.queue_id:
        return None
    if fingerprint(found[1]) != session.password_fingerprint:
        return None
    queue = await _run(request, store.get_queue, session.queue_id)
    return session, queue["queue_name"]


class _LoginRequired(Exception):
    pass


async def page_session(request: Request) -> tuple[Session, str]:
    """For pages: the session, or a redirect to the log-in page (``_LoginRequired``)."""
    found = await current_session(request)
    if found is None:
        raise _LoginRequired()
    return found


async def api_session(request: Request) -> Session:
    """For ``/ui/api``: the session, or 401."""
    found = await current_session(request)
    if found is None:
        raise HTTPException(401, "Not logged in (or the session expired): log in again")
    return found[0]


def _same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (``Origin``)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host


async def action_session(
    request: Request, x_csrf_token: Annotated[str | None, Header()] = None
) -> Session:
    """For POST ``/ui/api``: the session, and 403 unless the request carries its CSRF token
    and does not come from another origin."""
    session = await api_session(request)
    if not _same_origin(request) or not _sessions(request).csrf_ok(session, x_csrf_token):
        raise HTTPException(403, "Missing or wrong CSRF token: reload the page")
    return session


PageSession = Annotated[tuple[Session, str], Depends(page_session)]
ApiSession = Annotated[Session, Depends(api_session)]
ActionSession = Annotated[Session, Depends(action_session)]


def _page(request: Request, name: str, found: tuple[Session, str], **context) -> HTMLResponse:
    session, queue_name = found
    return templates.TemplateResponse(
        request,
        name,
        {
            "queue_name": queue_name,
            "csrf_token": _sessions(request).csrf_token(session),
            "page": name.removesuffix(".html"),
            **context,
        },
    )


def _cookie_secure(request: Request) -> bool:
    return request.url.scheme == "https"


# ------------------------------------------------------------------ log in / out
@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str = "/ui/"):
    return templates.TemplateResponse(
        request,
        "login.html",
        {
            "login_token": _sessions(request).login_token(),
            "next": _safe_next(next),
            "error": None,
            "queue": "",
        },
    )


def _safe_next(target: str) -> str:
    """Only paths of the dashboard itself (no other host, no scheme)."""
    return target if target.startswith("/ui") and not target.startswith("//") else "/ui/"


@router.post("/login")
async def login(
    request: Request,
    queue: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    login_token: Annotated[str, Form(max_length=400)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/ui/",
):
    """Check the queue name (or id) and password exactly as the API does; on success set the
    session cookie and go to ``next``. 401 with the form again when they do not match."""
    sessions = _sessions(request)

    def again(message: str, code: int) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            "login.html",
            {
                "login_token": sessions.login_token(),
                "next": _safe_next(next),
                "error": message,
                "queue": queue,
            },
            status_code=code,
        )

    if not _same_origin(request) or not sessions.login_token_ok(login_token):
        return again("The log-in form expired; please try again.", 403)
    if not queue or not password:
        return again("Enter the queue name and its password.", 400)
    store = _store(request)
    queue_id = await authenticate(store, queue, password)
    if queue_id is None:
        return again("Wrong queue name or password.", 401)
    found = await _run(request, store.queue_credentials, queue_id)
    if found is None:
        return again("Wrong queue name or password.", 401)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE,
        sessions.issue(queue_id, found[1]),
        max_age=int(sessions.max_age),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_cookie_secure(request),
    )
    return response


@router.post("/logout")
async def logout(request: Request, csrf_token: Annotated[str, Form(max_length=200)] = ""):
    """End the session (the cookie is cleared) and show the log-in page."""
    session = _sessions(request).read(request.cookies.get(COOKIE))
    if session is not None and not (
        _same_origin(request) and _sessions(request).csrf_ok(session, csrf_token)
    ):
        raise HTTPException(403, "Missing or wrong CSRF token: reload the page")
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


# ------------------------------------------------------------------ pages
@router.get("/", response_class=HTMLResponse)
async def overview_page(request: Request, found: PageSession):
    return _page(request, "overview.html", found)


@router.get("/tasks", response_class=HTMLResponse)
async def tasks_page(request: Request, found: PageSession):
    return _page(request, "tasks.html", found, page_sizes=PAGE_SIZES, action_max=ACTION_MAX_TASKS)


@router.get("/plot", response_class=HTMLResponse)
async def plot_page(request: Request, found: PageSession):
    return _page(request, "plot.html", found, plot_max=PLOT_MAX_POINTS)


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
async def task_page(request: Request, task_id: str, found: PageSession):
    session = found[0]
    store = _store(request)
    try:
        task = await _run(request, store.get_task, session.queue_id, task_id)
    except NotFound:
        return _page(request, "task.html", found, task=None, task_id=task_id)
    history = await _run(request, store.task_events, session.queue_id, task_id)
    runs = _runs_from_events(history)
    worker = None
    if task["worker_id"]:
        try:
            worker = await _run(request, store.get_worker, session.queue_id, task["worker_id"])
        except NotFound:
            worker = None
    return _page(
        request,
        "task.html",
        found,
        task=task,
        task_id=task_id,
        runs=runs,
        history=history,
        worker=worker,
        pretty=_pretty,
    )


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def _runs_from_events(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task's runs as the events log saw them: each ``pending -> running`` starts one,
    the next transition out of ``running`` ends it (outcome, summary at that time). A run
    that failed and was retried ends in ``pending`` with one more retry counted: its outcome
    is ``failed, retried``."""
    runs: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for event in history:
        data = event["entity_data"] or {}
        if event["new_state"] == "running":
            current = {
                "run_id": data.get("run_id"),
                "worker_id": data.get("worker_id"),
                "start": event["created_at"],
                "end": None,
                "outcome": "running",
                "status": "running",
                "summary": None,
                "retries": data.get("retries", 0),
            }
            runs.append(current)
        elif current is not None and event["old_state"] == "running":
            outcome = status = event["new_state"]
            if status == "pending" and (data.get("retries") or 0) > current["retries"]:
                outcome, status = "failed, retried", "failed"
            elif status == "pending":
                outcome = "requeued"
            current.update(
                end=event["created_at"], outcome=outcome, status=status, summary=data.get("summary")
            )
            current = None
    return runs


# ------------------------------------------------------------------ JSON: reading
def _filter_of(text: str) -> dict[str, Any] | None:
    """The filter box's text (Python syntax or a Mongo-style dict) as a query dict; 400
    with the parser's message (and its caret line) when it is neither."""
    if not text.strip():
        return None
    try:
        query = parse_filter_text(text)
    except QueryTranspilerError as exc:
        raise HTTPException(400, {"field": "filter", "message": str(exc)}) from exc
    return query or None


def _sort_of(text: str) -> list[tuple[str, int]]:
    """``"summary.accuracy:-1,task_id:1"`` -> ``[("summary.accuracy", -1), ("task_id", 1)]``."""
    out: list[tuple[str, int]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        field, _, direction = part.rpartition(":")
        if not field or direction not in ("1", "-1"):
            raise HTTPException(
                400, {"field": "sort", "message": f"sort: {part!r} is not FIELD:1 or FIELD:-1"}
            )
        out.append((field, int(direction)))
    if len(out) > 4:
        raise HTTPException(400, {"field": "sort", "message": "sort: at most 4 keys"})
    return out or [("last_modified", -1)]


def _invalid(exc: Invalid) -> HTTPException:
    text = str(exc)
    field = (
        "cursor" if text.startswith("cursor") else ("sort" if "sort" in text.lower() else "filter")
    )
    return HTTPException(400, {"field": field, "message": text})


def _flat(doc: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    """``doc`` (a JSON object) with nested objects flattened to dotted keys under ``prefix``,
    added to ``out`` (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; a nested empty object is a leaf)."""
    if not prefix and not out and isinstance(doc, dict):
        for value in doc.values():
            if isinstance(value, dict):
                break
        else:
            return dict(doc)  # already flat (the usual args and summaries): one copy
    if isinstance(doc, dict) and doc:
        for key, value in doc.items():
            _flat(value, f"{prefix}.{key}" if prefix else str(key), out)
    elif prefix:
        out[prefix] = doc
    return out


def _json(content: dict[str, Any]) -> Response:
    """JSON of plain values, encoded once by ``json.dumps`` (FastAPI's per-value encoder
    costs seconds on a plot of 10,000 tasks)."""
    return Response(
        json.dumps(content, separators=(",", ":"), default=str), media_type="application/json"
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def table_row(
    task: dict[str, Any], now: datetime, run_workers: dict[str, str | None] | None = None
) -> dict[str, Any]:
    """A task as a row of the tasks table: its fields, ``end`` (when it ended), ``duration``
    (seconds: start to end, or to now while running), ``run_worker_id`` (the worker of its
    last run, from ``run_workers``: ``Storage.last_run_workers`` of the page; the current
    worker while it runs) and ``args.*``/``summary.*`` flattened to dotted keys."""
    start = task["start_time"]
    end = task["last_modified"] if task["status"] in ENDED and start is not None else None
    if start is not None and (end is not None or task["status"] == "running"):
        duration = max(((end or now) - start).total_seconds(), 0.0)
    else:
        duration = None
    row = {
        "task_id": task["task_id"],
        "task_name": task["task_name"],
        "status": task["status"],
        "retries": task["retries"],
        "max_retries": task["max_retries"],
        "priority": task["priority"],
        "worker_id": task["worker_id"],
        "run_worker_id": task["worker_id"] or (run_workers or {}).get(task["task_id"]),
        "created_at": _iso(task["created_at"]),
        "start_time": _iso(start),
        "last_modified": _iso(task["last_modified"]),
        "end": _iso(end),
        "duration": duration,
    }
    row.update(_flat(task["args"], "args", {}))
    row.update(_flat(task["summary"], "summary", {}))
    return row


def _search(
    store: Storage,
    queue_id: str,
    query: dict | None,
    sort,
    *,
    cursor=None,
    offset=0,
    limit=FETCH_BATCH,
    status=None,
    fields=None,
) -> list[dict[str, Any]]:
    try:
        return store.search_tasks(
            queue_id,
            extra_filter=query,
            task_id=None,
            task_name=None,
            status=status,
            sort=sort,
            offset=offset,
            limit=limit,
            cursor=cursor,
            fields=fields,
        )
    except Invalid as exc:
        raise _invalid(exc) from exc


def _walk(
    store: Storage,
    queue_id: str,
    query: dict | None,
    sort,
    most: int,
    status: str | None = None,
    fields: list[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Up to ``most`` matching tasks in ``sort`` order, read ``FETCH_BATCH`` at a time
    (keyset cursor when the sort allows it, else offset). ``fields``: the projection of
    ``search_tasks`` (it must hold the sort's fields and ``task_id``), ``None`` whole
    tasks."""
    keys = paging.keyset_sort(sort)
    by_path = leaf_sort.json_sort(sort)
    cursor, offset, seen = None, 0, 0
    while seen < most:
        limit = min(FETCH_BATCH, most - seen)
        page = _search(
            store,
            queue_id,
            query,
            sort,
            cursor=cursor,
            offset=offset,
            limit=limit,
            status=status,
            fields=fields,
        )
        yield from page
        seen += len(page)
        if len(page) < limit:
            return
        if keys is not None:
            cursor = paging.encode_cursor(keys, page[-1])
        elif by_path is not None:
            cursor = leaf_sort.next_cursor(by_path, page[-1])
        else:
            offset += len(page)


def _run_workers(
    store: Storage, queue_id: str, tasks: list[dict[str, Any]]
) -> dict[str, str | None]:
    """The last run's worker of each task of ``tasks`` that has no current worker: one
    batched ``last_run_workers`` lookup (not one query per row)."""
    return store.last_run_workers(queue_id, [t["task_id"] for t in tasks if not t["worker_id"]])


def _count(store: Storage, queue_id: str, query: dict | None) -> int:
    try:
        return int(store.count_tasks(queue_id, extra_filter=query)["total"])
    except Invalid as exc:
        raise _invalid(exc) from exc


@router.get("/api/overview")
async def overview(request: Request, session: ApiSession):
    """The overview page's numbers: ``queue_overview`` (counts that add up, recent runs,
    ETA, running tasks) plus every worker with its failures and what it runs now."""
    store = _store(request)
    qid = session.queue_id

    def read() -> dict[str, Any]:
        now = utc_now()
        data = store.queue_overview(qid)
        workers = store.search_workers(
            qid,
            extra_filter=None,
            worker_id=None,
            worker_name=None,
            status=None,
            sort=[("last_modified", -1)],
            offset=0,
            limit=200,
        )
        running = _search(store, qid, None, [("start_time", 1)], limit=200, status="running")
        progress = {r["task_id"]: r.get("progress") for r in data["running"]}
        by_worker: dict[str | None, list[dict[str, Any]]] = {}
        for task in running:
            by_worker.setdefault(task["worker_id"], []).append(
                {
                    "task_id": task["task_id"],
                    "task_name": task["task_name"],
                    "args": _flat(task["args"], "", {}),
                    "start_time": _iso(task["start_time"]),
                    "device": _device(task["metadata"]) or None,
                    "progress": progress.get(task["task_id"]),
                }
            )
        out_workers = []
        for w in workers:
            out_workers.append(
                {
                    "worker_id": w["worker_id"],
                    "worker_name": w["worker_name"],
                    "status": w["status"],
                    "failures": w["retries"],
                    "max_failures": w["max_retries"],
                    "device": _device(w["metadata"]),
                    "gone": w.get("gone_at") is not None,
                    "last_modified": _iso(w["last_modified"]),
                    "running": by_worker.get(w["worker_id"], []),
                }
            )
        return {
            "now": now.isoformat(),
            "total": data["total"],
            "counts": data["counts"],
            "window_seconds": data["window_seconds"],
            "finished_recently": data["finished_recently"],
            "eta_seconds": data["eta_seconds"],
            "throughput_per_minute": data["throughput_per_minute"],
            "mean_run_seconds": data["mean_run_seconds"],
            "workers": out_workers,
            # live workers per status and the gone ones, of the whole queue
            "worker_counts": data["workers"],
        }

    return _json(await anyio.to_thread.run_sync(read))


_DEVICE_KEYS = (
    "device",
    "devices",
    "gpu",
    "gpus",
    "cuda_visible_devices",
    "CUDA_VISIBLE_DEVICES",
    "hostname",
    "host",
)


def _device(metadata: dict | None) -> str:
    """What a worker or task says about where it runs (GPU, host), if anything."""
    if not isinstance(metadata, dict):
        return ""
    parts = [f"{metadata[k]}" for k in _DEVICE_KEYS if metadata.get(k) not in (None, "", [])]
    return " · ".join(parts[:2])


@router.get("/api/tasks")
async def task_page_rows(
    request: Request,
    session: ApiSession,
    filter: Annotated[str, Query(max_length=10_000)] = "",
    sort: Annotated[str, Query(max_length=1000)] = "",
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=max(PAGE_SIZES))] = 50,
    count: bool = True,
):
    """One page of the tasks table. Returns ``{"rows": [...], "next_cursor": str|null,
    "next_offset": int|null, "total": int|null, "arg_keys": [...]|null, "summary_keys":
    [...]|null}``; ``total`` counts every task matching the filter; it and the column keys
    are ``null`` without ``count`` (the page asks for them when the filter changes and at
    most every few seconds, not for every page). Pages by the
    storage's keyset cursor when the sort is on task columns or one JSON path, else by
    offset; ``next_cursor`` and ``next_offset`` are both ``null`` on the last page (one row
    more than ``limit`` is read to know). 400
    ``{"detail": {"field", "message"}}`` for a bad filter or sort."""
    store = _store(request)
    qid = session.queue_id
    query = _filter_of(filter)
    order = _sort_of(sort)

    def read() -> dict[str, Any]:
        now = utc_now()
        # one row more than the page: a full last page gets no next page (an empty one)
        page = _search(store, qid, query, order, cursor=cursor, offset=offset, limit=limit + 1)
        full = len(page) > limit
        page = page[:limit]
        runs = _run_workers(store, qid, page)  # one lookup for the page
        keys = paging.keyset_sort(order)
        by_path = leaf_sort.json_sort(order)
        next_cursor = None
        if full and keys:
            next_cursor = paging.encode_cursor(keys, page[-1])
        elif full and by_path is not None and not offset:
            next_cursor = leaf_sort.next_cursor(by_path, page[-1])
        return {
            "rows": [table_row(t, now, runs) for t in page],
            "next_cursor": next_cursor,
            "next_offset": offset + len(page) if full and not next_cursor else None,
            "total": _count(store, qid, query) if count else None,
            "arg_keys": store.arg_keys(qid) if count else None,
            "summary_keys": store.summary_keys(qid) if count else None,
            "sort": [list(s) for s in order],
        }

    return _json(await anyio.to_thread.run_sync(read))


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list, bool)):
        return json.dumps(value)
    text = str(value)
    # A spreadsheet would run a cell starting with = + - @ as a formula.
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@router.get("/api/tasks.csv")
async def export_csv(
    request: Request,
    session: ApiSession,
    filter: Annotated[str, Query(max_length=10_000)] = "",
    sort: Annotated[str, Query(max_length=1000)] = "",
    columns: Annotated[str, Query(max_length=20_000)] = "",
):
    """The tasks of the current view as CSV (``columns``: comma-separated row keys, as the
    table shows them), in the view's order, at most ``CSV_MAX_ROWS`` rows."""
    store = _store(request)
    qid = session.queue_id
    query = _filter_of(filter)
    order = _sort_of(sort)
    cols = [c for c in (c.strip() for c in columns.split(",")) if c] or [
        "task_id",
        "task_name",
        "status",
        "retries",
        "worker_id",
        "start_time",
        "end",
        "duration",
    ]
    first = await anyio.to_thread.run_sync(
        lambda: _search(store, qid, query, order, limit=1)
    )  # a bad filter is a 400 here
    del first

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    now = utc_now()

    def rows() -> Iterator[str]:
        writer.writerow(cols)
        batch: list[dict[str, Any]] = []
        for task in _walk(store, qid, query, order, CSV_MAX_ROWS):
            batch.append(task)
            if len(batch) == FETCH_BATCH:
                yield write(batch)
        yield write(batch)

    def write(batch: list[dict[str, Any]]) -> str:
        """The CSV lines of ``batch`` (emptied): one run-worker lookup for all of them."""
        runs = _run_workers(store, qid, batch) if "worker_id" in cols else {}
        for task in batch:
            row = table_row(task, now, runs)
            row["worker_id"] = row["run_worker_id"]  # as the table shows it
            writer.writerow([_csv_cell(row.get(c)) for c in cols])
        batch.clear()
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    name = f"tasks-{utc_now().strftime('%Y%m%dT%H%M%SZ')}.csv"
    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
        },
    )


# The plot reads only what the chosen picture needs: for each finished task its id and name
# (hover), the x argument, the optional colour argument and the metric, as dotted paths read
# in SQL by ``search_tasks`` (only those values are decoded), plus ``last_modified`` for its
# keyset cursor. Whole args and summaries are not read.
PLOT_SAMPLE = 1000  # first plotted tasks read for the metrics and to guess the x argument
PLOT_GUESS_KEYS = 50  # argument keys looked at to guess the x argument


def _plottable(key: str) -> bool:
    """Whether ``key`` (of args or summary) can be read as a dotted path in SQL."""
    segments = key.split(".")
    return bool(key) and len(segments) < MAX_PATH_SEGMENTS and all(map(SEGMENT.match, segments))


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def guess_metric(keys: list[str]) -> str | None:
    """The metric a researcher most likely wants: an accuracy-like key, else a loss-like
    one, else the first (the page's former guess, on the key list)."""
    for pattern in ("acc", "score", "auc", "f1"), ("loss", "err"):
        for key in keys:
            if any(p in key.lower() for p in pattern):
                return key
    return keys[0] if keys else None


def guess_arg(rows: list[dict[str, Any]], keys: list[str]) -> str | None:
    """The argument with the most distinct values among ``rows`` (``args.<key>`` paths),
    an all-numeric one before any other."""
    best, most = (keys[0] if keys else None), -1
    for key in keys:
        values = [r["args." + key] for r in rows]
        present = [v for v in values if v is not None]
        if not present:
            continue
        distinct = len({json.dumps(v, sort_keys=True) for v in values})
        score = distinct + (10**9 if all(_is_num(v) for v in values) else 0)
        if score > most:
            best, most = key, score
    return best


def plot_columns(
    tasks: Iterator[dict[str, Any]], x: str, metric: str, color: str | None
) -> dict[str, Any]:
    """Columns of the plot (one entry per finished task with a numeric metric and an x
    value): ``task_id``, ``task_name``, ``x``, ``y``, ``c`` (``None`` without a colour
    argument), and ``truncated`` when more than ``PLOT_MAX_POINTS`` tasks were read."""
    ids: list[str] = []
    names: list[str | None] = []
    xs: list[Any] = []
    ys: list[Any] = []
    cs: list[Any] = []
    xk, yk, ck = "args." + x, "summary." + metric, ("args." + color) if color else None
    read = 0
    for t in tasks:
        read += 1
        if read > PLOT_MAX_POINTS:
            break
        xv, yv = t[xk], t[yk]
        if xv is None or not _is_num(yv):
            continue
        ids.append(t["task_id"])
        names.append(t["task_name"])
        xs.append(xv)
        ys.append(yv)
        if ck is not None:
            cs.append(t[ck])
    return {
        "task_id": ids,
        "task_name": names,
        "x": xs,
        "y": ys,
        "c": cs if ck is not None else None,
        "truncated": read > PLOT_MAX_POINTS,
    }


@router.get("/api/plot")
async def plot_data(
    request: Request,
    session: ApiSession,
    filter: Annotated[str, Query(max_length=10_000)] = "",
    metric: Annotated[str, Query(max_length=500)] = "",
    x: Annotated[str, Query(max_length=500)] = "",
    color: Annotated[str, Query(max_length=500)] = "",
    keys: bool = True,
):
    """The finished (``success``) tasks matching the filter, the oldest ``PLOT_MAX_POINTS``,
    as columns of what the picture needs: ``{"metric", "x_arg", "color_arg", "arg_keys",
    "metric_keys", "max_points", "task_id": [...], "task_name": [...], "x": [...], "y": [...], "c":
    [...]|null, "truncated": bool}`` (``plot_columns``). ``metric_keys``: the summary keys
    with a number among the first ``PLOT_SAMPLE`` of them; ``keys=false``: the two
    key lists are ``null`` and that sample is not read unless a guess needs it (a page that
    has the keys changes its picture). ``metric`` (a ``summary`` key) and
    ``x``/``color`` (``args`` keys) choose the picture; an empty or unknown ``metric`` or
    ``x`` is guessed (an accuracy-like metric; the argument with the most distinct numeric
    values), an unknown ``color`` is none. Keys that are not dotted paths of letters, digits,
    ``_`` or ``-`` cannot be plotted and are left out. 400 ``{"detail": {"field", "message"}}`` for a
    bad filter."""
    store = _store(request)
    qid = session.queue_id
    query = _filter_of(filter)

    def read() -> dict[str, Any]:
        arg_keys = [k for k in store.arg_keys(qid) if _plottable(k)]
        guess_x = x not in arg_keys
        guess_keys = arg_keys[:PLOT_GUESS_KEYS] if guess_x else []
        metric_keys: list[str] | None = None
        sample: list[dict[str, Any]] = []
        if keys or guess_x or not _plottable(metric):
            # the first finished tasks of the plot (same order, so the same index range as
            # its read below): their summaries give the metrics (keys with a number), their
            # arguments the x argument when none is given
            sample = _search(
                store,
                qid,
                query,
                [("last_modified", 1)],
                limit=PLOT_SAMPLE,
                status="success",
                fields=["summary"] + ["args." + k for k in guess_keys],
            )
            numeric: set[str] = set()
            for t in sample:
                for key, value in _flat(t["summary"], "", {}).items():
                    if _is_num(value) and not key.startswith("labtasker_") and _plottable(key):
                        numeric.add(key)
            metric_keys = sorted(numeric)
        chosen_metric = metric if _plottable(metric) else guess_metric(metric_keys or [])
        chosen_x = guess_arg(sample, guess_keys) if guess_x else x
        chosen_color = color if color in arg_keys and color != chosen_x else None
        if metric_keys is not None and chosen_metric and chosen_metric not in metric_keys:
            metric_keys = sorted([*metric_keys, chosen_metric])  # asked for: listed
        answer: dict[str, Any] = {
            "metric": chosen_metric,
            "x_arg": chosen_x,
            "color_arg": chosen_color,
            "arg_keys": arg_keys if keys else None,
            "metric_keys": metric_keys if keys else None,
            "max_points": PLOT_MAX_POINTS,
        }
        if chosen_metric is None or chosen_x is None:
            answer.update(plot_columns(iter(()), "", "", None))
            return answer
        # one read of at most PLOT_MAX_POINTS + 1 small rows (no cursor, so no sort fields)
        fields = ["task_id", "task_name", "args." + chosen_x, "summary." + chosen_metric]
        if chosen_color:
            fields.append("args." + chosen_color)
        tasks = _search(
            store,
            qid,
            query,
            [("last_modified", 1)],
            limit=PLOT_MAX_POINTS + 1,
            status="success",
            fields=fields,
        )
        answer.update(plot_columns(iter(tasks), chosen_x, chosen_metric, chosen_color))
        return answer

    return _json(await anyio.to_thread.run_sync(read))


@router.get("/api/plot/task/{task_id}")
async def plot_task(request: Request, task_id: str, session: ApiSession):
    """One task as a plot's hover shows it: ``{"task_id", "task_name", "args"}`` (args
    flattened to dotted keys); 404 when it is not in the session's queue."""
    try:
        task = await _run(request, _store(request).get_task, session.queue_id, task_id)
    except NotFound as exc:
        raise HTTPException(404, "task not found") from exc
    return _json(
        {
            "task_id": task["task_id"],
            "task_name": task["task_name"],
            "args": _flat(task["args"], "", {}),
        }
    )


@router.get("/api/events")
async def events(
    request: Request, session: ApiSession, last_event_id: Annotated[str | None, Header()] = None
):
    """The queue's event stream (the same as ``/api/v1/queues/me/events``) for the pages'
    ``EventSource``, authenticated by the session cookie; it ends (``closed``) when the
    password the session logged in with changes or the queue is deleted."""
    from labtasker.server.sse import open_stream

    return open_stream(request, session.queue_id, last_event_id, session.password_fingerprint)


# ------------------------------------------------------------------ JSON: actions
class ActionRequest(BaseModel):
    """``POST /ui/api/actions``: what to do, to which tasks. ``task_ids`` or ``filter`` (the
    filter box's text; ``""`` = every task). With ``dry_run`` nothing changes: the answer
    says how many tasks would be affected."""

    action: str = Field(pattern="^(cancel|requeue|priority|delete)$")
    task_ids: list[str] | None = Field(None, max_length=1000)
    filter: str | None = Field(None, max_length=10_000)
    priority: int | None = Field(None, ge=-1_000_000, le=1_000_000)
    dry_run: bool = False


@router.post("/api/actions")
async def act(request: Request, body: ActionRequest, session: ActionSession):
    """Cancel, requeue, reprioritise or delete tasks. Returns ``{"matched": int,
    "changed": int, "skipped": int}`` (``skipped``: tasks the action does not apply to,
    e.g. cancelling one that already ended). 400 when neither ``task_ids`` nor ``filter``
    is given, for ``priority`` without a value, or when more than ``ACTION_MAX_TASKS``
    tasks match."""
    store = _store(request)
    qid = session.queue_id
    if (body.task_ids is None) == (body.filter is None):
        raise HTTPException(400, {"field": "task_ids", "message": "give either task_ids or filter"})
    if body.action == "priority" and body.priority is None:
        raise HTTPException(400, {"field": "priority", "message": "priority: a number is required"})
    query = _filter_of(body.filter) if body.filter is not None else None

    def run() -> dict[str, Any]:
        if body.task_ids is not None:
            ids = list(dict.fromkeys(body.task_ids))
            matched = len(ids)
        else:
            matched = _count(store, qid, query)
            if matched > ACTION_MAX_TASKS:
                raise HTTPException(
                    400,
                    {
                        "field": "filter",
                        "message": (
                            f"{matched} tasks match; one action changes at most {ACTION_MAX_TASKS}: "
                            "narrow the filter"
                        ),
                    },
                )
            if body.dry_run:
                return {"matched": matched, "changed": 0, "skipped": 0}
            ids = [
                t["task_id"] for t in _walk(store, qid, query, [("task_id", 1)], ACTION_MAX_TASKS)
            ]
        if body.dry_run:
            return {"matched": matched, "changed": 0, "skipped": 0}
        changed = _apply(store, qid, body, ids)
        return {"matched": matched, "changed": changed, "skipped": len(ids) - changed}

    return await anyio.to_thread.run_sync(run)


def _apply(store: Storage, qid: str, body: ActionRequest, ids: list[str]) -> int:
    """Apply the action to ``ids``; returns how many tasks it changed."""
    changed = 0
    if body.action == "requeue":  # ended tasks, and running ones (their jobs are stopped)
        for start in range(0, len(ids), FETCH_BATCH):
            batch = ids[start : start + FETCH_BATCH]
            for status in (None, "running"):
                changed += store.requeue_tasks(
                    qid, task_ids=batch, status=status, limit=len(batch)
                )["requeued"]
        return changed
    for task_id in ids:
        try:
            if body.action == "delete":
                store.delete_task(qid, task_id)
                changed += 1
            elif body.action == "priority":
                store.update_tasks(
                    qid, [{"task_id": task_id, "priority": body.priority}], reset_pending=False
                )
                changed += 1
            elif body.action == "cancel":
                changed += _cancel(store, qid, task_id)
        except NotFound:
            continue  # deleted meanwhile
    return changed


def _cancel(store: Storage, qid: str, task_id: str, attempts: int = 5) -> int:
    """Cancel one task that has not ended, as ``labtasker task cancel`` does: a running task
    is cancelled only while it is still the run that was read (fenced by its ``run_id``), so
    its loop's next heartbeat is refused and the job is stopped. 1 if cancelled, else 0."""
    for _ in range(attempts):
        task = store.get_task(qid, task_id)
        if task["status"] in ENDED:
            return 0
        run_id = task["run_id"] if task["status"] == "running" else None
        try:
            store.report_task(
                qid, task_id, status="cancelled", worker_id=None, run_id=run_id, summary=None
            )
        except Conflict:
            continue  # that run ended or changed meanwhile: look again
        return 1
    return 0


def login_redirect(request: Request, _exc: Exception) -> RedirectResponse:
    """Where a page without a session goes: the log-in form, coming back afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)
