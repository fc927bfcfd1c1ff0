"""One vocabulary: the status enums of ``labtasker.fsm``, the task-field registry of
``labtasker.fields`` and the name rule of ``labtasker.keys`` are the only spellings; the
wire models, storage, filters and CLI derive from them. Pure: no server."""

from __future__ import annotations

import typing

import pytest

from labtasker import fields, fsm, keys, wire


def test_task_model_keys_are_the_registry_in_order():
    assert tuple(wire.Task.model_fields) == fields.TASK_FIELD_NAMES


def test_submit_and_update_models_match_the_registry():
    # ``unique`` is an option of the submit request (decided by the server), not a task field
    submit = set(wire.TaskSubmitRequest.model_fields) - {"client_version", "unique"}
    assert submit == set(fields.SUBMIT_TASK_FIELDS)
    update = set(wire.TaskUpdateRequest.model_fields) - {
        "client_version",
        "task_id",
        "replace_fields",
        "run_id",
    }
    assert update == set(fields.UPDATABLE_TASK_FIELDS)
    assert set(fields.DICT_TASK_FIELDS) <= set(fields.UPDATABLE_TASK_FIELDS)
    assert set(fields.READ_ONLY_TASK_FIELDS).isdisjoint(fields.UPDATABLE_TASK_FIELDS)


def test_storage_columns_and_filter_fields_derive_from_the_registry():
    from labtasker.filters.pyquery import ALLOWED_FIELDS
    from labtasker.server.schema import tasks
    from labtasker.server.sql_storage import TASK_FIELDS, TASK_KEYS

    assert TASK_KEYS == fields.TASK_FIELD_NAMES
    assert set(fields.TASK_FIELD_NAMES) <= set(tasks.c.keys())
    assert set(TASK_FIELDS.columns) | set(TASK_FIELDS.json_columns) == {
        *fields.TASK_FIELD_NAMES,
        "_id",
    }
    assert TASK_FIELDS.datetime_columns == fields.DATETIME_TASK_FIELDS
    # 1.0.1's names (and its ``worker_name``); our ``run_id`` is not among them
    assert "run_id" not in ALLOWED_FIELDS and "worker_name" in ALLOWED_FIELDS
    assert set(ALLOWED_FIELDS) - {"worker_name"} == {f.name for f in fields.TASK_FIELDS if f.v1}


def _literal_values(model, name):
    annotation = model.model_fields[name].annotation
    args = typing.get_args(annotation) or (annotation,)
    enum = next(a for a in args if a is not type(None))
    return tuple(m.value for m in enum)


def test_statuses_come_from_the_fsm_enums():
    assert _literal_values(wire.Task, "status") == fsm.TASK_STATES
    assert _literal_values(wire.Worker, "status") == fsm.WORKER_STATES
    assert _literal_values(wire.TaskStatusUpdateRequest, "status") == (
        "success",
        "failed",
        "cancelled",
    )
    assert fsm.TERMINAL_TASK_STATES == {"success", "failed", "cancelled"}
    assert fsm.WORKER_REPORT_STATES == ("active", "suspended")
    assert set(fsm.TASK_TRANSITIONS) == {"created", *fsm.TASK_STATES}
    assert set(fsm.WORKER_TRANSITIONS) == {"created", *fsm.WORKER_STATES}


def test_models_hold_plain_strings():
    task = wire.TaskStatusUpdateRequest(status=wire.ReportStatus.FAILED)
    assert type(task.status) is str and task.status == "failed"
    assert wire.TaskLsRequest(status="pending").model_dump(mode="json")["status"] == "pending"
    assert f"{fsm.TaskState.RUNNING}" == "running" == str(fsm.TaskState.RUNNING)


def test_cli_choices_are_the_enums():
    from labtasker.client.cli import options

    assert [c.value for c in options.TaskStatusChoice] == list(fsm.TASK_STATES)
    assert [c.value for c in options.WorkerReportChoice] == list(fsm.WORKER_REPORT_STATES)


@pytest.mark.parametrize(
    "text, ok",
    [
        ("queue-1_a", True),
        ("", False),
        ("a b", False),
        ("a.b", False),
        ("é", False),
        ("x" * 100, True),
        ("x" * 101, False),
        ("abc\n", False),
    ],
)
def test_the_name_rule(text, ok):
    assert keys.is_name(text) is ok


