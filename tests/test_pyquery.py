"""Unit tests of the Python-syntax filter transpiler. Pure: no server, no network."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labtasker.exceptions import (
    LabtaskerError,
    QueryTranspilerError,
    QueryTranspilerSyntaxError,
    QueryTranspilerValueError,
)
from labtasker.filters.pyquery import (
    ALLOWED_FIELDS,
    format_filter,
    parse_filter_text,
    transpile,
)


def tp(text: str) -> dict:
    """Transpile with any field name allowed (the 1.0.1 examples use foo/bar/a/b)."""
    return transpile(text, allowed_fields=None)


def exists(*paths: str) -> list[dict]:
    return [{p: {"$exists": True}} for p in paths]


# --------------------------------------------------------------------------- 1.0.1 examples


def test_spec_example_field_vs_field():
    assert tp("foo > bar") == {
        "$and": [
            {"foo": {"$exists": True}},
            {"bar": {"$exists": True}},
            {"$expr": {"$gt": ["$foo", "$bar"]}},
        ]
    }


def test_spec_example_list_membership():
    assert transpile("'experimental' in list(metadata.tags)") == {"metadata.tags": "experimental"}


def test_spec_example_date_and_verbose_json():
    before = datetime.now(timezone.utc)
    result = transpile('args.a == 1 and created_at > date("1 hour ago")')
    after = datetime.now(timezone.utc)
    assert list(result) == ["$and"]
    first, second = result["$and"]
    assert first == {"args.a": 1}
    value = second["created_at"]["$gt"]
    assert isinstance(value, datetime)
    assert value.utcoffset() == timedelta(0)
    assert (
        before - timedelta(hours=1, seconds=5)
        <= value
        <= after - timedelta(hours=1) + timedelta(seconds=5)
    )
    rendered = json.loads(format_filter(result))
    iso = rendered["$and"][1]["created_at"]["$gt"]
    assert iso.endswith("Z")
    assert datetime.fromisoformat(iso[:-1]).replace(tzinfo=timezone.utc) == value


# --------------------------------------------------------------------------- fields


@pytest.mark.parametrize(
    "text, path",
    [
        ("args.a == 1", "args.a"),
        ("args['a'] == 1", "args.a"),
        ('args["a"]["b"] == 1', "args.a.b"),
        ("args.a['b'].c == 1", "args.a.b.c"),
        ("args[0].c == 1", "args.0.c"),
        ("summary.losses[0].v == 1", "summary.losses.0.v"),
        ("args.a[12][3] == 1", "args.a.12.3"),
        ("args['with space'] == 1", "args.with space"),
        ("status == 1", "status"),
        ("metadata.tag_1 == 1", "metadata.tag_1"),
    ],
)
def test_field_paths(text, path):
    assert transpile(text) == {path: 1}


@pytest.mark.parametrize("field", ALLOWED_FIELDS)
def test_every_allowed_field(field):
    assert transpile(f"{field} == 'x'") == {field: "x"}


def test_unknown_field_suggests_and_lists_allowed():
    with pytest.raises(QueryTranspilerValueError) as info:
        transpile("stauts == 'pending'")
    message = str(info.value)
    assert "Field 'stauts' is unknown or not allowed." in message
    assert "Did you mean 'status'?" in message
    assert "Allowed fields: " + ", ".join(ALLOWED_FIELDS) in message


def test_unknown_field_deep_in_expression_points_at_it():
    with pytest.raises(QueryTranspilerValueError) as info:
        transpile("args.a == 1 and argz.b == 2")
    assert "Did you mean 'args'?" in info.value.reason
    assert info.value.column == len("args.a == 1 and ")


def test_underscore_id_not_allowed_with_hint():
    with pytest.raises(QueryTranspilerValueError, match="Field '_id' is unknown") as info:
        transpile("_id == 'x'")
    assert "dict filter" in info.value.reason


def test_json_spelling_of_constants_gets_a_hint():
    with pytest.raises(QueryTranspilerValueError, match="Did you mean True"):
        transpile("args.flag == true")


def test_allowed_fields_parameter():
    assert transpile("foo == 1", allowed_fields=["foo"]) == {"foo": 1}
    with pytest.raises(QueryTranspilerValueError, match="Allowed fields: foo, bar"):
        transpile("args.a == 1", allowed_fields=["foo", "bar"])
    assert tp("anything.at.all == 1") == {"anything.at.all": 1}


# --------------------------------------------------------------------------- comparisons

OPERATORS = [("==", None), (">", "$gt"), (">=", "$gte"), ("<", "$lt"), ("<=", "$lte")]


@pytest.mark.parametrize("op, mongo", OPERATORS)
def test_field_op_literal(op, mongo):
    expected = {"args.x": 3} if mongo is None else {"args.x": {mongo: 3}}
    assert transpile(f"args.x {op} 3") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3 == args.x", {"args.x": 3}),
        ("3 < args.x", {"args.x": {"$gt": 3}}),
        ("3 <= args.x", {"args.x": {"$gte": 3}}),
        ("3 > args.x", {"args.x": {"$lt": 3}}),
        ("3 >= args.x", {"args.x": {"$lte": 3}}),
        ("'a' < task_name", {"task_name": {"$gt": "a"}}),
        ("-2.5 >= summary.loss", {"summary.loss": {"$lte": -2.5}}),
    ],
)
def test_mirrored_comparisons(text, expected):
    assert transpile(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("args.x > -1", {"args.x": {"$gt": -1}}),
        ("args.x == -0.5", {"args.x": -0.5}),
        ("args.x == --2", {"args.x": 2}),
        ("args.x == +2", {"args.x": 2}),
        ("-1 < args.x", {"args.x": {"$gt": -1}}),
        ("args.x in [-1, -2.5]", {"args.x": {"$in": [-1, -2.5]}}),
    ],
)
def test_negative_literals_are_folded(text, expected):
    assert transpile(text) == expected


@pytest.mark.parametrize(
    "literal, value",
    [
        ("1", 1),
        ("1.5", 1.5),
        ("'s'", "s"),
        ('"double"', "double"),
        ("True", True),
        ("False", False),
        ("None", None),
        ("[1, 'a', None]", [1, "a", None]),
        ("(1, 2)", [1, 2]),
        ("[]", []),
        ("{'a': 1, 'b': [True]}", {"a": 1, "b": [True]}),
        ("{'a': {'b': None}}", {"a": {"b": None}}),
    ],
)
def test_literals(literal, value):
    assert transpile(f"args.x == {literal}") == {"args.x": value}


def test_list_and_dict_pass_through_outside_membership():
    assert transpile("list(args.tags) == ['a', 'b']") == {"args.tags": ["a", "b"]}
    assert transpile("dict(args.opt) == {'k': 1}") == {"args.opt": {"k": 1}}
    assert transpile("args.tags == list([1, 2])") == {"args.tags": [1, 2]}


# --------------------------------------------------------------------------- $expr


def test_field_vs_field_each_operator():
    for op, mongo in [("==", "$eq"), (">", "$gt"), (">=", "$gte"), ("<", "$lt"), ("<=", "$lte")]:
        assert transpile(f"args.a {op} args.b") == {
            "$and": [*exists("args.a", "args.b"), {"$expr": {mongo: ["$args.a", "$args.b"]}}]
        }


@pytest.mark.parametrize(
    "op, mongo",
    [("+", "$add"), ("-", "$subtract"), ("*", "$multiply"), ("/", "$divide"), ("%", "$mod")],
)
def test_arithmetic_table(op, mongo):
    assert tp(f"a {op} b > 10") == {
        "$and": [*exists("a", "b"), {"$expr": {"$gt": [{mongo: ["$a", "$b"]}, 10]}}]
    }
    assert tp(f"a {op} 2 == 3") == {
        "$and": [*exists("a"), {"$expr": {"$eq": [{mongo: ["$a", 2]}, 3]}}]
    }
    assert tp(f"5 <= 2 {op} a") == {
        "$and": [*exists("a"), {"$expr": {"$lte": [5, {mongo: [2, "$a"]}]}}]
    }


@pytest.mark.parametrize(
    "text, expr, fields",
    [
        ("a + b * c < 1", {"$lt": [{"$add": ["$a", {"$multiply": ["$b", "$c"]}]}, 1]}, "abc"),
        ("(a + b) * c < 1", {"$lt": [{"$multiply": [{"$add": ["$a", "$b"]}, "$c"]}, 1]}, "abc"),
        ("a - b - c == 0", {"$eq": [{"$subtract": [{"$subtract": ["$a", "$b"]}, "$c"]}, 0]}, "abc"),
        ("-a > 3", {"$gt": [{"$multiply": [-1, "$a"]}, 3]}, "a"),
        ("-(a + b) > 3", {"$gt": [{"$multiply": [-1, {"$add": ["$a", "$b"]}]}, 3]}, "ab"),
        ("a > -b", {"$gt": ["$a", {"$multiply": [-1, "$b"]}]}, "ab"),
        ("a * -1 > 3", {"$gt": [{"$multiply": ["$a", -1]}, 3]}, "a"),
        ("a > 1 + 2", {"$gt": ["$a", {"$add": [1, 2]}]}, "a"),
        ("a + a > b", {"$gt": [{"$add": ["$a", "$a"]}, "$b"]}, "ab"),
        ("a % 2 == 1", {"$eq": [{"$mod": ["$a", 2]}, 1]}, "a"),
    ],
)
def test_arithmetic_expressions(text, expr, fields):
    assert tp(text) == {"$and": [*exists(*fields), {"$expr": expr}]}


def test_exists_guards_skip_prefixes_of_other_paths():
    assert transpile("args.a * 2 == args.a.b") == {
        "$and": [
            {"args.a.b": {"$exists": True}},
            {"$expr": {"$eq": [{"$multiply": ["$args.a", 2]}, "$args.a.b"]}},
        ]
    }
    # "args.a" is not a prefix of "args.ab"
    assert transpile("args.a > args.ab")["$and"][:2] == exists("args.a", "args.ab")


def test_expr_literals_that_look_like_field_references_are_quoted():
    assert transpile("args.a + 1 == '$x'") == {
        "$and": [
            *exists("args.a"),
            {"$expr": {"$eq": [{"$add": ["$args.a", 1]}, {"$literal": "$x"}]}},
        ]
    }
    # in the simple form a "$x" string is an ordinary equality value
    assert transpile("args.a == '$x'") == {"args.a": "$x"}


def test_expr_with_date():
    result = transpile("last_modified - created_at > 0")
    assert result["$and"][:2] == exists("last_modified", "created_at")
    result = transpile('last_modified > date("2025-01-01T00:00:00Z") + 0')
    value = result["$and"][1]["$expr"]["$gt"][1]["$add"][0]
    assert value == datetime(2025, 1, 1, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- boolean logic


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a == 1 and b == 2", {"$and": [{"a": 1}, {"b": 2}]}),
        ("a == 1 or b == 2", {"$or": [{"a": 1}, {"b": 2}]}),
        ("a == 1 and b == 2 and c == 3", {"$and": [{"a": 1}, {"b": 2}, {"c": 3}]}),
        ("a == 1 or b == 2 or c == 3", {"$or": [{"a": 1}, {"b": 2}, {"c": 3}]}),
        (
            "a == 1 and b == 2 or c == 3",
            {"$or": [{"$and": [{"a": 1}, {"b": 2}]}, {"c": 3}]},
        ),
        (
            "a == 1 or b == 2 and c == 3",
            {"$or": [{"a": 1}, {"$and": [{"b": 2}, {"c": 3}]}]},
        ),
        (
            "a == 1 and (b == 2 or c == 3)",
            {"$and": [{"a": 1}, {"$or": [{"b": 2}, {"c": 3}]}]},
        ),
        (
            "(a == 1 and b == 2) and c == 3",
            {"$and": [{"$and": [{"a": 1}, {"b": 2}]}, {"c": 3}]},
        ),
        (
            "((a == 1))",
            {"a": 1},
        ),
        (
            "a == 1 and True",
            {"$and": [{"a": 1}, {"$expr": True}]},
        ),
    ],
)
def test_boolean_logic(text, expected):
    assert tp(text) == expected


# --------------------------------------------------------------------------- membership


@pytest.mark.parametrize(
    "text, expected",
    [
        ("status in ['pending', 'failed']", {"status": {"$in": ["pending", "failed"]}}),
        ("status in ('pending', 'failed')", {"status": {"$in": ["pending", "failed"]}}),
        ("priority in [0, 10]", {"priority": {"$in": [0, 10]}}),
        ("args.x in []", {"args.x": {"$in": []}}),
        ("args.x in [None, True]", {"args.x": {"$in": [None, True]}}),
        ("list(args.x) in [1]", {"args.x": {"$in": [1]}}),
        ("'a' in list(metadata.tags)", {"metadata.tags": "a"}),
        ("3 in list(args.xs)", {"args.xs": 3}),
        ("'lr' in dict(args)", {"args.lr": {"$exists": True}}),
        ("'b' in dict(args.a)", {"args.a.b": {"$exists": True}}),
    ],
)
def test_membership(text, expected):
    assert transpile(text) == expected


# --------------------------------------------------------------------------- functions


@pytest.mark.parametrize(
    "text, expected",
    [
        ('regex(task_name, "^resnet")', {"task_name": {"$regex": "^resnet"}}),
        ('regex(cmd, "(?i)python")', {"cmd": {"$regex": "(?i)python"}}),
        ("regex(args.a['b'], 'x.*')", {"args.a.b": {"$regex": "x.*"}}),
        ("exists(summary.acc)", {"summary.acc": {"$exists": True}}),
        ("exists(summary.acc, True)", {"summary.acc": {"$exists": True}}),
        ("exists(summary.acc, False)", {"summary.acc": {"$exists": False}}),
        ("exists(args.xs[0])", {"args.xs.0": {"$exists": True}}),
    ],
)
def test_functions(text, expected):
    assert transpile(text) == expected


def test_date_relative_is_utc_aware_and_near_now():
    value = transpile('created_at > date("1 hour ago")')["created_at"]["$gt"]
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
    expected = datetime.now(timezone.utc) - timedelta(hours=1)
    assert abs(value - expected) < timedelta(seconds=30)


def test_date_absolute_with_zone():
    value = transpile('created_at > date("2025-01-31 14:00 UTC")')["created_at"]["$gt"]
    assert value == datetime(2025, 1, 31, 14, 0, tzinfo=timezone.utc)


@pytest.fixture
def tokyo_local_time():
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="needs time.tzset")
def test_date_naive_text_is_local_time(tokyo_local_time):
    value = transpile('created_at < date("2025-01-01 09:00")')["created_at"]["$lt"]
    assert value == datetime(2025, 1, 1, 0, 0, tzinfo=timezone.utc)
    recent = transpile('created_at > date("1 hour ago")')["created_at"]["$gt"]
    assert abs(recent - (datetime.now(timezone.utc) - timedelta(hours=1))) < timedelta(seconds=30)


def test_unparseable_date_is_query_transpiler_error():
    with pytest.raises(QueryTranspilerError) as info:
        transpile('created_at > date("not a date at all xyz")')
    assert not isinstance(info.value, QueryTranspilerValueError)
    assert str(info.value).startswith("Query parsing failed: cannot parse date")
    assert info.value.column == len("created_at > date(")


# --------------------------------------------------------------------------- bare values


@pytest.mark.parametrize("text", ["True", "False", "1", "0", "-1", "(1)", "+ 2"])
def test_a_filter_that_is_a_bool_or_int_is_refused(text):
    """A whole filter that is a constant would match every task (or none): refused, naming
    it; inside ``and``/``or`` the constant stays ``{"$expr": <value>}`` (test_boolean_logic)."""
    with pytest.raises(QueryTranspilerValueError) as info:
        transpile(text)
    assert info.value.reason == (
        f"the filter `{text}` is not a condition (e.g. 'args.lr > 0.1' or "
        """'{"args.lr": {"$gt": 0.1}}')."""
    )
    assert info.value.column is not None


def test_whitespace_and_multiline():
    assert transpile("   args.a == 1   \n") == {"args.a": 1}
    assert transpile("(args.a == 1\n and args.b == 2)") == {"$and": [{"args.a": 1}, {"args.b": 2}]}
    # line breaks need no explicit parentheses, and comments are ignored
    assert transpile("args.a == 1  # first\nand args.b == 2\n") == {
        "$and": [{"args.a": 1}, {"args.b": 2}]
    }
    assert transpile("args.a \\\n  == 1") == {"args.a": 1}


# --------------------------------------------------------------------------- errors

V, S = QueryTranspilerValueError, QueryTranspilerSyntaxError

ERROR_CASES = [
    # (text, class, message fragment, text the pointer must start at)
    ("args.a != 1", V, "Operator '!=' is not supported", "!="),
    ("args.a != 1", V, "three-valued logic", "!="),
    ("not args.a == 1", V, "Operator 'not' is not supported", "not"),
    ("args.a == 1 and not exists(args.b)", V, "exists(x, False)", "not"),
    ("args.a not in [1, 2]", V, "Operator 'not in' is not supported", "not in"),
    ("args.a is None", V, "Unsupported comparison operator 'is'", "is"),
    ("args.a is not None", V, "Unsupported comparison operator 'is not'", "is not"),
    ("1 < args.a < 3", V, "Chained comparisons", "< 3"),
    ("args.a == args.b == 1", V, "Chained comparisons", "== 1"),
    ("args.a ** 2 > 1", V, "Operator '**' is not supported", "**"),
    ("args.a // 2 > 1", V, "Operator '//' is not supported", "//"),
    ("args.a & 1 > 0", V, "Operator '&' is not supported", "&"),
    ("(args.a == 1) | (args.b == 2)", V, "use 'or'", "|"),
    ("args.a ^ 1 > 0", V, "Operator '^' is not supported", "^ 1"),
    ("args.a << 1 > 0", V, "Operator '<<' is not supported", "<<"),
    ("~args.a > 0", V, "Operator '~' is not supported", "~"),
    ("args.a + args.b", V, "Arithmetic is only allowed inside a comparison", "args.a +"),
    ("-args.a", V, "Arithmetic is only allowed inside a comparison", "-args"),
    ("args.a ** 2", V, "Operator '**' is not supported", "**"),
    ("args.a + 'x' > 1", V, "Arithmetic operands must be numbers", "'x'"),
    ("foo(args.a)", V, "Unsupported function call: foo", "foo"),
    ("regx(args.a, 'x')", V, "Did you mean regex()?", "regx"),
    ("len(args.a) > 1", V, "Unsupported function call: len", "len"),
    ("args.a.startswith('x')", V, "use regex(field, 'pattern')", "args.a.startswith"),
    ("args.a == 1 or eval('1')", V, "Unsupported function call: eval", "eval"),
    ("args.a = 1", V, "Did you mean '=='", "="),
    ("args.a += 1", V, "Did you mean '=='", "+="),
    ("(status := 1)", V, "Did you mean '=='", ":="),
    ("(args.a := 1)", S, "Query syntax error", None),
    ("", V, "Expected an expression in the module", None),
    ("   ", V, "Expected an expression in the module", None),
    ("# just a comment", V, "Expected an expression in the module", None),
    ("import os", V, "Expected an expression in the module", "import os"),
    ("del args", V, "Expected an expression in the module", "del args"),
    ("args.a == 1; args.b == 2", V, "several statements", "args.b"),
    ("args.a", V, "Query must evaluate to a dictionary", "args.a"),
    ("args['a'][0]", V, "bare field", "args"),
    ("'hello'", V, "Query must evaluate to a dictionary", "'hello'"),
    ("1.5", V, "Query must evaluate to a dictionary", "1.5"),
    ("None", V, "Query must evaluate to a dictionary", "None"),
    ("[args.a == 1]", V, "Query must evaluate to a dictionary", "["),
    ("date('1 hour ago')", V, "Query must evaluate to a dictionary", "date"),
    ("list(args.a)", V, "Query must evaluate to a dictionary", "list"),
    ("args.a == 1 and 'x'", V, "bare string", "'x'"),
    ("1 == 1", V, "no field on either side", "=="),
    ("1 + 1 == 2", V, "no field on either side", "=="),
    ("args.a in args.b", V, "list(args.b)", "args.b"),
    ("'x' in task_name", V, "dict(task_name)", "task_name"),
    ("args.a in {1, 2}", V, "instead of a set", "{"),
    ("args.a in 'abc'", V, "Substring tests", "'abc'"),
    ("args.a in [args.b]", V, "Expected a literal value here, got the field 'args.b'", "args.b]"),
    ("args.a + 1 in [1]", V, "left side of 'in [...]' must be a field", "args.a + 1"),
    ("args.a in list(args.b)", V, "must be a literal value", "args.a"),
    ("[1] in list(args.b)", V, "single value", "[1]"),
    ("1 in dict(args)", V, "must be a string literal", "1"),
    ("'$x' in dict(args)", V, "must not start with '$'", "'$x'"),
    ("'x' in list('abc')", V, "must be a field", "'abc'"),
    ("regex(args.a)", V, "regex() takes 2 arguments", "regex"),
    ("regex('x', args.a)", V, "first argument of regex() must be a field", "'x'"),
    ("regex(args.a, args.b)", V, "must be a string literal (the pattern)", "args.b"),
    ("regex(args.a, 'x', 'i')", V, "regex() takes 2 arguments", "regex"),
    ("regex(args.a, '(')", V, "Invalid regular expression", "'('"),
    ("exists()", V, "exists() takes 1 to 2 arguments", "exists"),
    ("exists(args.a, 1)", V, "must be True or False", "1)"),
    ("exists(args.a, flag=False)", V, "Keyword arguments are not supported", "flag"),
    ("exists(*args)", V, "'*' unpacking is not supported", "*args"),
    ("created_at > date(1)", V, "date() must be a string literal", "1)"),
    ("created_at > date()", V, "date() takes 1 argument", "date"),
    ("args[-1] == 1", V, "Negative indices are not supported", "-1"),
    ("args[x] == 1", V, "Subscripts must be string or non-negative integer constants", "x]"),
    ("args[1:2] == 1", V, "Slices are not supported", "1:2"),
    ("args[''] == 1", V, "Subscript keys must be non-empty", "''"),
    ("args['$where'] == 1", V, "must not start with '$'", "'$where'"),
    ("list(args).a == 1", V, "on a function call", "list(args).a"),
    ("args.a == {'$ne': 1}", V, "Operator keys", "'$ne'"),
    ("args.a == {1: 2}", V, "keys must be strings", "1:"),
    ("args.a == b'x'", V, "Unsupported literal", "b'x'"),
    ("args.a == 1j", V, "Unsupported literal", "1j"),
    ("args.a == 1e999", V, "Infinite and NaN", "1e999"),
    ("args.a == -'x'", V, "Arithmetic operands must be numbers", "'x'"),
    ("args.a == [-'x']", V, "sign can only be applied", "-'x'"),
    ("args.a == [x for x in y]", V, "list comprehension", "[x"),
    ("args.a == f'{1}'", V, "f-string", "f'"),
    ("lambda: 1", V, "lambda", "lambda"),
    ("args.a if True else args.b", V, "conditional expression", "args.a if"),
    ("{'a': date('1 hour ago')}", V, "only literal values", "date"),
    ("args.a ==", S, "Query syntax error", None),
    ("args.a == (1", S, "Query syntax error: '(' was never closed", "("),
    ("args.a === 1", S, "Query syntax error", None),
    ("args.a == 1 &&& args.b", S, "Query syntax error", None),
]


@pytest.mark.parametrize("text, cls, fragment, at", ERROR_CASES)
def test_errors(text, cls, fragment, at):
    with pytest.raises(cls) as info:
        transpile(text)
    error = info.value
    assert fragment in str(error)
    assert isinstance(error, QueryTranspilerError)
    assert isinstance(error, LabtaskerError)
    assert error.expression == text.strip()
    if at is not None:
        assert error.line == 1
        assert error.column == text.index(at), error.pointer
        # the message shows the expression and a caret under the offending column
        assert f"\n    {text}\n    {' ' * error.column}^" in str(error)


def test_error_class_hierarchy():
    assert issubclass(QueryTranspilerValueError, ValueError)
    assert issubclass(QueryTranspilerSyntaxError, QueryTranspilerError)
    assert issubclass(QueryTranspilerValueError, QueryTranspilerError)
    with pytest.raises(ValueError):
        transpile("args.a != 1")


def test_error_message_layout_exact():
    with pytest.raises(QueryTranspilerValueError) as info:
        transpile("args.a != 1")
    lines = str(info.value).split("\n")
    assert lines[0].startswith("Operator '!=' is not supported: ")
    assert "exists(field, False)" in lines[0]
    assert lines[1:] == ["    args.a != 1", "           ^~"]
    assert info.value.reason == lines[0]
    assert info.value.pointer == "\n".join(lines[1:])
    assert (info.value.line, info.value.column) == (1, 7)


def test_error_without_position_has_no_pointer():
    with pytest.raises(QueryTranspilerValueError) as info:
        transpile("")
    assert info.value.pointer == ""
    assert info.value.line is None and info.value.column is None
    assert str(info.value) == info.value.reason


def test_error_pointer_on_later_line_of_multiline_filter():
    text = "args.a == 1 and\n    args.b != 2"
    with pytest.raises(QueryTranspilerValueError) as info:
        transpile(text)
    assert (info.value.line, info.value.column) == (2, 11)
    assert info.value.pointer == "  (line 2)\n        args.b != 2\n               ^~"


def test_error_pointer_counts_characters_not_bytes():
    with pytest.raises(QueryTranspilerValueError) as info:
        transpile("args.é == 'ü' and args.b != 2")
    assert info.value.column == len("args.é == 'ü' and args.b ")


def test_syntax_error_pointer():
    with pytest.raises(QueryTranspilerSyntaxError) as info:
        transpile("args.a == (1")
    assert info.value.column == len("args.a == ")
    assert str(info.value).split("\n")[1:] == ["    args.a == (1", "              ^"]


def test_too_deep_nesting_is_a_clean_error():
    with pytest.raises(QueryTranspilerValueError, match="nested too deeply"):
        transpile("args.a" + " + args.a" * 5000 + " > 1")
    with pytest.raises(QueryTranspilerSyntaxError, match="too many nested parentheses"):
        transpile("(" * 300 + "args.a == 1" + ")" * 300)


def test_non_string_input_is_type_error():
    with pytest.raises(TypeError):
        transpile(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- parse_filter_text


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"status": "pending"}', {"status": "pending"}),
        ('{"a": true, "b": false, "c": null}', {"a": True, "b": False, "c": None}),
        ("{'a': True, 'b': False, 'c': None}", {"a": True, "b": False, "c": None}),
        ("{'a': true, 'b': None, 'c': (1, -2)}", {"a": True, "b": None, "c": [1, -2]}),
        ('{"_id": {"$in": ["x", "y"]}}', {"_id": {"$in": ["x", "y"]}}),
        (
            "{'$or': [{'priority': {'$gt': 10}}, {'x': 1}]}",
            {"$or": [{"priority": {"$gt": 10}}, {"x": 1}]},
        ),
        ('  {"args": {"lr": 0.1}}  ', {"args": {"lr": 0.1}}),
        ("{}", {}),
        ("status == 'pending'", {"status": "pending"}),
        ("args.a > 1", {"args.a": {"$gt": 1}}),
    ],
)
def test_parse_filter_text(text, expected):
    assert parse_filter_text(text) == expected


def test_parse_filter_text_mapping_passthrough():
    source = {"status": "pending"}
    result = parse_filter_text(source)
    assert result == source and result is not source


def test_parse_filter_text_errors_and_allowed_fields():
    with pytest.raises(QueryTranspilerValueError):
        parse_filter_text("stauts == 1")
    assert parse_filter_text("foo == 1", allowed_fields=None) == {"foo": 1}
    with pytest.raises(QueryTranspilerSyntaxError):
        parse_filter_text('{"a": }')


# --------------------------------------------------------------------------- format_filter


def test_format_filter():
    moment = datetime(2026, 11, 29, 9, 0, 10, 787444, tzinfo=timezone.utc)
    query = {"$and": [{"args.a": 1}, {"created_at": {"$gt": moment}}], "name": "é"}
    text = format_filter(query)
    assert '"$gt": "2026-11-29T09:00:10.787444Z"' in text
    assert "é" in text
    assert text.split("\n")[1] == '    "$and": ['
    assert json.loads(text)["$and"][0] == {"args.a": 1}


def test_format_filter_datetime_zones():
    plus_two = timezone(timedelta(hours=2))
    assert format_filter({"t": datetime(2025, 1, 1, 2, 0, tzinfo=plus_two)}) == (
        '{\n    "t": "2025-01-01T00:00:00Z"\n}'
    )
    # naive datetimes are taken as UTC
    assert format_filter({"t": datetime(2025, 1, 1)}) == '{\n    "t": "2025-01-01T00:00:00Z"\n}'


# --------------------------------------------------------------------------- properties

_FIELDS = st.sampled_from(
    ["args.a", "args.b.c", "metadata.tag", "priority", "retries", "summary.x"]
)
_VALUES = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet="abc xyz_-'\"\\é", max_size=6),
    st.booleans(),
    st.none(),
)
_OPS = {"==": None, ">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte"}
_MIRRORED = {"==": "==", ">": "<", ">=": "<=", "<": ">", "<=": ">="}


def _leaf(args):
    field, op, value, mirrored = args
    text = f"{value!r} {_MIRRORED[op]} {field}" if mirrored else f"{field} {op} {value!r}"
    expected = {field: value} if _OPS[op] is None else {field: {_OPS[op]: value}}
    return text, expected


def _combine(args):
    op, children = args
    text = f" {op} ".join(f"({child})" for child, _ in children)
    return text, {f"${op}": [expected for _, expected in children]}


_LEAVES = st.tuples(_FIELDS, st.sampled_from(list(_OPS)), _VALUES, st.booleans()).map(_leaf)
_TREES = st.recursive(
    _LEAVES,
    lambda children: st.tuples(
        st.sampled_from(["and", "or"]), st.lists(children, min_size=2, max_size=4)
    ).map(_combine),
    max_leaves=16,
)


@settings(max_examples=150, deadline=None)
@given(_TREES)
def test_property_boolean_trees_of_comparisons(tree):
    text, expected = tree
    assert transpile(text) == expected
    # the verbose rendering is plain JSON of the same structure
    assert json.loads(format_filter(transpile(text))) == json.loads(json.dumps(expected))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["and", "or"]), st.lists(_LEAVES, min_size=2, max_size=6))
def test_property_unparenthesised_chains_stay_flat(op, leaves):
    text = f" {op} ".join(leaf_text for leaf_text, _ in leaves)
    assert transpile(text) == {f"${op}": [expected for _, expected in leaves]}
