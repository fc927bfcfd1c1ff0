"""The sweep expander: grids, zips and W&B-style sweep files -> a sequence of task args.

Pure (no server, no network): ``labtasker task submit --grid/--zip/--sweep`` and
``labtasker.submit_sweep`` build a :class:`Sweep` here and submit what it yields.

* ``--grid KEY=VALUES`` (repeatable): the cartesian product of every grid key. ``VALUES`` is
  one of

  - a comma list of literals, each cast like ``task submit -- --k v`` casts (``0.1`` -> float,
    ``resnet`` -> str, ``[1,2]`` -> list): ``lr=0.1,0.01``;
  - ``range(start, stop[, step])`` (integers, as Python's ``range``);
  - ``linspace(a, b, n)``: ``n`` evenly spaced numbers from ``a`` to ``b``, both included;
  - ``logspace(a, b, n)``: ``10**x`` for ``x`` in ``linspace(a, b, n)``;
  - a JSON list: ``layers=[[64,64],[128]]`` (two values).

  Dotted keys nest: ``model.depth=2,4`` -> ``{"model": {"depth": 2}}``.
* ``--zip KEY=VALUES`` (repeatable): keys varied together (equal lengths), one factor of the
  product.
* A sweep configuration (the W&B format, a mapping or a YAML file): ``method: grid | random``,
  ``parameters`` (``value``, ``values``, ``distribution`` ...; nested ``parameters`` for dotted
  keys), ``run_cap`` (random: how many tasks), ``seed`` (random: reproducible), ``name``.

Order: the first grid key varies slowest, the zip group fastest (``itertools.product``).
Every error is a :class:`SweepError` (a ``LabtaskerValueError``) with a one-line message that
quotes the offending option or key; nothing is yielded from an invalid sweep.
"""

from __future__ import annotations

import builtins
import itertools
import json
import math
import os
import random
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from labtasker.exceptions import LabtaskerValueError
from labtasker.keys import KEY_PATTERN, KeyConflictError, unflatten
from labtasker.literals import non_finite, non_finite_path, python_literal, python_literal_or_text

MAX_TASKS = 1_000_000  # a sweep larger than this is refused (bounded cost)
CONFIRM_TASKS = 10_000  # the CLI asks for --yes beyond this many tasks

METHODS = ("grid", "random")
DISTRIBUTIONS = (
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform_values",
    "q_log_uniform_values",
    "log_uniform",
    "normal",
    "q_normal",
    "log_normal",
    "q_log_normal",
)
PARAMETER_KEYS = (
    "value",
    "values",
    "distribution",
    "min",
    "max",
    "mu",
    "sigma",
    "q",
    "probabilities",
    "parameters",
)
# Top-level keys of a sweep file: used, or accepted and ignored with a note.
FILE_KEYS = ("method", "parameters", "run_cap", "seed", "name")
IGNORED_FILE_KEYS = {
    "command": "the command lives in `labtasker loop`",
    "program": "the program lives in `labtasker loop`",
    "metric": "grid and random sweeps do not use a metric",
    "description": "not stored",
    "project": "W&B only",
    "entity": "W&B only",
}


class SweepError(LabtaskerValueError):
    """An invalid sweep; the message is one line naming the offending token."""


# The largest x whose exp(x) is still a float (about 709.78); exp of more overflows.
_LOG_MAX = math.log(sys.float_info.max)
# How far from mu (in sigmas) random.gauss can draw: its Box-Muller step takes the square root
# of -2 * log(1 - random()), and 1 - random() is at least 2**-53, so |z| <= sqrt(106 log 2),
# about 8.57. Bounds on normal and log_normal draws below use it.
_GAUSS_Z_MAX = math.sqrt(-2.0 * math.log(2.0**-53))
# How far the probabilities of a categorical distribution may sum away from 1 (rounding).
PROBABILITY_TOLERANCE = 1e-6


# ----------------------------------------------------------------------------- values
_FUNC = re.compile(r"^\s*(range|linspace|logspace)\s*\((.*)\)\s*$", re.S)


def _tidy(x: float) -> float:
    """Round away binary noise (``0.30000000000000004`` -> ``0.3``): 15 significant digits."""
    return float(f"{x:.15g}")


