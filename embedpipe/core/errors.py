"""The one exception type users see (a single line saying what is wrong and what to do), and the
helpers that turn any other exception into such a line."""

from __future__ import annotations

import errno
import os
import re


class EmbedpipeError(Exception):
    """Bad input or state the user can fix. The CLI prints it as one line and exits non-zero."""


def first_line(e: BaseException, limit: int | None = None) -> str:
    """The first non-blank line of an exception's message, or its type's name when it has none."""
    line = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return line[:limit] if limit is not None else line


def os_reason(e: BaseException) -> str:
    """The operating system's reason in words ('No space left on device'), also when h5py wraps an
    OSError in its own message ('... errno = 28, error message = ...')."""
    code = getattr(e, "errno", None)
    if code:
        return os.strerror(code)
    strerror = getattr(e, "strerror", None)
    if strerror:
        return str(strerror)
    text = str(e)
    m = re.search(r"errno = (\d+)", text)
    if m and int(m.group(1)) in errno.errorcode:
        return os.strerror(int(m.group(1)))
    m = re.search(r"error message = '([^']+)'", text)
    return m.group(1) if m else first_line(e)


def describe(e: BaseException, limit: int = 300) -> str:
    """``"<Type>: <first line>"`` in at most ``limit`` characters (how failures are recorded)."""
    return f"{type(e).__name__}: {first_line(e) if str(e).strip() else ''}"[:limit]
