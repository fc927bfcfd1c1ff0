"""The sweep expander (``labtasker.sweep``): pure, no server."""

from __future__ import annotations

import math
import random

import pytest

from labtasker import sweep
from labtasker.sweep import SweepError, build, parse_assignment, parse_values


def test_value_forms():
    assert parse_values("0.1,0.01,resnet,[1,2],'a,b'") == [0.1, 0.01, "resnet", [1, 2], "a,b"]
    assert parse_values("range(3)") == [0, 1, 2]
    assert parse_values("range(2, 10, 4)") == [2, 6]
    assert parse_values("linspace(0, 1, 5)") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_values("linspace(0.1, 0.3, 3)") == [0.1, 0.2, 0.3]
    assert parse_values("logspace(-3, -1, 3)") == [0.001, 0.01, 0.1]
    assert parse_values("[[64,64],[128]]") == [[64, 64], [128]]
    assert parse_values('["a", true, null]') == ["a", True, None]
    assert parse_values("[1,2],[3]") == [[1, 2], [3]]
    assert parse_assignment("model-depth=2") == ("model_depth", [2])


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("lr=", "no values after '='"),
        ("lr", "expected KEY=VALUES"),
        ("=1,2", "no key before '='"),
        ("a b=1", "invalid key"),
        ("seed=range(1,)", "argument 2 is empty in 'range(1,)'"),
        ("seed=range(1.5)", "range() takes integers"),
        ("seed=range(1,2,0)", "step must not be 0"),
        ("seed=range(0)", "gives no values"),
        ("x=[1,2", "unclosed '['"),
        ("x=1,2]", "unbalanced ']'"),
        ("x=1,,2", "value 2 of '1,,2' is empty"),
        ("x='a", "unclosed quote"),
        ("x=linspace(0,1)", "takes 3 numbers"),
        ("x=linspace(0,1,0)", "n must be a whole number >= 1"),
        ("x=logspace(0,a,3)", "'a' is not a number"),
        ("x=[]", "gives no values"),
        ("x=1e400", "'1e400' holds a number JSON cannot store"),
        ("x=[1,[2,NaN]]", "holds a number JSON cannot store"),
        ("x=linspace(0,1e309,2)", "holds a number JSON cannot store"),
        ("x=logspace(0,400,2)", "10 to the power 400 is too large"),
    ],
)
def test_malformed_values_name_the_token(text, fragment):
    with pytest.raises(SweepError) as info:
        parse_assignment(text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"--grid {text!r}")
    assert fragment in message


def test_grid_zip_fixed_product_and_order():
    sw = build(
        grid=["lr=0.1,0.01", "model.depth=2,4"],
        zip=["a=1,2,3", "b=x,y,z"],
        fixed={"model": {"name": "r"}, "epochs": 10},
    )
    assert len(sw) == 12
    tasks = list(sw)
    assert len(tasks) == 12
    assert tasks[0] == {
        "model": {"name": "r", "depth": 2},
        "epochs": 10,
        "lr": 0.1,
        "a": 1,
        "b": "x",
    }
    assert tasks[1]["a"] == 2 and tasks[1]["b"] == "y" and tasks[1]["model"]["depth"] == 2
    assert tasks[-1] == {
        "model": {"name": "r", "depth": 4},
        "epochs": 10,
        "lr": 0.01,
        "a": 3,
        "b": "z",
    }
    # every combination exactly once
    combos = {(t["lr"], t["model"]["depth"], t["a"], t["b"]) for t in tasks}
    assert len(combos) == 12
    assert sw.varied == ["lr", "model.depth", "a", "b"]
    # tasks never share a mutable value
    sw = build(grid={"layers": [[1], [2]]})
    first, again = next(iter(sw)), next(iter(sw))
    first["layers"].append(9)
    assert again["layers"] == [1]


