"""The public surface: every name in ``labtasker.__all__`` resolves (lazily, from the module
the facade names), the facade exports nothing undeclared, and the exception modules list
every exception class they define. Pure: no server."""

from __future__ import annotations

import importlib
import inspect

import pytest

import labtasker
from labtasker import exceptions


def test_all_is_exactly_the_lazy_names_and_the_version():
    assert sorted(labtasker.__all__) == sorted({"__version__", "__application__", *labtasker._LAZY})
    assert len(labtasker.__all__) == len(set(labtasker.__all__))


@pytest.mark.parametrize("name", sorted(labtasker._LAZY))
def test_every_public_name_resolves_from_its_module(name):
    value = getattr(labtasker, name)
    module = importlib.import_module(labtasker._LAZY[name])
    assert getattr(module, name) is value
    assert name in dir(labtasker)


def test_no_undeclared_public_names():
    # submodules become attributes once imported; lazy names are cached after first use
    public = {
        n for n, v in vars(labtasker).items() if not n.startswith("_") and not inspect.ismodule(v)
    }
    assert public - set(labtasker.__all__) <= {"annotations", "Any"}


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        labtasker.no_such_name  # noqa: B018


def test_exceptions_all_lists_every_exception_class():
    # the httpx-based classes are made on first access (``exceptions.__getattr__``)
    for name in exceptions._LAZY:
        getattr(exceptions, name)
    defined = {
        n
        for n, v in vars(exceptions).items()
        if inspect.isclass(v)
        and issubclass(v, BaseException)
        and v.__module__ == exceptions.__name__
    }
    assert defined == set(exceptions.__all__)
    facade = {n for n in labtasker._LAZY if labtasker._LAZY[n] == "labtasker.exceptions"}
    # ConfigError/ConfigNotFoundError are reached as labtasker.exceptions.* only
    assert set(exceptions.__all__) - facade <= {"ConfigError", "ConfigNotFoundError"}


def test_the_package_ships_py_typed():
    import importlib.resources

    assert importlib.resources.files("labtasker").joinpath("py.typed").is_file()
