"""Cheap coercion of command-line values for typer >= 0.20's adapter layer.

typer 0.2x coerces every parameter of the invoked command through a pydantic ``TypeAdapter``
built on each call (about 20 for ``task submit``): tens of milliseconds of schema building per
process, for values that are already what the command wants. :func:`install` wraps typer's
``build_runtime_param`` so that the plain cases are passed through and everything else goes to
typer's own adapter, built only when such a value arrives:

* ``str`` (and ``str | None``) parameters given a ``str``; ``bool`` given a ``bool``;
* ``int`` given an ``int`` or a string of ASCII digits (optional sign), inside ``min``/``max``;
* ``list[str]`` given strings.

A parameter with a ``parser``, choices, a file or path type, ``clamp`` or any other annotation
always goes to typer's adapter, so errors read exactly as before. With a typer that has no
such layer (older releases use click types) :func:`install` does nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, get_args, get_origin

_INT = re.compile(r"[+-]?[0-9]+")
_installed = False


def _fast(annotation: Any, info: Any, value: Any) -> tuple[bool, Any]:
    """``(True, coerced)`` for the plain cases, ``(False, None)`` otherwise."""
    if getattr(info, "parser", None) is not None or getattr(info, "click_type", None):
        return False, None
    if annotation is str:
        return (True, value) if type(value) is str else (False, None)
    if annotation is bool:
        return (True, value) if type(value) is bool else (False, None)
    if annotation is int and not getattr(info, "clamp", False):
        if type(value) is int:
            number = value
        elif type(value) is str and _INT.fullmatch(value):
            number = int(value)
        else:
            return False, None
        low, high = getattr(info, "min", None), getattr(info, "max", None)
        if (low is not None and number < low) or (high is not None and number > high):
            return False, None  # typer's adapter words the range error
        return True, number
    if get_origin(annotation) is list and get_args(annotation) == (str,):
        if isinstance(value, (list, tuple)) and all(type(v) is str for v in value):
            return True, list(value)
    return False, None


def install() -> None:
    """Route typer's per-parameter coercion through :func:`_fast` first (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    try:
        from typer import _coercion, core
    except ImportError:  # pragma: no cover - typer without the adapter layer
        return
    original = getattr(core, "build_runtime_param", None)
    base = getattr(_coercion, "RuntimeParam", None)
    if original is None or base is None:  # pragma: no cover - other typer releases
        return
    build_original = original

    @dataclass(frozen=True)
    class LazyRuntimeParam(base):  # type: ignore[misc, valid-type]
        """Plain values pass through; others go to typer's adapter, built on first need."""

        descriptor: Any = None

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            ok, coerced = _fast(self.annotation, self.parameter_info, value)
            if ok:
                return coerced
            return build_original(self.descriptor)._coerce_value(value, param=param, ctx=ctx)

    def build_runtime_param(descriptor: Any) -> Any:
        if descriptor.file_annotation is not None or descriptor.choices is not None:
            return build_original(descriptor)
        return LazyRuntimeParam(
            parameter_info=descriptor.parameter_info,
            annotation=descriptor.annotation,
            descriptor=descriptor,
        )

    core.build_runtime_param = build_runtime_param
