"""The "Parameters" section of a numpydoc docstring, read into names, types, defaults and one line each.

``embedpipe list heads -v`` lists every head's hyperparameters from its class docstring with this, so
the help the command line shows is the documentation itself and cannot drift from it.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

_HEADER = re.compile(r"^-{3,}\s*$")  # the underline of a numpydoc section title
_DEFAULT = re.compile(r",?\s*default\s*[=:]\s*(?P<default>.+)$")  # "float, default=1.0" / "int, default: 3"
_SENTENCE = re.compile(r"^(.+?(?<!e\.g)(?<!i\.e)\.)(?=\s+[A-Z(]|$)")  # up to the first full stop ending a sentence


@dataclass(frozen=True)
class DocParam:
    """One entry of a numpydoc "Parameters" section."""

    name: str
    type: str  # as written, without the default ("float or None")
    default: str | None  # as written ("None", "DEFAULT_CS", "(0.25, 0.5, 1.0)"); None when not stated
    description: str  # the first sentence of the description


def numpydoc_parameters(doc: str | None) -> list[DocParam]:
    """The entries of the "Parameters" section of ``doc`` (empty when it has none).

    Parameters
    ----------
    doc : str or None
        A numpydoc docstring, e.g. a class's ``__doc__``.

    Returns
    -------
    list of DocParam
        In the order written; ``default`` comes from ``, default=...`` on the type line.

    Examples
    --------
    >>> from embedpipe.core.docstrings import numpydoc_parameters
    >>> doc = '''Fit it.
    ...
    ... Parameters
    ... ----------
    ... C : float or None, default=None
    ...     Inverse L2 strength. None = select it on validation rows.
    ... '''
    >>> numpydoc_parameters(doc)[0]
    DocParam(name='C', type='float or None', default='None', description='Inverse L2 strength.')
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    start = next((i + 2 for i in range(len(lines) - 1)
                  if lines[i].strip() == "Parameters" and _HEADER.match(lines[i + 1].strip())), None)
    if start is None:
        return []
    entries: list[tuple[str, list[str]]] = []
    for i in range(start, len(lines)):
        line = lines[i]
        if i + 1 < len(lines) and _HEADER.match(lines[i + 1].strip()) and line.strip():
            break  # the next section's title
        if line and not line[0].isspace():
            entries.append((line.strip(), []))
        elif line.strip() and entries:
            entries[-1][1].append(line.strip())
    return [_param(head, body) for head, body in entries]


def _param(head: str, body: list[str]) -> DocParam:
    name, _, spec = (part.strip() for part in head.partition(":"))
    default = None
    m = _DEFAULT.search(spec)
    if m:
        default = m.group("default").strip()
        spec = spec[: m.start()].strip()
    text = " ".join(body)
    m = _SENTENCE.match(text)
    return DocParam(name, spec, default, m.group(1) if m else text)