def _number_args(name: str, inner: str, where: str) -> list[float | int]:
    parts = inner.split(",")
    out: list[float | int] = []
    for i, raw in enumerate(parts):
        raw = raw.strip()
        if not raw:
            raise SweepError(f"{where}: {name}(): argument {i + 1} is empty in '{name}({inner})'")
        try:
            value = python_literal(raw)
        except ValueError:
            value = None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SweepError(f"{where}: {name}(): {raw!r} is not a number")
        out.append(value)
    return out


def _function_values(name: str, inner: str, where: str) -> list:
    nums = _number_args(name, inner, where)
    if name == "range":
        if not 1 <= len(nums) <= 3:
            raise SweepError(
                f"{where}: range() takes 1 to 3 integers, got {len(nums)} in 'range({inner})'"
            )
        if not all(isinstance(n, int) for n in nums):
            raise SweepError(
                f"{where}: range() takes integers, got 'range({inner})'; use "
                "linspace(a, b, n) for floats"
            )
        if len(nums) == 3 and nums[2] == 0:
            raise SweepError(f"{where}: range() step must not be 0 in 'range({inner})'")
        r = range(*(int(n) for n in nums))
        if len(r) > MAX_TASKS:
            raise SweepError(
                f"{where}: 'range({inner})' has {len(r):,} values; at most {MAX_TASKS:,}"
            )
        return list(r)
    if len(nums) != 3:
        raise SweepError(
            f"{where}: {name}() takes 3 numbers (a, b, n), got {len(nums)} in '{name}({inner})'"
        )
    a, b, n = nums
    if not isinstance(n, int) or n < 1:
        raise SweepError(f"{where}: {name}(): n must be a whole number >= 1, got {n!r}")
    if n > MAX_TASKS:
        raise SweepError(f"{where}: {name}(): n = {n:,} exceeds {MAX_TASKS:,}")
    points = [a] if n == 1 else [a + (b - a) * i / (n - 1) for i in range(n)]
    if name == "linspace":
        return [_tidy(float(x)) for x in points]
    try:
        return [_tidy(10.0**x) for x in points]
    except OverflowError:
        top = max(points)
        raise SweepError(
            f"{where}: logspace({inner}): 10 to the power {top:g} is too large"
        ) from None


def _split_top_level(text: str, where: str) -> list[str]:
    """Split at commas outside brackets and quotes; unbalanced brackets are an error."""
    parts: list[str] = []
    depth: list[str] = []
    quote: str | None = None
    start = 0
    pairs = {")": "(", "]": "[", "}": "{"}
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth.append(ch)
        elif ch in ")]}":
            if not depth or depth[-1] != pairs[ch]:
                raise SweepError(f"{where}: unbalanced {ch!r} at position {i + 1} of {text!r}")
            depth.pop()
        elif ch == "," and not depth:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quote:
        raise SweepError(f"{where}: unclosed quote {quote} in {text!r}")
    if depth:
        raise SweepError(f"{where}: unclosed {depth[-1]!r} in {text!r}")
    parts.append(text[start:])
    return parts


def parse_values(text: str, where: str = "value") -> list:
    """The values of one ``--grid``/``--zip`` option (the part after ``=``); see the module
    docstring for the forms. ``where`` names the option in error messages. Raises
    :class:`SweepError`; an empty list of values is an error too."""
    if not isinstance(text, str) or not text.strip():
        raise SweepError(f"{where}: no values after '='")
    stripped = text.strip()
    m = _FUNC.match(stripped)
    if m:
        values = _function_values(m.group(1), m.group(2), where)
    elif stripped.startswith("["):
        parts = _split_top_level(stripped, where)
        if len(parts) == 1:
            try:
                values = json.loads(stripped)
            except ValueError:
                try:
                    values = python_literal(stripped)
                except ValueError:
                    raise SweepError(f"{where}: {stripped!r} is not a JSON list") from None
            if not isinstance(values, list):
                raise SweepError(f"{where}: {stripped!r} is not a JSON list")
        else:
            values = _literal_list(parts, stripped, where)
    else:
        values = _literal_list(_split_top_level(stripped, where), stripped, where)
    if not values:
        raise SweepError(f"{where}: {stripped!r} gives no values")
    check_storable(values, where, stripped)
    return values


def check_storable(values: Any, where: str, text: str) -> None:
    """Refuse values JSON cannot store (a number beyond the float range such as ``1e400``,
    infinity, NaN): they would reach the server as ``null`` or not at all. Raises
    :class:`SweepError` naming ``where`` and the ``text`` the values came from."""
    if non_finite(values):
        raise SweepError(
            f"{where}: {text!r} holds a number JSON cannot store (beyond the float range, "
            "infinite or NaN); to keep it as text, quote it"
        )


