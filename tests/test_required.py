"""Unit tests of ``Required`` and of the decorator's set-up (no network)."""

from __future__ import annotations

from typing import Annotated

import pytest

from labtasker.client.required import (
    MixedAnnotatedAndDefaultStyleError,
    MultipleLabtaskerAnnotationsError,
    Required,
    bind_call,
    collect_required,
    lookup,
    required_fields_of,
)
from labtasker.exceptions import LabtaskerRuntimeError, LabtaskerTypeError, LabtaskerValueError


def call(func, task_args, *args, pass_args_dict=False, **kwargs):
    params = collect_required(func)
    pos, kw = bind_call(func, params, task_args, args, kwargs, pass_args_dict)
    return func(*pos, **kw)


def test_default_style_and_annotated_style_collect_fields():
    def job(a=Required(), b: Annotated[int, Required(alias="cfg.b")] = 0, c=1, d: int = 2):
        pass

    params = collect_required(job)
    assert [(p.name, p.field) for p in params] == [("a", "a"), ("b", "cfg.b")]
    assert required_fields_of(params) == ["a", "cfg.b"]


def test_annotated_with_string_annotations():
    # annotations as strings (from __future__ import annotations) are resolved
    ns: dict = {}
    exec(
        "from __future__ import annotations\n"
        "from typing import Annotated\n"
        "from labtasker.client.required import Required\n"
        "def job(x: Annotated[str, Required(alias='p.q')]): return x\n",
        ns,
    )
    assert required_fields_of(collect_required(ns["job"])) == ["p.q"]
    assert call(ns["job"], {"p": {"q": "v"}}) == "v"


def test_mixed_and_multiple_errors():
    def mixed(a: Annotated[int, Required()] = Required()):
        pass

    def multiple(a: Annotated[int, Required(), Required(alias="x")]):
        pass

    with pytest.raises(MixedAnnotatedAndDefaultStyleError):
        collect_required(mixed)
    with pytest.raises(MultipleLabtaskerAnnotationsError):
        collect_required(multiple)
    assert issubclass(MixedAnnotatedAndDefaultStyleError, LabtaskerValueError)


def test_invalid_alias_and_resolver():
    with pytest.raises(LabtaskerValueError):
        Required(alias="bad key")
    with pytest.raises(LabtaskerTypeError):
        Required(resolver=42)


def test_values_bound_no_type_cast_without_resolver():
    def job(lr=Required(), bs: Annotated[int, Required()] = 0):
        return lr, bs

    assert call(job, {"lr": "0.1", "bs": "32"}) == ("0.1", "32")  # annotations don't cast


def test_resolver_applied_and_failures():
    def job(lr=Required(resolver=float)):
        return lr

    assert call(job, {"lr": "0.5"}) == 0.5
    with pytest.raises(LabtaskerRuntimeError, match="Failed to process field 'lr'"):
        call(job, {"lr": "abc"})


def test_lookup_exact_dotted_key_first_then_path():
    assert lookup({"a.b": 1, "a": {"b": 2}}, "a.b") == 1
    assert lookup({"a": {"b": 2}}, "a.b") == 2
    assert lookup({"a": [5, 6]}, "a.1") == 6
    assert lookup({"n": None}, "n") is None
    with pytest.raises(LabtaskerRuntimeError, match="Required field 'a.c' not found"):
        lookup({"a": {"b": 2}}, "a.c")


def test_user_positional_and_keyword_arguments_are_forwarded():
    def job(data, lr=Required(), *, scale=1.0, tag: Annotated[str, Required()] = ""):
        return data, lr, scale, tag

    assert call(job, {"lr": 0.1, "tag": "t"}, "D", scale=2.0) == ("D", 0.1, 2.0, "t")


def test_injected_positionally_when_more_positionals_follow():
    def job(a=Required(), b=None, c=None):
        return a, b, c

    assert call(job, {"a": 1}, "B", "C") == (1, "B", "C")
    assert call(job, {"a": 1}, c="C") == (1, None, "C")


def test_positional_only_and_var_positional():
    def job(x=Required(), /, *rest):
        return x, rest

    assert call(job, {"x": 1}, 2, 3) == (1, (2, 3))


def test_pass_args_dict_prepends_task_args():
    def job(args, lr=Required()):
        return args, lr

    assert call(job, {"lr": 3}, pass_args_dict=True) == ({"lr": 3}, 3)


def test_binding_errors():
    def job(a=Required(), b=None):
        return a, b

    with pytest.raises(LabtaskerValueError, match="left blank"):
        call(job, {"a": 1}, a=5)
    with pytest.raises(LabtaskerValueError, match="Too many positional"):
        call(job, {"a": 1}, 1, 2, 3)
    with pytest.raises(LabtaskerValueError):
        call(job, {"a": 1}, nope=1)


def test_decorator_does_nothing_at_decoration_time(monkeypatch, tmp_path):
    import labtasker

    # no config, no server: decoration must still succeed (1.0.1 connected at decoration)
    monkeypatch.setenv("LABTASKER_ROOT", str(tmp_path / "nowhere"))

    @labtasker.loop(required_fields=["extra"], eta_max="1h")
    def job(a=Required(), b: Annotated[int, Required(alias="x.y")] = 0):
        pass

    assert job.required_fields == ["extra", "a", "x.y"]


def test_decorator_validates_arguments_eagerly():
    import labtasker

    with pytest.raises(LabtaskerTypeError):
        labtasker.loop(required_fields="a")
    with pytest.raises(LabtaskerTypeError):
        labtasker.loop(required_fields=[1])
    with pytest.raises(LabtaskerValueError):
        labtasker.loop(eta_max="soon")
