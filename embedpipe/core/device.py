"""Where tensors live and in which precision the forward pass runs: one rule for backbones and heads."""

from __future__ import annotations

import contextlib

import torch

from .errors import EmbedpipeError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str) -> torch.device:
    """``auto`` = CUDA when present, else CPU; ``cpu``, ``cuda`` or ``cuda:N`` as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise EmbedpipeError(f"bad device {device!r}: use auto, cpu or cuda[:N]") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EmbedpipeError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    return dev


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    with contextlib.suppress(Exception):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 on GPUs that support it (else fp16); bf16 on CPUs with native bf16; else fp32."""
    if precision not in PRECISIONS:
        raise EmbedpipeError(f"bad precision {precision!r}: use auto, fp32, bf16 or fp16")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"
