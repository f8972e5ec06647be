"""The package version (one place; `embedpipe --version` and provenance records read it)."""

__version__ = "0.1.0"
