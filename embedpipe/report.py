"""Bench output: the Markdown tables and PNG plots made from a bench's tidy CSV rows.

``results/<name>.md`` has one row per (dataset, backbone, layer, head, shots) with test accuracy as
mean ± std over seeds, a layer table (accuracy by layer for each head: "how many layers should I keep
frozen?") and the failed cells with their errors. ``<name>-accuracy.png`` plots accuracy by layer and
head. A transfer-advice table applies ``embedpipe advise``'s rule to the bench's val accuracy by layer.

Time to accuracy: within each (dataset, backbone, shots), a (layer, head) row is on the frontier when
no other row fits at most as long and scores at least as high on test, one of them strictly (Pareto
optimal in fit seconds and test accuracy, as the table shows them: seconds to 2 decimals, accuracy to
3). The table marks those rows, a short list reads the frontier from the fastest to the most accurate
("good enough in 2 s, best in 30 s"), and ``<name>-fit-time.png`` plots test accuracy against fit
seconds with the frontier drawn as the best accuracy reachable within each time.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from math import isfinite
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .advise import decide, evidence_from_rows
from .table import format_table
from .train import FEW_VAL_PER_CLASS, FEW_VAL_ROWS


class ReportConfig(Protocol):
    """What a report needs of a bench's configuration (``bench.BenchConfig`` has it)."""

    name: str  # results/<name>.md and -*.png
    layers: Sequence[str]  # in the order of the layer table
    results_dir: str


def _float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def chosen_text(value: Any) -> str:
    """A bench row's ``chosen`` cell (JSON text, e.g. ``{"C": 0.1}``) as ``C=0.1``; "" when empty."""
    try:
        chosen = json.loads(value) if isinstance(value, str) and value else value or {}
    except json.JSONDecodeError:
        return str(value)
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in chosen.items())


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[bool]:
    """Which ``(seconds, accuracy)`` points are on the time-to-accuracy frontier: no other point is at
    most as slow and at least as accurate, one of the two strictly. Equal points are all on it; a
    point with a missing or NaN value is on it never and hides no other."""
    valid = [(float(s), float(a)) for s, a in points
             if s is not None and a is not None and isfinite(s) and isfinite(a)]

    def on_front(point: tuple[float | None, float | None]) -> bool:
        s, a = point
        if s is None or a is None or not (isfinite(s) and isfinite(a)):
            return False
        return not any(t <= s and b >= a and (t, b) != (s, a) for t, b in valid)

    return [on_front(p) for p in points]


def _panel(s: dict[str, Any]) -> tuple[str, str, str]:
    """The rows whose times and accuracies compare: one dataset, backbone and training-set size."""
    return s["dataset"], s["backbone"], s["shots"]


def mark_frontier(summary: list[dict[str, Any]]) -> None:
    """Set ``frontier`` ("yes" or "") on each summary row, per (dataset, backbone, shots), from the
    values the table shows (fit seconds to 2 decimals, test accuracy to 3)."""
    for panel in dict.fromkeys(_panel(s) for s in summary):
        members = [s for s in summary if _panel(s) == panel]
        points = [(s["fit_s"], round(s["_acc"], 3) if isfinite(s["_acc"]) else None) for s in members]
        for s, on in zip(members, pareto_front(points), strict=True):
            s["frontier"] = "yes" if on else ""


def frontier_lines(summary: list[dict[str, Any]]) -> list[str]:
    """Per (dataset, backbone, shots) with two or more rows, the frontier from fastest to most
    accurate, e.g. ``digits / effnet-lite0: ncm on block4 0.859 in 0.00 s -> logreg on block4 0.978 in 0.33 s``."""
    lines = []
    for panel in dict.fromkeys(_panel(s) for s in summary):
        members = [s for s in summary if _panel(s) == panel]
        front = sorted((s for s in members if s.get("frontier")), key=lambda s: (s["fit_s"], s["_acc"]))
        if len(members) < 2 or not front:
            continue
        name = f"{panel[0]} / {panel[1]}" + (f" / {panel[2]}-shot" if panel[2] != "all" else "")
        steps = " -> ".join(f"{s['head']} on {s['layer']} {s['_acc']:.3f} in {s['fit_s']:.2f} s" for s in front)
        lines.append(f"- {name}: {steps}")
    return lines


