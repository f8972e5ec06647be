"""A small MLP head in torch: one or two hidden layers, AdamW, cosine schedule, label smoothing,
early stopping on validation. The data lives as tensors on the device; batches are index slices
(no per-sample DataLoader)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbones.base import resolve_device
from .base import ArraySpec, Head, State, StateSpec, standardizer
from .registry import register_head
from .select import HoldOut
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
        selection: HoldOut | None = None,
        device: str = "auto",
    ) -> None:
        self.hidden = hidden  # width of each hidden layer
        self.n_layers = n_layers  # hidden layers: 0 (linear), 1 or 2
        self.dropout = dropout  # dropout after each hidden layer
        self.lr = lr  # AdamW peak learning rate (cosine-decayed to 0)
        self.weight_decay = weight_decay  # AdamW decoupled weight decay
        self.epochs = epochs  # maximum epochs
        self.batch_size = batch_size  # rows per step
        self.label_smoothing = label_smoothing  # cross-entropy label smoothing
        self.patience = patience  # epochs without validation gain before stopping
        self.random_state = random_state  # seeds init and shuffling
        self.selection = selection  # rule that holds validation rows out of train without eval_set
        self.device = device  # auto = CUDA when present

    def _selects(self) -> bool:
        return True

    def _fit(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None, y_val: np.ndarray | None) -> None:
        dev = resolve_device(self.device)
        gen = torch.Generator().manual_seed(self.random_state)
        torch.manual_seed(self.random_state)
        self.mean_, self.scale_ = standardizer(X)
        Xt, yt = as_tensor((X - self.mean_) / self.scale_, dev), torch.from_numpy(y).to(dev)
        net = build_mlp(X.shape[1], self.hidden, self.n_layers, len(self.classes_), self.dropout).to(dev)
        steps_per_epoch = max(1, -(-len(Xt) // self.batch_size))
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total_steps = self.epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.OneCycleLR(  # it divides by zero when pct_start * total_steps == 1
            opt, max_lr=self.lr, total_steps=total_steps, pct_start=0.1 if total_steps != 10 else 0.2,
            anneal_strategy="cos")
        loss_fn = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        Xv = yv = None
        if X_val is not None and y_val is not None:
            Xv, yv = as_tensor((X_val - self.mean_) / self.scale_, dev), torch.from_numpy(y_val).to(dev)
        best_acc, best_state, stale = -1.0, None, 0
        self.n_epochs_ = 0
        for _ in range(self.epochs):
            net.train()
            order = torch.randperm(len(Xt), generator=gen).to(dev)
            for i in range(steps_per_epoch):
                idx = order[i * self.batch_size : (i + 1) * self.batch_size]
                opt.zero_grad(set_to_none=True)
                loss_fn(net(Xt[idx]), yt[idx]).backward()
                opt.step()
                sched.step()
            self.n_epochs_ += 1
            if Xv is not None:
                net.eval()
                with torch.inference_mode():
                    acc = float((net(Xv).argmax(1) == yv).float().mean())
                if acc > best_acc:
                    best_acc, best_state, stale = acc, copy.deepcopy(net.state_dict()), 0
                else:
                    stale += 1
                    if stale >= self.patience:
                        break
        if best_state is not None:
            net.load_state_dict(best_state)
        self.best_val_score_ = best_acc if Xv is not None else None
        self.net_ = net.eval().cpu()

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = self.net_(torch.from_numpy((X - self.mean_) / self.scale_))
            return torch.softmax(logits, dim=1).numpy()

    def _get_state(self) -> State:
        arrays = {f"net.{k}": v.numpy() for k, v in self.net_.state_dict().items()}
        return ({"n_epochs_": self.n_epochs_, "best_val_score_": self.best_val_score_},
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
        return {"n_epochs_": "int", "best_val_score_": "number?"}, arrays

    def _set_state(self, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.n_epochs_, self.best_val_score_ = state["n_epochs_"], state["best_val_score_"]
        self.mean_, self.scale_ = arrays["mean_"], arrays["scale_"]
        net = build_mlp(len(self.mean_), self.hidden, self.n_layers, len(self.classes_), self.dropout)
        net.load_state_dict({k[4:]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("net.")})
        self.net_ = net.eval()