def _literal_list(parts: list[str], text: str, where: str) -> list:
    out = []
    for i, part in enumerate(parts):
        if not part.strip():
            raise SweepError(f"{where}: value {i + 1} of {text!r} is empty")
        out.append(python_literal_or_text(part.strip()))
    return out


def parse_assignment(text: str, option: str = "--grid") -> tuple[str, list]:
    """``"lr=0.1,0.01"`` -> ``("lr", [0.1, 0.01])``; dashes in the key become ``_``.

    Raises :class:`SweepError` quoting ``option`` and ``text``."""
    where = f"{option} {text!r}"
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep:
        raise SweepError(f"{where}: expected KEY=VALUES, like lr=0.1,0.01")
    if not key:
        raise SweepError(f"{where}: no key before '='")
    if not KEY_PATTERN.match(key):
        raise SweepError(
            f"{where}: invalid key {key!r}: use letters, digits, '_' or '-', "
            "dot-separated (like model.depth)"
        )
    return key, parse_values(raw, where)


# ----------------------------------------------------------------------------- random
def _need(spec: Mapping, name: str, key: str, where: str) -> float:
    if key not in spec:
        raise SweepError(f"{where}: distribution {name} needs '{key}'")
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SweepError(f"{where}: '{key}' must be a number, got {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        shown = (
            repr(value) if isinstance(value, float) else f"an integer of {len(str(value))} digits"
        )
        raise SweepError(
            f"{where}: '{key}' must be a finite number within the float range, got {shown}"
        )
    return value


def _check_reach(name: str, spec: Mapping, where: str) -> None:
    """Refuse settings under which a draw of a random distribution could be a number beyond
    the float range (JSON cannot store it, and math.exp or round() would fail on it), before
    anything is drawn. The bounds are exact for uniform draws and use ``_GAUSS_Z_MAX`` for
    normal ones."""
    # every number here was checked by _need: finite, and an int within the float range
    lo, hi = float(spec.get("min", 0)), float(spec.get("max", 0))
    mu, sigma = float(spec.get("mu", 0.0)), float(spec.get("sigma", 1.0))
    if name == "log_uniform":  # min/max are natural-log exponents
        if hi > _LOG_MAX:
            raise SweepError(
                f"{where}: log_uniform takes natural-log exponents: 'max' ({spec['max']}) "
                f"gives exp({spec['max']}), beyond the float range (at most {_LOG_MAX:.2f}); for plain "
                "values use log_uniform_values"
            )
        reach = math.exp(hi)
    elif name in ("log_normal", "q_log_normal"):
        top = mu + _GAUSS_Z_MAX * sigma
        if top > _LOG_MAX:
            raise SweepError(
                f"{where}: {name} with mu {spec.get('mu', 0)} and sigma {spec.get('sigma', 1)} "
                f"can draw exp({top:.4g}), "
                f"beyond the float range (mu + {_GAUSS_Z_MAX:.2f} * sigma must be at most "
                f"{_LOG_MAX:.2f})"
            )
        reach = math.exp(top)
    elif name in ("normal", "q_normal"):
        reach = abs(mu) + _GAUSS_Z_MAX * sigma
    elif name in ("uniform", "q_uniform"):
        reach = max(abs(lo), abs(hi))
        if not math.isfinite(hi - lo):  # random.uniform computes min + (max - min) * r
            reach = math.inf
    elif name in ("log_uniform_values", "q_log_uniform_values"):
        reach = hi
    else:
        return
    rounded = name.startswith("q_")
    q = float(spec.get("q", 1))
    # rounding to q divides by q (and q_uniform's grid counts (max - min) / q values)
    if not math.isfinite(reach) or (rounded and not math.isfinite(2 * reach / q)):
        raise SweepError(
            f"{where}: {name} can draw numbers beyond the float range with these settings"
            + (f" (rounded to q = {q})" if rounded else "")
        )


def _quantize(x: float, q: float) -> float | int:
    out = round(x / q) * q
    return out if isinstance(out, int) else _tidy(out)


