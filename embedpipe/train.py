"""Fit heads on a cache: train on the train split, select on val, report val and test.

``train(cache, "logreg")`` fits one head; ``train_heads`` fits several on one load of the features.
``evaluate`` scores a saved head (top-1, top-5, mean per-class recall) on a cache split, after checking
that the cache was made by the same backbone, layer and label set as the head.

A layer may name several cached layers joined by commas (``"pooled,block4,block3"``): their features
are concatenated in that order (``Cache.load``); the ``multilayer`` head trains on all cached layers
when no layer is given. When the cache has no val rows (data laid out as train/ and test/ only), the
selection rule (``heads.select.DEFAULT_SELECTION``, ``Auto``; or the ``selection`` argument) decides
from the size of train:

- a large train set (2,000 images or more and 30 or more per class): a seeded, stratified 15 % of
  train is held out for selection (``HoldOut``, the rule a head applies when it is fitted without an
  ``eval_set``: one definition of the carve). It is computed at train time, not stored in the cache:
  it is a pure function of the cache's ids, labels and the rule, so it is the same on every run, and
  the head file and results record the rule, the number of rows and a digest of their ids
  (``val_split``), which is enough to recompute and check it. ``evaluate(..., split="val")`` scores on
  the same carve;
- a small one: no carve. Heads that select do so by stratified 5-fold cross-validation on all of train
  (``KFold``) and then fit on all of it; ``val_split`` records the rule, and there is no single
  carve for ``evaluate(..., split="val")`` to score (it says so).

Each result says what the head chose on the selection rows and how: ``chosen`` (logreg: ``{"C": 0.1}``,
from ``Head.chosen_params``) and ``selection`` (``how``: the rule, candidates and deciding score;
``rule``: ``eval_set``, ``holdout``, ``kfold`` or ``none``; ``val``: where the rows came from, e.g.
"15% of train held out per class (seed 0)"; ``val_rows``). When the choice rests on few images (fewer
than ``FEW_VAL_ROWS``, or fewer than ``FEW_VAL_PER_CLASS`` per class), the result's ``warnings`` say
so in one line with the count, and ``val_se`` is the val accuracy's standard error,
``sqrt(p (1 - p) / n)``.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cache import Cache, open_cache
from .core.errors import EmbedpipeError, first_line
from .heads import (
    Head,
    ZeroShotClassifier,
    classifier_class,
    create_classifier,
    load_head,
    save_head,
)
from .heads.select import HoldOut, KFold, Rule, resolve

Classifier = Head | ZeroShotClassifier  # what `train` fits and saves: a head, or the zero-shot classifier
_logger = logging.getLogger(__name__)

# -- when a val accuracy rests on few images (the only place these live) --------------------------
FEW_VAL_ROWS = 100  # fewer validation images than this: one image is worth a point or more of accuracy,
#                     and the standard error of the val accuracy is 3-5 points (0.05 at p = 0.75, n = 75)
FEW_VAL_PER_CLASS = 5  # or fewer per class than this: a class's score moves by 20 points per image


@dataclass
class FitResult:
    """What ``train`` and ``train_heads`` return for one head: its scores, what it chose and where it
    was saved. ``to_dict()`` gives the same without the model (one entry of ``embedpipe train --json``).

    Attributes
    ----------
    head : str
        The head's registered name.
    layer : str
        The cached layer(s) it was trained on, comma-separated in column order.
    params : dict
        The hyperparameters given (not the defaults).
    val_acc : float or None
        Accuracy on the validation rows it was selected with; None without validation rows.
    test_acc : float or None
        Top-1 accuracy on the test split; None when the cache has no test rows.
    fit_s : float
        Seconds the fit took, selection included.
    n_train : int
        Training rows.
    n_classes : int
        Classes the head predicts.
    test_metrics : dict
        ``top1`` (= ``test_acc``), ``top5``, ``mean_per_class_recall`` and ``n`` on the test split.
    path : str or None
        The saved head file (absolute); None when not saved.
    val_split : dict
        Where the validation rows came from: the cache's val split, or the rows held out of train
        (the rule, the number of rows and a digest of their ids).
    chosen : dict
        The hyperparameters the head chose on validation rows (logreg: ``{"C": 0.1}``); empty for a
        head that chooses nothing (knn, ncm) or was given every value.
    selection : dict or None
        How they were chosen: ``how`` (the rule, the candidates and the deciding score) and the rows
        it was decided on; None when nothing was chosen.
    report : dict
        Head-specific findings (multilayer: each layer's share of the kept features).
    model : Head or None
        The fitted head itself.
    """

    head: str
    layer: str
    params: dict[str, Any]
    val_acc: float | None
    test_acc: float | None
    fit_s: float
    n_train: int
    n_classes: int
    test_metrics: dict[str, float] = field(default_factory=dict)  # top1 (= test_acc), top5, mean per-class recall
    path: str | None = None
    val_split: dict[str, Any] = field(default_factory=dict)  # where the selection rows came from
    chosen: dict[str, Any] = field(default_factory=dict)  # hyperparameters fit chose on val (logreg: C)
    selection: dict[str, Any] | None = None  # how they were chosen and on which rows; None: nothing chosen
    report: dict[str, Any] = field(default_factory=dict)  # head-specific findings (multilayer: per-layer shares)
    val_rows: int | None = None  # validation images val_acc rests on (under k-fold: every training image, once)
    val_se: float | None = None  # standard error of val_acc, sqrt(p (1 - p) / val_rows)
    warnings: list[str] = field(default_factory=list)  # one line each (e.g. a val accuracy that rests on few images)
    model: Classifier | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("model")
        return d


def as_cache(cache: str | Path | Cache) -> Cache:
    return cache if isinstance(cache, Cache) else open_cache(cache)


def default_layer(cache: Cache, head: str) -> str:
    """The layer a head trains on when none is given: every cached vector layer for ``multilayer``
    (in the cache's order), ``pooled`` for the others."""
    if head == "multilayer":
        return ",".join(name for name in cache.layers if len(cache.shapes[name]) == 1)  # vectors, grids included
    return "pooled"


def train_rule(cache: Cache, rule: Rule | None = None) -> HoldOut | KFold | None:
    """The selection rule ``train`` applies to a cache: None when it has val rows (they select);
    else ``rule`` (None = ``heads.select.DEFAULT_SELECTION``) resolved from the size of train."""
    if len(cache.rows("val")):
        return None
    return resolve(rule, cache.labels[cache.rows("train")])


def _carve_mask(cache: Cache, rule: Rule | None = None) -> np.ndarray | None:
    """Train rows to hold out as val when the cache has none and the rule carves (None otherwise:
    the cache has val rows, or train is small and heads select by k-fold on all of it)."""
    concrete = train_rule(cache, rule)
    if not isinstance(concrete, HoldOut):
        return None
    return concrete.mask(cache.load_ids("train"), cache.labels[cache.rows("train")])


def val_split_info(cache: Cache, rule: Rule | None = None) -> dict[str, Any]:
    """Where a head's selection rows come from: the cache's val split, the rows carved out of train,
    or k-fold cross-validation on all of train."""
    concrete = train_rule(cache, rule)
    if concrete is None:
        return {"source": "cache", "rows": len(cache.rows("val"))}
    if isinstance(concrete, KFold):
        labels = cache.labels[cache.rows("train")]
        n, k = len(labels), len(np.unique(labels))
        why = (f"train is small ({n} images, {n / max(1, k):.1f} per class)" if rule is None or not isinstance(rule, KFold)
               else "the k-fold rule was asked for")
        return {"source": "k-fold on train", "rule": concrete.to_json(), "rows": n,
                "note": f"no val split in the cache and {why}: heads select by stratified {concrete.folds}-fold "
                        "cross-validation on train, then fit on all of it"}
    mask = _carve_mask(cache, concrete)
    assert mask is not None
    ids = cache.load_ids("train")[mask]
    return {"source": "carved from train", "rule": concrete.split_rule.to_dict(), "rows": int(mask.sum()),
            "ids_sha256": hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest(),
            "note": f"no val split in the cache: held out {concrete.fraction:.0%} of train (seed {concrete.seed}) "
                    "for selection"}


def load_splits(cache: Cache, layer: str, rule: Rule | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train, val and test (X, y) of a layer; on a cache without val rows, val is the carve when the
    rule carves (``_carve_mask``) and empty when heads select by k-fold on all of train."""
    data = {s: cache.load(s, layer) for s in ("train", "val", "test")}
    if len(data["train"][0]) == 0:
        raise EmbedpipeError(f"cache {cache.path} has no usable training images")
    if len(np.unique(data["train"][1])) < 2:
        raise EmbedpipeError(f"cache {cache.path} has fewer than 2 classes in its train split")
    mask = _carve_mask(cache, rule)
    if mask is not None and mask.any():
        X, y = data["train"]
        data["train"], data["val"] = (X[~mask], y[~mask]), (X[mask], y[mask])
    return data


def standard_error(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` images: sqrt(p (1 - p) / n)."""
    return math.sqrt(max(0.0, p * (1 - p)) / max(1, n))


def few_val_warning(who: str, val_acc: float | None, n: int, n_classes: int, kfold: bool = False) -> str | None:
    """One line when a val accuracy rests on few images (fewer than ``FEW_VAL_ROWS``, or fewer than
    ``FEW_VAL_PER_CLASS`` per class), with the count and the standard error; None otherwise."""
    if val_acc is None or not n:
        return None
    per_class = n / max(1, n_classes)
    if n >= FEW_VAL_ROWS and per_class >= FEW_VAL_PER_CLASS:
        return None
    where = " (k-fold: each training image held out once)" if kfold else ""
    line = (f"{who}: selection rests on {n} validation images{where}, {per_class:.1f} per class: val accuracy "
            f"{val_acc:.3f} ± {standard_error(val_acc, n):.3f} (standard error); test accuracy can differ by more")
    if val_acc in (0.0, 1.0):  # the standard error is 0 there, and says nothing
        line += (f"; at {val_acc:.3f} the standard error is 0, yet on {n} images the 95% bound is "
                 f"{min(1.0, 3 / n):.2f} away (rule of three)"
                 + ("; no validation image was classified right" if val_acc == 0.0 else ""))
    return line
def head_info(cache: Cache, layer: str) -> dict[str, Any]:
    """What a head was trained on: enough to check a cache against it and to rebuild the pipeline.
    ``layer`` lists every layer whose columns the head reads, comma-separated, in column order."""
    return {
        "cache": str(cache.path.resolve()),
        "cache_key": cache.key,
        "dataset": cache.meta.get("dataset"),
        "backbone": cache.backbone,
        "backbone_fingerprint": cache.meta["backbone_fingerprint"],
        "layer": layer,
        "label_names": cache.label_names,
    }


def accuracy(head: Classifier, X: np.ndarray, y: np.ndarray) -> float | None:
    return float(head.score(X, y)) if len(X) else None


def fit_head(
    data: dict[str, tuple[np.ndarray, np.ndarray]], name: str, layer: str, params: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None, selection: Rule | None = None,
) -> FitResult:
    """Fit one head on ``data`` (train, val, test); ``selection`` is the rule given to a head that takes
    one when its parameters name none (``train_heads`` passes the rule it resolved for the cache)."""
    kwargs = {**(context or {}), **(params or {})}
    if selection is not None and "selection" in inspect.signature(classifier_class(name)).parameters \
            and "selection" not in kwargs:
        kwargs["selection"] = selection
    head = create_classifier(name, **kwargs)
    (Xtr, ytr), (Xv, yv), (Xte, yte) = data["train"], data["val"], data["test"]
    if Xtr.ndim > 2 and not getattr(head, "takes_maps", False):  # e.g. a bench row of logreg on block3:map
        raise EmbedpipeError(f"head {name} takes vectors, and {layer} is an unpooled map; use "
                             f"{layer.removesuffix(':map')} (the same block pooled) or the finetune head")
    t0 = time.perf_counter()
    try:
        if isinstance(head, ZeroShotClassifier):  # built from the class names: nothing to fit
            head = ZeroShotClassifier.from_names(**head.get_params())
            head.predict_proba(Xtr[:1])  # it takes these features (the backbone's pooled width)
        else:
            head.fit(Xtr, ytr, eval_set=(Xv, yv) if len(Xv) else None)
    except (ValueError, TypeError) as e:  # a bad hyperparameter value or a head that cannot use these features
        raise EmbedpipeError(f"head {name}: {first_line(e)}") from None
    fit_s = time.perf_counter() - t0
    # A head that refits on train+val reports the validation score it was selected with.
    val = getattr(head, "best_val_score_", None)
    val = accuracy(head, Xv, yv) if val is None else float(val)
    test = metrics(head, Xte, yte) if len(Xte) else {}  # one predict_proba pass gives every test number
    report = {k: getattr(head, k) for k in ("layer_contributions_", "layer_kept_", "keep_") if hasattr(head, k)}
    chosen, how = chosen_by(head)
    how_selected = getattr(head, "selection_", None) or {}
    rule = how_selected.get("rule")
    val_rows = how_selected.get("val_rows") if rule in ("holdout", "kfold", "loo") else len(Xv)
    selection: dict[str, Any] | None = None
    if how:
        selection = {"how": how, "rule": rule or "eval_set", "val_rows": val_rows}
        if rule in ("holdout", "kfold", "loo"):
            selection["val"] = how_selected.get("describe", "rows of train, by the head's own selection rule")
    n_classes = len(head.classes_)
    val_se = standard_error(val, val_rows) if val is not None and val_rows else None
    warning = few_val_warning(name, val, val_rows or 0, n_classes, kfold=rule in ("kfold", "loo"))
    return FitResult(name, layer, dict(params or {}), val, test.get("top1"),
                     fit_s, len(Xtr), n_classes, test_metrics=test, report=report, model=head,
                     chosen=chosen, selection=selection, val_rows=val_rows if val is not None else None,
                     val_se=None if val_se is None else round(val_se, 4), warnings=[warning] if warning else [])


def chosen_by(head: Classifier) -> tuple[dict[str, Any], str | None]:
    """The hyperparameters a fitted head chose on validation rows and how (``Head.chosen_params``,
    ``Head.how_chosen``); ``({}, None)`` for one that chose nothing (knn, ncm, zeroshot)."""
    if not isinstance(head, Head):
        return {}, None
    return head.chosen_params(), head.how_chosen()


def describe_val(val_split: dict[str, Any]) -> str:
    """Where the selection rows came from, in words (``val_split_info``)."""
    if val_split.get("source") == "k-fold on train":
        rule = val_split.get("rule", {})
        return f"stratified {rule.get('folds')}-fold cross-validation on train (seed {rule.get('seed')})"
    if val_split.get("source") != "carved from train":
        return "the cache's val split"
    rule = val_split.get("rule", {})
    return f"{rule.get('val', 0):.0%} of train held out per class (seed {rule.get('seed')})"



def _file_layer(layer: str) -> str:
    return layer.replace(",", "+")


def default_head_path(cache: Cache, name: str, layer: str) -> Path:
    return cache.path / "heads" / f"{name}-{_file_layer(layer)}.npz"


def head_names(heads: list[str] | tuple[str, ...] | str) -> list[str]:
    """The head names ``heads`` lists: a list (or tuple) of names, or one name as a plain string.
    A comma-joined string is refused: Python callers pass a list (the CLI splits ``--head a,b``)."""
    if isinstance(heads, str):
        if "," in heads:
            listed = [h.strip() for h in heads.split(",")]
            raise EmbedpipeError(f"heads takes a list of head names, e.g. heads={listed!r}, "
                                 f"not the comma-joined string {heads!r}")
        return [heads]
    names = list(heads)
    if not names or not all(isinstance(n, str) for n in names):
        raise EmbedpipeError(f"heads takes a non-empty list of head names; got {heads!r}")
    return names


def train_heads(
    cache: str | Path | Cache,
    heads: list[str] | str = "logreg",
    *,
    layer: str | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    out: str | Path | None = None,
    save: bool = True,
    selection: Rule | None = None,
) -> list[FitResult]:
    """Fit several heads on a cache, loading each layer's features once, and save them.

    Each head is fitted on the train split, selects its hyperparameters on the val split (on a cache
    without val rows, as ``selection`` says; the results say
    so) and is scored on the test split.

    Parameters
    ----------
    cache : str, Path or Cache
        The cache: its folder, as ``extract`` returns or ``embedpipe extract`` prints.
    heads : list of str or str, default="logreg"
        Head names (``list_heads()``), or one name. A comma-joined string is refused: pass a list.
    layer : str or None, default=None
        The cached layer to train on, or several joined by commas (``"pooled,block4"``: their
        features side by side, in that order). None = ``pooled``, and every cached vector layer for
        ``multilayer``.
    params : dict or None, default=None
        Hyperparameters per head: ``{"logreg": {"C": 0.1}, "mlp": {"hidden": 64}}``. A head not
        named gets its defaults.
    out : str, Path or None, default=None
        Where head files go: a file (one head) or a folder (``<head>-<layer>.npz`` in it); None =
        ``<cache>/heads/<head>-<layer>.npz``.
    save : bool, default=True
        Save each head. With False, ``FitResult.path`` is None and ``FitResult.model`` is the only
        copy.
    selection : Rule or None, default=None
        How a cache without val rows is selected on (``heads.select``): ``HoldOut``, ``KFold`` or
        ``Auto``. None = ``Auto()``: stratified 5-fold on a small train split (under 2,000 images, or
        under 30 per class on average), else a seeded, stratified 15 % of each class held out.

    Returns
    -------
    list of FitResult
        One per head, in the order of ``heads``.

    Raises
    ------
    EmbedpipeError
        An unknown head, parameter or layer, a cache with no usable training images or fewer than 2
        classes, or a bad parameter value (checked before any fit starts where it can be).

    See Also
    --------
    train : One head, with its hyperparameters as keyword arguments.
    few_shot : K images per class, over several seeds.

    Examples
    --------
    >>> import embedpipe
    >>> cache = embedpipe.extract("photos", progress=False)
    >>> results = embedpipe.train_heads(cache, ["logreg", "knn"], params={"logreg": {"C": 0.1}}, save=False)
    >>> [(r.head, r.params, r.path) for r in results]
    [('logreg', {'C': 0.1}, None), ('knn', {}, None)]
    >>> results[0].model.predict(cache.load("test")[0]).shape == (cache.counts()["test"],)
    True
    """
    names = head_names(heads)
    cache = as_cache(cache)
    for name in names:
        create_classifier(name, **(params or {}).get(name, {}))  # fail fast on a bad name or parameter
    layers = {name: layer or default_layer(cache, name) for name in names}
    for spec in set(layers.values()):
        for one in spec.split(","):
            cache._check_layer(one)
    val_split = val_split_info(cache, selection)
    concrete = train_rule(cache, selection)
    loaded: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    results = []
    for name in names:
        spec = layers[name]
        if spec not in loaded:
            loaded[spec] = load_splits(cache, spec, selection)
        context = classifier_class(name).context_params(cache, spec)
        result = fit_head(loaded[spec], name, spec, (params or {}).get(name), context,
                          selection=concrete if isinstance(concrete, KFold) else None)
        result.val_split = val_split
        if result.selection is not None:
            result.selection.setdefault("val", describe_val(val_split))
        for line in result.warnings:
            _logger.warning("%s", line)
        if save:
            if out is None:
                target = default_head_path(cache, name, spec)
            elif len(names) == 1 and Path(out).suffix:
                target = Path(out)
            else:
                target = Path(out) / f"{name}-{_file_layer(spec)}.npz"
            assert result.model is not None
            target = target.expanduser().resolve()  # printed and recorded absolute
            result.path = str(save_head(target, result.model, {**head_info(cache, spec), "val_split": val_split}))
        results.append(result)
    return results


def train(
    cache: str | Path | Cache, head: str = "logreg", *, layer: str | None = None,
    out: str | Path | None = None, selection: Rule | None = None, **params: Any,
) -> FitResult:
    """Fit one head on a cache, select its hyperparameters on validation rows, score it and save it.

    The same as ``embedpipe train --cache CACHE --head HEAD``: the head is fitted on the train split,
    chooses what it selects (logreg's C, the best epoch of mlp, ...) on the val split (on a cache
    without val rows, as ``selection`` says), is scored on the test split and saved as a head file.

    Parameters
    ----------
    cache : str, Path or Cache
        The cache: its folder, as ``extract`` returns or ``embedpipe extract`` prints.
    head : str, default="logreg"
        The head's name (``list_heads()``); its parameters are on the Heads page.
    layer : str or None, default=None
        The cached layer to train on, or several joined by commas; None = ``pooled`` (every cached
        vector layer for ``multilayer``).
    out : str, Path or None, default=None
        The head file to write (``.npz``) or a folder; None = ``<cache>/heads/<head>-<layer>.npz``.
    **params
        The head's hyperparameters, e.g. ``C=0.1`` for logreg (a value given is not selected).
    selection : Rule or None, default=None
        How a cache without val rows is selected on (``heads.select``): ``HoldOut``, ``KFold`` or
        ``Auto``. None = ``Auto()``: stratified 5-fold on a small train split (under 2,000 images, or
        under 30 per class on average), else a seeded, stratified 15 % of each class held out.

    Returns
    -------
    FitResult
        The scores (``val_acc``, ``test_acc``, ``test_metrics``), what the head chose (``chosen``)
        and how (``selection``), the saved file (``path``) and the fitted head (``model``).

    Raises
    ------
    EmbedpipeError
        An unknown head, parameter or layer, a bad parameter value, or a cache with no usable
        training images or fewer than 2 classes.

    See Also
    --------
    train_heads : Several heads on one load of the features.
    evaluate : Score a saved head again, on any split.

    Examples
    --------
    >>> import embedpipe
    >>> cache = embedpipe.extract("photos", progress=False)
    >>> result = embedpipe.train(cache, "logreg")
    >>> result.head, result.layer, sorted(result.chosen)       # C chosen on val
    ('logreg', 'pooled', ['C'])
    >>> result.selection["how"]  # doctest: +ELLIPSIS
    'C: ...'
    >>> result.path.endswith("heads/logreg-pooled.npz")
    True
    >>> embedpipe.train(cache, "logreg", C=0.1, out="logreg-c0.1.npz").chosen   # C given: nothing chosen
    {}
    """
    return train_heads(cache, [head], layer=layer, params={head: params}, out=out, selection=selection)[0]


def check_compatible(cache: Cache, info: dict[str, Any], head: Classifier) -> str:
    """The layer to evaluate; raises if the cache's features are not what the head was trained on."""
    layer = str(info.get("layer", "pooled"))
    names = layer.split(",")
    if info.get("backbone_fingerprint") != cache.meta.get("backbone_fingerprint"):
        raise EmbedpipeError(
            f"cache/head mismatch: cache {cache.path} was made by backbone {cache.backbone.get('spec')}, "
            f"the head was trained on {info.get('backbone', {}).get('spec')} features"
        )
    if any(n not in cache.layers for n in names) or sum(cache.dims[n] for n in names) != head.n_features_in_:
        raise EmbedpipeError(f"cache/head mismatch: cache {cache.path} has no layer {layer} of width {head.n_features_in_}")
    if list(info.get("label_names", [])) != cache.label_names:
        raise EmbedpipeError(f"cache/head mismatch: the cache's class names differ from the head's ({cache.path})")
    return layer


def metrics(head: Classifier, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """top-1, top-5 accuracy and mean per-class recall (balanced accuracy)."""
    proba = head.predict_proba(X)
    order = np.argsort(-proba, axis=1, kind="stable")  # ties go to the first class, as predict's argmax
    ranked = head.classes_[order[:, : min(5, proba.shape[1])]]
    top1 = ranked[:, 0] == y
    recalls = [float(top1[y == c].mean()) for c in np.unique(y)]
    return {
        "top1": float(top1.mean()),
        "top5": float((ranked == y[:, None]).any(axis=1).mean()),
        "mean_per_class_recall": float(np.mean(recalls)),
        "n": len(y),
    }


def split_rows(cache: Cache, split: str, layer: str,
               val_split: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(X, y, note) of ``split`` as ``train`` splits the cache: on a cache without val rows, ``val`` is
    the seeded carve that ``train`` held out of train for selection and ``train`` the rest (the note
    says so); otherwise the cache's own split and no note. ``val_split`` is what the head file
    records (``val_split_info``): when train selected by k-fold there is no carve, ``val`` is refused
    in one line and ``train`` is all of it."""
    if split not in ("train", "val", "test"):
        raise EmbedpipeError(f"split {split!r} is not one of train, val, test")
    kfold = (val_split or {}).get("source") == "k-fold on train" if val_split else \
        isinstance(train_rule(cache), KFold)
    if kfold and split in ("train", "val") and not len(cache.rows("val")):
        if split == "val":
            raise EmbedpipeError(f"cache {cache.path} has no val split and train selected by k-fold cross-validation "
                                 "on all of train, so no single set of rows was held out: use --split test")
        X, y = cache.load("train", layer)
        return X, y, "no val split in the cache: train selected by k-fold on all of train and then fitted on it"
    rule: Rule | None = None
    if val_split and val_split.get("source") == "carved from train":
        recorded = val_split.get("rule", {})
        rule = HoldOut(float(recorded.get("val", 0.15)), int(recorded.get("seed", 0)))
    mask = _carve_mask(cache, rule or HoldOut()) if split in ("train", "val") else None
    if mask is None:
        X, y = cache.load(split, layer)
        return X, y, None
    X, y = cache.load("train", layer)
    rule = rule or HoldOut()
    carve = f"the {rule.fraction:.0%} of each class of train held out with seed {rule.seed}"
    if split == "val":
        return X[mask], y[mask], (f"no val split in the cache: scored on the val that train carved ({carve}); these "
                                  "rows chose the head's hyperparameters (and heads that refit trained on them), "
                                  "so the score is optimistic; the test split is held out")
    return X[~mask], y[~mask], f"no val split in the cache: scored on train without the val carve ({carve})"


def evaluate(head_file: str | Path, cache: str | Path | Cache | None = None, split: str = "test") -> dict[str, Any]:
    """Score a saved head on a split of a cache: top-1, top-5 and mean per-class recall.

    Parameters
    ----------
    head_file : str or Path
        A head file written by ``train`` (``embedpipe train``).
    cache : str, Path, Cache or None, default=None
        The cache to score on; None = the one the head was trained on (recorded in the head file).
    split : {"test", "val", "train"}, default="test"
        Rows to score. On a cache without val rows, ``val`` is the same seeded carve of train that
        ``train`` selected on (15 % per class, seed 0: ``heads.select.HoldOut``; the head file records
        it) and ``train`` the rest, as ``train`` split them; the result's ``note`` says so. When
        ``train`` selected by k-fold cross-validation (a small train set), nothing was held out:
        ``val`` is refused in one line and ``train`` is all of train.

    Returns
    -------
    dict
        ``head``, ``layer``, ``split``, ``cache`` (absolute), ``top1``, ``top5``,
        ``mean_per_class_recall``, ``n`` (rows scored) and, for a carved split, ``note``.

    Raises
    ------
    EmbedpipeError
        A head file that cannot be read or records no cache (pass ``cache``), a cache whose
        backbone, layer or class names differ from the head's, or an empty split.

    Examples
    --------
    >>> import embedpipe
    >>> result = embedpipe.train(embedpipe.extract("photos", progress=False), "logreg")
    >>> scores = embedpipe.evaluate(result.path)
    >>> scores["split"], scores["n"], sorted(scores)
    ('test', 6, ['cache', 'head', 'layer', 'mean_per_class_recall', 'n', 'split', 'top1', 'top5'])
    >>> embedpipe.evaluate(result.path, split="val")["n"]
    6
    """
    head, info = load_head(head_file)
    if cache is None:
        if "cache" not in info:
            raise EmbedpipeError(f"{head_file} records no cache; pass cache=PATH")
        cache = info["cache"]
    cache = as_cache(cache)
    layer = check_compatible(cache, info, head)
    X, y, note = split_rows(cache, split, layer, info.get("val_split") or None)
    if not len(X):
        raise EmbedpipeError(f"split {split!r} of cache {cache.path} is empty")
    result = {"head": head.name, "layer": layer, "split": split, "cache": str(cache.path), **metrics(head, X, y)}
    return {**result, "note": note} if note else result


def sample_shots(y: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Indices of ``shots`` training rows per class (all of a class's rows when it has fewer),
    drawn with ``seed``; sorted, so the same (y, shots, seed) always gives the same sample."""
    if shots < 1:
        raise EmbedpipeError(f"shots must be at least 1, got {shots}")
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(y == c))[:shots] for c in np.unique(y)]
    return np.sort(np.concatenate(picked))


def few_shot(
    cache: str | Path | Cache,
    heads: list[str] | str = "logreg",
    *,
    shots: int,
    seeds: list[int] | tuple[int, ...] = (0, 1, 2),
    layer: str = "pooled",
    params: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """K-shot evaluation, as in CLIP_benchmark and ELEVATER: K training images per class, several seeds.

    For each seed, ``shots`` training images per class are sampled (all of a class's images when it
    has fewer), every head is fitted on them (the val split still selects), and scored on the test
    split; the summary gives the mean and standard deviation over the seeds. Heads are not saved.
    The sampled ids of every seed are returned, so that a run can be reproduced or audited.

    Parameters
    ----------
    cache : str, Path or Cache
        The cache: its folder, as ``extract`` returns or ``embedpipe extract`` prints.
    heads : list of str or str, default="logreg"
        Head names, or one name.
    shots : int
        Training images per class (at least 1).
    seeds : list or tuple of int, default=(0, 1, 2)
        One sample per seed; the same (cache, shots, seed) always draws the same images.
    layer : str, default="pooled"
        The cached layer to train on, or several joined by commas.
    params : dict or None, default=None
        Hyperparameters per head: ``{"logreg": {"C": 0.1}}``.

    Returns
    -------
    dict
        ``summary``: one row per head with ``head``, ``layer``, ``shots``, ``seeds``, ``n_train`` and
        the mean and standard deviation over seeds of ``val_acc``, ``test_acc`` and ``fit_s``
        (``test_acc_mean``, ``test_acc_std``, ...); ``runs``: one row per (head, seed) with its
        scores and ``chosen``; ``samples``: the training ids drawn for each seed (keys are the seeds
        as text).

    Raises
    ------
    EmbedpipeError
        ``shots`` below 1, an unknown head, parameter or layer, or a cache with fewer than 2 classes.

    Examples
    --------
    >>> import embedpipe
    >>> cache = embedpipe.extract("photos", progress=False)
    >>> fs = embedpipe.few_shot(cache, ["ncm", "logreg"], shots=2, seeds=[0, 1])
    >>> [(row["head"], row["shots"], row["seeds"], row["n_train"]) for row in fs["summary"]]
    [('ncm', 2, 2, 6), ('logreg', 2, 2, 6)]
    >>> len(fs["runs"]), sorted(fs["samples"]), len(fs["samples"]["0"])
    (4, ['0', '1'], 6)
    """
    names = head_names(heads)
    cache = as_cache(cache)
    data = load_splits(cache, layer)
    Xtr, ytr = data["train"]
    train_ids = cache.load_ids("train")
    carved = _carve_mask(cache)
    if carved is not None:  # load_splits moved these rows to val
        train_ids = train_ids[~carved]
    runs, samples = [], {}
    for seed in seeds:
        idx = sample_shots(ytr, shots, seed)
        samples[str(seed)] = train_ids[idx].tolist()
        subset = {**data, "train": (Xtr[idx], ytr[idx])}
        for name in names:
            r = fit_head(subset, name, layer, (params or {}).get(name),
                         classifier_class(name).context_params(cache, layer))
            runs.append({"head": name, "seed": seed, "val_acc": r.val_acc, "test_acc": r.test_acc,
                         "fit_s": r.fit_s, "n_train": r.n_train, "chosen": r.chosen})
    summary = []
    for name in names:
        mine = [r for r in runs if r["head"] == name]
        row: dict[str, Any] = {"head": name, "layer": layer, "shots": shots, "seeds": len(mine)}
        for key in ("val_acc", "test_acc", "fit_s"):
            vals = np.array([r[key] for r in mine if r[key] is not None], dtype=float)
            row[f"{key}_mean"] = float(vals.mean()) if len(vals) else None
            row[f"{key}_std"] = float(vals.std()) if len(vals) else None
        row["n_train"] = mine[0]["n_train"]
        summary.append(row)
    return {"summary": summary, "runs": runs, "samples": samples}
