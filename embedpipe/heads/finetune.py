"""Fine-tune the top of the backbone on cached maps: keep the lower layers frozen, retrain the rest.

The head takes a cached unpooled layer ``block<k>:map`` (rows flattened to 2-D, as every head takes
them; ``map_shape`` restores them), rebuilds the backbone's blocks after k with their pretrained
weights (the backbone recorded in the cache, checked by fingerprint), puts a new linear classifier for
any number of classes on top and trains on the cached maps. The frozen part below k never runs.

Training, as the transfer-learning guides describe it:
- gradual unfreezing: ``head_epochs`` epochs of the classifier alone, then one more block from the
  top every ``unfreeze_every`` epochs, up to ``unfreeze`` blocks (-1 = every block after k);
- discriminative learning rates: the classifier gets ``lr``, the n-th pretrained block from the top
  ``lr * lr_decay**n`` (AdamW, cosine decay); BatchNorm statistics stay frozen (small batches);
- early stopping on the validation split (best epoch kept) once unfreezing is complete;
- feature augmentation (a cache cannot re-augment images; Frozen Feature Augmentation, Baer et al.,
  CVPR 2024): per-sample random resized crops and horizontal flips of the maps, and mixup. The ones
  used are in ``augmentations_`` (and logged with ``verbose``). Flips are off by default: they turn characters and
  digits into other classes (b/d); add ``flip`` for photos.

Without a backbone (``backbone=None``, e.g. scikit-learn's checks on arbitrary 2-D X) the tail is
empty: the head is a linear classifier on standardised features trained by the same loop (mixup only).
``embedpipe train`` fills backbone, weights, precision, fingerprint, layer and map shape from the cache.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import create_backbone
from ..core.device import resolve_device
from ..core.errors import EmbedpipeError
from ..core.layers import is_map
from .base import ArraySpec, Head, State, StateSpec, standardizer
from .registry import register_head
from .select import Rule

AUGMENTATIONS = ("crop", "flip", "mixup")  # what `augment` may list
_logger = logging.getLogger(__name__)


def _flat(X: Any) -> Any:
    """(n, *shape) -> (n, prod(shape)); anything else unchanged."""
    if isinstance(X, np.ndarray) and X.ndim > 2:
        return X.reshape(len(X), -1)
    return X


def random_resized_crop(x: torch.Tensor, scale: float, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Per sample: a random window of side fraction in [scale, 1] at a random place, resized back to
    the map's size (bilinear), and mirrored left-right with probability 1/2 when ``flip``."""
    n = len(x)
    side = scale + (1 - scale) * torch.rand(n, generator=gen)
    tx = (1 - side) * (2 * torch.rand(n, generator=gen) - 1)
    ty = (1 - side) * (2 * torch.rand(n, generator=gen) - 1)
    sx = side * (torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if flip else 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, side, ty
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class _Schedule:
    """Steps of a fit: at least ``min_steps`` in all (more epochs on small data), a linear warm-up over
    half an epoch, then cosine decay to 0; every parameter group keeps its ratio to ``lr``."""

    steps_per_epoch: int
    epochs: int
    total_steps: int
    warmup: int

    @classmethod
    def of(cls, n: int, batch_size: int, epochs: int, min_steps: int) -> _Schedule:
        per_epoch = max(1, -(-n // batch_size))
        epochs = max(epochs, -(-min_steps // per_epoch)) if epochs > 0 else 0
        return cls(per_epoch, epochs, max(1, epochs * per_epoch), max(1, per_epoch // 2))

    def factor(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup) * 0.5 * (1 + math.cos(math.pi * step / self.total_steps))


@register_head(description="retrain the backbone's blocks after a cached block<k>:map, new classifier on top")
class FinetuneHead(Head):
    """Fine-tune the top of the backbone on cached maps: the blocks after a cached layer, plus a new classifier.

    ``X`` holds a cached unpooled layer ``block<k>:map`` (rows flattened, or ``(n, *map_shape)``). The
    head rebuilds the backbone's blocks after k with their pretrained weights (the cache's backbone,
    checked by fingerprint), puts a new linear classifier on top and minimises the label-smoothed
    cross-entropy of the whole tail with AdamW, discriminative learning rates (block ``n`` from the top
    at ``lr * lr_decay**n``), linear warm-up then cosine decay, and gradual unfreezing (``head_epochs``
    of the classifier alone, then one more block every ``unfreeze_every`` epochs). Feature
    augmentation (random resized crops, flips, mixup of the maps) stands in for image augmentation. It
    stops early on the validation rows (the ``eval_set``, or rows its ``selection`` rule holds out of
    train) once unfreezing is complete, keeping the best epoch. Without a backbone (``backbone=None``)
    the tail is empty: a linear classifier on standardised features trained by the same loop.

    Parameters
    ----------
    backbone : str or None, default=None
        Spec of the backbone the cache was made with; None = no tail (a linear classifier).
    weights : str or None, default=None
        Its local weights file, if any.
    precision : str, default="auto"
        As the cache was made (part of the fingerprint).
    backbone_fingerprint : str or None, default=None
        The cache's fingerprint; the rebuilt backbone must match it.
    layer : str or None, default=None
        The cached map, ``block<k>:map``; the blocks after k are retrained.
    map_shape : tuple of int or None, default=None
        Per-row shape of that map, e.g. ``(112, 14, 14)``.
    unfreeze : int, default=-1
        Pretrained blocks to unfreeze from the top; -1 = every block after k, 0 = none.
    epochs : int, default=12
        Maximum epochs in all.
    min_steps : int, default=300
        A tiny train set gets more epochs, so that training sees at least this many steps.
    head_epochs : int, default=1
        First epochs: the new classifier alone.
    unfreeze_every : int, default=1
        Then one more block every this many epochs.
    lr : float, default=3e-3
        AdamW peak learning rate of the classifier (warm-up, then cosine decay).
    lr_decay : float, default=0.6
        The n-th pretrained block from the top gets ``lr * lr_decay**n``.
    weight_decay : float, default=0.05
        AdamW decoupled weight decay.
    batch_size : int, default=64
        Rows per step.
    augment : str, default="crop,mixup"
        Comma list of ``crop``, ``flip``, ``mixup``; "" = none. Flips turn characters into other
        classes (b/d): add ``flip`` for photos.
    crop_scale : float, default=0.75
        Random resized crops keep a side fraction in ``[crop_scale, 1]``.
    mixup_alpha : float, default=0.2
        Mixup's ``Beta(alpha, alpha)``.
    label_smoothing : float, default=0.1
        Cross-entropy label smoothing.
    dropout : float, default=0.2
        Dropout before the classifier.
    patience : int, default=3
        Epochs without a validation gain (after unfreezing is complete) before stopping.
    random_state : int, default=0
        Seeds the initialisation, shuffling and augmentation.
    selection : HoldOut, KFold, Auto or None, default=None
        How validation rows are had when ``fit`` gets no ``eval_set`` (``heads.select``); None =
        ``DEFAULT_SELECTION``. Fine-tuning k times is too costly, so where the rule asks for k-fold
        (a small train set) it selects on a seeded stratified 15 % held out, and says so in one line.
    device : str, default="auto"
        Torch device for training; ``"auto"`` = CUDA when present (prediction runs on the CPU).
    verbose : bool, default=False
        Log the setup and one line per epoch (``logging``, level INFO).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels.
    n_features_in_ : int
        Number of (flattened) features seen in ``fit``.
    selection_ : dict
        How ``fit`` selected (``heads.select``): ``rule`` is "eval_set", "holdout", "kfold" or "none"
        (nothing could be held out); ``val_rows`` the validation rows the choice rests on (under
        k-fold every training row, each once), ``folds`` the number of folds.
    tail_ : torch.nn.Module or None
        The retrained blocks after ``layer``; None without a backbone.
    fc_ : torch.nn.Linear
        The new classifier.
    mean_ : ndarray of shape (n_features,) or (0,)
        Training mean used to standardise the input without a tail (empty with one).
    scale_ : ndarray of shape (n_features,) or (0,)
        Training std used likewise (empty with a tail).
    augmentations_ : list of str
        The augmentations used (``crop`` and ``flip`` need a spatial map).
    n_unfrozen_target_ : int
        Pretrained blocks unfrozen once unfreezing is complete.
    n_epochs_ : int
        Epochs run.
    history_ : list of dict
        Per epoch: ``epoch``, ``unfrozen``, ``loss``, ``val_acc``, ``seconds``, ``cpu_s``.
    best_val_score_ : float or None
        Validation accuracy of the kept epoch; None without validation rows.
    fit_seconds_ : float
        Wall time of the fit.

    Examples
    --------
    Without a backbone (the same training loop on any 2-D X):

    >>> import numpy as np
    >>> from embedpipe.heads import FinetuneHead
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 20)
    >>> X = rng.normal(size=(60, 8)) + 3 * np.eye(3, 8)[y]
    >>> head = FinetuneHead(epochs=4, min_steps=40, lr=0.03).fit(X, y)
    >>> head.tail_ is None, head.predict_proba(X[:2]).shape
    (True, (2, 3))
    >>> bool(head.score(X, y) > 0.8)
    True

    On a cache with a ``block3:map`` layer (``embedpipe train`` fills the backbone, fingerprint,
    layer and map shape from the cache):

    >>> from embedpipe import train
    >>> result = train(cache, "finetune", layer="block3:map")  # doctest: +SKIP
    """

    name = "finetune"
    takes_maps = True  # fit/predict_proba take (n, *map_shape) rows as they come from the cache

    def __init__(
        self,
        backbone: str | None = None,
        weights: str | None = None,
        precision: str = "auto",
        backbone_fingerprint: str | None = None,
        layer: str | None = None,
        map_shape: tuple[int, ...] | None = None,
        unfreeze: int = -1,
        epochs: int = 12,
        min_steps: int = 300,
        head_epochs: int = 1,
        unfreeze_every: int = 1,
        lr: float = 3e-3,
        lr_decay: float = 0.6,
        weight_decay: float = 0.05,
        batch_size: int = 64,
        augment: str = "crop,mixup",
        crop_scale: float = 0.75,
        mixup_alpha: float = 0.2,
        label_smoothing: float = 0.1,
        dropout: float = 0.2,
        patience: int = 3,
        random_state: int = 0,
        selection: Rule | None = None,
        device: str = "auto",
        verbose: bool = False,
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.precision = precision
        self.backbone_fingerprint = backbone_fingerprint
        self.layer = layer
        self.map_shape = map_shape
        self.unfreeze = unfreeze
        self.epochs = epochs
        self.min_steps = min_steps
        self.head_epochs = head_epochs
        self.unfreeze_every = unfreeze_every
        self.lr = lr
        self.lr_decay = lr_decay
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.augment = augment
        self.crop_scale = crop_scale
        self.mixup_alpha = mixup_alpha
        self.label_smoothing = label_smoothing
        self.dropout = dropout
        self.patience = patience
        self.random_state = random_state
        self.selection = selection
        self.device = device
        self.verbose = verbose

    def _thread_work(self, n: int) -> float:
        return float("inf")  # convolutions over feature maps: torch's default threads

    def _kfold_unsupported(self) -> str | None:
        return "k-fold would repeat the fine-tune once per fold"

    def _selects(self) -> bool:
        return True

    @classmethod
    def context_params(cls, cache: Any, layer: str) -> dict[str, Any]:
        bb = cache.backbone
        shape = tuple(cache.shapes[layer]) if layer in cache.layers and is_map(layer) else None
        return {"backbone": bb.get("spec"), "weights": bb.get("weights"), "precision": bb.get("precision", "auto"),
                "backbone_fingerprint": cache.meta.get("backbone_fingerprint"), "layer": layer, "map_shape": shape}

    # -- the network -----------------------------------------------------------------------------
    def _build_tail(self, check: bool) -> nn.Module | None:
        """The pretrained blocks after ``layer`` (None without a backbone)."""
        if self.backbone is None:
            return None
        if not self.layer or not is_map(self.layer) or not self.map_shape:
            raise ValueError(f"finetune needs a cached map layer (block<k>:map), got {self.layer!r}; "
                             "extract with layers=(..., 'block<k>:map') and train with layer='block<k>:map'")
        bb = create_backbone(self.backbone, weights=self.weights, precision=self.precision, device="cpu")
        if check and self.backbone_fingerprint and bb.fingerprint != self.backbone_fingerprint:
            raise ValueError(f"finetune: the backbone rebuilt from {self.backbone} differs from the one the cache "
                             "was made with (weights file or preprocessing changed); re-extract the cache")
        try:
            return bb.tail(self.layer)
        except EmbedpipeError as e:
            raise ValueError(str(e)) from None

    def _features(self, X: torch.Tensor, start: int = 0, stop: int | None = None, pool: bool = True) -> torch.Tensor:
        if self.tail_ is None:
            return X
        return self.tail_(X, start, stop, pool)

    def _as_input(self, X: np.ndarray, dev: torch.device) -> torch.Tensor:
        if self.tail_ is None:
            return torch.from_numpy(((X - self.mean_) / self.scale_).astype(np.float32)).to(dev)
        t = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).reshape(len(X), *self.map_shape)
        return t.to(dev).contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t.to(dev)

    # -- training --------------------------------------------------------------------------------
    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None) -> None:
        """Set up the blocks and the classifier, then train epoch by epoch, unfreezing blocks from the
        top and keeping the weights of the best val epoch (early stopping once every block is open)."""
        t_start = time.perf_counter()
        dev = resolve_device(self.device)
        torch.manual_seed(self.random_state)
        gen = torch.Generator().manual_seed(self.random_state)
        self._setup(X)
        Xt, yt = self._as_input(X, dev), torch.from_numpy(y).to(dev)
        opt = self._optimizer(Xt, dev)
        sched = _Schedule.of(len(Xt), self.batch_size, self.epochs, self.min_steps)
        Xv = yv = None
        if X_val is not None and y_val is not None:
            Xv, yv = self._as_input(X_val, dev), torch.from_numpy(y_val).to(dev)
        n_units = len(self.tail_.units) if self.tail_ is not None else 0
        self._say(f"finetune: {n_units} pretrained blocks after {self.layer or 'the input'}, unfreezing "
                  f"{self.n_unfrozen_target_} from the top; augmentations: {', '.join(self.augmentations_) or 'none'}")
        best_acc, best_state, stale, step = -1.0, None, 0, 0
        self.n_epochs_, self.history_ = 0, []
        for epoch in range(sched.epochs):
            n_open = self._open_blocks(epoch)
            t0, cpu0 = time.perf_counter(), time.process_time()
            loss, step = self._train_epoch(Xt, yt, opt, sched, n_open, step, gen)
            self.n_epochs_ += 1
            acc = self._accuracy(Xv, yv) if Xv is not None and yv is not None else None
            self.history_.append({"epoch": epoch + 1, "unfrozen": n_open, "loss": loss, "val_acc": acc,
                                  "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0})
            self._say(f"  epoch {epoch + 1}: {n_open} blocks unfrozen, loss {loss:.3f}"
                      + (f", val {acc:.3f}" if acc is not None else "")
                      + f", {time.perf_counter() - t0:.1f}s ({time.process_time() - cpu0:.1f} CPU s)")
            if acc is None:
                continue
            if acc > best_acc:
                best_acc, best_state, stale = acc, self._state_tensors(), 0
            elif n_open >= self.n_unfrozen_target_:
                stale += 1
                if stale >= self.patience:
                    break
        if best_state is not None:
            self._load_tensors(best_state)
        self.best_val_score_ = best_acc if Xv is not None else None
        self.fit_seconds_ = time.perf_counter() - t_start
        self._to_cpu()

    def chosen_params(self) -> dict[str, Any]:
        scores = [h.get("val_acc") for h in getattr(self, "history_", [])]
        if self.best_val_score_ is None or not any(v is not None for v in scores):
            return {}
        best = max(v for v in scores if v is not None)
        return {"epochs": 1 + scores.index(best)}  # the first epoch at the best score: the weights kept

    def how_chosen(self) -> str | None:
        if not self.chosen_params():
            return None
        return (f"epochs: the epoch with the best val accuracy ({self.best_val_score_:.4f}) of {self.n_epochs_} run "
                f"(stops after {self.patience} without a gain once every block is open)")

    def _setup(self, X: np.ndarray) -> None:
        """Check the parameters against X; rebuild the pretrained blocks; decide the augmentations
        and how many blocks will open."""
        wanted = [a.strip() for a in self.augment.split(",") if a.strip()]
        unknown = sorted(set(wanted) - set(AUGMENTATIONS))
        if unknown:
            raise ValueError(f"finetune: unknown augmentation {unknown}; use a comma list of {', '.join(AUGMENTATIONS)}")
        self.tail_ = self._build_tail(check=True)
        if self.tail_ is not None and int(np.prod(self.map_shape)) != X.shape[1]:
            raise ValueError(f"finetune: X has {X.shape[1]} features but map_shape {self.map_shape} "
                             f"holds {int(np.prod(self.map_shape))}")
        self.mean_, self.scale_ = standardizer(X) if self.tail_ is None else (np.zeros(0, np.float32),) * 2
        spatial = self.tail_ is not None and len(self.map_shape) == 3
        self.augmentations_ = [a for a in AUGMENTATIONS if a in wanted and (a == "mixup" or spatial)]
        n_units = len(self.tail_.units) if self.tail_ is not None else 0
        self.n_unfrozen_target_ = n_units if self.unfreeze < 0 else min(self.unfreeze, n_units)

    def _optimizer(self, Xt: torch.Tensor, dev: torch.device) -> torch.optim.Optimizer:
        """The new classifier on top, and AdamW with one parameter group per pretrained unit (top
        first), each at its discriminative rate ``lr * lr_decay**depth``."""
        if self.tail_ is not None:
            self.tail_.to(dev)
            with torch.inference_mode():
                width = self._features(Xt[:1]).shape[1]
        else:
            width = Xt.shape[1]
        self.fc_ = nn.Linear(width, len(self.classes_)).to(dev)
        groups = [{"params": list(self.fc_.parameters()), "lr": self.lr, "base_lr": self.lr}]
        for depth, unit in enumerate(reversed(self.tail_.units if self.tail_ is not None else []), start=1):
            rate = self.lr * self.lr_decay**depth
            groups.append({"params": list(unit.parameters()), "lr": rate, "base_lr": rate})
        return torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)

    def _open_blocks(self, epoch: int) -> int:
        """Blocks trained in ``epoch`` (counted from the top): none during the head epochs, then one
        more every ``unfreeze_every`` epochs up to the target; the rest run without gradients."""
        n_open = 0 if epoch < self.head_epochs else min(
            self.n_unfrozen_target_, 1 + (epoch - self.head_epochs) // max(1, self.unfreeze_every))
        if self.tail_ is not None:
            first = len(self.tail_.units) - n_open
            for i, unit in enumerate(self.tail_.units):
                unit.requires_grad_(i >= first)
        return n_open

    def _train_epoch(self, Xt: torch.Tensor, yt: torch.Tensor, opt: torch.optim.Optimizer, sched: _Schedule,
                     n_open: int, step: int, gen: torch.Generator) -> tuple[float, int]:
        """One pass over the shuffled training rows; returns (mean loss, the step count after it)."""
        n_units = len(self.tail_.units) if self.tail_ is not None else 0
        first = n_units - n_open  # units[first:] train; units[:first] run without gradients
        loss_fn = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        order = torch.randperm(len(Xt), generator=gen).to(Xt.device)
        total = 0.0
        for i in range(sched.steps_per_epoch):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            xb, yb = self._augment(Xt[idx], F.one_hot(yt[idx], len(self.classes_)).float(), step, gen)
            with torch.no_grad():
                h = self._features(xb, 0, first, pool=first == n_units) if self.tail_ is not None else xb
            if first < n_units:
                h = self._features(h, first, None)
            loss = loss_fn(self.fc_(F.dropout(h, self.dropout, training=True)), yb)
            factor = sched.factor(step)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            total += float(loss.detach()) * len(idx)
        return total / len(Xt), step

    def _augment(self, xb: torch.Tensor, yb: torch.Tensor, step: int,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random resized crop and flip of the maps, then mixup of inputs and one-hot targets."""
        if "crop" in self.augmentations_ or "flip" in self.augmentations_:
            scale = self.crop_scale if "crop" in self.augmentations_ else 1.0
            xb = random_resized_crop(xb, scale, "flip" in self.augmentations_, gen)
        if "mixup" in self.augmentations_ and self.mixup_alpha > 0:
            lam = float(np.random.default_rng(self.random_state * 100003 + step).beta(
                self.mixup_alpha, self.mixup_alpha))
            perm = torch.randperm(len(xb), generator=gen).to(xb.device)
            xb, yb = lam * xb + (1 - lam) * xb[perm], lam * yb + (1 - lam) * yb[perm]
        return xb, yb

    def _say(self, line: str) -> None:
        """Progress, logged at INFO only with ``verbose`` (the caller's logging config shows it)."""
        if self.verbose:
            _logger.info(line)

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        state = {f"fc.{k}": v for k, v in self.fc_.state_dict().items()}
        if self.tail_ is not None:
            state.update({f"tail.{k}": v for k, v in self.tail_.state_dict().items()})
        return copy.deepcopy(state)

    def _load_tensors(self, state: dict[str, torch.Tensor]) -> None:
        self.fc_.load_state_dict({k[3:]: v for k, v in state.items() if k.startswith("fc.")})
        if self.tail_ is not None:
            self.tail_.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("tail.")})

    def _to_cpu(self) -> None:
        self.fc_ = self.fc_.cpu().eval().requires_grad_(False)
        if self.tail_ is not None:
            self.tail_ = self.tail_.cpu().eval().requires_grad_(False)

    def _logits(self, X: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for i in range(0, len(X), 256):
                out.append(self.fc_(self._features(X[i : i + 256])))
        return torch.cat(out) if out else torch.zeros(0, len(self.classes_))

    def _accuracy(self, Xv: torch.Tensor, yv: torch.Tensor) -> float:
        return float((self._logits(Xv).argmax(1) == yv).float().mean())

    # -- scikit-learn API --------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, eval_set: tuple[Any, Any] | None = None) -> FinetuneHead:
        """As every head; also takes X as maps (n, *map_shape), flattening them."""
        if eval_set is not None:
            eval_set = (_flat(eval_set[0]), eval_set[1])
        super().fit(_flat(X), y, eval_set)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        return super().predict_proba(_flat(X))

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        logits = self._logits(self._as_input(X, torch.device("cpu")))
        return torch.softmax(logits.float(), dim=1).numpy()

    # -- saving ------------------------------------------------------------------------------------
    def _get_state(self) -> State:
        arrays = {k: v.cpu().numpy() for k, v in self._state_tensors().items()}
        state = {"augmentations_": self.augmentations_, "n_epochs_": self.n_epochs_,
                 "best_val_score_": self.best_val_score_, "history_": self.history_,
                 "n_unfrozen_target_": self.n_unfrozen_target_, "fit_seconds_": self.fit_seconds_}
        return state, {**arrays, "mean_": self.mean_, "scale_": self.scale_}

    def _state_spec(self) -> StateSpec:
        """The classifier (k, width), the standardiser ((d,) without a tail, empty with one) and, with a
        tail, every tensor of the rebuilt pretrained blocks at exactly its own shape (so a head file
        edited by hand, or saved for another backbone or layer, is refused on load)."""
        scalars = {"augmentations_": "list[str]", "n_epochs_": "int", "best_val_score_": "number?",
                   "history_": "list[dict[str,number?]]", "n_unfrozen_target_": "int", "fit_seconds_": "number"}
        tail = self._build_tail(check=False)
        self._spec_tail = tail  # reused by _set_state (building it loads the backbone)
        if tail is None:
            return scalars, {"fc.weight": ArraySpec(("k", "d")), "fc.bias": ArraySpec(("k",)),
                             "mean_": ArraySpec(("d",)), "scale_": ArraySpec(("d",), positive=True)}
        assert self.map_shape is not None  # _build_tail checked it
        if int(np.prod(self.map_shape)) != getattr(self, "n_features_in_", -1):
            raise ValueError(f"map_shape {tuple(self.map_shape)} does not hold n_features_in "
                             f"{getattr(self, 'n_features_in_', None)} values")
        with torch.inference_mode():
            width = int(tail(torch.zeros(1, *self.map_shape)).shape[1])
        arrays = {"fc.weight": ArraySpec(("k", width)), "fc.bias": ArraySpec(("k",))}
        for name, t in tail.state_dict().items():
            arrays[f"tail.{name}"] = ArraySpec(tuple(t.shape), kind="f" if t.is_floating_point() else "iu")
        return scalars, {**arrays, "mean_": ArraySpec((0,)), "scale_": ArraySpec((0,))}

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        for k in ("augmentations_", "n_epochs_", "best_val_score_", "history_", "n_unfrozen_target_", "fit_seconds_"):
            setattr(self, k, state[k])
        self.mean_, self.scale_ = arrays["mean_"], arrays["scale_"]
        tail = self.__dict__.pop("_spec_tail", None)
        self.tail_ = tail if tail is not None else self._build_tail(check=False)
        fc = arrays["fc.weight"]
        self.fc_ = nn.Linear(fc.shape[1], fc.shape[0])
        self._load_tensors({k: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith(("fc.", "tail."))})
        self._to_cpu()
