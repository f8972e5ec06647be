"""Data-quality checks read from a cache: likely label errors, outliers, near-duplicates, and the
report with contact sheets."""
