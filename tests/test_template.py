"""Unit tests of the ``%(a.b)`` command template, including the 1.0.1 limitations it lifts."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from labtasker.client.template import CommandTemplate, Template, render_value, resolve
from labtasker.exceptions import CmdKeyError, CmdSyntaxError, CmdTypeError

NASTY = [
    "plain",
    "two words",
    "it's",
    'say "hi"',
    "both ' and \"",
    "$HOME",
    "${HOME}",
    "`id`",
    "$(id)",
    "100%",
    "%(x)",
    "%d %s",
    "a;b && c || d | e > f < g",
    "line1\nline2",
    "tab\there",
    "  leading and trailing  ",
    "",
    "-n",
    "--flag=value",
    "#comment",
    "*.py ?",
    "~",
    "back\\slash\\",
    "unicodé ✓ 日本語 🚀",
    "a,b,c",
    "{}",
    "!",
]


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    "text, fields",
    [
        ("python run.py", []),
        ("%(a)", ["a"]),
        ("--lr %(lr) --bs %(bs)", ["lr", "bs"]),
        ("%(a.b.c)", ["a.b.c"]),
        ("%( a . b )", ["a.b"]),
        ("%(\ta\n.\r\nb )", ["a.b"]),
        ("%(a-b)", ["a-b"]),
        ("%(_x1)", ["_x1"]),
        ("%(1)", ["1"]),
        ("%(a)%(a)", ["a"]),
        ("x=%(a),y=%(b)", ["a", "b"]),
        ("%(a))", ["a"]),  # a ')' outside a variable is text
        ("100% done (really)", []),
        ("%%(a)", []),  # escaped
        ("printf '%s' %(msg)", ["msg"]),
    ],
)
def test_required_fields(text, fields):
    assert CommandTemplate.from_shell(text).required_fields() == fields


def test_required_fields_argv_union_in_order():
    tpl = CommandTemplate.from_argv(["python", "%(b)", "--a=%(a)", "%(b)", "%(c.d)"])
    assert tpl.required_fields() == ["b", "a", "c.d"]


def test_required_fields_cut_at_list_index():
    tpl = CommandTemplate.from_argv(["%(seeds.0)", "%(seeds.1)", "%(cfg.layers.2.size)"])
    assert tpl.required_fields() == ["seeds", "cfg.layers"]


@pytest.mark.parametrize(
    "text, column",
    [
        ("%()", 2),
        ("%((a)", 2),
        ("ab %(a b)", 7),
        ("%(a..b)", 4),
        ("%(a.)", 4),
        ("%(.a)", 2),
        ("%(a", 0),
        ("x %(a + 1)", 6),
        ("%(a$)", 3),
        ("%(é)", 2),
    ],
)
def test_syntax_errors_point_at_column(text, column):
    with pytest.raises(CmdSyntaxError) as info:
        Template(text)
    msg = str(info.value)
    assert f"column {column + 1}" in msg
    lines = msg.splitlines()
    # last two lines: the text, then a caret under the offending character
    assert lines[-2] == "  " + text
    assert lines[-1] == "  " + " " * column + "^"


def test_syntax_error_multiline_shows_line():
    with pytest.raises(CmdSyntaxError) as info:
        Template("echo ok\necho %(a b)\n")
    msg = str(info.value)
    assert "line 2, column 10" in msg
    assert msg.splitlines()[-2:] == ["  echo %(a b)", "  " + " " * 9 + "^"]


def test_argv_syntax_error_names_element():
    with pytest.raises(CmdSyntaxError, match="element 3"):
        CommandTemplate.from_argv(["python", "x.py", "%(bad key)"])


def test_empty_commands_rejected():
    with pytest.raises(CmdSyntaxError):
        CommandTemplate.from_argv([])
    with pytest.raises(CmdSyntaxError):
        CommandTemplate.from_shell("   ")


# ------------------------------------------------------------------ rendering values
@pytest.mark.parametrize(
    "value, text",
    [
        ("s", "s"),
        ("", ""),
        (1, "1"),
        (-2, "-2"),
        (0.001, "0.001"),
        (1.0, "1.0"),
        (True, "True"),
        (False, "False"),
        (None, "None"),
        ({"x": 1, "y": [True, None]}, '{"x": 1, "y": [true, null]}'),
        ([1, "a b"], '[1, "a b"]'),
        ({"q": 'it\'s "x"'}, '{"q": "it\'s \\"x\\""}'),
        ({"u": "日本"}, '{"u": "日本"}'),
        ({}, "{}"),
        ([], "[]"),
    ],
)
def test_render_value(value, text):
    assert render_value(value) == text


def test_resolve_paths():
    args = {"a": {"b": {"c": 3}}, "l": [10, {"k": "v"}], "d": {"0": "zero"}, "n": None}
    assert resolve(args, ["a", "b", "c"]) == 3
    assert resolve(args, ["l", "1", "k"]) == "v"
    assert resolve(args, ["d", "0"]) == "zero"
    assert resolve(args, ["n"]) is None
    with pytest.raises(CmdKeyError, match="'a.x'"):
        resolve(args, ["a", "x"])
    with pytest.raises(CmdKeyError):
        resolve(args, ["missing"])
    with pytest.raises(CmdKeyError, match="out of range"):
        resolve(args, ["l", "5"])
    with pytest.raises(CmdTypeError):
        resolve(args, ["a", "b", "c", "d"])
    with pytest.raises(CmdTypeError):
        resolve(args, ["l", "k"])


def test_missing_key_at_render():
    tpl = CommandTemplate.from_argv(["echo", "%(a)"])
    with pytest.raises(CmdKeyError):
        tpl.render({"b": 1})


# ------------------------------------------------------------------ argv mode
@pytest.mark.parametrize("value", NASTY)
def test_argv_mode_keeps_value_as_one_literal_entry(value):
    tpl = CommandTemplate.from_argv(["prog", "%(v)", "--opt=%(v)", "lit eral"])
    assert tpl.render({"v": value}) == ["prog", value, "--opt=" + value, "lit eral"]


def test_argv_mode_structured_values():
    tpl = CommandTemplate.from_argv(["p", "%(cfg)", "%(xs)", "%(f)", "%(n)", "%(x.y)"])
    out = tpl.render({"cfg": {"a": [1, 2]}, "xs": [1, "b"], "f": False, "n": None, "x": {"y": 2.5}})
    assert out == ["p", '{"a": [1, 2]}', '[1, "b"]', "False", "None", "2.5"]


def test_escape_renders_literal_percent_paren():
    assert Template("%%(a) and %(a)").render({"a": "x"}) == "%(a) and x"
    assert Template("100%% (done)").render({}) == "100%% (done)"


# ------------------------------------------------------------------ shell mode
@pytest.mark.parametrize("value", NASTY)
def test_shell_mode_value_is_one_literal_word(value):
    tpl = CommandTemplate.from_shell("printf '%s\\0' %(v) x%(v)y")
    script = tpl.render({"v": value})
    assert shlex.split(script) == ["printf", "%s\\0", value, "x" + value + "y"]
    # and a real /bin/sh agrees: the value reaches the program byte for byte
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:2] == [value, "x" + value + "y"]


# Where a variable stands in the user's shell code, and what printf prints (each argument
# ended by a NUL): the value must come out byte for byte in every kind of quoting.
QUOTED_PLACES = [
    ('printf "%s\\0" --name "%(v)"', ["--name", "{v}"]),  # inside "..."
    ("printf '%s\\0' 'pre %(v) post'", ["pre {v} post"]),  # inside '...'
    ("printf '%s\\0' \"it's %(v)\"", ["it's {v}"]),  # a ' inside "..." does not open quotes
    ('printf "%s\\0" "a $(printf %s %(v)) b"', ["a {v} b"]),  # $(...) inside "...": bare again
    ("printf '%s\\0' \"`printf %s %(v)`\"", ["{v}"]),  # backticks inside "..."
    ('printf "%s\\0" \\"%(v)', ['"{v}']),  # an escaped quote opens nothing
    # here-documents: unquoted (the body expands $, backticks and \\) and quoted (literal)
    ("cat <<EOF\nval=%(v)\nEOF\nprintf '\\0'", ["val={v}\n"]),
    ("cat <<'EOF'\nval=%(v)\nEOF\nprintf '\\0'", ["val={v}\n"]),
    ("cat <<-EOF\n\tval=%(v)\n\tEOF\nprintf '\\0'", ["val={v}\n"]),
    # a here-document opened inside $(...) (its output loses trailing newlines: hence "|")
    ("printf '%s\\0' \"$(cat <<EOF\nval=%(v)|\nEOF\n)\"", ["val={v}|"]),
    ("printf '%s\\0' \"$(cat <<'EOF'\n%(v)|\nEOF\n)\" x", ["{v}|", "x"]),
    # not here-documents: arithmetic, a here-string, and after a comment that holds "<<"
    ("printf '%s\\0' $((1<<2)) %(v)", ["4", "{v}"]),
    ("printf '%s\\0' %(v) # a << b\nprintf '%s\\0' %(v)", ["{v}", "{v}"]),
]


@pytest.mark.parametrize("value", NASTY)
@pytest.mark.parametrize("place, expected", QUOTED_PLACES)
def test_shell_mode_value_is_literal_inside_quotes(place, expected, value, tmp_path):
    """A variable inside the user's own quotes (``--name "%(name)"``) is quoted for those
    quotes: the value stays literal text (no extra quote characters, no ``$(...)`` run). Run
    in a scratch directory: when quoting fails, values such as ``e > f`` do run."""
    script = CommandTemplate.from_shell(place).render({"v": value})
    out = subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, check=True, cwd=tmp_path
    ).stdout
    assert out.decode().split("\0")[:-1] == [e.replace("{v}", value) for e in expected], script


def test_shell_mode_here_document_and_comment_values_cannot_end_them(tmp_path):
    """A value holding the delimiter's line would end a here-document early (the rest would
    run): refused when rendered. A newline would end a comment the same way: it becomes a
    space there."""
    tpl = CommandTemplate.from_shell("cat <<EOF\n%(v)\nEOF")
    with pytest.raises(CmdTypeError, match="EOF"):
        tpl.render({"v": "a\nEOF\ntouch pwned"})
    script = CommandTemplate.from_shell("true # %(v)").render({"v": "x\ntouch pwned"})
    subprocess.run(["/bin/sh", "-c", script], check=True, cwd=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_shell_mode_refuses_a_variable_inside_ansi_c_quotes():
    with pytest.raises(CmdSyntaxError, match=r"\$'...'") as info:
        CommandTemplate.from_shell("printf $'%s\\n' $'a %(v)'")
    assert "column 20" in str(info.value)
    CommandTemplate.from_shell("printf $'%s\\n' %(v)")  # outside them: fine


def test_shell_mode_literal_text_is_shell_code():
    tpl = CommandTemplate.from_shell("echo %(a) | tr a-z A-Z; echo $((1+2))")
    script = tpl.render({"a": "x; echo pwned"})
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True).stdout
    assert out == "X; ECHO PWNED\n3\n"


def test_shell_mode_dict_value_is_one_word():
    tpl = CommandTemplate.from_shell(
        "python -c 'import sys,json; print(json.loads(sys.argv[1]))' %(c)"
    )
    script = tpl.render({"c": {"k": "it's $x"}})
    assert shlex.split(script)[-1] == '{"k": "it\'s $x"}'


def test_str_of_template():
    assert str(CommandTemplate.from_argv(["a b", "%(x)"])) == "'a b' '%(x)'"
    assert str(CommandTemplate.from_shell("echo %(x)")) == "echo %(x)"
