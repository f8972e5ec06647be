"""``embedpipe audit``: what is wrong with the data, read from the cache.

Exact and near duplicates within and across splits (a val or test image with a near-copy in train
is a leak), likely label errors and outliers, a summary, a stable JSON contract and a Markdown report
with contact sheets. ``run.py`` holds the steps; ``result.py`` the result and its JSON contract.
"""

from .duplicates import DuplicateConfig
from .result import DEFAULT_TOP, AuditResult
from .run import audit

__all__ = ["DEFAULT_TOP", "AuditResult", "DuplicateConfig", "audit"]
