"""The provenance record every converter writes beside its weights, built in one place.

A record says where the weights came from (source files with sha256 and sizes, the official
release and URL), what they load into (``load_with``), how they were made (tool, version, the
named conversion steps, library versions) and the preprocessing contract that travels with
them. :func:`provenance_record` builds it for the PyTorch writers; the Keras writers derive
theirs from the same record (``converters.keras_writer.keras_record``). The writer adds the
``weights`` entry (file name, tensor count, sha256) when it writes the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from converters import __version__

FORMAT = "deeplab-repro provenance v1"


def torch_version() -> str | None:
    """The installed torch's version (``torch.__version__``), without importing torch; None if absent."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def provenance_record(
    *,
    tool: str,
    steps: Sequence[str],
    architecture: str,
    num_classes: int | None,
    load_with: str,
    source: Mapping[str, Any],
    release: str | None = None,
    model: Mapping[str, Any] | None = None,
    preprocessing: Any = None,
    extra: Mapping[str, Any] | None = None,
    libraries: Sequence[str] = (),
) -> dict[str, Any]:
    """The record for weights converted by ``tool``.

    ``model``: further facts about the target (e.g. ``kind``, ``output_stride``), placed beside
    ``architecture``; ``preprocessing``: a ``Preprocessing`` or its ``to_dict()`` (or None); ``extra``:
    further top-level entries (e.g. ``deeplab_preprocessing``); ``libraries``: module names whose
    ``__version__`` is recorded besides torch's (e.g. ``("google.protobuf",)``). torch's version is
    the installed distribution's (read without importing torch: the streaming converters never do).
    """
    import importlib

    converter: dict[str, Any] = {"tool": tool, "version": __version__, "steps": list(steps),
                                 "torch": torch_version()}
    for name in libraries:
        converter[name.rsplit(".", 1)[-1]] = getattr(importlib.import_module(name), "__version__", None)
    return {
        "format": FORMAT,
        "release": release,
        "architecture": architecture,
        **(model or {}),
        "num_classes": num_classes,
        "load_with": load_with,
        "source": dict(source),
        "converter": converter,
        "preprocessing": None if preprocessing is None else
        dict(preprocessing) if isinstance(preprocessing, Mapping) else preprocessing.to_dict(),
        **(extra or {}),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
