"""Extraction engines behind one interface (``engines/base.py``): ``local`` (one process, the
default) and ``ray`` (a Ray cluster). The Ray engine is an optional extra
(``pip install "embedpipe[ray]"``): nothing here imports Ray until a Ray extraction starts."""

from __future__ import annotations

from .base import ENGINES, Engine, ExecutorOptions, ExtractJob, ExtractStats, check_engine
from .local import LocalEngine

__all__ = ["ENGINES", "Engine", "ExecutorOptions", "ExtractJob", "ExtractStats", "LocalEngine", "check_engine"]