@dataclass(frozen=True)
class Distribution:
    """One random parameter: ``sample(rng)`` draws a value (W&B semantics)."""

    name: str
    spec: dict[str, Any]

    def sample(self, rng: random.Random) -> Any:
        s, n = self.spec, self.name
        if n == "constant":
            return s["value"]
        if n == "categorical":
            values = s["values"]
            weights = s.get("probabilities")
            return values[rng.choices(range(len(values)), weights=weights)[0]]
        if n == "int_uniform":
            return rng.randint(s["min"], s["max"])
        if n in ("uniform", "q_uniform"):
            x = rng.uniform(s["min"], s["max"])
            return _quantize(x, s.get("q", 1)) if n == "q_uniform" else x
        if n in ("log_uniform_values", "q_log_uniform_values"):
            x = math.exp(rng.uniform(math.log(s["min"]), math.log(s["max"])))
            return _quantize(x, s.get("q", 1)) if n.startswith("q_") else x
        if n == "log_uniform":  # min/max are natural-log exponents
            return math.exp(rng.uniform(s["min"], s["max"]))
        mu, sigma = s.get("mu", 0.0), s.get("sigma", 1.0)
        x = rng.gauss(mu, sigma)
        if n == "normal":
            return x
        if n == "q_normal":
            return _quantize(x, s.get("q", 1))
        x = math.exp(x)  # log_normal, q_log_normal
        return _quantize(x, s.get("q", 1)) if n == "q_log_normal" else x

    def draw(self, rng: random.Random, where: str) -> Any:
        """:meth:`sample`, raising :class:`SweepError` naming ``where`` instead of yielding
        (or failing on) a number beyond the float range. ``_check_reach`` refuses the settings
        that could draw one, so this is a last guard."""
        try:
            value = self.sample(rng)
        except (OverflowError, ValueError):
            value = math.inf
        if non_finite(value):
            raise SweepError(
                f"{where}: distribution {self.name} drew a number beyond the float range"
            )
        return value

    def grid_values(self, where: str) -> list:
        """The finite values of a discrete distribution (grid method)."""
        s, n = self.spec, self.name
        if n == "constant":
            return [s["value"]]
        if n == "categorical":
            return list(s["values"])
        if n == "int_uniform":
            count = s["max"] - s["min"] + 1
            if count > MAX_TASKS:  # checked before the list is built (bounded cost)
                raise SweepError(
                    f"{where}: int_uniform gives {count:,} values; at most {MAX_TASKS:,}"
                )
            return list(range(s["min"], s["max"] + 1))
        if n == "q_uniform":
            q = s.get("q", 1)
            count = math.floor((s["max"] - s["min"]) / q + 1e-9) + 1
            if count > MAX_TASKS:
                raise SweepError(
                    f"{where}: q_uniform gives {count:,} values; at most {MAX_TASKS:,}"
                )
            return [_quantize(s["min"] + i * q, q) for i in range(count)]
        raise SweepError(
            f"{where}: method grid needs discrete values (value, values, or the "
            f"distributions constant, categorical, int_uniform, q_uniform), got "
            f"distribution {n}"
        )


def _distribution(spec: Mapping, where: str) -> Distribution:
    """Validate one parameter of a sweep file (``value``/``values``/``distribution``...)."""
    unknown = [k for k in spec if k not in PARAMETER_KEYS]
    if unknown:
        raise SweepError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))}; supported: "
            f"{', '.join(PARAMETER_KEYS)}"
        )
    name = spec.get("distribution")
    if name is None:  # inferred, as W&B does
        if "value" in spec:
            name = "constant"
        elif "values" in spec:
            name = "categorical"
        elif "min" in spec and "max" in spec:
            ints = all(
                isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max")
            )
            name = "int_uniform" if ints else "uniform"
        else:
            raise SweepError(f"{where}: give value, values, min/max or a distribution")
    if name not in DISTRIBUTIONS:
        raise SweepError(
            f"{where}: unknown distribution {name!r}; supported: {', '.join(DISTRIBUTIONS)}"
        )
    clean = dict(spec)
    clean.pop("distribution", None)
    if name == "constant":
        if "value" not in spec:
            raise SweepError(f"{where}: distribution constant needs 'value'")
        check_storable(spec["value"], f"{where}: value", repr(spec["value"]))
    elif name == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: 'values' must be a non-empty list")
        check_storable(values, f"{where}: values", repr(values))
        probs = spec.get("probabilities")
        if probs is not None:
            if (
                not isinstance(probs, list)
                or len(probs) != len(values)
                or any(
                    isinstance(p, bool)
                    or not isinstance(p, (int, float))
                    or not math.isfinite(p)
                    or p < 0
                    for p in probs
                )
            ):
                raise SweepError(
                    f"{where}: 'probabilities' must be {len(values)} numbers >= 0 "
                    "(one per value) that sum to 1"
                )
            total = math.fsum(probs)
            if abs(total - 1) > PROBABILITY_TOLERANCE:
                raise SweepError(f"{where}: 'probabilities' must sum to 1, got {total:.10g}")
    elif name in ("normal", "q_normal", "log_normal", "q_log_normal"):
        for key in ("mu", "sigma"):
            if key in spec:
                _need(spec, name, key, where)
        if spec.get("sigma", 1) < 0:
            raise SweepError(f"{where}: 'sigma' must be >= 0")
    else:
        lo, hi = _need(spec, name, "min", where), _need(spec, name, "max", where)
        if lo > hi:
            raise SweepError(f"{where}: 'min' ({lo}) is greater than 'max' ({hi})")
        if name == "int_uniform" and not (isinstance(lo, int) and isinstance(hi, int)):
            raise SweepError(f"{where}: int_uniform needs integer min and max")
        if name in ("log_uniform_values", "q_log_uniform_values") and lo <= 0:
            raise SweepError(f"{where}: {name} needs min > 0 (they are values, not exponents)")
    if "q" in spec:
        if _need(spec, name, "q", where) <= 0:
            raise SweepError(f"{where}: 'q' must be > 0")
    _check_reach(name, spec, where)
    return Distribution(name, clean)


