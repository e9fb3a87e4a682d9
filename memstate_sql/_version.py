"""The package version (read by the export format and the CLI without importing the whole package)."""

__version__ = "0.1.0"
