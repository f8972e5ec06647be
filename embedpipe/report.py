"""Bench output: the Markdown tables and PNG plots made from a bench's tidy CSV rows.

``results/<name>.md`` has one row per (dataset, backbone, layer, head, shots) with test accuracy as
mean ± std over seeds, a layer table (accuracy by layer for each head: "how many layers should I keep
frozen?") and the failed cells with their errors. ``<name>-accuracy.png`` plots accuracy by layer and
head; ``<name>-fit-time.png`` the fit seconds per head. A transfer-advice table applies
``embedpipe advise``'s rule to the bench's val accuracy by layer.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
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


def few_val(row: dict[str, Any]) -> bool:
    """Whether a bench row's val accuracy rests on few images (``train.few_val_warning``'s rule)."""
    n, classes = _float(row.get("val_rows")), _float(row.get("classes"))
    return bool(n) and (n < FEW_VAL_ROWS or n / max(1.0, classes or 1.0) < FEW_VAL_PER_CLASS)  # type: ignore[operator]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group ok rows over seeds: mean ± std of test accuracy, mean fit seconds."""
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

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{s['dataset']}/{s['layer']}" for s in summary]
    groups = sorted(set(labels), key=labels.index)
    width = 0.8 / max(1, len(heads))
    for i, head in enumerate(heads):
        vals = [next((s["fit_s"] for s in summary if f"{s['dataset']}/{s['layer']}" == g and s["head"] == head), 0)
                for g in groups]
        ax.bar(np.arange(len(groups)) + i * width, vals, width, label=head)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, rotation=30, ha="right", fontsize=8)
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylabel("fit seconds (log above 0.01)")
    ax.legend(fontsize=8)
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
    parts = [f"# {config.name}", "", format_table(summary, columns)]
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
