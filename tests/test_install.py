"""The pinned install: constraints.txt pins every direct dependency, `make` installs with it, and the
environment running the tests is the one it describes (fast, no network).

Tolerated differences, on purpose: packages pinned but not installed (a constraints file limits
versions, it does not install: the CUDA libraries are absent under a CPU-only torch, optional extras
may be missing), and local version labels (torch ``2.14.1+cpu`` from the PyTorch CPU index is the
pinned ``2.14.1`` built without CUDA).
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def direct_dependencies() -> dict[str, str]:
    """Normalised name -> requirement string, for dependencies and every optional extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    out = {}
    for req in reqs:
        match = NAME.match(req)
        assert match, req
        out[normalize(match.group(1))] = req
    return out


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version and not re.search(r"[<>=!~;@ ]", version + name), f"not an exact pin: {line!r}"
        assert normalize(name) not in out, f"pinned twice: {name}"
        out[normalize(name)] = version
    return out


def test_constraints_pin_every_direct_dependency_within_its_bounds() -> None:
    pinned = pins()
    assert "embedpipe" not in pinned  # the package itself comes from the work tree
    missing = sorted(set(direct_dependencies()) - set(pinned))
    assert not missing, f"constraints.txt does not pin {missing}: run `make lock`"
    try:
        from packaging.requirements import Requirement
    except ImportError:  # packaging comes with matplotlib, but do not fail on its absence
        return
    for name, req in direct_dependencies().items():
        spec = Requirement(req.split("#")[0]).specifier
        assert spec.contains(pinned[name], prereleases=True), f"{name}=={pinned[name]} is outside {req!r}"


def test_running_environment_matches_the_constraints() -> None:
    installed = {normalize(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    direct = set(direct_dependencies())
    assert direct <= set(installed), f"not installed: {sorted(direct - set(installed))}"
    differ = {name: (installed[name], version) for name, version in pins().items()
              if name in installed and installed[name].split("+")[0] != version}
    assert not differ, ("this environment differs from constraints.txt (installed, pinned): "
                        f"{differ}; `make venv` installs the pins, `make lock` re-pins after a deliberate upgrade")


def test_makefile_installs_with_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "CONSTRAINTS := constraints.txt" in makefile
    install = [line for line in makefile.splitlines() if "pip install" in line and "-e " in line]
    assert install and all("-c $(CONSTRAINTS)" in line for line in install), install
    assert re.search(r"^\$\(STAMP\): .*\$\(CONSTRAINTS\)", makefile, re.M)  # a changed pin reinstalls
    assert re.search(r"^lock:", makefile, re.M) and "pip freeze" in makefile