def test_python_mapping_forms():
    sw = build(grid={"lr": [0.1, 0.2], "seed": "range(2)", "n": range(1, 3)})
    assert len(sw) == 8
    assert list(sw)[0] == {"lr": 0.1, "seed": 0, "n": 1}


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"zip": ["a=1,2", "b=1,2,3"]}, "--zip keys must have equal lengths: a has 2, b has 3"),
        ({"grid": ["lr=1,2"], "fixed": {"lr": 3}}, "key 'lr' is given twice (fixed and --grid)"),
        ({"grid": ["model.depth=1,2"], "fixed": {"model": 3}}, "is inside 'model'"),
        ({"grid": ["a=1", "a=2"]}, "given twice"),
        ({}, "empty sweep"),
        (
            {"grid": ["a=range(1000)", "b=range(1000)", "c=range(10)"]},
            "10,000,000 tasks, more than the maximum 1,000,000",
        ),
        ({"grid": {"a": []}}, "no values"),
        ({"grid": {"a": 3}}, "expected a list"),
        ({"grid": {"a": [1.0, float("inf")]}}, "--grid a: '[1.0, inf]' holds a number JSON"),
    ],
)
def test_invalid_sweeps(kwargs, fragment):
    with pytest.raises(SweepError, match=None) as info:
        build(**kwargs)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_sweep_file_grid(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "name: depth-study\n"
        "method: grid\n"
        "command: [python, train.py]\n"
        "metric: {name: loss, goal: minimize}\n"
        "parameters:\n"
        "  lr: {values: [0.1, 0.01]}\n"
        "  epochs: {value: 5}\n"
        "  model:\n"
        "    parameters:\n"
        "      depth: {distribution: int_uniform, min: 1, max: 3}\n"
        "      width: {distribution: q_uniform, min: 32, max: 96, q: 32}\n"
    )
    sw = build(sweep=path, fixed={"data": "digits"})
    assert sw.name == "depth-study" and sw.method == "grid"
    assert len(sw) == 2 * 3 * 3
    tasks = list(sw)
    assert tasks[0] == {
        "data": "digits",
        "epochs": 5,
        "lr": 0.1,
        "model": {"depth": 1, "width": 32},
    }
    assert {t["model"]["width"] for t in tasks} == {32, 64, 96}
    assert any("'command'" in n and "labtasker loop" in n for n in sw.notes)
    assert any("'metric'" in n for n in sw.notes)
    # the command line adds grid keys to a grid file
    assert len(build(sweep=path, grid=["seed=range(2)"])) == 36


