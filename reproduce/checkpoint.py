"""Training checkpoints: everything an exact resume needs, written atomically.

A checkpoint holds the model and optimizer state dicts, the AMP grad-scaler state, the number of
finished iterations (which fixes the learning rate and the data position, see
``reproduce.train``), the RNG states of python, numpy and torch (CPU and CUDA) and the resolved
config. Files are ``ckpt_<iteration>.pt`` in the run folder plus ``latest.json`` naming the newest;
both are written to a temporary file and renamed, so a run killed at any moment leaves either the
previous or the new checkpoint, never a broken one. Older checkpoints beyond ``keep`` are removed.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from converters.io import write_atomic, write_json_atomic

__all__ = ["rng_state", "set_rng_state", "save_checkpoint", "latest_checkpoint", "load_checkpoint"]

LATEST = "latest.json"


def rng_state() -> dict[str, Any]:
    """The global RNG states of python, numpy and torch (CPU and every CUDA device)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, iteration: int, payload: dict[str, Any], *, keep: int = 2) -> Path:
    """Write ``ckpt_<iteration>.pt`` and point ``latest.json`` at it; keep the ``keep`` newest."""
    run_dir = Path(run_dir)
    path = run_dir / f"ckpt_{iteration:07d}.pt"
    write_atomic(path, lambda p: torch.save({"iteration": iteration, **payload}, p))
    write_json_atomic(run_dir / LATEST, {"iteration": iteration, "file": path.name})
    if keep > 0:
        for old in sorted(run_dir.glob("ckpt_*.pt"))[:-keep]:
            old.unlink(missing_ok=True)
    return path


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``latest.json`` names, or None when the run has none."""
    import json

    run_dir = Path(run_dir)
    pointer = run_dir / LATEST
    if not pointer.is_file():
        return None
    path = run_dir / json.loads(pointer.read_text(encoding="utf-8"))["file"]
    return path if path.is_file() else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (it holds numpy RNG state, hence weights_only=False)."""
    return torch.load(path, map_location="cpu", weights_only=False)
