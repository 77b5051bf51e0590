"""Importers for checkpoints trained with other public DeepLab ports (the "peers").

One module per format, each holding data, not code paths: the peer's key names and shapes
(a manifest derived from reading its public model code), ordered regex rename rules onto one of
our registered models, and the detection of architecture / backbone / class count from the keys.
:mod:`converters.peers.common` holds the pipeline every format shares (safe reading, manifest
check, renaming with a reverse map, strict load), like ``converters/caffe/convert.py`` does for
Caffe. The command line is ``converters/import_checkpoint.py``.

A format module defines ``NAME``, ``DESCRIPTION``, ``unwrap(obj, path)`` (the state dict inside
the file) and ``detect(state, path, *, output_stride, model)`` (a :class:`~converters.peers.common.Target`).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

# Format name -> module name (the modules present in this checkout).
_NOT_FORMATS = {"common"}


def available_formats() -> list[str]:
    """Sorted names of the peer formats this checkout can import."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_FORMATS
                  and not m.name.startswith("_"))


def get_format(name: str) -> ModuleType:
    """The format module ``name`` (ValueError naming the known formats if there is none)."""
    if name not in available_formats():
        raise ValueError(f"unknown checkpoint format '{name}'; known: {', '.join(available_formats())}")
    return importlib.import_module(f"{__name__}.{name}")
