"""The provenance record every converter writes beside its weights, built in one place.

A record says where the weights came from (source files with sha256 and sizes, the official
release and URL), what they load into (``load_with``), how they were made (tool, version, the
named conversion steps, library versions) and the preprocessing contract that travels with
them. :func:`provenance_record` builds it for the PyTorch writers; the Keras writers derive
theirs from the same record (``converters.keras_writer.keras_record``). The writer adds the
``weights`` entry (file name, tensor count, sha256) when it writes the file. :func:`read_provenance`
reads a record back, checked for the shape its readers rely on.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from converters import __version__
from converters.errors import ConversionError

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


MAX_BYTES = 16 << 20  # a record is a few KB; a bigger sidecar is not one of ours


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The provenance record at ``path`` (the JSON sidecar beside weights), checked for shape.

    The entries readers act on must have their types: ``architecture`` a name, ``num_classes`` and
    ``output_stride`` positive integers, ``model_kwargs``, ``source``, ``converter``, ``weights`` and
    ``evaluation`` objects, ``preprocessing`` an object whose known fields are valid (``channel_order``
    RGB or BGR, ``mean``/``std`` three finite numbers with no zero std, ``scale`` finite and positive,
    crops positive integers); each may be null or absent. Other entries are left alone. Raises
    :class:`ConversionError` naming the file and the entry (an unreadable file, a file that is not
    JSON, too large or too deeply nested, a record of the wrong shape).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as e:
        raise ConversionError(path, f"cannot read the provenance JSON ({e.strerror or e})") from None
    if len(raw) > MAX_BYTES:
        raise ConversionError(path, f"provenance JSON larger than {MAX_BYTES >> 20} MiB; not a provenance record")
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(path, f"not valid provenance JSON ({' '.join(str(e).split())[:200]})") from None
    except RecursionError:
        raise ConversionError(path, "provenance JSON nested too deeply; not a provenance record") from None
    problem = _record_problem(record)
    if problem:
        raise ConversionError(path, f"not a provenance record of the expected shape: {problem}")
    return record


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _record_problem(record: Any) -> str | None:
    """What is wrong with the shape of ``record`` (None when nothing is)."""
    if not isinstance(record, dict):
        return f"the file holds a JSON {type(record).__name__}, not an object"
    checks: dict[str, tuple[Any, str]] = {
        "architecture": (lambda v: isinstance(v, str) and 0 < len(v) <= 200, "a model name"),
        "num_classes": (lambda v: _is_int(v) and 1 <= v <= 65536, "an integer from 1 to 65536"),
        "output_stride": (lambda v: _is_int(v) and 1 <= v <= 64, "an integer from 1 to 64"),
        **{key: (lambda v: isinstance(v, dict), "an object")
           for key in ("model_kwargs", "source", "converter", "weights", "evaluation", "preprocessing",
                       "trained_with", "skipped_samples", "best")},
    }
    for key, (ok, want) in checks.items():
        value = record.get(key)
        if value is not None and not ok(value):
            return f"'{key}' is {_shown(value)}, expected {want}"
    stride = (record.get("model_kwargs") or {}).get("output_stride")
    if stride is not None and not checks["output_stride"][0](stride):
        return f"'model_kwargs.output_stride' is {_shown(stride)}, expected {checks['output_stride'][1]}"
    return _preprocessing_problem(record.get("preprocessing") or {})


def _preprocessing_problem(pre: dict[str, Any]) -> str | None:
    def triple(v: Any) -> bool:
        return isinstance(v, list) and len(v) == 3 and all(_is_number(x) for x in v)

    checks: dict[str, tuple[Any, str]] = {
        "channel_order": (lambda v: v in ("RGB", "BGR"), "RGB or BGR"),
        "mean": (triple, "three finite numbers"),
        "std": (lambda v: triple(v) and all(x != 0 for x in v), "three finite non-zero numbers"),
        "scale": (lambda v: _is_number(v) and v > 0, "a finite positive number"),
        "train_crop": (lambda v: _is_int(v) and 1 <= v <= 16384, "an integer from 1 to 16384"),
        "test_crop": (lambda v: _is_int(v) and 1 <= v <= 16384, "an integer from 1 to 16384"),
        "pad_value_label": (lambda v: _is_int(v) and 0 <= v <= 65535, "an integer from 0 to 65535"),
        **{key: (lambda v: isinstance(v, str), "a string") for key in ("pad", "crop", "resize")},
    }
    for key, (ok, want) in checks.items():
        if key in pre and not ok(pre[key]):
            return f"'preprocessing.{key}' is {_shown(pre[key])}, expected {want}"
    return None
