"""Public names imported on first use (PEP 562), so that ``import embedpipe`` and the CLI's ``--help``,
``list`` and ``info`` import no torch and no scikit-learn.

A package lists ``name -> ".submodule"`` (the attribute of that name) or ``".submodule:attr"``, and
sets ``__getattr__, __dir__ = lazy_exports(__name__, table)``. The first access imports the
submodule and stores the value in the package, so later accesses are plain attribute reads.

Where a public name is also a submodule's name (``embedpipe.train`` is a function in
``embedpipe/train.py``), importing the submodule would bind the module object under that name (the
import system sets every imported submodule as an attribute of its package) and hide the function.
The package's class then becomes a ``ModuleType`` subclass that ignores exactly that binding
(assigning a module's ``__class__`` is documented in the Python reference, "Customizing module
attribute access"), so the name means the same object whichever is imported first.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any


def lazy_exports(package: str, table: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` whose public names in ``table`` load on use.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    table : mapping of str to str
        Public name -> ``".submodule"`` (its attribute of the same name) or ``".submodule:attr"``.

    Returns
    -------
    (callable, callable)
        ``__getattr__(name)`` and ``__dir__()`` for the package's namespace (PEP 562).
    """
    module = sys.modules[package]
    targets = {name: target.partition(":") for name, target in table.items()}
    clashing = frozenset(name for name, (sub, _, _) in targets.items() if sub == f".{name}")

    def __getattr__(name: str) -> Any:
        try:
            sub, _, attr = targets[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(sub, package), attr or name)
        module.__dict__[name] = value  # later reads skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*module.__dict__, *table})

    if clashing:
        module.__class__ = _keeping_public_names(clashing)
    return __getattr__, __dir__


def _keeping_public_names(names: frozenset[str]) -> type[ModuleType]:
    class PublicNamesFirst(ModuleType):
        """A package whose public names ``names`` stay themselves when a submodule of that name is imported."""

        def __setattr__(self, name: str, value: Any) -> None:
            if name in names and isinstance(value, ModuleType) and value.__name__ == f"{self.__name__}.{name}":
                return  # the import system binding the submodule: the public name keeps its object
            super().__setattr__(name, value)

    return PublicNamesFirst
