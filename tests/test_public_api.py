"""The public API: what the README imports is exported, and the exceptions form the drawn tree."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

import coalescing
from coalescing import errors

README = Path(__file__).resolve().parent.parent / "README.md"
DOCUMENTED = [
    "params",
    "operations",
    "conf",
    "urls",
    "asgi",
    "wsgi",
    "middleware",
    "gunicorn",
    "errors",
]


def readme_imports() -> list[tuple[str, str]]:
    """``(module, name)`` for every ``from coalescing... import ...`` in the README's code."""
    found = []
    for module, names in re.findall(
        r"^from (coalescing[\w.]*) import ([\w, ]+)$", README.read_text(), re.M
    ):
        found += [(module, name.strip()) for name in names.split(",") if name.strip()]
    for module in re.findall(r"^import (coalescing[\w.]*)$", README.read_text(), re.M):
        found.append((module, ""))
    return found


def test_the_readme_imports_only_exported_names():
    imports = readme_imports()
    assert imports  # the README does show imports
    for module_name, name in imports:
        if not name:
            continue
        module = importlib.import_module(module_name)
        if module is coalescing and name in DOCUMENTED:
            continue  # ``from coalescing import operations``: a documented module
        assert name in getattr(module, "__all__", ()), (module_name, name)


@pytest.mark.parametrize("name", ["", *DOCUMENTED])
def test_every_exported_name_exists(name):
    module = importlib.import_module(f"coalescing.{name}" if name else "coalescing")
    assert module.__all__, module
    for exported in module.__all__:
        assert getattr(module, exported) is not None, (module, exported)


def test_every_exception_is_exported_and_drawn_in_the_tree():
    classes = {
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, Exception) and cls.__module__ == errors.__name__
    }
    tree = errors.__doc__ or ""
    for name, cls in classes.items():
        assert getattr(coalescing, name) is cls, name
        assert re.search(rf"(^|[─ ]){name}\b", tree, re.M), f"{name} is not in the tree"
        drawn_under_upstream = re.search(rf"[├└]── {name}\b", tree) is not None
        assert drawn_under_upstream == (
            cls is not errors.UpstreamError and issubclass(cls, errors.UpstreamError)
        ), name
