"""Start-up: `import embedpipe` and the CLI's --help, list and info import no torch and no scikit-learn
(the public names load on first use), the lazy names are the submodules' objects, and the lazy registry
entries agree with the decorators of the classes they name. The timing itself is benchmarks/startup.py."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TINY_TIMM, make_image_folder

import embedpipe
from embedpipe.backbones import BACKBONES
from embedpipe.core.errors import EmbedpipeError
from embedpipe.core.registry import Registry, target_of
from embedpipe.heads import CLASSIFIER_DESCRIPTIONS, HEADS, NOT_HEADS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "sklearn")


def _run(code: str, *args: str) -> str:
    """Run ``code`` in a fresh interpreter (this checkout first on the path); -> its stdout."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.timeout(180)
def test_import_help_list_and_info_import_no_torch_or_sklearn(tmp_path: Path, tiny_timm_weights: str) -> None:
    cache = embedpipe.extract(str(make_image_folder(tmp_path / "shapes", classes=2, per_class=3)), TINY_TIMM,
                              weights=tiny_timm_weights, cache_dir=tmp_path / "c", progress=False, num_workers=0,
                              precision="fp32")
    out = _run("""
        import contextlib, io, sys
        heavy = lambda: sorted(m for m in sys.argv[2:] if m in sys.modules)
        import embedpipe
        assert heavy() == [], ("import embedpipe", heavy())
        import embedpipe.cli
        assert heavy() == [], ("import embedpipe.cli", heavy())
        for argv in (["--help"], ["list", "heads"], ["list", "backbones"], ["list", "datasets"],
                     ["info", "--cache", sys.argv[1]], ["info", "--cache", sys.argv[1], "--json"]):
            with contextlib.redirect_stdout(io.StringIO()) as shown:
                try:
                    code = embedpipe.cli.main(argv)
                except SystemExit as e:  # --help exits 0
                    code = e.code
            assert code == 0 and shown.getvalue().strip(), argv
            assert heavy() == [], (argv, heavy())
        print(shown.getvalue())
    """, str(cache.path), *HEAVY)
    assert '"rows"' in out  # the last command really read the cache


def test_list_shows_every_registered_name_without_importing_one() -> None:
    out = _run("""
        import sys
        from embedpipe.cli import main
        main(["list", "heads"]); main(["list", "backbones"])
        print(sorted(m for m in sys.modules if m.startswith("embedpipe.heads.") or m.startswith("embedpipe.backbones.")))
    """)
    lines = out.splitlines()
    assert {line.split()[0] for line in lines[:-1]} == {*HEADS.names(), *NOT_HEADS.names(), *BACKBONES.names()}
    assert lines[-1] == "['embedpipe.backbones.registry', 'embedpipe.heads.registry']"


def _type_checking_imports(module: str) -> dict[str, str]:
    """name -> absolute module of each ``from .x import name`` under ``if TYPE_CHECKING:`` in ``module``."""
    path = Path(importlib.util.find_spec(module).origin)  # type: ignore[arg-type,union-attr]
    names = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.level == 1
                base = module if path.name == "__init__.py" else module.rpartition(".")[0]
                names.update({a.name: f"{base}.{imp.module}" for a in imp.names})
    return names


@pytest.mark.parametrize("package", ["embedpipe", "embedpipe.heads", "embedpipe.backbones"])
def test_lazy_names_are_the_submodules_objects(package: str) -> None:
    """Every name imported for type checkers is lazy, listed by dir() and __all__, and is the very object
    of the submodule that defines it; an unknown name is still an AttributeError."""
    pkg = importlib.import_module(package)
    lazy = _type_checking_imports(package)
    assert lazy and set(lazy) <= set(pkg.__all__) and set(pkg.__all__) <= set(dir(pkg))
    for name, module in lazy.items():
        assert getattr(pkg, name) is getattr(importlib.import_module(module), name), name
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        pkg.nope  # noqa: B018


CLASHING = ("extract", "train", "predict", "advise")  # public functions that share their submodule's name


def test_submodule_imported_first_leaves_the_function() -> None:
    out = _run("""
        import sys
        from embedpipe.train import train_heads  # the submodules first, as the CLI does
        import embedpipe.extract, embedpipe.predict, embedpipe.advise
        import embedpipe
        for name in sys.argv[1:]:
            fn = getattr(embedpipe, name)
            assert callable(fn) and fn is getattr(sys.modules["embedpipe." + name], name), (name, fn)
        assert embedpipe.train_heads is train_heads
        print("ok")
    """, *CLASHING)
    assert out.strip() == "ok"


def test_function_used_first_survives_its_submodule_import() -> None:
    out = _run("""
        import importlib, sys
        import embedpipe
        before = {name: getattr(embedpipe, name) for name in sys.argv[1:]}  # the functions first
        for name in before:
            importlib.import_module("embedpipe." + name)
        import embedpipe.train
        assert all(getattr(embedpipe, n) is f and f is getattr(sys.modules["embedpipe." + n], n) for n, f in before.items())
        embedpipe.train = print  # assigning a public name still works (monkeypatching)
        assert embedpipe.train is print
        print("ok")
    """, *CLASHING)
    assert out.strip() == "ok"


# -- lazy registry entries -------------------------------------------------------------------------


@pytest.mark.parametrize("registry", [HEADS, BACKBONES], ids=lambda r: r.kind)
def test_lazy_entries_agree_with_the_decorators(registry: Registry) -> None:  # type: ignore[type-arg]
    """Importing each lazy entry's module registers (by its decorator, which checks the description)
    the very class the entry names, under the entry's name."""
    entries = registry.lazy_entries()
    assert set(entries) == set(registry.names())  # every built-in entry is lazy
    for name, target in entries.items():
        module, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        assert registry._factories.get(name) is cls, f"{target} did not register itself as {name!r}"
        assert target_of(cls) == target and registry.get(name) is cls
        assert getattr(cls, "name", getattr(cls, "family", None)) == name


def test_lazy_classifier_entries_match_their_classes() -> None:
    for name, target in NOT_HEADS.lazy_entries().items():
        cls = NOT_HEADS.get(name)
        assert target_of(cls) == target and cls.name == name and cls.description == CLASSIFIER_DESCRIPTIONS[name]


def _widget() -> int:
    return 7


def test_registry_lazy_entries() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add_lazy("seven", target_of(_widget), "the number seven")
    reg.add_lazy("od", "collections:OrderedDict", "a factory without a decorator")
    assert reg.names() == ["od", "seven"] and "seven" in reg and reg.descriptions["seven"] == "the number seven"
    with pytest.raises(ValueError, match="registered twice"):
        reg.add_lazy("seven", "math:tau", "again")
    with pytest.raises(ValueError, match="not 'module:attr'"):
        reg.add_lazy("bad", "math.tau", "no colon")
    with pytest.raises(ValueError, match="registered twice"):  # another factory under a lazy entry's name
        reg.register("seven")(lambda: 8)
    with pytest.raises(ValueError, match="differs from its lazy entry's"):  # the decorator's words drifted
        reg.register("seven", "seven, the number")(_widget)
    assert reg.register("seven", "the number seven")(_widget) is _widget and reg.create("seven") == 7
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("seven")(_widget)
    from collections import OrderedDict

    assert reg.get("od") is OrderedDict and reg.names() == ["od", "seven"]
    assert dict(reg.mapping()) == {"od": OrderedDict, "seven": _widget}
    with pytest.raises(EmbedpipeError, match="unknown widget 'sevn'; did you mean seven"):
        reg.get("sevn")