def test_name_rule_is_shared():
    from labtasker.client import template
    from labtasker.client.config import QueueConfig

    assert template._SEGMENT_CHARS is keys.NAME_CHARSET
    assert keys.sanitize_name("host.example com") == "host-example-com"
    with pytest.raises(ValueError):
        QueueConfig(queue_name="bad name", password="x")
    with pytest.raises(ValueError):
        wire.QueueCreateRequest(queue_name="x" * 101, password="x")


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("a", ("a", 1)),
        ("a:asc", ("a", 1)),
        ("args.lr:DESC", ("args.lr", -1)),
        (" b : desc ", ("b", -1)),
        ("a:", ("a", 1)),
    ],
)
def test_sort_grammar(text, parsed):
    from labtasker.client.sorting import parse_sort_item

    assert parse_sort_item(text) == parsed


@pytest.mark.parametrize("text", [":asc", "a:up", ""])
def test_sort_grammar_refuses(text):
    from labtasker.client.sorting import parse_sort_item

    with pytest.raises(ValueError, match="expected field:asc or field:desc"):
        parse_sort_item(text)


def test_heartbeat_timeout_problem():
    from labtasker.timeutil import heartbeat_timeout_problem

    assert heartbeat_timeout_problem(3, 1) is None
    assert heartbeat_timeout_problem(2, 1) is None
    assert heartbeat_timeout_problem(None, 1) is None
    assert heartbeat_timeout_problem(3, 2) == (
        "heartbeat_timeout (3s) must be at least 2 x heartbeat_interval (2s), i.e. >= 4s; the "
        "default is 3 x the interval"
    )
    assert "(2s, task.heartbeat_interval in client.toml)" in heartbeat_timeout_problem(
        1,
        2,
        interval_name="the heartbeat interval",
        source="task.heartbeat_interval in client.toml",
    )


def test_task_file_from_python(tmp_path):
    from labtasker.client.taskfile import read_task_file
    from labtasker.exceptions import LabtaskerValueError

    path = tmp_path / "tasks.jsonl"
    path.write_text('{"lr": 0.1}\n# comment\n\n{"args": {"lr": 0.2}, "priority": 5}\n')
    tasks = read_task_file(path, {"max_retries": 1})
    assert [(t.args, t.priority, t.max_retries) for t in tasks] == [
        ({"lr": 0.1}, 10, 1),
        ({"lr": 0.2}, 5, 1),
    ]
    yml = tmp_path / "tasks.yaml"
    yml.write_text("- {args: {a: 1}, cmd: run}\n- {b: 2}\n")
    assert [t.args for t in read_task_file(yml)] == [{"a": 1}, {"b": 2}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"args": {"a": 1}, "status": "running"}\n')
    with pytest.raises(LabtaskerValueError, match=r"bad.jsonl:1: unknown task field\(s\)"):
        read_task_file(bad)


def test_yaml_written_by_yamlread_reads_back_unchanged():
    """``yamlread.dump`` quotes the strings ``yamlread.load`` would read as floats (PyYAML's
    ``safe_dump`` writes ``1e-5`` bare); numbers and other text are written as before."""
    from labtasker import yamlread

    data = [{"a": "1e-5", "b": 1e-5, "c": "1E+3", "d": ".5e3", "e": "1e5x", "f": 3, "g": "x"}]
    text = yamlread.dump(data, sort_keys=False)
    assert yamlread.load(text) == data
    assert "a: '1e-5'" in text and "e: 1e5x" in text and "g: x" in text


def test_edited_task_updates():
    import yaml

    from labtasker.client.taskfile import edited_task_updates
    from labtasker.exceptions import LabtaskerValueError

    original = [
        {"task_id": "a", "priority": 1, "args": {"x": 1}, "worker_id": None},
        {"task_id": "b", "priority": 1, "args": {"x": 2}, "worker_id": None},
    ]
    edited = [dict(original[0], priority=5, worker_id="w"), dict(original[1])]
    requests, ignored = edited_task_updates(original, yaml.safe_dump(edited))
    assert [(r.task_id, r.priority, r.replace_fields) for r in requests] == [("a", 5, ["priority"])]
    assert ignored == {"a": ["worker_id"]}
    assert edited_task_updates(original, yaml.safe_dump(original)) == ([], {})
    for bad in ("- [unclosed", yaml.safe_dump(original[::-1]), "- 1\n- 2\n"):
        with pytest.raises(LabtaskerValueError):
            edited_task_updates(original, bad)
    with pytest.raises(ValueError):  # pydantic: a priority must be an int
        edited_task_updates(
            original, yaml.safe_dump([dict(original[0], priority="hi"), original[1]])
        )
