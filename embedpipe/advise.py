"""The transfer report: how many layers to keep frozen, decided from figures anyone can check.

``advise(cache)`` measures two things about a dataset and its backbone:

- **size**: training images per class (after the val carve when the cache has no val split);
- **how much the evidence weighs**: the validation images the sweep's accuracies rest on (the val
  split, train's carve, or every training image once under k-fold cross-validation when train is
  small). On few of them (``train.FEW_VAL_ROWS``) the report says the recommendation rests on N
  images, with the accuracies' standard error, and whether the layer comparison is within it;
- **distance from the backbone's training data**: a layer sweep (kNN and a quick logistic regression,
  accuracy on val for every cached vector layer, in depth order), where it peaks, and the gap between
  the best earlier layer and ``pooled``: when an earlier stage beats the final embedding, the last
  blocks are specialised to the source task and the data is "different". Where the cache has the
  source classifier's ``logits``, their mean normalised prediction entropy (0 = the source classifier
  is sure of one of its classes, 1 = uniform) is shown too, and decides similarity when the sweep has
  no earlier layer to compare with.

``decide`` maps (size, similarity) to the four classic cases of the transfer-learning guides and a
strategy (layer, head, blocks to fine-tune). It is a pure function of the evidence, shared with the
advise section of ``embedpipe bench``'s Markdown (``evidence_from_rows``), so both say the same.
All thresholds are in the block below, with a comment each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .core.errors import EmbedpipeError
from .core.layers import depth
from .heads import create_head
from .heads.select import KFold
from .table import format_table
from .train import (
    FEW_VAL_PER_CLASS,
    FEW_VAL_ROWS,
    as_cache,
    load_splits,
    standard_error,
    train_rule,
)

# -- thresholds (the only place they live) -----------------------------------------------------
SMALL_PER_CLASS = 200  # below this many training images per class, fine-tuning blocks tends to overfit:
#                        train a head on frozen features (rule of thumb of the transfer-learning guides)
FINETUNE_MIN_TRAIN = 5000  # small per class but this many training images in all: the blocks after the cut
#                        are shared by every class, so they learn from the whole train split. glyphs
#                        (9,000 images, 6 per class, different) fine-tunes; digits (~1,200) stays frozen
#                        (the measurements: benchmarks/results/finetune.md)
GAP_DIFFERENT = 0.01  # an earlier layer beating `pooled` by >= 1 point of val accuracy: the last blocks
#                        are tuned to the source task, so the data is "different" from it
ENTROPY_DIFFERENT = 0.5  # mean normalised entropy of the source classifier above this: it recognises none
#                          of its own classes in the data (used only when the sweep has no earlier layer)
QUICK_CS = (0.01, 0.1, 1.0)  # the quick logreg probe's C sweep (standardised features, no refit)
QUICK_MAX_ITER = 100  # its L-BFGS iterations per C
KNN_K = 20  # kNN probe neighbours (DINO's setting, as the knn head)

CASES = {
    ("small", "similar"): "small & similar: keep the backbone frozen, train a new top on pooled",
    ("small", "different"): "small & different: cut earlier (the peak layer) or combine layers (multilayer); "
                            f"with >= {FINETUNE_MIN_TRAIN} training images in all, fine-tune from below the peak",
    ("large", "similar"): "large & similar: fine-tune the top block(s) with a new classifier",
    ("large", "different"): "large & different: fine-tune more blocks, starting below the peak layer",
}


@dataclass
class LayerScore:
    layer: str
    depth: int | None  # k of block<k> (0 = earliest); None for pooled, which comes after every block
    dim: int
    knn_val: float | None
    logreg_val: float | None


@dataclass
class Evidence:
    dataset: str
    backbone: str
    n_train: int
    n_classes: int
    per_class: float  # training images per class (mean)
    sweep: list[LayerScore] = field(default_factory=list)
    entropy: float | None = None  # mean normalised entropy of softmax(logits); None without logits
    val_rows: int | None = None  # validation images each sweep accuracy rests on (k-fold: every training image)
    val_source: str = "val split"  # "val split", "15% carve of train" or "5-fold cross-validation on train"

    @property
    def scores(self) -> list[tuple[str, float]]:
        """(layer, val accuracy) in depth order: the logreg probe where measured, else kNN."""
        out = []
        for s in self.sweep:
            v = s.logreg_val if s.logreg_val is not None else s.knn_val
            if v is not None:
                out.append((s.layer, float(v)))
        return out


def sweep_layers(layers: list[str]) -> list[str]:
    """The vector layers worth sweeping, in depth order (not logits: those are the source's class scores)."""
    return sorted((n for n in layers if not n.endswith(":map") and n != "logits"), key=depth)


def decide(ev: Evidence) -> dict[str, Any]:
    """The four-case decision and the strategy, from the evidence alone."""
    scores = ev.scores
    size = "small" if ev.per_class < SMALL_PER_CLASS else "large"
    peak_layer, peak_acc = max(reversed(scores), key=lambda s: s[1]) if scores else ("pooled", None)
    pooled = dict(scores).get("pooled")
    earlier = [(n, a) for n, a in scores if n != "pooled"]
    gap = None
    if pooled is not None and earlier:
        gap = round(max(a for _, a in earlier) - pooled, 4)  # the accuracies have 4 decimals
        different = gap >= GAP_DIFFERENT
        why = f"best earlier layer {'beats' if gap > 0 else 'trails'} pooled by {abs(gap):.3f} (threshold {GAP_DIFFERENT})"
    elif ev.entropy is not None:
        different = ev.entropy > ENTROPY_DIFFERENT
        why = f"source entropy {ev.entropy:.2f} (threshold {ENTROPY_DIFFERENT}); no earlier layer to compare"
    else:
        different = False
        why = "no earlier layer and no logits cached: assumed similar (cache more layers to measure it)"
    similarity = "different" if different else "similar"
    rests_on = None
    if ev.val_rows is not None and ev.val_rows and (
            ev.val_rows < FEW_VAL_ROWS or ev.val_rows / max(1, ev.n_classes) < FEW_VAL_PER_CLASS):
        se = standard_error(peak_acc if peak_acc is not None else 0.5, ev.val_rows)
        within = f"; the layer gap ({abs(gap):.3f}) is within 2 standard errors" if gap is not None and abs(gap) < 2 * se \
            else ""
        rests_on = (f"the recommendation rests on {ev.val_rows} validation images ({ev.val_source}, "
                    f"{ev.val_rows / max(1, ev.n_classes):.1f} per class): val accuracies ± {se:.3f} (standard error)"
                    f"{within}; treat it as a starting point, not a finding")
    blocks = sorted({depth(n) for n, _ in scores if n != "pooled"})
    last_block = f"block{blocks[-1]}" if blocks else "block4"
    # fine-tuning starts below the peak layer, so the peak's own block is retrained too
    below = [b for b in blocks if b < depth(peak_layer)] if peak_layer != "pooled" else blocks[:-1]
    start = f"block{below[-1]}" if below else last_block
    tuned = {"layer": f"{start}:map", "head": "finetune",
             "finetune_blocks": max(1, len([b for b in blocks if b > depth(start)]))}
    if size == "small" and similarity == "similar":
        rec = {"layer": "pooled", "head": "logreg", "finetune_blocks": 0}
    elif size == "small" and ev.n_train < FINETUNE_MIN_TRAIN:
        rec = {"layer": ",".join(n for n, _ in scores) or peak_layer, "head": "multilayer", "finetune_blocks": 0,
               "single_layer": peak_layer}
    elif size == "small":  # few per class, many in all, different: the tuned blocks see every image
        rec = {**tuned, "frozen_alternative": ",".join(n for n, _ in scores) or peak_layer}
    elif similarity == "similar":
        rec = {"layer": f"{last_block}:map", "head": "finetune", "finetune_blocks": 1}
    else:  # large & different: every block from below the peak is retrained
        rec = tuned
    return {"size": size, "similarity": similarity, "case": CASES[(size, similarity)], "why": why,
            "peak_layer": peak_layer, "peak_val": peak_acc, "pooled_val": pooled, "gap": gap,
            "recommendation": rec, "rests_on": rests_on}


def _entropy(cache: Any) -> float | None:
    if "logits" not in cache.layers:
        return None
    Z, _ = cache.load("train", "logits")
    if not len(Z):
        return None
    Z = Z - Z.max(axis=1, keepdims=True)
    P = np.exp(Z)
    P /= P.sum(axis=1, keepdims=True)
    H = -(P * np.log(np.clip(P, 1e-12, None))).sum(axis=1)
    return _acc(H.mean() / np.log(Z.shape[1]))  # a share of the maximum entropy: 4 decimals, as accuracies


def _acc(value: float) -> float:
    """An accuracy as measured: 4 decimals (float32 means such as 0.529411792755127 are 0.5294)."""
    return round(float(value), 4)


def _depth(layer: str) -> int | None:
    """A layer's block index for the report; None for ``pooled`` (after every block)."""
    return None if layer == "pooled" else depth(layer)


def measure(cache: Any) -> Evidence:
    """The layer sweep and the source entropy of a cache. Val is the cache's, else train's carve; when
    train is small (``heads.select.Auto``) the probes are scored by stratified k-fold on train instead."""

    cache = as_cache(cache)
    layers = sweep_layers(cache.layers)
    if not layers:
        raise EmbedpipeError(f"cache {cache.path} has no vector layer to sweep (it has {', '.join(cache.layers)})")
    rule = train_rule(cache)
    source = ("val split" if rule is None else f"{rule.folds}-fold cross-validation on train"
              if isinstance(rule, KFold) else f"{rule.fraction:.0%} carve of train")
    sweep = []
    n_train = n_classes = val_rows = 0
    for layer in layers:
        data = load_splits(cache, layer)
        (Xtr, ytr), (Xv, yv) = data["train"], data["val"]
        n_train, n_classes = len(ytr), len(np.unique(ytr))
        knn = lr = None
        probe = create_head("logreg", Cs=QUICK_CS, refit=False, max_iter=QUICK_MAX_ITER)
        if len(Xv):
            val_rows = len(yv)
            knn = _acc(create_head("knn", n_neighbors=KNN_K).fit(Xtr, ytr).score(Xv, yv))
            probe.fit(Xtr, ytr, eval_set=(Xv, yv))
        elif isinstance(rule, KFold):  # small train, no val: every training image is held out once
            masks = rule.val_masks(np.unique(ytr, return_inverse=True)[1], "advise")
            if masks:
                val_rows = int(sum(m.sum() for m in masks))
                knn = _acc(np.mean([create_head("knn", n_neighbors=KNN_K).fit(Xtr[~m], ytr[~m]).score(Xtr[m], ytr[m])
                                    for m in masks]))
                probe.set_params(selection=rule).fit(Xtr, ytr)
        if getattr(probe, "best_val_score_", None) is not None:
            lr = _acc(probe.best_val_score_)
        sweep.append(LayerScore(layer, _depth(layer), cache.dims[layer], knn, lr))
    return Evidence(str(cache.meta.get("dataset")), str(cache.backbone.get("spec")), n_train, n_classes,
                    n_train / max(1, n_classes), sweep, _entropy(cache), val_rows or None, source)


def evidence_from_rows(rows: list[dict[str, Any]], dataset: str, backbone: str) -> Evidence | None:
    """The same evidence from bench rows (logreg and knn val accuracy per layer; no entropy)."""
    mine = [r for r in rows if r.get("status") == "ok" and r.get("dataset") == dataset
            and r.get("backbone") == backbone and not r.get("shots")]
    if not mine:
        return None
    by_layer: dict[str, dict[str, float]] = {}
    for r in mine:
        if r["head"] in ("logreg", "knn") and r.get("val_acc") not in (None, "") and "," not in str(r["layer"]):
            by_layer.setdefault(str(r["layer"]), {})[r["head"]] = float(r["val_acc"])
    n_train, n_classes = int(mine[0]["n_train"]), int(mine[0]["classes"])
    sweep = [LayerScore(n, _depth(n), 0, by_layer[n].get("knn"), by_layer[n].get("logreg"))
             for n in sweep_layers(list(by_layer))]
    counts = [int(float(r["val_rows"])) for r in mine if r["head"] == "logreg" and r.get("val_rows") not in (None, "")]
    kfold = any(r.get("selection") == "kfold" for r in mine if r["head"] == "logreg")
    return Evidence(dataset, backbone, n_train, n_classes, n_train / max(1, n_classes), sweep,
                    val_rows=min(counts) if counts else None,
                    val_source="cross-validation on train" if kfold else "val split")


def plot_sweep(ev: Evidence, decision: dict[str, Any], out: Path) -> Path:
    import matplotlib  # heavy: only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.layer for s in ev.sweep]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, values in (("logreg (quick)", [s.logreg_val for s in ev.sweep]), ("kNN", [s.knn_val for s in ev.sweep])):
        ax.plot(names, [np.nan if v is None else v for v in values], marker="o", label=label)
    ax.set_xlabel("layer (shallow to deep)")
    ax.set_ylabel("val accuracy")
    ax.set_title(f"{ev.dataset} / {ev.backbone}: {decision['size']} & {decision['similarity']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def advise(cache: Any, *, out: str | Path | None = None, plot: bool = True) -> dict[str, Any]:
    """How many layers to keep frozen: the transfer report of a cache, from figures anyone can check.

    Two things are measured: the training images per class, and a layer sweep (a kNN and a quick
    logistic-regression probe, accuracy on val for every cached vector layer, in depth order). When
    an earlier layer beats ``pooled`` by a point or more, the backbone's last blocks are specialised
    to its source task and the data counts as "different" (without an earlier layer, the source
    classifier's entropy on cached ``logits`` decides, else "similar" is assumed). Size and
    similarity give one of the four classic cases and a recommendation: a layer, a head, and how
    many blocks to fine-tune (0 = keep the backbone frozen). The same as ``embedpipe advise``.

    Parameters
    ----------
    cache : str, Path or Cache
        The cache; extract it with several layers (``layers=["pooled", "block3", "block4"]``) for
        the sweep to compare depths.
    out : str, Path or None, default=None
        Where to write the accuracy-by-depth plot (PNG); None = ``<cache>/advise.png``.
    plot : bool, default=True
        Write the plot (needs matplotlib).

    Returns
    -------
    dict
        ``cache``, ``dataset``, ``backbone``; the evidence: ``n_train``, ``n_classes``,
        ``per_class``, ``sweep`` (per layer: ``layer``, ``depth``, ``dim``, ``knn_val``,
        ``logreg_val``), ``entropy`` (None without cached logits); the decision: ``size`` (small or
        large), ``similarity`` (similar or different), ``case``, ``why``, ``peak_layer``,
        ``peak_val``, ``pooled_val``, ``gap``; ``recommendation`` (``layer``, ``head``,
        ``finetune_blocks``); and ``plot``, the plot's path, when written.

    Raises
    ------
    EmbedpipeError
        A cache with no vector layer to sweep, too few classes, or a plot that cannot be written.

    Examples
    --------
    >>> import embedpipe
    >>> cache = embedpipe.extract("photos", layers=["pooled", "block4"], progress=False)
    >>> report = embedpipe.advise(cache, plot=False)
    >>> [s["layer"] for s in report["sweep"]], report["size"]
    (['block4', 'pooled'], 'small')
    >>> report["similarity"] in ("similar", "different"), sorted(report["recommendation"])[:3]
    (True, ['finetune_blocks', 'head', 'layer'])
    """

    cache = as_cache(cache)
    ev = measure(cache)
    decision = decide(ev)
    report: dict[str, Any] = {"cache": str(cache.path), **asdict(ev), **decision}
    if plot:
        target = Path(out).expanduser().resolve() if out is not None else cache.path / "advise.png"
        try:
            report["plot"] = str(plot_sweep(ev, decision, target))
        except OSError as e:
            raise EmbedpipeError(f"cannot write the plot to {target} ({e.strerror}); pass out='FILE.png'") from None
    return report


def format_advice(report: dict[str, Any]) -> str:
    """The report as text: the evidence table, the figures, the case and the recommendation."""

    rows = [{"layer": s["layer"], "dim": s["dim"] or "-", "knn_val": s["knn_val"], "logreg_val": s["logreg_val"]}
            for s in report["sweep"]]
    rec = report["recommendation"]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [format_table(rows), "",
             f"training images per class: {report['per_class']:.1f} ({report['n_train']} / {report['n_classes']}) "
             f"-> {report['size']} (threshold {SMALL_PER_CLASS}; fine-tuning from {FINETUNE_MIN_TRAIN} in all)",
             f"sweep peaks at {report['peak_layer']} ({f(report['peak_val'])}); pooled {f(report['pooled_val'])}; "
             f"{report['why']} -> {report['similarity']}"]
    if report.get("entropy") is not None:
        lines.append(f"source classifier entropy (logits, normalised): {report['entropy']:.2f}")
    lines += [f"case: {report['case']}",
              f"recommendation: --head {rec['head']} --layer {rec['layer']}"
              + (f" (fine-tune {rec['finetune_blocks']} block(s))" if rec["finetune_blocks"] else " (backbone frozen)")]
    if report.get("rests_on"):
        lines.append(f"caution: {report['rests_on']}")
    if rec.get("frozen_alternative"):
        lines.append(f"cheaper, backbone frozen: --head multilayer --layer {rec['frozen_alternative']}")
    if report.get("plot"):
        lines.append(f"plot: {report['plot']}")
    return "\n".join(lines)
