"""A small MLP head in torch: one or two hidden layers, AdamW, cosine schedule, label smoothing,
early stopping on validation. The data lives as tensors on the device; batches are index slices
(no per-sample DataLoader)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.device import resolve_device
from .base import ArraySpec, Head, State, StateSpec, standardizer
from .registry import register_head
from .select import Rule
from .torch_utils import as_tensor


def build_mlp(d_in: int, hidden: int, n_layers: int, n_out: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = d_in
    for _ in range(n_layers):
        layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


@register_head(description="1-2 hidden layer MLP, AdamW + cosine, early stopping on val")
class MLPHead(Head):
    """A small MLP on embeddings in torch: one or two hidden layers, AdamW, cosine schedule.

    Minimises the label-smoothed cross-entropy of a GELU MLP on standardised features with AdamW
    (decoupled weight decay) under a one-cycle cosine learning-rate schedule, shuffled mini-batches of
    rows already on the device. It stops early: after each epoch it scores the validation rows (the
    ``eval_set``, or rows its ``selection`` rule holds out of train) and keeps the best epoch's weights,
    stopping after ``patience`` epochs without a gain.

    Parameters
    ----------
    hidden : int, default=512
        Width of each hidden layer.
    n_layers : int, default=1
        Hidden layers: 0 (a linear model), 1 or 2.
    dropout : float, default=0.2
        Dropout after each hidden layer.
    lr : float, default=1e-3
        AdamW peak learning rate (cosine-decayed to 0).
    weight_decay : float, default=0.05
        AdamW decoupled weight decay.
    epochs : int, default=40
        Maximum epochs.
    batch_size : int, default=256
        Rows per step.
    label_smoothing : float, default=0.1
        Cross-entropy label smoothing.
    patience : int, default=8
        Epochs without a validation gain before stopping.
    random_state : int, default=0
        Seeds the initialisation and the shuffling.
    selection : HoldOut, KFold, Auto or None, default=None
        How validation rows are had when ``fit`` gets no ``eval_set`` (``heads.select``); None =
        ``DEFAULT_SELECTION``: stratified 5-fold cross-validation on a small train set, else a seeded
        stratified 15 % held out. Under k-fold the epoch count is chosen on the folds' mean accuracy.
    device : str, default="auto"
        Torch device for training; ``"auto"`` = CUDA when present (prediction runs on the CPU).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels.
    n_features_in_ : int
        Number of features seen in ``fit``.
    selection_ : dict
        How ``fit`` selected (``heads.select``): ``rule`` is "eval_set", "holdout", "kfold" or "none"
        (nothing could be held out); ``val_rows`` the validation rows the choice rests on (under
        k-fold every training row, each once), ``folds`` the number of folds.
    mean_ : ndarray of shape (n_features,)
        Training mean used to standardise the input.
    scale_ : ndarray of shape (n_features,)
        Training standard deviation (1 where a feature is constant).
    net_ : torch.nn.Sequential
        The trained network (on the CPU, in eval mode).
    n_epochs_ : int
        Epochs run.
    best_val_score_ : float or None
        Validation accuracy of the kept epoch; None without validation rows.
    best_epoch_ : int or None
        The kept epoch (1-based); None without validation rows.

    Examples
    --------
    >>> import numpy as np
    >>> from embedpipe.heads import MLPHead
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 20)
    >>> X = rng.normal(size=(60, 8)) + 3 * np.eye(3, 8)[y]
    >>> head = MLPHead(hidden=16, epochs=20, lr=0.01, batch_size=16).fit(X, y)
    >>> head.predict_proba(X[:2]).shape
    (2, 3)
    >>> bool(head.score(X, y) > 0.8)
    True
    """

    name = "mlp"

    def __init__(
        self,
        hidden: int = 512,
        n_layers: int = 1,
        dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        epochs: int = 40,
        batch_size: int = 256,
        label_smoothing: float = 0.1,
        patience: int = 8,
        random_state: int = 0,
        selection: Rule | None = None,
        device: str = "auto",
    ) -> None:
        self.hidden = hidden
        self.n_layers = n_layers
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.label_smoothing = label_smoothing
        self.patience = patience
        self.random_state = random_state
        self.selection = selection
        self.device = device

    def _selects(self) -> bool:
        return True

    def _thread_work(self, n: int) -> float:
        # one step is a minibatch: its rows through every layer
        widths = [self.n_features_in_, *[self.hidden] * self.n_layers, len(self.classes_)]
        return float(min(n, self.batch_size)) * sum(a * b for a, b in pairwise(widths))

    def _epochs(self, X: np.ndarray, y: np.ndarray, mean: np.ndarray, scale: np.ndarray,
                dev: torch.device) -> Iterator[nn.Sequential]:
        """Train on (X, y) standardised by (mean, scale); yield the network after each epoch."""
        gen = torch.Generator().manual_seed(self.random_state)
        torch.manual_seed(self.random_state)
        Xt, yt = as_tensor((X - mean) / scale, dev), torch.from_numpy(y).to(dev)
        net = build_mlp(X.shape[1], self.hidden, self.n_layers, len(self.classes_), self.dropout).to(dev)
        steps_per_epoch = max(1, -(-len(Xt) // self.batch_size))
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total_steps = self.epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.OneCycleLR(  # it divides by zero when pct_start * total_steps == 1
            opt, max_lr=self.lr, total_steps=total_steps, pct_start=0.1 if total_steps != 10 else 0.2,
            anneal_strategy="cos")
        loss_fn = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        for _ in range(self.epochs):
            net.train()
            order = torch.randperm(len(Xt), generator=gen).to(dev)
            for i in range(steps_per_epoch):
                idx = order[i * self.batch_size : (i + 1) * self.batch_size]
                opt.zero_grad(set_to_none=True)
                loss_fn(net(Xt[idx]), yt[idx]).backward()
                opt.step()
                sched.step()
            yield net

    @staticmethod
    def _accuracy(net: nn.Sequential, Xv: torch.Tensor, yv: torch.Tensor) -> float:
        net.eval()
        with torch.inference_mode():
            return float((net(Xv).argmax(1) == yv).float().mean())

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None) -> None:
        dev = resolve_device(self.device)
        self.mean_, self.scale_ = standardizer(X)
        Xv = yv = None
        if X_val is not None and y_val is not None:
            Xv, yv = as_tensor((X_val - self.mean_) / self.scale_, dev), torch.from_numpy(y_val).to(dev)
        best_acc, best_state, stale = -1.0, None, 0
        self.n_epochs_, self.best_epoch_ = 0, None
        net = None
        for net in self._epochs(X, y, self.mean_, self.scale_, dev):
            self.n_epochs_ += 1
            if Xv is not None and yv is not None:
                acc = self._accuracy(net, Xv, yv)
                if acc > best_acc:
                    best_acc, best_state, stale = acc, copy.deepcopy(net.state_dict()), 0
                    self.best_epoch_ = self.n_epochs_
                else:
                    stale += 1
                    if stale >= self.patience:
                        break
        assert net is not None
        if best_state is not None:
            net.load_state_dict(best_state)
        self.best_val_score_ = best_acc if Xv is not None else None
        self.net_ = net.eval().cpu()

    # -- k-fold selection (heads/select.py's KFold): the path is the epochs ------------------------
    def _path(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray,
              y_val: np.ndarray) -> Iterator[tuple[int, float]]:
        """Train on one fold; yield (epoch, validation accuracy) after each epoch."""
        dev = resolve_device(self.device)
        mean, scale = standardizer(X)
        Xv, yv = as_tensor((X_val - mean) / scale, dev), torch.from_numpy(y_val).to(dev)
        for epoch, net in enumerate(self._epochs(X, y, mean, scale, dev), start=1):
            yield epoch, self._accuracy(net, Xv, yv)

    def _path_patience(self) -> int | None:
        return self.patience

    def _fit_at(self, X: np.ndarray, y: np.ndarray, candidate: Any, scores: dict[Any, float]) -> None:
        """Train on all of train for the chosen number of epochs (the same schedule as in the folds)."""
        dev = resolve_device(self.device)
        self.mean_, self.scale_ = standardizer(X)
        epochs = self._epochs(X, y, self.mean_, self.scale_, dev)
        for _ in range(int(candidate) - 1):
            next(epochs)
        net = next(epochs)  # the network after the chosen epoch
        epochs.close()
        self.n_epochs_ = self.best_epoch_ = int(candidate)
        self.best_val_score_ = float(scores[candidate])
        self.net_ = net.eval().cpu()

    def chosen_params(self) -> dict[str, Any]:
        return {} if self.best_epoch_ is None else {"epochs": self.best_epoch_}

    def how_chosen(self) -> str | None:
        if self.best_val_score_ is None:
            return None
        folds = getattr(self, "selection_", {}).get("folds", 0)
        if folds:
            return (f"epochs: best mean val accuracy ({self.best_val_score_:.4f}) over {folds} stratified folds of "
                    f"train, at epoch {self.best_epoch_} (at most {self.epochs}; all folds stop after "
                    f"{self.patience} without a gain); then trained on all of train for that many epochs")
        return (f"epochs: the epoch with the best val accuracy ({self.best_val_score_:.4f}) of {self.n_epochs_} run "
                f"(at most {self.epochs}; stops after {self.patience} without a gain)")

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = self.net_(torch.from_numpy((X - self.mean_) / self.scale_))
            return torch.softmax(logits, dim=1).numpy()

    def _get_state(self) -> State:
        arrays = {f"net.{k}": v.numpy() for k, v in self.net_.state_dict().items()}
        return ({"n_epochs_": self.n_epochs_, "best_val_score_": self.best_val_score_, "best_epoch_": self.best_epoch_},
                {**arrays, "mean_": self.mean_, "scale_": self.scale_})

    def _state_spec(self) -> StateSpec:
        arrays = {"mean_": ArraySpec(("d",)), "scale_": ArraySpec(("d",), positive=True)}
        width: int | str = "d"
        for i in range(self.n_layers):  # Linear, GELU, Dropout per hidden layer: Linears at 0, 3, 6, ...
            arrays[f"net.{3 * i}.weight"] = ArraySpec((self.hidden, width))
            arrays[f"net.{3 * i}.bias"] = ArraySpec((self.hidden,))
            width = self.hidden
        arrays[f"net.{3 * self.n_layers}.weight"] = ArraySpec(("k", width))
        arrays[f"net.{3 * self.n_layers}.bias"] = ArraySpec(("k",))
        return {"n_epochs_": "int", "best_val_score_": "number?", "best_epoch_": "number?"}, arrays

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.n_epochs_, self.best_val_score_ = state["n_epochs_"], state["best_val_score_"]
        best_epoch = state.get("best_epoch_")  # absent from head files saved before it was recorded
        self.best_epoch_ = None if best_epoch is None else int(best_epoch)
        self.mean_, self.scale_ = arrays["mean_"], arrays["scale_"]
        net = build_mlp(len(self.mean_), self.hidden, self.n_layers, len(self.classes_), self.dropout)
        net.load_state_dict({k[4:]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("net.")})
        self.net_ = net.eval()
