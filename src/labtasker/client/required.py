"""``Required``: job parameters filled from task args by ``@labtasker.loop``.

Two equivalent styles::

    @labtasker.loop()
    def job(lr=labtasker.Required(), bs: Annotated[int, labtasker.Required(alias="cfg.bs")] = 0):
        ...

Each ``Required`` parameter contributes its ``alias`` (a dotted path into ``task.args``) or
its own name to the loop's ``required_fields`` ("no more, no less"). Per task, the value is
looked up (an exact dotted key such as ``args["cfg.bs"]`` first, then the nested path), passed
through ``resolver`` if one is given, and bound into the call. Annotations do not cast values;
use ``resolver=int`` for that.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from labtasker.exceptions import LabtaskerRuntimeError, LabtaskerTypeError, LabtaskerValueError
from labtasker.keys import KEY_PATTERN

_MISSING = object()


class MixedAnnotatedAndDefaultStyleError(LabtaskerValueError):
    """One parameter uses ``Required`` both in ``Annotated[...]`` and as its default."""


class MultipleLabtaskerAnnotationsError(LabtaskerValueError):
    """One ``Annotated[...]`` holds more than one ``Required``."""


class Required:
    """Marker for a job parameter whose value comes from the task args.

    ``alias``: dotted path into ``task.args`` (default: the parameter name).
    ``resolver``: callable applied to the raw value (e.g. ``int``, ``Path``); its exceptions
    make the task fail with ``LabtaskerRuntimeError``.
    """

    __slots__ = ("alias", "resolver")

    def __init__(self, *, alias: str | None = None, resolver: Callable[[Any], Any] | None = None):
        if alias is not None and (not isinstance(alias, str) or not KEY_PATTERN.match(alias)):
            raise LabtaskerValueError(
                f"Required(alias={alias!r}): use a dotted key of letters, digits, '_' or '-'"
            )
        if resolver is not None and not callable(resolver):
            raise LabtaskerTypeError(f"Required(resolver=...) must be callable, got {resolver!r}")
        self.alias = alias
        self.resolver = resolver

    def __repr__(self) -> str:
        return f"Required(alias={self.alias!r}, resolver={self.resolver!r})"


@dataclass(frozen=True)
class RequiredParam:
    """A parameter of the job function bound to a task field."""

    name: str
    field: str
    marker: Required


def _annotated_markers(annotation: Any) -> list[Required]:
    if typing.get_origin(annotation) is typing.Annotated:
        return [m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, Required)]
    return []


def collect_required(func: Callable) -> list[RequiredParam]:
    """The ``Required`` parameters of ``func``, in signature order.

    Raises ``MixedAnnotatedAndDefaultStyleError`` / ``MultipleLabtaskerAnnotationsError`` on
    ambiguous declarations.
    """
    sig = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable forward refs: fall back to raw annotations
        hints = {}
    found: list[RequiredParam] = []
    for name, param in sig.parameters.items():
        markers = _annotated_markers(hints.get(name, param.annotation))
        if len(markers) > 1:
            raise MultipleLabtaskerAnnotationsError(
                f"Parameter {name!r} has more than one Required(...) in Annotated[...]"
            )
        default_marker = param.default if isinstance(param.default, Required) else None
        if markers and default_marker is not None:
            raise MixedAnnotatedAndDefaultStyleError(
                f"Parameter {name!r} uses Required(...) both in Annotated[...] and as default"
            )
        marker = markers[0] if markers else default_marker
        if marker is None:
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise LabtaskerValueError(f"Required(...) cannot mark *{name} / **{name}")
        found.append(RequiredParam(name, marker.alias or name, marker))
    return found


def required_fields_of(params: list[RequiredParam]) -> list[str]:
    """The dotted fields the parameters need, deduplicated, in order."""
    return list(dict.fromkeys(p.field for p in params))


def lookup(args: Mapping[str, Any], field: str) -> Any:
    """Value of ``field`` in ``args``: exact (dotted) key first, then the nested path.

    Raises ``LabtaskerRuntimeError`` when absent.
    """
    if field in args:
        return args[field]
    node: Any = args
    for seg in field.split("."):
        if isinstance(node, Mapping) and seg in node:
            node = node[seg]
        elif isinstance(node, (list, tuple)) and seg.isdigit() and int(seg) < len(node):
            node = node[int(seg)]
        else:
            raise LabtaskerRuntimeError(f"Required field {field!r} not found in task args")
    return node


def resolve_values(params: list[RequiredParam], args: Mapping[str, Any]) -> dict[str, Any]:
    """Parameter name -> value for one task (``resolver`` applied).

    Raises ``LabtaskerRuntimeError`` for a missing field or a failing resolver.
    """
    values: dict[str, Any] = {}
    for p in params:
        value = lookup(args, p.field)
        if p.marker.resolver is not None:
            try:
                value = p.marker.resolver(value)
            except Exception as exc:
                raise LabtaskerRuntimeError(
                    f"Failed to process field {p.field!r} with type caster: {exc}"
                ) from exc
        values[p.name] = value
    return values


def bind_call(
    func: Callable,
    params: list[RequiredParam],
    task_args: Mapping[str, Any],
    call_args: tuple = (),
    call_kwargs: Mapping[str, Any] | None = None,
    pass_args_dict: bool = False,
) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments for one job invocation.

    ``call_args``/``call_kwargs`` are what the user passed to the decorated function; with
    ``pass_args_dict`` the whole ``task_args`` dict is prepended as the first positional
    argument. Injected values go positionally while user positionals remain to be placed after
    them, otherwise by keyword. Raises ``LabtaskerValueError`` when the user passes a value for a
    ``Required`` parameter or the call does not fit the signature, and
    ``LabtaskerRuntimeError`` when a field is missing in the task.
    """
    call_kwargs = dict(call_kwargs or {})
    by_name = {p.name: p for p in params}
    for name in call_kwargs:
        if name in by_name:
            raise LabtaskerValueError(
                f"Parameter {name!r} is Required: it should be left blank and filled by labtasker"
            )
    injected = resolve_values(params, task_args)
    pending = list(call_args)
    if pass_args_dict:
        pending.insert(0, dict(task_args))
    sig = inspect.signature(func)
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    positional_open = True
    for name, param in sig.parameters.items():
        if param.kind is param.VAR_POSITIONAL:
            positional.extend(pending)
            pending = []
            continue
        if param.kind is param.VAR_KEYWORD:
            continue
        can_pos = param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
        if name in injected:
            if can_pos and positional_open and (pending or param.kind is param.POSITIONAL_ONLY):
                positional.append(injected[name])
            else:
                positional_open = False
                keywords[name] = injected[name]
            continue
        if can_pos and positional_open and pending:
            positional.append(pending.pop(0))
        else:
            positional_open = False
    if pending:
        raise LabtaskerValueError(
            f"Too many positional arguments for {getattr(func, '__name__', func)!r}: "
            f"{len(pending)} left over"
        )
    keywords.update(call_kwargs)
    try:
        sig.bind(*positional, **keywords)
    except TypeError as exc:
        raise LabtaskerValueError(
            f"Cannot call {getattr(func, '__name__', func)!r} with the task's values: {exc}"
        ) from None
    return positional, keywords
