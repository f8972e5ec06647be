"""`embedpipe audit` on the README demo's data: the built-in glyphs set (effnet-lite0 ``pooled``).

    .venv/bin/python benchmarks/audit_glyphs.py     # about 3 minutes on 2 cores; run `make demo` first

Audits the demo's glyphs cache in the repository's ``cache/`` folder (embedding glyphs at 128 px
first when it is missing), and writes the report with its contact sheets to
benchmarks/results/audit-glyphs/ (``audit.md``, ``duplicates.png``, ``label_issues.png``,
``outliers.png``), with the cache's path written relative to the repository. The near-duplicate
pairs it names are look-alike characters (case pairs, diacritic variants, signs drawn alike) and
renderings of one character that are as alike as copies.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    import embedpipe

    caches = [m.parent for m in sorted((ROOT / "cache" / "glyphs").glob("effnet-lite0-*/meta.h5"))]
    caches = [c for c in caches if "pooled" in embedpipe.open_cache(c).layers
              and embedpipe.open_cache(c).backbone.get("image_size") == 128]
    cache = embedpipe.open_cache(caches[0]) if caches else embedpipe.extract(
        "glyphs", image_size=128, layers=["pooled", "block4"], cache_dir=ROOT / "cache")
    out = ROOT / "benchmarks" / "results" / "audit-glyphs"
    result = embedpipe.audit(cache, layer="pooled", top=200, out=out, data="glyphs", progress=True)
    report = out / "audit.md"
    report.write_text(report.read_text().replace(f"{ROOT}/", ""))
    dup = result.summary["duplicates"]
    print(f"{dup['near']} near-duplicate pairs, {dup['leaks']} leaks; report: {report.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
