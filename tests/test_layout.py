"""The code's shape, checked: imports flow one way (import-linter's layers contract in
pyproject.toml), an import inside a function says why it is there, the library logs instead of
printing, and atomic writes and the first-line-of-an-exception rule each exist once (in core/)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "embedpipe"


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_imports_flow_one_way() -> None:
    pytest.importorskip("importlinter", reason='import-linter is in the dev extra: pip install -e ".[dev]"')
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "lint-imports not found beside this Python"
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def _function_imports(path: Path) -> list[tuple[int, str]]:
    """(line, text) of the first import of every function that imports, with the lines it spans
    and the line above it (where its reason may stand)."""
    lines = path.read_text().splitlines()
    found = []
    for fn in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            nodes = [n for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)]
            if nodes:
                first = min(nodes, key=lambda n: n.lineno)
                span = lines[first.lineno - 2 : first.end_lineno or first.lineno]
                found.append((first.lineno, "\n".join(span)))
    return found


def test_an_import_inside_a_function_says_why() -> None:
    """Imports inside functions are only for optional or heavy dependencies (or the CLI's start-up
    time), each run of them with its reason in a comment beside it."""
    bare = [f"{p.relative_to(ROOT)}:{n}: {text.strip().splitlines()[-1].strip()}" for p in _modules()
            for n, text in _function_imports(p) if "#" not in text]
    assert not bare, "imports inside functions without a reason:\n" + "\n".join(bare)


def _grep(pattern: str, allowed: set[str]) -> list[str]:
    regex = re.compile(pattern)
    return [f"{p.relative_to(ROOT)}:{i}" for p in _modules() if str(p.relative_to(PACKAGE)) not in allowed
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if regex.search(line) and not line.lstrip().startswith("#")]


def test_the_library_logs_instead_of_printing() -> None:
    assert _grep(r"(?<![\w.])print\(", {"cli.py"}) == []


def test_shared_logic_is_written_once() -> None:
    assert _grep(r"os\.replace\(", {"core/atomic.py"}) == [], "atomic writes go through core/atomic.py"
    assert _grep(r"str\(\w+\)(\.strip\(\))?\.splitlines\(\)", {"core/errors.py"}) == [], \
        "the first line of an exception is core.errors.first_line"
    assert _grep(r"error message = ", {"core/errors.py"}) == [], "h5py's wrapped OSError is core.errors.os_reason"
    assert _grep(r"re\.(compile|fullmatch|match)\(r\"block", {"core/layers.py"}) == [], \
        "the layer-name grammar is core/layers.py"
