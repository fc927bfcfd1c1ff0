"""The one reader of literal text (``labtasker.literals``) and the places that use it: dict
options, dict filters (given alone or written inside a Python-syntax filter), command-line
values and sweep values. Pure: no server."""

from __future__ import annotations

import ast

import pytest

from labtasker.client.cmdline import parse_dict_option
from labtasker.client.filtering import parse_filter
from labtasker.exceptions import LabtaskerValueError, QueryTranspilerValueError
from labtasker.filters.pyquery import transpile
from labtasker.literals import (
    NotALiteral,
    dict_literal,
    literal_value,
    parse_literal,
    python_literal,
    python_literal_or_text,
)
from labtasker.sweep import parse_values


# ------------------------------------------------------------------ JSON or Python literals
@pytest.mark.parametrize(
    "text, expected",
    [
        ("[true, false, null, True, None]", [True, False, None, True, None]),
        ("'x'", "x"),
        ("  -1.5 ", -1.5),
        ("--3", 3),
        ("(1, (2, 3))", [1, [2, 3]]),
        ('{"a": {"b": [1, -2]}}', {"a": {"b": [1, -2]}}),
        ("{1: 'one', True: 't', -2: 'm'}", {"1": "one", "True": "t", "-2": "m"}),
    ],
)
def test_parse_literal_reads_json_and_python_spellings(text, expected):
    assert parse_literal(text) == expected


@pytest.mark.parametrize(
    "text, reason",
    [
        ("a + 1", "BinOp is not a literal"),
        ("open('x')", "Call is not a literal"),
        ("{'a': x}", "name 'x' is not a literal"),
        ("-x", "name 'x' is not a literal"),
        ("-'s'", "sign applied to a non-number"),
        ("-True", "sign applied to a non-number"),
        ("b'x'", "unsupported constant b'x'"),
        ("{**x}", "'**' unpacking is not a literal"),
        ("{[1]: 2}", "dict keys must be strings or numbers"),
        ("{'a':", "not a literal: "),
        ("-" * 1500 + "1", "nested too deeply"),  # deeper than the reader goes
        ("-" * 3000 + "1", "nested too deeply"),  # deeper than Python's parser goes
    ],
)
def test_parse_literal_refuses_everything_else_in_words(text, reason):
    with pytest.raises(ValueError, match="^not a literal: ") as info:
        parse_literal(text)
    assert reason in str(info.value)


def test_a_key_is_read_before_its_value():
    with pytest.raises(NotALiteral) as info:
        literal_value(ast.parse("{[1]: x}", mode="eval").body)
    assert info.value.key and "dict keys" in info.value.reason


def test_literal_value_names_the_outermost_node_that_is_not_a_literal():
    body = ast.parse("{'a': [1, --x]}", mode="eval").body
    with pytest.raises(NotALiteral) as info:
        literal_value(body)
    assert isinstance(info.value.node, ast.UnaryOp)  # the signed operand, not the name inside
    assert info.value.node.col_offset == len("{'a': [1, ")
    assert not info.value.key


def test_string_keys_refuses_keys_that_are_not_strings():
    for text in ("{1: 2}", "{True: 1}", "{'a': {None: 1}}", "{**x}"):
        with pytest.raises(NotALiteral) as info:
            literal_value(ast.parse(text, mode="eval").body, string_keys=True)
        assert info.value.key, text
    assert literal_value(ast.parse("{'a': {'b': 1}}", mode="eval").body, string_keys=True) == {
        "a": {"b": 1}
    }


def test_text_nested_deeper_than_the_parser_goes_is_refused_in_words():
    deep = "-" * 3000 + "1"
    assert dict_literal(deep) is None
    with pytest.raises(QueryTranspilerValueError, match="nested too deeply"):
        parse_filter(deep)
    with pytest.raises(LabtaskerValueError, match="--args"):
        parse_dict_option(deep, "--args")


def test_dict_literal_is_the_dict_or_none():
    assert dict_literal("{'status': 'failed', 'x': True}") == {"status": "failed", "x": True}
    assert dict_literal("{}") == {}
    assert dict_literal("[1]") is None
    assert dict_literal("args.a == 1") is None
    assert dict_literal("{'a': x}") is None


# ------------------------------------------------------------------ Python literals
def test_python_literal_is_pythons_literal_grammar():
    assert python_literal("(1, 2)") == (1, 2)
    assert python_literal("{1, 2}") == {1, 2}
    assert python_literal("'x'") == "x"
    for text in ("true", "resnet", "", "a + 1", "[" * 3000 + "]" * 3000):
        with pytest.raises(ValueError, match="not a Python literal"):
            python_literal(text)


def test_python_literal_or_text_keeps_what_is_not_a_literal():
    assert python_literal_or_text("0.1") == 0.1
    assert python_literal_or_text("{'a': 1}") == {"a": 1}
    assert python_literal_or_text("resnet") == "resnet"
    assert python_literal_or_text("true") == "true"
    assert python_literal_or_text("") == ""


# ------------------------------------------------------------------ every reader agrees
@pytest.mark.parametrize(
    "text",
    [
        "{'status': 'failed'}",
        "{'args.lr': {'$lt': 0.1}, 'ok': True, 'none': None}",
        "{'a': [1, -2, (3, 4)], 'b': {'c': null, 'd': false}}",
    ],
)
def test_a_dict_literal_reads_the_same_everywhere(text):
    expected = dict_literal(text)
    assert expected is not None
    assert parse_dict_option(text, "--args") == expected
    assert parse_filter(text) == expected
    assert transpile(text) == expected  # not JSON: read by the transpiler's dict filter


def test_dict_filter_errors_point_at_the_node_the_reader_names():
    with pytest.raises(QueryTranspilerValueError) as info:
        transpile("{'a': -x}")
    assert "got 'UnaryOp'" in info.value.reason
    assert info.value.column == len("{'a': ")
    with pytest.raises(QueryTranspilerValueError, match="Keys of a dict filter") as info:
        transpile("{'a': 1, **x}")
    assert info.value.column == len("{'a': 1, **")


def test_sweep_values_use_the_python_literal_grammar():
    assert parse_values("0.1,resnet,'a,b'") == [0.1, "resnet", "a,b"]
    assert parse_values("[1, 'x', True]") == [1, "x", True]
    assert parse_values("linspace(0, 1, 3)") == [0.0, 0.5, 1.0]
