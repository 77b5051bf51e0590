"""Writing outputs safely: atomic files, checksums, state dicts and provenance.

Nothing a converter writes is ever half-written: data goes to a temporary file
in the destination folder, is flushed to disk, and is renamed over the target
only when complete (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".pth", ".safetensors")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception (including KeyboardInterrupt) the temporary file is removed
    and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_atomic(target: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result to ``target``."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def write_json_atomic(target: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as indented JSON, atomically."""
    text = json.dumps(record, indent=2, sort_keys=False) + "\n"
    return write_atomic(target, lambda p: p.write_text(text, encoding="utf-8"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_state_dict(state_dict: Mapping[str, Any], target: str | os.PathLike) -> Path:
    """Save a plain ``{name: tensor}`` dict as ``.pth`` or ``.safetensors``, atomically.

    ``.pth`` files load with ``torch.load(path, weights_only=True)``;
    ``.safetensors`` with ``safetensors.torch.load_file``.
    """
    import torch

    target = Path(target)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if target.suffix == ".safetensors":
        from safetensors.torch import save_file

        return write_atomic(target, lambda p: save_file(tensors, str(p)))
    if target.suffix == ".pth":
        return write_atomic(target, lambda p: torch.save(tensors, p))
    raise ValueError(f"{target}: output must end in one of {', '.join(WEIGHT_SUFFIXES)}")


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Load a weights file written by :func:`save_state_dict` without unpickling code."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def provenance_path(weights: str | os.PathLike) -> Path:
    """The sidecar JSON beside a weights file: ``model.pth`` -> ``model.json``."""
    return Path(weights).with_suffix(".json")
