"""Small torch helpers shared by the torch heads."""

from __future__ import annotations

import numpy as np
import torch


def as_tensor(X: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)
