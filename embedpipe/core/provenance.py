"""What a result was computed with: library versions and the CPU's vector features, recorded in
every cache's meta.h5 and every benchmark row."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np

from .version import __version__


def open_clip_version() -> str:
    """open_clip's version, read from its installed metadata: importing open_clip only to ask (it pulls
    in its tokenizers) would cost a timm extraction a fraction of a second."""
    return metadata.version("open_clip_torch")


def library_versions() -> dict[str, str]:
    import timm  # heavy: imported when a result records its provenance, not at start-up
    import torch

    return {
        "embedpipe": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "open_clip": open_clip_version(),
        "h5py": h5py.__version__,
        "numpy": np.__version__,
    }


def cpu_isa() -> str:
    """The CPU's vector features that decide CPU speed here: with native bf16 (AVX-512 BF16 or AMX)
    the forward pass runs in bf16 autocast, on AVX2 alone it stays fp32 (read from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "cpu flags unknown"
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    bf16 = "bf16" if {"avx512_bf16", "amx_bf16"} & flags else "no bf16"
    return f"{model or 'cpu'} ({'+'.join(isa) or 'no avx2'}, {bf16})"
