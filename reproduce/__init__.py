"""deeplab-repro's datasets, training, evaluation and inference (see the README)."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir(name: str) -> Path:
    """A folder of deeplab-repro's per-user cache: ``$XDG_CACHE_HOME/deeplab-repro/<name>``
    (``~/.cache/deeplab-repro/<name>``); not created here."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deeplab-repro" / name
