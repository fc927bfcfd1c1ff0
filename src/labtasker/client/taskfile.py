"""Task files: many tasks in one JSON-lines, JSON-array or YAML file, for ``labtasker task
submit --file`` and for Python (:func:`read_task_file`).

Each record is either a task (a mapping holding ``args`` and/or ``cmd``, plus any of the
other fields a submission may set: ``labtasker.fields.SUBMIT_TASK_FIELDS``) or, otherwise,
the task's ``args`` themselves. The format follows the file name (``.yaml``/``.yml``;
``.jsonl``/``.ndjson``/``.json``); without one, text starting with ``{`` or ``[`` is JSON.
JSON lines may be blank or ``#`` comments. YAML may hold one list or several documents; it is
read as by ``yaml.safe_load``, except that ``1e-5`` is a float (:mod:`labtasker.yamlread`).

Errors are :class:`~labtasker.exceptions.LabtaskerValueError` whose message starts with the
record's location (``file:line``, ``file[index]`` or ``file (document n)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from labtasker.exceptions import LabtaskerValueError
from labtasker.fields import SUBMIT_TASK_FIELDS


def parse_task_records(text: str, name: str = "<input>") -> list[tuple[str, Any]]:
    """``[(location, record), ...]`` of the tasks in ``text``; ``name`` is the file name (it
    picks the format and prefixes the locations)."""
    lower = name.lower()
    if lower.endswith((".yaml", ".yml")):
        kind = "yaml"
    elif lower.endswith((".jsonl", ".ndjson", ".json")):
        kind = "json"
    else:  # stdin or unknown extension: JSON if it looks like JSON
        kind = "json" if text.lstrip()[:1] in ("{", "[", "") else "yaml"
    if kind == "json":
        stripped = text.lstrip()
        if stripped.startswith("["):  # one JSON array
            try:
                items = json.loads(text)
            except ValueError as exc:
                raise LabtaskerValueError(f"{name}: invalid JSON: {exc}") from None
            return [(f"{name}[{i}]", item) for i, item in enumerate(items)]
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                records.append((f"{name}:{lineno}", json.loads(line)))
            except ValueError as exc:
                raise LabtaskerValueError(f"{name}:{lineno}: invalid JSON: {exc}") from None
        return records
    import yaml

    from labtasker import yamlread

    try:  # ``1e-5`` is a float here, as in sweep files (YAML 1.2)
        docs = [d for d in yamlread.load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise LabtaskerValueError(f"{name}: invalid YAML: {' '.join(str(exc).split())}") from None
    if len(docs) == 1 and isinstance(docs[0], list):
        return [(f"{name}[{i}]", item) for i, item in enumerate(docs[0])]
    return [(f"{name} (document {i + 1})", item) for i, item in enumerate(docs)]


def task_requests(
    records: list[tuple[str, Any]], defaults: dict[str, Any] | None = None
) -> list[Any]:
    """Validate records into ``wire.TaskSubmitRequest`` objects. ``defaults``: field values
    for records that do not set them (for a bare-args record, every field but ``args``)."""
    from pydantic import ValidationError

    from labtasker.wire import TaskSubmitRequest

    defaults = defaults or {}
    out = []
    for where, record in records:
        if not isinstance(record, dict):
            raise LabtaskerValueError(
                f"{where}: a task must be a mapping, got {type(record).__name__}"
            )
        if "args" in record or "cmd" in record:
            unknown = sorted(set(record) - set(SUBMIT_TASK_FIELDS))
            if unknown:
                raise LabtaskerValueError(f"{where}: unknown task field(s) {unknown}")
            fields = {**defaults, **record}
        else:
            fields = {**defaults, "args": record}
        if fields.get("args") is not None and not isinstance(fields["args"], dict):
            raise LabtaskerValueError(f"{where}: args must be a mapping")
        try:
            out.append(TaskSubmitRequest.model_validate(fields))
        except ValidationError as exc:
            msgs = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ())) or 'task'}: {e.get('msg')}"
                for e in exc.errors()
            )
            raise LabtaskerValueError(f"{where}: invalid task: {' '.join(msgs.split())}") from None
    return out


def read_task_file(path: str | Path, defaults: dict[str, Any] | None = None) -> list[Any]:
    """The tasks of the file at ``path`` as ``wire.TaskSubmitRequest`` objects, ready for
    ``labtasker.submit_tasks`` (``[r.model_dump(exclude_none=True) for r in ...]``) or
    ``POST /tasks/batch``. Raises ``OSError`` when the file cannot be read and
    :class:`~labtasker.exceptions.LabtaskerValueError` for invalid content."""
    text = Path(path).read_text(encoding="utf-8")
    return task_requests(parse_task_records(text, str(path)), defaults)


def edited_task_updates(
    original: list[dict[str, Any]], edited_yaml: str
) -> tuple[list[Any], dict[str, list[str]]]:
    """Compare tasks (``wire.Task`` JSON dicts, as shown to a user) with the YAML list the
    user edited them into; return ``(update requests, ignored)``.

    Each request is a ``wire.TaskUpdateRequest`` holding the changed updatable fields of one
    task (listed in ``replace_fields``, so dict fields are replaced, not merged); tasks
    without changes get none. ``ignored``: per task id, the read-only fields whose value was
    changed (they cannot be updated). Raises ``ValueError`` (a ``LabtaskerValueError``, or
    pydantic's ``ValidationError`` for a value the field does not accept) when the YAML does
    not parse, is not a list of mappings, does not hold the same task ids in the same
    order, or leaves a task with neither args nor a cmd. The YAML is read by
    :mod:`labtasker.yamlread`, like task files: ``lr: 1e-5`` typed in is a float (the editor's
    text, written by ``yamlread.dump``, quotes a string that would read as one)."""
    import yaml

    from labtasker import yamlread
    from labtasker.client.cmdline import NOTHING_TO_RUN, leaves_nothing_to_run
    from labtasker.fields import READ_ONLY_TASK_FIELDS, UPDATABLE_TASK_FIELDS
    from labtasker.wire import TaskUpdateRequest

    try:
        new = yamlread.load(edited_yaml)
    except yaml.YAMLError as exc:
        raise LabtaskerValueError(" ".join(str(exc).split())) from None
    if (
        not isinstance(new, list)
        or not all(isinstance(d, dict) for d in new)
        or [d.get("task_id") for d in new] != [d["task_id"] for d in original]
    ):
        raise LabtaskerValueError("the list of task_ids (count and order) must not change")
    requests: list[Any] = []
    ignored: dict[str, list[str]] = {}
    for old, cur in zip(original, new, strict=True):
        changed = [k for k in UPDATABLE_TASK_FIELDS if k in cur and cur.get(k) != old.get(k)]
        untouchable = [k for k in READ_ONLY_TASK_FIELDS if cur.get(k) != old.get(k)]
        if untouchable:
            ignored[old["task_id"]] = untouchable
        if changed:
            body = {k: cur[k] for k in changed}
            body.update(task_id=old["task_id"], replace_fields=changed)
            if leaves_nothing_to_run(old.get("args"), old.get("cmd"), body):
                raise LabtaskerValueError(f"task {old['task_id']}: {NOTHING_TO_RUN}")
            requests.append(TaskUpdateRequest.model_validate(body))
    return requests, ignored
