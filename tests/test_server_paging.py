"""Bulk submit (``POST /tasks/batch``) and keyset paging (``cursor``/``next_cursor``)."""

from __future__ import annotations

API = "/api/v1/queues/me"


def test_batch_submit_is_ordered_and_all_or_nothing(queue_env):
    with queue_env.http() as http:
        r = http.post(
            f"{API}/tasks/batch",
            json={"tasks": [{"args": {"i": i}, "priority": i % 3} for i in range(50)]},
        )
        assert r.status_code == 201, r.text
        ids = r.json()["task_ids"]
        assert len(ids) == 50 == len(set(ids))
        got = {
            t["task_id"]: t["args"]["i"]
            for t in http.post(f"{API}/tasks/search", json={"limit": 100}).json()["content"]
        }
        assert [got[t] for t in ids] == list(range(50))
        # one bad task: 422 naming its index, nothing stored
        bad = http.post(
            f"{API}/tasks/batch",
            json={"tasks": [{"args": {"ok": 1}}, {"args": {"ok": 2}}, {"args": {"bad key": 3}}]},
        )
        assert bad.status_code == 422 and '"tasks",2' in bad.text.replace(" ", "")
        conflict = http.post(
            f"{API}/tasks/batch",
            json={"tasks": [{"args": {"ok": 1}}, {"args": {"a": 1, "a.b": 2}}]},
        )
        assert conflict.status_code == 400 and "tasks[1].args" in conflict.json()["detail"]
        assert http.post(f"{API}/tasks/batch", json={"tasks": []}).status_code == 422
        n = len(http.post(f"{API}/tasks/search", json={"limit": 1000}).json()["content"])
        assert n == 50


def test_cursor_pages_cover_everything_once_even_with_ties(queue_env):
    with queue_env.http() as http:
        # a batch shares one created_at/last_modified: ties broken by task_id
        http.post(f"{API}/tasks/batch", json={"tasks": [{"args": {"i": i}} for i in range(23)]})
        for sort in (None, [["priority", -1], ["created_at", 1]]):
            seen, cursor, pages = [], None, 0
            while True:
                body = {"limit": 5, "sort": sort, **({"cursor": cursor} if cursor else {})}
                data = http.post(f"{API}/tasks/search", json=body).json()
                seen += [t["task_id"] for t in data["content"]]
                pages += 1
                cursor = data["next_cursor"]
                if not cursor:
                    break
            assert len(seen) == 23 == len(set(seen)) and pages == 5
        # JSON-path sorts page by offset: no cursor offered
        data = http.post(f"{API}/tasks/search", json={"limit": 5, "sort": [["args.i", 1]]}).json()
        assert data["next_cursor"] is None and len(data["content"]) == 5
        bad = http.post(f"{API}/tasks/search", json={"cursor": "not-a-cursor"})
        assert bad.status_code == 400 and "cursor" in bad.json()["detail"]