def _flatten_parameters(params: Any, prefix: str, where: str, out: dict[str, Distribution]) -> None:
    if not isinstance(params, Mapping) or not params:
        raise SweepError(f"{where}: 'parameters' must be a non-empty mapping")
    for key, spec in params.items():
        key = str(key)
        full = f"{prefix}{key}"
        here = f"{where}.{key}" if where != "sweep" else f"parameters.{key}"
        if not KEY_PATTERN.match(full):
            raise SweepError(f"{here}: invalid key {key!r}: use letters, digits, '_' or '-'")
        if not isinstance(spec, Mapping):
            raise SweepError(
                f"{here}: expected a mapping like {{values: [...]}}, got {type(spec).__name__}"
            )
        if "parameters" in spec:
            extra = [k for k in spec if k != "parameters"]
            if extra:
                raise SweepError(
                    f"{here}: nested 'parameters' cannot be combined with "
                    f"{', '.join(map(str, extra))}"
                )
            _flatten_parameters(spec["parameters"], full + ".", here, out)
        else:
            out[full] = _distribution(spec, here)


# ----------------------------------------------------------------------------- the sweep
@dataclass(frozen=True)
class Factor:
    """One factor of the product: ``keys`` varied together through ``rows``."""

    keys: tuple[str, ...]
    rows: tuple[tuple, ...]