def few_val(row: dict[str, Any]) -> bool:
    """Whether a bench row's val accuracy rests on few images (``train.few_val_warning``'s rule)."""
    n, classes = _float(row.get("val_rows")), _float(row.get("classes"))
    return bool(n) and (n < FEW_VAL_ROWS or n / max(1.0, classes or 1.0) < FEW_VAL_PER_CLASS)  # type: ignore[operator]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group ok rows over seeds: mean ± std of test accuracy, mean fit seconds; ``frontier`` marks the
    rows on the time-to-accuracy frontier of their dataset (``mark_frontier``)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok":
            groups[(r["dataset"], r["backbone"], r["layer"], r["head"], str(r.get("shots") or ""))].append(r)
    out = []
    for (dataset, backbone, layer, head, shots), members in groups.items():
        acc = np.array([_float(m["test_acc"]) for m in members], dtype=float)
        fit = np.array([_float(m["fit_s"]) for m in members], dtype=float)
        val, se = _float(members[0].get("val_acc")), _float(members[0].get("val_se"))
        few = val is not None and se is not None and few_val(members[0])
        out.append({
            "dataset": dataset, "backbone": backbone, "layer": layer, "head": head, "shots": shots or "all",
            "test_acc": f"{acc.mean():.3f}" + (f" ± {acc.std():.3f}" if len(acc) > 1 else ""),
            # on few validation images the val accuracy shows its standard error (train.FEW_VAL_ROWS)
            "val_acc": (f"{val:.3f} ± {se:.3f}" if few else val) if len(members) == 1 else None,
            "selection": members[0].get("selection") or "",
            "fit_s": round(float(fit.mean()), 2), "classes": members[0]["classes"], "n_train": members[0]["n_train"],
            "chosen": chosen_text(members[0].get("chosen")) if len(members) == 1 else "",  # seeds choose apart
            "_acc": float(acc.mean()),
        })
    mark_frontier(out)
    return out


def layer_table(summary: list[dict[str, Any]], layers: list[str]) -> str:
    """Rows (dataset, backbone, head, shots), columns layers: test accuracy; the best layer in bold."""
    table: dict[tuple[str, ...], dict[str, float]] = defaultdict(dict)
    for s in summary:
        table[(s["dataset"], s["backbone"], s["head"], s["shots"])][s["layer"]] = s["_acc"]
    rows = []
    for (dataset, backbone, head, shots), accs in table.items():
        best = max(accs.values())
        row: dict[str, Any] = {"dataset": dataset, "backbone": backbone, "head": head, "shots": shots}
        for layer in layers:
            v = accs.get(layer)
            row[layer] = "-" if v is None else (f"**{v:.3f}**" if v == best and len(accs) > 1 else f"{v:.3f}")
        rows.append(row)
    return format_table(rows)


