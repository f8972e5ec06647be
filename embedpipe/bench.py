"""The matrix datasets x backbones x layers x heads (x shots x seeds) -> one tidy CSV row per cell.

Each (dataset, backbone) pair is extracted once (or reused from the cache) with all layers in one
pass; each layer's features are loaded once and every head is fitted on them. After every cell the
CSV is rewritten atomically, so an interrupted run loses at most the cell in flight, and a re-run
skips the cells already finished. A cell that fails is recorded with its error and the rest go on.
Configuration comes from keyword arguments or a TOML file (``BenchConfig.from_toml``).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import tomllib
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .backbones import DEFAULT_BACKBONE
from .backbones.base import file_digest
from .cache.key import digest
from .core.atomic import atomic_file
from .core.errors import EmbedpipeError, first_line
from .core.locking import exclusive
from .core.log import get_logger, level, show_progress
from .core.provenance import cpu_isa, library_versions
from .extract import run_extract
from .heads import classifier_class, list_heads
from .report import write_report
from .train import fit_head, load_splits, sample_shots

_logger = get_logger(__name__)

COLUMNS = [
    "dataset", "backbone", "layer", "head", "shots", "seed", "settings", "status", "error",
    "val_acc", "val_se", "val_rows", "selection", "test_acc", "test_top5", "test_mean_per_class_recall", "fit_s",
    "n_train", "classes", "chosen", "extract_img_s", "date", "machine", "device", "versions",
]
# val_se: the standard error of val_acc on val_rows images; selection: the rule the head chose by
# (eval_set = the val split or train's carve, kfold, holdout, none; empty for a head that chooses nothing)
# Columns that hold JSON text in the CSV (an object per cell) and numbers; ``json_rows`` decodes both.
JSON_COLUMNS = ("chosen", "versions")
INT_COLUMNS = ("shots", "seed", "n_train", "classes", "val_rows")
FLOAT_COLUMNS = ("val_acc", "val_se", "test_acc", "test_top5", "test_mean_per_class_recall", "fit_s", "extract_img_s")
# A cell is finished only for the same settings: a digest of the backbone's weights file, the head's
# hyperparameters and the extract options, so changing any of them re-runs the cell.
CELL_KEY = ("dataset", "backbone", "layer", "head", "shots", "seed", "settings")


@dataclass(frozen=True)
class BenchConfig:
    """What a bench run covers and where it writes; ``benchmark(**fields)``, ``embedpipe bench`` and
    a TOML file (``BenchConfig.from_toml``, the same keys) all set these fields.

    Attributes
    ----------
    name : str
        Results go to ``<results_dir>/<name>.csv``, ``.md`` and ``<name>-*.png`` (a TOML file's
        name when read from one).
    datasets : tuple of str
        Data to embed: built-in sets, image folders, CSV manifests or ``torchvision:`` sets.
    backbones : tuple of str
        Backbone specs; each (dataset, backbone) pair is extracted once with every layer.
    layers : tuple of str
        Cached layers to train on.
    heads : tuple of str
        Heads fitted on every layer.
    shots : tuple of int
        K-shot training sets (images per class); empty = the full train split.
    seeds : tuple of int
        One K-shot sample per seed (ignored without ``shots``).
    head_params : dict
        Hyperparameters per head: ``{"logreg": {"C": 0.1}}``.
    weights : dict
        A local weights file per backbone spec.
    exclude : dict
        Heads not to run on a dataset: ``{"glyphs": ["lgbm", "mlp"]}``.
    extract : dict
        Extract options (``batch_size``, ``precision``, ``image_size``, ...).
    cache_dir : str or None
        The cache root; None = ``$EMBEDPIPE_CACHE``, else ``~/.cache/embedpipe``.
    results_dir : str
        Where the CSV, Markdown and plots go.
    engine : {"local", "ray"}
        The extraction engine (the same caches either way).
    ray_address : str or None
        With ``engine="ray"``: the cluster to join; None = start a local Ray instance.
    """

    name: str = "bench"  # results/<name>.csv, .md and -*.png
    datasets: tuple[str, ...] = ("digits",)
    backbones: tuple[str, ...] = (DEFAULT_BACKBONE,)
    layers: tuple[str, ...] = ("pooled",)
    heads: tuple[str, ...] = ("logreg", "lgbm", "mlp", "knn", "ncm")
    shots: tuple[int, ...] = ()  # K-shot training sets per class; empty = the full train split
    seeds: tuple[int, ...] = (0,)  # one K-shot sample per seed (ignored without shots)
    head_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # head -> hyperparameters
    weights: dict[str, str] = field(default_factory=dict)  # backbone spec -> local weights file
    exclude: dict[str, tuple[str, ...]] = field(default_factory=dict)  # dataset -> heads not to run there
    extract: dict[str, Any] = field(default_factory=dict)  # extract options (batch_size, precision, ...)
    cache_dir: str | None = None  # cache root; None = $EMBEDPIPE_CACHE, else ~/.cache/embedpipe (core.paths)
    results_dir: str = "benchmarks/results"
    engine: str = "local"  # extraction engine: local, or ray (same caches, computed on a Ray cluster)
    ray_address: str | None = None  # Ray cluster to join; None = start a local Ray instance

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> BenchConfig:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise EmbedpipeError(f"cannot read bench config {path}: {e}") from None
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise EmbedpipeError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        data.setdefault("name", Path(path).stem)
        return cls.build(**{**data, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def build(cls, **values: Any) -> BenchConfig:
        def as_tuple(v: Any) -> tuple[Any, ...]:
            return (v,) if isinstance(v, str | int) else tuple(v)  # "digits" is one dataset, not six letters

        tuples = {"datasets", "backbones", "layers", "heads", "shots", "seeds"}
        clean = {k: as_tuple(v) if k in tuples else v for k, v in values.items()}
        clean["exclude"] = {k: as_tuple(v) for k, v in clean.get("exclude", {}).items()}
        config = replace(cls(), **clean)
        for head in config.heads:
            classifier_class(head)  # unknown head names fail before any work
        return config


@dataclass
class CellRun:
    """What every cell of one (dataset, backbone) pair shares."""

    dataset: str
    backbone: str
    extract_img_s: float | None
    env: dict[str, str]


def environment() -> dict[str, str]:
    import torch  # heavy: imported by a bench run, not at start-up

    return {
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {cpu_isa()}",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "versions": json.dumps(library_versions(), sort_keys=True),
    }


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row.get(k) if row.get(k) is not None else "") for k in CELL_KEY)


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


class Bench:
    def __init__(self, config: BenchConfig, progress: bool = True) -> None:
        self.config = config
        self.progress = progress
        self.csv_path = Path(config.results_dir) / f"{config.name}.csv"
        self.rows = read_rows(self.csv_path)
        self.done = {_key(r) for r in self.rows if r.get("status") == "ok"}

    def cells(self, dataset: str) -> list[tuple[str, str, int | None, int | None]]:
        """(layer, head, shots, seed) for one dataset, in run order."""
        heads = [h for h in self.config.heads if h not in self.config.exclude.get(dataset, ())]
        plans = [(k, s) for k in self.config.shots for s in self.config.seeds] or [(None, None)]
        return [(layer, head, k, s) for layer in self.config.layers for k, s in plans for head in heads]

    def _say(self, text: str) -> None:
        _logger.log(level(self.progress), text)

    def _record(self, row: dict[str, Any]) -> None:
        self.rows = [r for r in self.rows if _key(r) != _key(row)] + [row]
        write_rows(self.csv_path, self.rows)
        if row["status"] == "ok":
            self.done.add(_key(row))

    def run(self) -> list[dict[str, Any]]:
        env = environment()
        pairs = [(d, b) for d in self.config.datasets for b in self.config.backbones]
        total = sum(len(self.cells(d)) for d, _ in pairs)
        at = 0
        for dataset, backbone in pairs:
            cells = self.cells(dataset)
            todo = [c for c in cells if _key(self._base(dataset, backbone, *c)) not in self.done]
            at += len(cells) - len(todo)
            if not todo:
                continue
            self._say(f"[bench] {dataset} x {backbone}: {len(todo)} cells to run ({len(cells) - len(todo)} done before)")
            try:
                cache, stats = run_extract(dataset, backbone, cache_dir=self.config.cache_dir,
                                           layers=tuple(self.config.layers), progress=self.progress,
                                           engine=self.config.engine, ray_address=self.config.ray_address,
                                           weights=self.config.weights.get(backbone), **self.config.extract)
            except Exception as e:  # the whole pair fails; record it on each of its cells
                for cell in todo:
                    self._record(self._failed(self._base(dataset, backbone, *cell), e, env))
                at += len(todo)
                continue
            run = CellRun(dataset, backbone, round(stats.images_per_s, 1) if stats.embedded else None, env)
            for layer in self.config.layers:
                layer_cells = [c for c in todo if c[0] == layer]
                if not layer_cells:
                    continue
                try:
                    data = load_splits(cache, layer)
                except Exception as e:  # e.g. fewer than two classes: every cell of this layer fails
                    for cell in layer_cells:
                        self._record(self._failed(self._base(dataset, backbone, *cell), e, env))
                    at += len(layer_cells)
                    continue
                for _, head, shots, seed in layer_cells:
                    at += 1
                    row = self._cell(cache, data, run, layer, head, shots, seed)
                    acc = row.get("test_acc")
                    shown = (f"test {acc:.3f}" if acc is not None else "no test split") if row["status"] == "ok" \
                        else f"FAILED: {row['error']}"
                    self._say(f"[bench {at}/{total}] {dataset} {backbone} {layer} {head}"
                              f"{f' {shots}-shot seed {seed}' if shots else ''}: {shown}")
                    self._record(row)
        return self.rows

    def _settings(self, backbone: str, head: str) -> str:
        weights = self.config.weights.get(backbone)
        return digest({"weights": file_digest(weights) if weights and os.path.isfile(weights) else weights,
                       "params": self.config.head_params.get(head, {}), "extract": self.config.extract})[:12]

    def _base(self, dataset: str, backbone: str, layer: str, head: str, shots: int | None,
              seed: int | None) -> dict[str, Any]:
        return {"dataset": dataset, "backbone": backbone, "layer": layer, "head": head,
                "shots": shots if shots is not None else "", "seed": seed if seed is not None else "",
                "settings": self._settings(backbone, head)}

    @staticmethod
    def _failed(base: dict[str, Any], error: BaseException, env: dict[str, str]) -> dict[str, Any]:
        message = first_line(error) if str(error).strip() else ""
        if not isinstance(error, EmbedpipeError):  # our own errors already say what is wrong
            message = f"{type(error).__name__}: {message}"
        return {**base, **env, "status": "error", "error": message[:300]}

    def _cell(self, cache: Any, data: dict[str, Any], run: CellRun, layer: str, head: str,
              shots: int | None, seed: int | None) -> dict[str, Any]:
        base = self._base(run.dataset, run.backbone, layer, head, shots, seed)
        try:
            if shots:
                Xtr, ytr = data["train"]
                idx = sample_shots(ytr, shots, int(seed or 0))
                data = {**data, "train": (Xtr[idx], ytr[idx])}
            result = fit_head(data, head, layer, self.config.head_params.get(head),
                              classifier_class(head).context_params(cache, layer))
            m = result.test_metrics
            for line in result.warnings:  # e.g. a val accuracy that rests on few images, with the count
                _logger.warning("%s %s: %s", run.dataset, layer, line)
            return {**base, **run.env, "status": "ok", "error": "", "val_acc": _r(result.val_acc),
                    "val_se": _r(result.val_se), "val_rows": result.val_rows if result.val_rows is not None else "",
                    "selection": (result.selection or {}).get("rule", ""),
                    "test_acc": _r(result.test_acc), "test_top5": _r(m.get("top5")),
                    "test_mean_per_class_recall": _r(m.get("mean_per_class_recall")),
                    "fit_s": round(result.fit_s, 3), "n_train": result.n_train, "classes": result.n_classes,
                    "chosen": json.dumps(result.chosen, sort_keys=True) if result.chosen else "",
                    "extract_img_s": run.extract_img_s}
        except Exception as e:
            return self._failed(base, e, run.env)


def json_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CSV rows (all text) as typed values for ``--json``: numbers as numbers, empty cells as None,
    the JSON columns (``chosen``: the hyperparameters each head chose on val; ``versions``) as objects."""
    out = []
    for row in rows:
        typed: dict[str, Any] = {}
        for key, value in row.items():
            if value in ("", None):
                typed[key] = None
            elif key in JSON_COLUMNS and isinstance(value, str):
                try:
                    typed[key] = json.loads(value)
                except json.JSONDecodeError:
                    typed[key] = value
            elif key in INT_COLUMNS or key in FLOAT_COLUMNS:
                try:
                    typed[key] = int(value) if key in INT_COLUMNS else float(value)
                except (TypeError, ValueError):
                    typed[key] = value
            else:
                typed[key] = value
        out.append(typed)
    return out