@dataclass
class Sweep:
    """An expanded-on-demand sweep. Iterate it for args dicts (nested), ``len()`` for the
    number of tasks. ``varied`` lists the dotted keys that change; ``notes`` says what of a
    sweep file was ignored; ``seed`` is the seed of a random sweep."""

    factors: list[Factor] = field(default_factory=list)
    fixed: dict[str, Any] = field(default_factory=dict)  # flat dotted keys
    random_params: dict[str, Distribution] = field(default_factory=dict)
    run_cap: int | None = None
    seed: int | None = None
    name: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return "random" if self.run_cap is not None else "grid"

    @property
    def varied(self) -> list[str]:
        keys = [k for f in self.factors for k in f.keys]
        return keys + list(self.random_params)

    def __len__(self) -> int:
        if self.run_cap is not None:
            return self.run_cap
        return math.prod(len(f.rows) for f in self.factors)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        fixed = self.fixed
        if self.run_cap is not None:
            rng = random.Random(self.seed)
            params = list(self.random_params.items())
            for _ in range(self.run_cap):
                flat = dict(fixed)
                for key, dist in params:
                    flat[key] = dist.draw(rng, f"parameters.{key}")
                yield _nested(flat)
            return
        keys = [k for f in self.factors for k in f.keys]
        for combo in itertools.product(*(f.rows for f in self.factors)):
            flat = dict(fixed)
            flat.update(zip(keys, itertools.chain.from_iterable(combo), strict=True))
            yield _nested(flat)

    def preview(self, n: int = 10) -> list[dict[str, Any]]:
        """The first ``n`` args dicts."""
        return list(itertools.islice(iter(self), n))


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """Nest dotted keys; values are copied so that tasks never share a list or dict."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if isinstance(value, (list, dict)):
            value = json.loads(json.dumps(value))
        if "." not in key:
            out[key] = value
            continue
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


def _check_keys(named: list[tuple[str, str]]) -> None:
    """No key given twice and none inside another (``a`` and ``a.b``): ``(key, source)``."""
    seen: dict[str, str] = {}
    for key, source in named:
        if key in seen:
            raise SweepError(f"key {key!r} is given twice ({seen[key]} and {source})")
        seen[key] = source
    for key, source in named:
        parts = key.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            if prefix in seen:
                raise SweepError(f"key {key!r} ({source}) is inside {prefix!r} ({seen[prefix]})")


def _values_of(key: str, values: Any, option: str) -> list:
    if isinstance(values, str):
        return parse_values(values, f"{option} {key}")
    if isinstance(values, (list, tuple, range)):
        values = list(values)
        if not values:
            raise SweepError(f"{option} {key}: no values")
        return values
    raise SweepError(
        f"{option} {key}: expected a list or a values expression like "
        f"'range(3)', got {type(values).__name__}"
    )


def _grid_items(
    grid: Mapping[str, Any] | Iterable[str] | None, option: str
) -> list[tuple[str, list]]:
    """``{"lr": [0.1, 0.01]}`` / ``{"lr": "0.1,0.01"}`` or ``["lr=0.1,0.01"]`` -> items."""
    if grid is None:
        return []
    if isinstance(grid, Mapping):
        items = []
        for key, values in grid.items():
            key = str(key)
            if not KEY_PATTERN.match(key):
                raise SweepError(
                    f"{option} {key!r}: invalid key: use letters, digits, '_' or "
                    "'-', dot-separated (like model.depth)"
                )
            found = _values_of(key, values, option)
            check_storable(found, f"{option} {key}", repr(values))
            items.append((key, found))
        return items
    if isinstance(grid, str):
        grid = [grid]
    return [parse_assignment(text, option) for text in grid]


def load_config(sweep: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A sweep configuration from a mapping or a YAML/JSON file path. The file is read with
    :mod:`labtasker.yamlread`, so ``1e-5`` is a float as in YAML 1.2 (and W&B). Raises
    :class:`SweepError` for an unreadable file or invalid YAML."""
    if isinstance(sweep, Mapping):
        return dict(sweep)
    import yaml

    from labtasker import yamlread

    path = os.fspath(sweep)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yamlread.load(fh)
    except OSError as exc:
        raise SweepError(f"--sweep {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SweepError(f"--sweep {path}: invalid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, Mapping):
        raise SweepError(f"--sweep {path}: expected a mapping with 'method' and 'parameters'")
    return dict(data)


def _from_config(config: Mapping[str, Any], where: str, seed: int | None, sweep: Sweep) -> None:
    unknown = [str(k) for k in config if k not in FILE_KEYS and k not in IGNORED_FILE_KEYS]
    if unknown:
        raise SweepError(
            f"{where}: unsupported key(s) {', '.join(unknown)}; supported: "
            f"{', '.join(FILE_KEYS)} (ignored: {', '.join(IGNORED_FILE_KEYS)})"
        )
    for key, why in IGNORED_FILE_KEYS.items():
        if key in config:
            sweep.notes.append(f"'{key}' in the sweep file is ignored: {why}")
    method = config.get("method", "grid")
    if method not in METHODS:
        raise SweepError(
            f"{where}: method {method!r} is not supported; supported: {', '.join(METHODS)}"
        )
    if "parameters" not in config:
        raise SweepError(f"{where}: 'parameters' is missing")
    params: dict[str, Distribution] = {}
    _flatten_parameters(config["parameters"], "", "sweep", params)
    name = config.get("name")
    if name is not None:
        sweep.name = str(name)
    file_seed = config.get("seed")
    if file_seed is not None and (isinstance(file_seed, bool) or not isinstance(file_seed, int)):
        raise SweepError(f"{where}: 'seed' must be an integer, got {file_seed!r}")
    run_cap = config.get("run_cap")
    if method == "grid":
        if run_cap is not None:
            sweep.notes.append("'run_cap' is ignored by method grid (every combination runs)")
        for key, dist in params.items():
            values = dist.grid_values(f"parameters.{key}")
            if len(values) == 1 and dist.name == "constant":
                sweep.fixed[key] = values[0]
            else:
                sweep.factors.append(Factor((key,), tuple((v,) for v in values)))
        return
    if run_cap is None or isinstance(run_cap, bool) or not isinstance(run_cap, int) or run_cap < 1:
        raise SweepError(
            f"{where}: method random needs 'run_cap' (how many tasks, an integer "
            f">= 1), got {run_cap!r}"
        )
    sweep.run_cap = run_cap
    sweep.random_params = params
    sweep.seed = seed if seed is not None else file_seed
    if sweep.seed is None:
        sweep.seed = int.from_bytes(os.urandom(4), "big")


