"""Maintainer tools (not installed). From the repository root: ``python -m tools.<name>``."""
