"""Unit tests of command-line value parsing (labtasker.client.cmdline) and filter parsing
(labtasker.client.filtering). No server needed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from labtasker.client.cmdline import (
    parse_dict_option,
    parse_extra_opt,
    parse_updates,
)
from labtasker.client.filtering import encode_filter, parse_filter
from labtasker.exceptions import LabtaskerValueError, QueryTranspilerError


# ------------------------------------------------------------------ parse_extra_opt
@pytest.mark.parametrize(
    "tokens, expected",
    [
        (["--foo", "bar"], {"foo": "bar"}),
        (["--foo=bar"], {"foo": "bar"}),
        (["--lr", "0.1", "--epochs=3"], {"lr": 0.1, "epochs": 3}),
        (["--a.b", "1", "--a.c=x"], {"a": {"b": 1, "c": "x"}}),
        (["--foo.bar", "hello", "--foo.foo", "hi"], {"foo": {"bar": "hello", "foo": "hi"}}),
        (["--xs", "[1, 2]"], {"xs": [1, 2]}),
        (["--s", "'quoted'"], {"s": "quoted"}),
        (["--flag", "--x", "1"], {"x": 1}),  # flag dropped
        (["--x", "1", "--verbose"], {"x": 1}),  # trailing flag dropped
        (["-k", "5"], {"k": "5"}),  # short option values stay strings
        (["-k=v"], {"k": "v"}),
        (["-abc", "--y=2"], {"y": 2}),  # grouped flags dropped
        (["--learning-rate", "0.5"], {"learning_rate": 0.5}),
        (["--x=-3"], {"x": -3}),
        (["--x", "-3"], {"x": -3}),  # negative number is a value, not a flag
        (["--x", "-0.5e-3"], {"x": -0.0005}),
        (["--", "--x", "1"], {"x": 1}),
        (["--t", "True", "--n", "None"], {"t": True, "n": None}),
        (["--eq=a=b"], {"eq": "a=b"}),
        ([], {}),
    ],
)
def test_parse_extra_opt(tokens, expected):
    assert parse_extra_opt(tokens) == expected


def test_parse_extra_opt_unexpected_token():
    with pytest.raises(LabtaskerValueError, match="Unexpected token: stray"):
        parse_extra_opt(["--x", "1", "stray"])
    with pytest.raises(LabtaskerValueError, match="Unexpected token: bare"):
        parse_extra_opt(["bare"])


def test_parse_extra_opt_bad_name_and_conflict():
    with pytest.raises(LabtaskerValueError, match="Invalid option name"):
        parse_extra_opt(["--a$b", "1"])
    with pytest.raises(LabtaskerValueError, match="Conflict"):
        parse_extra_opt(["--a", "1", "--a.b", "2"])


# ------------------------------------------------------------------ parse_dict_option
@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": 1, "b": {"c": true, "d": null}}', {"a": 1, "b": {"c": True, "d": None}}),
        ("{'a': True, 'b': None, 'c': (1, 2)}", {"a": True, "b": None, "c": [1, 2]}),
        ("{'x': -1.5}", {"x": -1.5}),
        ("{}", {}),
        ("{1: 'one'}", {"1": "one"}),
    ],
)
def test_parse_dict_option(text, expected):
    assert parse_dict_option(text, "--args") == expected


@pytest.mark.parametrize(
    "text", ["[1, 2]", "not a dict", "{'a': foo}", "{'a': 1", "__import__('os')"]
)
def test_parse_dict_option_errors_name_option(text):
    with pytest.raises(LabtaskerValueError, match="--metadata"):
        parse_dict_option(text, "--metadata")


def test_parse_dict_option_none():
    assert parse_dict_option(None, "--args") is None


# ------------------------------------------------------------------ parse_updates
def test_parse_updates_replace_and_patch():
    assert parse_updates(["status=pending", "args.lr=0.2", "args.model.depth=3"]) == {
        "status": "pending",
        "args": {"lr": 0.2, "model.depth": 3},
        "replace_fields": ["status"],
    }


def test_parse_updates_replace_dict_field_then_patch_inside():
    out = parse_updates(["args={'a': 1}", "args.b.c=2"])
    assert out == {"args": {"a": 1, "b": {"c": 2}}, "replace_fields": ["args"]}


def test_parse_updates_dash_normalisation_and_strings():
    out = parse_updates(["task-name=123", "priority=20", "max-retries=5"])
    assert out["task_name"] == "123"
    assert out["priority"] == 20 and out["max_retries"] == 5
    assert out["replace_fields"] == ["task_name", "priority", "max_retries"]


def test_parse_updates_no_cast():
    assert parse_updates(["metadata.x=1"], to_primitive=False) == {"metadata": {"x": "1"}}


@pytest.mark.parametrize(
    "expr, msg",
    [
        ("status", "expected key=value"),
        ("=3", "expected key=value"),
        ("-x=1", "must not start"),
        ("foo=1", "unknown field 'foo'"),
        ("priority.x=1", "no sub-fields"),
        ("args=3", "must be a dict"),
        ("args.$x=1", "malformed key"),
    ],
)
def test_parse_updates_errors(expr, msg):
    with pytest.raises(LabtaskerValueError, match=msg):
        parse_updates([expr])


# ------------------------------------------------------------------ filters
def test_parse_filter_dict_literals():
    assert parse_filter('{"status": "failed", "args.x": {"$gt": 1}}') == {
        "status": "failed",
        "args.x": {"$gt": 1},
    }
    assert parse_filter("{'metadata.ok': true, 'y': None}") == {"metadata.ok": True, "y": None}
    assert parse_filter("") == {}
    assert parse_filter("   ") == {}


def test_parse_filter_python_expression_uses_transpiler():
    pytest.importorskip("labtasker.filters.pyquery")
    assert parse_filter("args.a == 1") == {"args.a": 1}
    out = parse_filter("args.a > 1 and status == 'pending'")
    assert out == {"$and": [{"args.a": {"$gt": 1}}, {"status": "pending"}]}


def test_parse_filter_invalid_expression():
    pytest.importorskip("labtasker.filters.pyquery")
    with pytest.raises(QueryTranspilerError):
        parse_filter("args.a ==")
    with pytest.raises(QueryTranspilerError):
        parse_filter("undefined_thing(3)")


def test_encode_filter_datetimes():
    aware = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    out = encode_filter({"$and": [{"created_at": {"$gt": aware}}, {"x": (1, 2)}]})
    assert out == {
        "$and": [{"created_at": {"$gt": {"_dt": "2030-01-02T01:04:05+00:00"}}}, {"x": [1, 2]}]
    }
    naive = datetime(2030, 1, 2, 3, 4, 5)
    encoded = encode_filter({"t": naive})["t"]["_dt"]
    assert datetime.fromisoformat(encoded) == naive.astimezone(timezone.utc)
