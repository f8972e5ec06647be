"""One registry pattern for backbones and heads (as timm's register_model/create_model/list_models).

A decorator stores a factory under a name; ``create(name, **kw)`` builds; ``names(pattern)`` lists
with fnmatch. Duplicate names are an error; an unknown name's error lists the close matches.

An entry can also be lazy: ``add_lazy(name, "package.module:Factory", description)`` records where
the factory lives without importing it, so listing names and descriptions imports nothing heavy
(``embedpipe list`` needs no torch). The module is imported when the entry is first used
(``get``/``create``); its decorator then registers the factory, which fulfils the lazy entry, and a
decorator whose description differs from the lazy entry's is an error, so the two cannot drift.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from .errors import EmbedpipeError

T = TypeVar("T")


def target_of(obj: Any) -> str:
    """``"module:QualifiedName"``: where ``obj`` is defined, as a lazy entry names it."""
    return f"{obj.__module__}:{obj.__qualname__}"


class Registry(Generic[T]):
    """Named factories, eager (registered by a decorator) or lazy (a ``"module:attr"`` imported on use).

    Parameters
    ----------
    kind : str
        What the entries are (``"head"``, ``"backbone"``), for error messages.

    Attributes
    ----------
    descriptions : dict of str to str
        One line per entry that was given one, lazy entries included (``embedpipe list`` shows them).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._lazy: dict[str, str] = {}  # name -> "module:attr", not imported yet
        self._declared: dict[str, str] = {}  # every lazy entry ever added, imported or not
        self.descriptions: dict[str, str] = {}

    def add_lazy(self, name: str, target: str, description: str) -> None:
        """Register ``name`` as the factory at ``target`` (``"package.module:Attr"``), imported on first use."""
        module, sep, attr = target.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"{self.kind} {name!r}: lazy target {target!r} is not 'module:attr'")
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._lazy[name] = self._declared[name] = target
        self.descriptions[name] = description

    def register(self, name: str, description: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: store the factory under ``name`` (with its one-line ``description``).

        A name that is taken raises ValueError, except by the very factory its lazy entry names
        (the decorator runs when the lazy entry's module is imported); that factory's description
        must then be the lazy entry's.
        """

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            lazy = self._lazy.get(name)
            if name in self._factories or (lazy is not None and lazy != target_of(factory)):
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if lazy is not None and description is not None and description != self.descriptions[name]:
                raise ValueError(f"{self.kind} {name!r}: the description given to {lazy}'s decorator, {description!r}, "
                                 f"differs from its lazy entry's, {self.descriptions[name]!r}")
            self._factories[name] = factory
            self._lazy.pop(name, None)
            if description is not None:
                self.descriptions[name] = description
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``, importing it if its entry is lazy."""
        if name in self._factories:
            return self._factories[name]
        target = self._lazy.get(name)
        if target is not None:
            module, _, attr = target.partition(":")
            factory = getattr(importlib.import_module(module), attr)
            if name in self._lazy:  # a factory without a decorator: the lazy entry is its registration
                self._factories[name] = factory
                self._lazy.pop(name, None)
            return self._factories[name]
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(self.names())}"
        raise EmbedpipeError(f"unknown {self.kind} {name!r}; {hint}")

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)

    def names(self, pattern: str = "*") -> list[str]:
        """Every name, eager and lazy, matching the fnmatch ``pattern``, sorted (imports nothing)."""
        return sorted(n for n in (*self._factories, *self._lazy) if fnmatch.fnmatch(n, pattern))

    def lazy_entries(self) -> dict[str, str]:
        """name -> ``"module:attr"`` of every lazy entry, imported or not (for checks that they agree)."""
        return dict(self._declared)

    def __contains__(self, name: object) -> bool:
        return name in self._factories or name in self._lazy

    def mapping(self) -> Mapping[str, Callable[..., T]]:
        """A read-only view name -> factory; reading an entry imports it if it is lazy."""
        return _Entries(self)


class _Entries(Mapping[str, Callable[..., T]]):
    def __init__(self, registry: Registry[T]) -> None:
        self._registry = registry

    def __getitem__(self, name: str) -> Callable[..., T]:
        if name not in self._registry:
            raise KeyError(name)
        return self._registry.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry.names())

    def __len__(self) -> int:
        return len(self._registry.names())

    def __repr__(self) -> str:
        return f"<{self._registry.kind} entries: {', '.join(self._registry.names())}>"
