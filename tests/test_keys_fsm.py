"""Unit tests of the shared rules: "no more, no less", dotted keys, state machines, durations."""

import pytest

from labtasker import fsm
from labtasker.keys import (
    KeyConflictError,
    args_match,
    parse_required_fields,
    topmost_tree,
    unflatten,
)
from labtasker.timeutil import parse_duration

TASKS = {
    "t1": {"a": 1},
    "t2": {"a": 1, "b": 2},
    "t3": {"a": {"x": 1, "y": 2}},
    "t4": {"a": {"x": 1}, "c": 3},
}


@pytest.mark.parametrize(
    "required, expected",
    [
        (None, {"t1", "t2", "t3", "t4"}),
        ([], {"t1", "t2", "t3", "t4"}),
        (["*"], {"t1", "t2", "t3", "t4"}),
        (["a"], {"t1", "t3"}),
        (["a", "b"], {"t2"}),
        (["a.x"], set()),
        (["a.x", "a.y"], {"t3"}),
        (["a", "a.x"], {"t3"}),
        (["a", "*"], {"t1", "t2", "t3", "t4"}),
        (["a.x", "*"], {"t3", "t4"}),
        (["zz"], set()),
        (["zz", "*"], set()),
    ],
)
def test_required_fields_table_of_spec_section_4(required, expected):
    assert {k for k, args in TASKS.items() if args_match(required, args)} == expected


def test_dict_node_against_leaf_value_fails():
    assert not args_match(["a.x"], {"a": 5})
    assert args_match(["a"], {"a": {}})
    assert not args_match(["a.x"], {"a": {}})


@pytest.mark.parametrize("bad", ["", ".a", "a.", "a..b", "a b", "a$", 3])
def test_invalid_required_fields_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_required_fields([bad])


def test_topmost_tree_subsumes_longer_paths():
    assert topmost_tree([["a"], ["a", "x"]]) == {"a": None}
    assert topmost_tree([["a", "x"], ["a", "y"], ["b"]]) == {"a": {"x": None, "y": None}, "b": None}


def test_unflatten_nests_and_detects_conflicts():
    assert unflatten({"a.b": 1, "a.c": {"d.e": 2}}) == {"a": {"b": 1, "c": {"d": {"e": 2}}}}
    assert unflatten({"a": {"b": 1}, "a.c": 2}) == {"a": {"b": 1, "c": 2}}
    with pytest.raises(KeyConflictError):
        unflatten({"a": 1, "a.b": 2})


TASK_EDGES = {
    ("created", "pending"),
    ("pending", "running"),
    ("pending", "pending"),
    ("pending", "cancelled"),
    ("running", "success"),
    ("running", "failed"),
    ("running", "pending"),
    ("running", "cancelled"),
    ("success", "pending"),
    ("success", "cancelled"),
    ("failed", "pending"),
    ("failed", "cancelled"),
    ("failed", "failed"),
    ("cancelled", "pending"),
    ("cancelled", "cancelled"),
}


@pytest.mark.parametrize("old", ["created", *fsm.TASK_STATES])
@pytest.mark.parametrize("new", fsm.TASK_STATES)
def test_task_transition_table(old, new):
    if (old, new) in TASK_EDGES:
        fsm.check_task_transition(old, new)
    else:
        with pytest.raises(fsm.InvalidTransition):
            fsm.check_task_transition(old, new)


WORKER_EDGES = {
    ("created", "active"),
    ("active", "active"),
    ("active", "suspended"),
    ("active", "crashed"),
    ("suspended", "active"),
    ("crashed", "active"),
    ("crashed", "crashed"),
}


@pytest.mark.parametrize("old", ["created", *fsm.WORKER_STATES])
@pytest.mark.parametrize("new", fsm.WORKER_STATES)
def test_worker_transition_table(old, new):
    if (old, new) in WORKER_EDGES:
        fsm.check_worker_transition(old, new)
    else:
        with pytest.raises(fsm.InvalidTransition):
            fsm.check_worker_transition(old, new)


def test_retry_arithmetic():
    state = ("running", 0)
    seen = []
    for _ in range(3):
        state = fsm.task_after_failure(state[0], state[1], 3)
        seen.append(state)
        state = ("running", state[1]) if state[0] == "pending" else state
    assert seen == [("pending", 1), ("pending", 2), ("failed", 3)]
    assert fsm.task_after_failure("running", 0, 1) == ("failed", 1)
    assert fsm.task_after_failure("failed", 3, 3) == ("failed", 3)
    with pytest.raises(fsm.InvalidTransition):
        fsm.task_after_failure("pending", 0, 3)


def test_worker_failure_counting():
    assert fsm.worker_after_failure("active", 0, 2) == ("active", 1)
    assert fsm.worker_after_failure("active", 1, 2) == ("crashed", 2)
    assert fsm.worker_after_failure("crashed", 2, 2) == ("crashed", 2)
    assert fsm.worker_after_failure("suspended", 0, 1) == ("suspended", 1)
    # no success elsewhere confirms the streak: twice max_retries
    assert fsm.worker_after_failure("active", 1, 2, confirmed=False) == ("active", 2)
    assert fsm.worker_after_failure("active", 3, 2, confirmed=False) == ("crashed", 4)
    assert not fsm.worker_crashes(3, 2, confirmed=False) and fsm.worker_crashes(2, 2)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("1", 1.0),
        ("60.5", 60.5),
        ("1.5h", 5400.0),
        ("30 min", 1800.0),
        ("1 hour, 30 minutes", 5400.0),
        ("1h30m", 5400.0),
        ("2S", 2.0),
        (45, 45.0),
        ("1d", 86400.0),
        ("2 days, 1h", 176400.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["1w", "abc", "", "1h30", "h1", "-5", None])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)