def plot(summary: list[dict[str, Any]], layers: list[str], out: Path) -> list[Path]:
    import matplotlib  # heavy: only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    panels = sorted({(s["dataset"], s["backbone"], s["shots"]) for s in summary})
    if not panels:
        return written
    heads = sorted({s["head"] for s in summary})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (dataset, backbone, shots) in zip(axes[0], panels, strict=True):
        for head in heads:
            ys = [next((s["_acc"] for s in summary if (s["dataset"], s["backbone"], s["shots"], s["head"], s["layer"])
                        == (dataset, backbone, shots, head, layer)), np.nan) for layer in layers]
            ax.plot(layers, ys, marker="o", label=head)
        ax.set_title(f"{dataset} / {backbone}" + (f" / {shots}-shot" if shots != "all" else ""), fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    written.append(out.with_name(out.name + "-accuracy.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    colors = {head: f"C{i % 10}" for i, head in enumerate(heads)}
    markers = {layer: "osD^v<>ph*"[i % 10] for i, layer in enumerate(layers)}
    for ax, panel in zip(axes[0], panels, strict=True):
        members = [s for s in summary if (s["dataset"], s["backbone"], s["shots"]) == panel and isfinite(s["_acc"])]
        for s in members:
            ax.scatter(s["fit_s"], s["_acc"], color=colors[s["head"]], marker=markers.get(s["layer"], "o"),
                       edgecolors="black" if s.get("frontier") else "none", zorder=3)
        front = sorted((s for s in members if s.get("frontier")), key=lambda s: (s["fit_s"], s["_acc"]))
        if front:  # the best accuracy reachable within each fit time: a step up at each frontier row
            xs = [s["fit_s"] for s in front]
            ys = [s["_acc"] for s in front]
            right = max(s["fit_s"] for s in members) * 1.5 + 0.01
            ax.step([*xs, right], [*ys, ys[-1]], where="post", color="black", alpha=0.6, lw=1, zorder=2,
                    label="frontier")
            for s in front:
                ax.annotate(f"{s['head']}/{s['layer']}", (s["fit_s"], s["_acc"]), fontsize=7,
                            xytext=(4, -10), textcoords="offset points")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_title(f"{panel[0]} / {panel[1]}" + (f" / {panel[2]}-shot" if panel[2] != "all" else ""), fontsize=9)
        ax.set_xlabel("fit seconds (log above 0.01)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=h) for h, c in colors.items()]
    if len({s["layer"] for s in summary}) > 1:
        handles += [plt.Line2D([], [], color="gray", marker=m, ls="", label=layer) for layer, m in markers.items()]
    handles.append(plt.Line2D([], [], color="black", alpha=0.6, label="frontier"))
    axes[0][-1].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    written.append(out.with_name(out.name + "-fit-time.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def advise_table(rows: list[dict[str, Any]]) -> str:
    """Per (dataset, backbone): images per class, the sweep's peak, the gap to pooled, the case and the
    recommended strategy, decided by ``advise.decide`` from the bench's own logreg/kNN val accuracy."""
    out = []
    for dataset, backbone in sorted({(r["dataset"], r["backbone"]) for r in rows if r.get("status") == "ok"}):
        ev = evidence_from_rows(rows, dataset, backbone)
        if ev is None or len(ev.scores) < 2:  # one layer: no sweep to read the distance from
            continue
        d = decide(ev)
        rec = d["recommendation"]
        out.append({"dataset": dataset, "backbone": backbone, "per_class": round(ev.per_class, 1),
                    "val_images": ev.val_rows or "-",
                    "peak": f"{d['peak_layer']} ({d['peak_val']:.3f})",
                    "gap_vs_pooled": "-" if d["gap"] is None else f"{d['gap']:+.3f}",
                    "case": f"{d['size']} & {d['similarity']}",
                    "recommendation": f"{rec['head']} on {rec['layer']}"
                                      + (f", fine-tune {rec['finetune_blocks']} block(s)" if rec["finetune_blocks"] else "")
                                      + (f" (rests on {ev.val_rows} val images)" if d["rests_on"] else "")})
    return format_table(out) if out else ""


def render_markdown(config: ReportConfig, rows: list[dict[str, Any]]) -> str:
    summary = summarize(rows)
    columns = ["dataset", "backbone", "layer", "head", "shots", "classes", "n_train", "val_acc", "test_acc", "fit_s"]
    if any(s["chosen"] for s in summary):  # hyperparameters chosen on val (CSVs written before have none)
        columns.append("chosen")
    if any(s["selection"] for s in summary):  # the rule they were chosen by (CSVs written before have none)
        columns.append("selection")
    columns.append("frontier")  # on the time-to-accuracy frontier of its dataset
    parts = [f"# {config.name}", "", format_table(summary, columns), "",
             "`frontier`: on its dataset's time-to-accuracy frontier: no other layer and head is as "
             "fast and as accurate on test, and better in one of the two. Along the frontier, from "
             "fastest to most accurate:", "", *(frontier_lines(summary) or ["- (fewer than two rows per dataset)"])]
    if len({s["layer"] for s in summary}) > 1:
        parts += ["", "Test accuracy by layer (best in bold):", "", layer_table(summary, list(config.layers))]
    few = [r for r in rows if r.get("status") == "ok" and r.get("val_acc") not in (None, "") and few_val(r)]
    if few:
        counts = sorted({int(float(r["val_rows"])) for r in few})
        parts += ["", f"{len(few)} of these val accuracies rest on few images ({', '.join(map(str, counts))}; fewer than "
                      f"{FEW_VAL_ROWS}, or fewer than {FEW_VAL_PER_CLASS} per class): shown ± their standard error."]
    advice = advise_table(rows)
    if advice:
        parts += ["", "Transfer advice (`embedpipe advise`'s rule on this table's val accuracy by layer):", "", advice]
    failed = [r for r in rows if r.get("status") == "error"]
    if failed:
        parts += ["", "Failed cells:", "", format_table(failed, ["dataset", "backbone", "layer", "head", "error"])]
    return "\n".join(parts) + "\n"


def write_report(config: ReportConfig, rows: list[dict[str, Any]]) -> dict[str, Path]:
    out = Path(config.results_dir) / config.name
    md = out.parent / f"{config.name}.md"
    md.write_text(render_markdown(config, rows))
    pngs = plot(summarize(rows), list(config.layers), out)
    return {"csv": out.parent / f"{config.name}.csv", "md": md, **{p.stem: p for p in pngs}}
