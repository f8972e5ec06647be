"""MkDocs hooks (``hooks:`` in mkdocs.yml): the parts of the site that are generated at build time from
the code and the committed results, so that they cannot go stale.

A page asks for generated content with an HTML comment on a line of its own:

``<!-- generate: cli -->``
    ``embedpipe --help`` and ``embedpipe VERB --help`` for every verb, rendered from the argument parser.
``<!-- generate: heads -->``
    every registered head and classifier: a summary table, then each class's documented parameters
    (mkdocstrings renders the numpydoc docstring).
``<!-- generate: results NAME -->``
    the table of ``benchmarks/results/NAME.md``, followed by the machine, date and library versions
    recorded in ``NAME.csv``.

The figures ``benchmarks/results/*.png`` are added to the site as ``figures/NAME.png``.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HELP_COLUMNS = "100"  # argparse wraps help to $COLUMNS: a fixed width gives the same page everywhere
MARKER = re.compile(r"^<!-- generate: (?P<what>[a-z]+)(?: (?P<arg>[\w.-]+))? -->$", re.M)
VERSIONS_SHOWN = ("python", "torch", "timm", "open_clip", "numpy", "h5py", "scikit-learn", "lightgbm")


def on_files(files: Files, config: Any) -> Files:
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"figures/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    return MARKER.sub(lambda m: _generate(m.group("what"), m.group("arg")), markdown)


def _generate(what: str, arg: str | None) -> str:
    if what == "cli":
        return cli_reference()
    if what == "heads":
        return heads_reference()
    if what == "results" and arg:
        return results_table(arg)
    raise ValueError(f"docs/hooks.py: unknown generated section {what!r} {arg or ''}")


def cli_reference() -> str:
    """``--help`` of the command and of every verb, exactly as the terminal shows it."""
    import argparse  # only this generator needs it

    os.environ["COLUMNS"] = HELP_COLUMNS
    # the code being documented, imported when a page asks for it
    from embedpipe.cli import build_parser

    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # no public accessor
    parts = ["## embedpipe", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in verbs.choices.items():
        parts += [f"## embedpipe {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def _head_classes() -> dict[str, type]:
    import embedpipe  # the code being documented: imported when a page asks for it
    import embedpipe.heads

    classes = {name: type(embedpipe.create_head(name)) for name in embedpipe.list_heads()}
    for name, cls in getattr(embedpipe.heads, "CLASSIFIERS", {}).items():  # classifiers that train nothing
        classes.setdefault(name, cls)
    return classes


def _summary(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return doc.split("\n\n")[0].replace("\n", " ") if doc else ""


def heads_reference() -> str:
    """A table of every head, then each head's class docstring (parameters, attributes, examples)."""
    classes = _head_classes()
    parts = ["| name | class | what it is |", "|---|---|---|"]
    parts += [f"| [`{name}`](#{name}) | `{cls.__name__}` | {_summary(cls)} |" for name, cls in classes.items()]
    parts.append("")
    for name, cls in classes.items():
        parts += [f"### {name} {{#{name}}}", "", f"`embedpipe train --head {name}`, "
                  f"`embedpipe.create_head(\"{name}\")` or `{cls.__module__}.{cls.__qualname__}`.", "",
                  f"::: {cls.__module__}.{cls.__qualname__}",
                  "    options:", "      show_root_heading: false", "      members: false",
                  "      show_bases: false", "      heading_level: 4", ""]
    return "\n".join(parts)


def _rows(name: str) -> list[dict[str, str]]:
    path = RESULTS / f"{name}.csv"
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _distinct(values: list[str]) -> str:
    seen = [v for i, v in enumerate(values) if v and v not in values[:i]]
    return "; ".join(seen) if seen else "not recorded"


def results_table(name: str) -> str:
    """The committed Markdown table, then where and with what it was measured (from the CSV rows)."""
    md = (RESULTS / f"{name}.md").read_text()
    md = re.sub(r"\A# .*\n+", "", md)  # the file's own title: the page has its heading
    md = re.sub(r"^(#+) ", r"#\1## ", md, flags=re.M)  # its sections sit below the page's
    rows = _rows(name)
    versions: dict[str, set[str]] = {}
    for row in rows:
        for lib, v in json.loads(row.get("versions") or "{}").items():
            versions.setdefault(lib, set()).add(v)
    shown = ", ".join(f"{lib} {'/'.join(sorted(versions[lib]))}" for lib in VERSIONS_SHOWN if lib in versions)
    measured = (f"*Measured on: {_distinct([r.get('machine', '') for r in rows])} "
                f"({_distinct([r.get('device', '') for r in rows])}), {_distinct([r.get('date', '') for r in rows])}"
                + (f"; {shown}" if shown else "") + f". Source: `benchmarks/results/{name}.csv`.*")
    return md.rstrip() + "\n\n" + measured + "\n"
