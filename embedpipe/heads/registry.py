"""The head registry: ``@register_head(description=...)`` on a head class stores it under its ``name``.

The head modules import this small module (not the package), so registering never imports the package
``__init__`` and there is no import cycle; ``heads/__init__.py`` imports every head module so that each
one registers itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..core.registry import Registry
from .base import Head

H = TypeVar("H", bound=type[Head])

HEADS: Registry[Head] = Registry("head")
# One line per registered head, shown by `embedpipe list heads`.
DESCRIPTIONS: dict[str, str] = {}


def register_head(description: str) -> Callable[[H], H]:
    """Class decorator: register a head class under its ``name`` with a one-line ``description``.

    Parameters
    ----------
    description : str
        What the head does, in one line (``embedpipe list heads`` shows it).

    Returns
    -------
    callable
        The decorator; it returns the class unchanged. A name registered twice raises ValueError.

    Examples
    --------
    >>> from embedpipe.heads.base import Head
    >>> from embedpipe.heads.registry import register_head
    >>> @register_head(description="a head that is never fitted")  # doctest: +SKIP
    ... class MyHead(Head):
    ...     name = "mine"
    """

    def decorator(cls: H) -> H:
        if not cls.name:
            raise ValueError(f"{cls.__name__} has no name to register under")
        HEADS.register(cls.name)(cls)  # raises on a duplicate name before touching DESCRIPTIONS
        DESCRIPTIONS[cls.name] = description
        return cls

    return decorator