def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def run_bench(config: BenchConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Run (or resume) a bench; writes the CSV, Markdown and plots; returns all rows of the CSV."""
    if progress:
        show_progress()
    csv_path = Path(config.results_dir) / f"{config.name}.csv"
    with exclusive(csv_path.with_name(csv_path.name + ".lock"), str(csv_path)):
        rows = Bench(config, progress).run()
        write_report(config, rows)
    return rows


def benchmark(
    datasets: tuple[str, ...] | list[str] = ("digits",),
    backbones: tuple[str, ...] | list[str] = (DEFAULT_BACKBONE,),
    layers: tuple[str, ...] | list[str] = ("pooled",),
    heads: tuple[str, ...] | list[str] | None = None,
    **config: Any,
) -> list[dict[str, Any]]:
    """Benchmark tables: datasets x backbones x layers x heads (x shots x seeds), one CSV row per cell.

    The same as ``embedpipe bench``. Each (dataset, backbone) pair is extracted once (or reused from
    the cache) with every layer in one pass; each layer's features are loaded once and every head is
    fitted on them, selected on val and scored on test. After every cell the CSV is rewritten
    atomically, so an interrupted run loses at most the cell in flight, and a second run skips the
    cells already finished with the same settings. A cell that fails is recorded with its error and
    the others go on. At the end a Markdown table and plots are written beside the CSV.

    Parameters
    ----------
    datasets : tuple or list of str, default=("digits",)
        Data to embed: built-in sets, image folders, CSV manifests or ``torchvision:`` sets.
    backbones : tuple or list of str, default=("effnet-lite0",)
        Backbone specs.
    layers : tuple or list of str, default=("pooled",)
        Cached layers to train on.
    heads : tuple or list of str or None, default=None
        Heads to fit; None = every registered head except ``zeroshot``.
    **config
        The other ``BenchConfig`` fields (``name``, ``shots``, ``seeds``, ``head_params``,
        ``exclude``, ``extract``, ``cache_dir``, ``results_dir``, ``engine``, ...), and
        ``progress`` (bool, default True: progress and one line per cell on stderr).

    Returns
    -------
    list of dict
        Every row of the CSV, this run's and earlier ones': ``dataset``, ``backbone``, ``layer``,
        ``head``, ``shots``, ``seed``, ``status`` (``ok`` or ``failed``), ``error``, ``val_acc``,
        ``test_acc``, ``test_top5``, ``test_mean_per_class_recall``, ``fit_s``, ``n_train``,
        ``classes``, ``chosen`` (JSON text), ``extract_img_s``, and the date, machine, device and
        library versions. Rows read back from an earlier run hold text, as the CSV does;
        ``embedpipe.bench.json_rows`` types them (numbers, None, ``chosen`` as a dict).

    Raises
    ------
    EmbedpipeError
        An unknown head or configuration key, or a results folder another run is writing to.

    Examples
    --------
    >>> import embedpipe
    >>> rows = embedpipe.benchmark(["photos"], heads=["ncm", "knn"], results_dir="bench-results",
    ...                            progress=False)
    >>> [(row["dataset"], row["layer"], row["head"], row["status"]) for row in rows]
    [('photos', 'pooled', 'ncm', 'ok'), ('photos', 'pooled', 'knn', 'ok')]
    >>> import os
    >>> sorted(f for f in os.listdir("bench-results") if f.endswith((".csv", ".md")))
    ['bench.csv', 'bench.md']
    """
    progress = config.pop("progress", True)
    cfg = BenchConfig.build(datasets=datasets, backbones=backbones, layers=layers,
                            heads=heads or tuple(h for h in list_heads() if h != "zeroshot"), **config)
    return run_bench(cfg, progress)