def build(
    grid: Mapping[str, Any] | Iterable[str] | None = None,
    zip: Mapping[str, Any] | Iterable[str] | None = None,  # noqa: A002 - the option
    fixed: Mapping[str, Any] | None = None,
    sweep: str | os.PathLike | Mapping[str, Any] | None = None,
    seed: int | None = None,
    max_tasks: int | None = MAX_TASKS,
) -> Sweep:
    """Validate and assemble a sweep; nothing is expanded yet.

    ``grid``/``zip``: ``{key: values}`` (a list, or a values string like ``"range(3)"``) or
    a list of ``"KEY=VALUES"`` strings; ``fixed``: args every task gets (nested or dotted);
    ``sweep``: a W&B-style configuration (mapping or file path); ``seed`` overrides the file's
    seed of a random sweep. More than ``max_tasks`` tasks raises :class:`SweepError`.
    """
    out = Sweep()
    if fixed:
        if not isinstance(fixed, Mapping):
            raise SweepError(f"fixed args must be a mapping, got {type(fixed).__name__}")
        try:
            out.fixed = _flatten(unflatten(dict(fixed)))
        except KeyConflictError as exc:
            raise SweepError(f"fixed args: {exc}") from None
        found = non_finite_path(out.fixed, "")
        if found is not None:
            raise SweepError(
                f"fixed args: {found[0]} is {found[1]!r}, a number JSON cannot store "
                "(beyond the float range, infinite or NaN)"
            )
    if sweep is not None:
        where = "--sweep" if isinstance(sweep, Mapping) else f"--sweep {os.fspath(sweep)}"
        _from_config(load_config(sweep), where, seed, out)
    grid_items = _grid_items(grid, "--grid")
    zip_items = _grid_items(zip, "--zip")
    if out.method == "random" and (grid_items or zip_items):
        raise SweepError(
            "--grid/--zip cannot be combined with a random sweep; put the "
            "parameters in the sweep file"
        )
    n_file = len(out.factors)
    for key, values in grid_items:
        out.factors.append(Factor((key,), tuple((v,) for v in values)))
    if zip_items:
        lengths = {key: len(values) for key, values in zip_items}
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise SweepError(f"--zip keys must have equal lengths: {detail}")
        out.factors.append(
            Factor(
                tuple(k for k, _ in zip_items),
                tuple(builtins.zip(*(v for _, v in zip_items), strict=True)),
            )
        )
    named = [(k, "fixed") for k in out.fixed]
    named += [(k, "--grid") for k, _ in grid_items] + [(k, "--zip") for k, _ in zip_items]
    named += [(k, "sweep file") for f in out.factors[:n_file] for k in f.keys]
    named += [(k, "sweep file") for k in out.random_params]
    _check_keys(named)
    if not out.factors and out.run_cap is None:
        raise SweepError("empty sweep: give --grid, --zip or --sweep with parameters")
    total = len(out)
    if total == 0:
        raise SweepError("the sweep makes no tasks")
    if max_tasks is not None and total > max_tasks:
        raise SweepError(f"the sweep makes {total:,} tasks, more than the maximum {max_tasks:,}")
    return out


def sweep_args(
    grid: Mapping[str, Any] | Iterable[str] | None = None,
    zip: Mapping[str, Any] | Iterable[str] | None = None,  # noqa: A002
    fixed: Mapping[str, Any] | None = None,
    sweep: str | os.PathLike | Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> Iterator[dict[str, Any]]:
    """The args dicts of a sweep, one per task (``labtasker.sweep_args``); arguments as for
    :func:`build`. Validates everything first: raises :class:`SweepError` before yielding."""
    return iter(build(grid=grid, zip=zip, fixed=fixed, sweep=sweep, seed=seed))