def test_sweep_file_reads_exponent_numbers_as_floats(tmp_path):
    """``1e-5`` in a sweep file is a number, as in YAML 1.2 and W&B (PyYAML's YAML 1.1 rules
    read it as the string "1e-5"); ints stay ints and text that only looks close stays text."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "method: grid\nparameters:\n"
        "  lr: {values: [1e-3, 0.01, 1E+3, -2e4, .5e1, 1.0e5]}\n"
        "  tag: {values: [1e, e5, 1e5x, 7, 0x10]}\n"
    )
    sw = build(sweep=grid)
    lrs = [t["lr"] for t in sw if t["tag"] == "1e"]
    assert lrs == [0.001, 0.01, 1000.0, -20000.0, 5.0, 100000.0]
    assert all(type(v) is float for v in lrs)
    assert [t["tag"] for t in sw][:5] == ["1e", "e5", "1e5x", 7, 16]
    rnd = tmp_path / "random.yaml"
    rnd.write_text(
        "method: random\nrun_cap: 3\nseed: 1\nparameters:\n"
        "  lr: {distribution: log_uniform_values, min: 1e-5, max: 1e-1}\n"
    )
    values = [t["lr"] for t in build(sweep=rnd)]
    assert len(values) == 3 and all(1e-5 <= v <= 1e-1 for v in values)


RANDOM = {
    "method": "random",
    "run_cap": 400,
    "seed": 7,
    "parameters": {
        "c": {"value": "const"},
        "cat": {"values": ["a", "b"], "probabilities": [0.9, 0.1]},
        "iu": {"distribution": "int_uniform", "min": 1, "max": 3},
        "u": {"distribution": "uniform", "min": -1.0, "max": 1.0},
        "qu": {"distribution": "q_uniform", "min": 0, "max": 10, "q": 2},
        "lu": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
        "qlu": {"distribution": "q_log_uniform_values", "min": 1, "max": 1000, "q": 1},
        "n": {"distribution": "normal", "mu": 5, "sigma": 0.1},
        "qn": {"distribution": "q_normal", "mu": 100, "sigma": 10, "q": 5},
        "ln": {"distribution": "log_normal", "mu": 0, "sigma": 0.5},
        "cons": {"distribution": "constant", "value": 3},
        "categ": {"distribution": "categorical", "values": [1, 2]},
        "nested": {"parameters": {"x": {"min": 0.0, "max": 1.0}}},
    },
}


def test_random_sweep_distributions_and_seed():
    sw = build(sweep=RANDOM)
    tasks = list(sw)
    assert len(tasks) == 400 and sw.seed == 7
    assert tasks == list(build(sweep=RANDOM))  # reproducible
    assert tasks != list(build(sweep=RANDOM, seed=8))
    for t in tasks:
        assert t["c"] == "const" and t["cons"] == 3
        assert t["iu"] in (1, 2, 3) and isinstance(t["iu"], int)
        assert -1 <= t["u"] <= 1
        assert t["qu"] in (0, 2, 4, 6, 8, 10)
        assert 1e-4 <= t["lu"] <= 1e-1
        assert isinstance(t["qlu"], int) and 1 <= t["qlu"] <= 1000
        assert 4 < t["n"] < 6
        assert t["qn"] % 5 == 0
        assert t["ln"] > 0
        assert t["categ"] in (1, 2)
        assert 0 <= t["nested"]["x"] <= 1
    share_a = sum(t["cat"] == "a" for t in tasks) / len(tasks)
    assert 0.8 < share_a < 0.97
    # log-uniform: about as many draws per decade
    decades = [math.floor(math.log10(t["lu"])) for t in tasks]
    assert all(decades.count(d) > 80 for d in (-4, -3, -2))
    assert set(sw.varied) >= {"cat", "nested.x"}


def test_random_without_seed_picks_and_records_one():
    cfg = {**RANDOM, "seed": None, "run_cap": 3}
    sw = build(sweep=cfg)
    assert isinstance(sw.seed, int)
    assert list(sw) == list(build(sweep=cfg, seed=sw.seed))


@pytest.mark.parametrize(
    "config, fragment",
    [
        (
            {"method": "bayes", "parameters": {"a": {"values": [1]}}},
            "method 'bayes' is not supported; supported: grid, random",
        ),
        (
            {"method": "grid", "early_terminate": {"type": "hyperband"}, "parameters": {}},
            "unsupported key(s) early_terminate; supported: method, parameters",
        ),
        (
            {"method": "random", "parameters": {"a": {"distribution": "beta", "min": 0, "max": 1}}},
            "unknown distribution 'beta'; supported: constant, categorical",
        ),
        ({"method": "random", "parameters": {"a": {"values": [1]}}}, "needs 'run_cap'"),
        (
            {
                "method": "grid",
                "parameters": {"a": {"distribution": "uniform", "min": 0, "max": 1}},
            },
            "parameters.a: method grid needs discrete values",
        ),
        (
            {"method": "grid", "parameters": {"a": {"values": [1], "step": 2}}},
            "parameters.a: unknown key(s) step",
        ),
        (
            {
                "method": "random",
                "run_cap": 2,
                "parameters": {"a": {"distribution": "log_uniform_values", "min": 0, "max": 1}},
            },
            "needs min > 0",
        ),
        (
            {
                "method": "random",
                "run_cap": 2,
                "parameters": {"a": {"values": [1, 2], "probabilities": [1]}},
            },
            "'probabilities' must",
        ),
        (
            {
                "method": "random",
                "run_cap": 2,
                "parameters": {"a": {"distribution": "uniform", "min": 2, "max": 1}},
            },
            "greater than",
        ),
        ({"method": "grid"}, "'parameters' is missing"),
        # numbers JSON cannot store: refused when the sweep is built, naming the parameter
        (
            {"method": "grid", "parameters": {"lr": {"values": [1, math.inf]}}},
            "parameters.lr: values: '[1, inf]' holds a number JSON cannot store",
        ),
        (
            {"method": "grid", "parameters": {"lr": {"value": math.nan}}},
            "parameters.lr: value: 'nan' holds a number JSON cannot store",
        ),
        (
            {
                "method": "random",
                "run_cap": 3,
                "parameters": {"lr": {"distribution": "log_uniform", "min": 0, "max": 1000}},
            },
            "parameters.lr: log_uniform takes natural-log exponents: 'max' (1000) gives "
            "exp(1000), beyond the float range",
        ),
        (
            {
                "method": "random",
                "run_cap": 3,
                "parameters": {"lr": {"distribution": "log_normal", "mu": 1000}},
            },
            "parameters.lr: log_normal with mu 1000 and sigma 1 can draw exp(1009)",
        ),
        (
            {
                "method": "random",
                "run_cap": 3,
                "parameters": {"lr": {"distribution": "q_log_normal", "sigma": 100, "q": 1}},
            },
            "parameters.lr: q_log_normal with mu 0 and sigma 100 can draw",
        ),
        (
            {
                "method": "random",
                "run_cap": 3,
                "parameters": {"lr": {"distribution": "uniform", "min": 0, "max": math.inf}},
            },
            "parameters.lr: 'max' must be a finite number within the float range, got inf",
        ),
        (
            {
                "method": "random",
                "run_cap": 3,
                "parameters": {"lr": {"distribution": "uniform", "min": -1e308, "max": 1e308}},
            },
            "parameters.lr: uniform can draw numbers beyond the float range",
        ),
        (
            {
                "method": "grid",
                "parameters": {
                    "lr": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 1e-320}
                },
            },
            "parameters.lr: q_uniform can draw numbers beyond the float range with these "
            "settings (rounded to q = 1e-320)",
        ),
        (  # refused before a list of 10**12 values is built (it would exhaust the memory)
            {
                "method": "grid",
                "parameters": {"n": {"distribution": "int_uniform", "min": 0, "max": 10**12}},
            },
            "parameters.n: int_uniform gives 1,000,000,000,001 values; at most 1,000,000",
        ),
        (
            {
                "method": "random",
                "run_cap": 3,
                "parameters": {"lr": {"distribution": "normal", "mu": 1e308, "sigma": 1e307}},
            },
            "parameters.lr: normal can draw numbers beyond the float range",
        ),
        (
            {
                "method": "random",
                "run_cap": 3,
                "parameters": {"lr": {"values": [1, 2], "probabilities": [0.5, 0.6]}},
            },
            "parameters.lr: 'probabilities' must sum to 1, got 1.1",
        ),
        (
            {
                "method": "random",
                "run_cap": 3,
                "parameters": {"lr": {"values": [1, 2], "probabilities": [0.2, 0.2]}},
            },
            "parameters.lr: 'probabilities' must sum to 1, got 0.4",
        ),
    ],
)
def test_invalid_sweep_files(config, fragment):
    with pytest.raises(SweepError) as info:
        build(sweep=config)
    assert fragment in str(info.value)


def test_random_draws_near_the_float_range_are_allowed():
    """The limits refuse only settings that can leave the float range: up to exp(709) and
    probabilities that sum to 1 within rounding are fine."""
    near = {
        "method": "random",
        "run_cap": 50,
        "seed": 1,
        "parameters": {
            "lu": {"distribution": "log_uniform", "min": 700, "max": 709},
            "ln": {"distribution": "log_normal", "mu": 600, "sigma": 10},
            "cat": {"values": ["a", "b", "c"], "probabilities": [0.1, 0.2, 0.7 + 5e-7]},
        },
    }
    tasks = list(build(sweep=near))
    assert len(tasks) == 50
    assert all(math.isfinite(t["lu"]) and math.isfinite(t["ln"]) for t in tasks)
    assert {t["cat"] for t in tasks} <= {"a", "b", "c"}
    # the last guard of a draw, behind the checks of build(): a SweepError, not OverflowError
    wild = sweep.Distribution("log_uniform", {"min": 1000, "max": 1001})
    with pytest.raises(SweepError, match="parameters.x: distribution log_uniform drew a number"):
        wild.draw(random.Random(0), "parameters.x")


def test_random_sweep_refuses_grid_options():
    with pytest.raises(SweepError, match="cannot be combined with a random sweep"):
        build(sweep={**RANDOM, "run_cap": 2}, grid=["x=1,2"])


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(SweepError, match="No such file"):
        build(sweep=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [grid\n")
    with pytest.raises(SweepError, match="invalid YAML"):
        build(sweep=bad)


def test_large_grid_is_lazy():
    sw = build(grid=["a=range(1000)", "b=range(1000)"])
    assert len(sw) == 1_000_000
    assert sw.preview(2) == [{"a": 0, "b": 0}, {"a": 0, "b": 1}]
    assert sweep.MAX_TASKS == 1_000_000
