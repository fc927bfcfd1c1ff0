"""Reading YAML files written by people: sweep files (``--sweep``) and task files (``--file``).

PyYAML follows YAML 1.1, where a float needs a dot: ``1e-5`` and ``1E+3`` are read as the
strings ``"1e-5"`` and ``"1E+3"``, and ``1.0e5`` (exponent without a sign) is a string too.
W&B-style sweep files write ``1e-5`` all the time and mean a number. :class:`Loader` is
PyYAML's safe loader that also reads the floats of the YAML 1.2 core schema written with an
exponent (``1e-5``, ``1E+3``, ``-2e4``, ``.5e3``, ``1.0e5``). Everything else reads as with
``yaml.safe_load``: integers stay integers, and text such as ``1e``, ``e5`` or ``1e5x`` stays
text. :func:`dump` writes YAML that :class:`Loader` reads back as it was: a string that looks
like such a float (``"1e-5"``) is written quoted (the task editor, ``task ls -F yaml``).

This module imports PyYAML when it is imported; import it only where a YAML file is read.
"""

from __future__ import annotations

import re
from typing import IO, Any

import yaml

# The YAML 1.2 core schema's float, restricted to the forms with an exponent (the others are
# already floats under YAML 1.1): digits with an optional fraction, or a fraction alone, then
# e/E, an optional sign and digits.
EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$")


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-5``-style numbers as floats."""


# Added to the subclass only (PyYAML copies the table on the first change), after the built-in
# resolvers: a scalar the YAML 1.1 rules already read (an int, a bool, a date) keeps its type.
Loader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789."))


def load(stream: str | bytes | IO[str] | IO[bytes]) -> Any:
    """The first document of ``stream``, like ``yaml.safe_load`` with :class:`Loader`."""
    return yaml.load(stream, Loader=Loader)  # noqa: S506 - Loader is a SafeLoader


def load_all(stream: str | bytes | IO[str] | IO[bytes]) -> list[Any]:
    """Every document of ``stream``, like ``list(yaml.safe_load_all(...))`` with
    :class:`Loader`."""
    return list(yaml.load_all(stream, Loader=Loader))  # noqa: S506 - Loader is a SafeLoader


class Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """``yaml.SafeDumper`` (libyaml's emitter when PyYAML has it) whose output
    :class:`Loader` reads back unchanged: a string that :class:`Loader` would read as a float
    (``"1e-5"``, which ``yaml.safe_dump`` writes bare) is written in single quotes."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if EXPONENT_FLOAT.fullmatch(value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="'")
    return yaml.representer.SafeRepresenter.represent_str(dumper, value)


Dumper.add_representer(str, _represent_str)


def dump(data: Any, **options: Any) -> str:
    """``data`` as YAML text, like ``yaml.safe_dump(data, **options)`` with :class:`Dumper`:
    ``load(dump(data)) == data`` for the JSON-like values of tasks."""
    return yaml.dump(data, Dumper=Dumper, **options)
