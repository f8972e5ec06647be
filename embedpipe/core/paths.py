"""Where caches live: one rule, used by the command line and the Python API alike.

The cache root is, in order: the ``cache_dir`` argument (``--cache-dir``), the ``EMBEDPIPE_CACHE``
environment variable, then ``$XDG_CACHE_HOME/embedpipe`` (``~/.cache/embedpipe`` when
``XDG_CACHE_HOME`` is unset), as the Hugging Face and torch caches do. Every working folder therefore
shares one cache: an extract run from another folder finds what an earlier one computed. The root is
returned absolute, so every path printed from it is absolute too. The repository's ``make demo`` and
benchmarks pass ``cache_dir="cache"`` (the repository's git-ignored ``cache/``) explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "EMBEDPIPE_CACHE"  # environment variable naming the cache root
CACHE_RULE = f"${CACHE_ENV}, else $XDG_CACHE_HOME/embedpipe (~/.cache/embedpipe)"  # the rule, for --help


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The absolute cache root: ``cache_dir`` when given, else ``$EMBEDPIPE_CACHE``, else
    ``$XDG_CACHE_HOME/embedpipe`` (``~/.cache/embedpipe``).

    Parameters
    ----------
    cache_dir : str or path-like or None, default=None
        An explicit root (``--cache-dir``); relative paths are taken from the current folder.

    Returns
    -------
    pathlib.Path
        The root, absolute, with ``~`` expanded. It is not created here.

    Examples
    --------
    >>> from embedpipe.core.paths import cache_root
    >>> cache_root("/data/embeddings").as_posix()
    '/data/embeddings'
    """
    if cache_dir is None or str(cache_dir) == "":
        env = os.environ.get(CACHE_ENV, "")
        if env:
            cache_dir = env
        else:
            xdg = os.environ.get("XDG_CACHE_HOME", "")
            base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"  # XDG: relative values are ignored
            cache_dir = base / "embedpipe"
    return Path(cache_dir).expanduser().resolve()
