"""Named conversion passes: Caffe layer blobs -> plain named arrays.

Each pass handles one Caffe quirk and has its own test (``tests/test_caffe_passes.py``),
which fails without it:

- :func:`drop_msc_copies`: the 3-scale nets store every weight-shared layer three
  times (``conv1``, ``conv1_res075``, ``conv1_res05``); the copies are checked to
  be identical, then dropped.
- :func:`batchnorm_statistics`: Caffe's BatchNorm keeps ``[mean*s, var*s, s]``;
  the statistics are blob 0 and 1 divided by the moving-average factor ``s``
  (about 999.98 in the releases). A zero factor is an error (Caffe would
  silently use zero statistics).
- :func:`fold_scale`: the affine part of Caffe's BN lives in the following
  ``Scale`` layer (``[gamma, beta]``); it becomes the BN's weight and bias.
- :func:`convolution_params`: weights are already OIHW; the bias blob, when the
  layer has one (the ASPP classifiers do), is kept.

Output names are ``<caffe layer>.<tensor>`` with PyTorch's tensor names
(``weight``, ``bias``, ``running_mean``, ``running_var``); BN layers also record
their ``eps`` in the layer metadata.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from converters.caffe.reader import CaffeLayer
from converters.errors import ConversionError

_COPY_SUFFIX = re.compile(r"_(res075|res05)(?=_|$)")

STEPS = ("drop_msc_copies", "batchnorm_statistics", "fold_scale", "convolution_params")


def canonical_name(name: str) -> str:
    """Strip the multi-scale copy marker: ``bn_conv1_res075`` -> ``bn_conv1``, ``fc1_voc12_res05_c0`` -> ``fc1_voc12_c0``."""
    return _COPY_SUFFIX.sub("", name, count=1)


def drop_msc_copies(layers: Iterable[CaffeLayer], path: str | os.PathLike) -> Iterator[CaffeLayer]:
    """Yield layers with the ``_res075``/``_res05`` copies of weighted layers removed.

    A copy must hold exactly the blobs of its 1x layer (they share parameters in
    the released nets); otherwise the file is not what this converter expects.
    Streaming: only the 1x blobs seen so far are remembered, so memory stays at
    one copy of the weights.
    """
    seen: dict[str, list[np.ndarray]] = {}
    for layer in layers:
        canon = canonical_name(layer.name)
        if canon == layer.name:
            if layer.blobs:
                seen[canon] = layer.blobs
            yield layer
            continue
        if not layer.blobs:
            continue  # an unweighted copy (ReLU, Interp ...) carries nothing to convert
        ref = seen.get(canon)
        if ref is None:
            raise ConversionError(path, f"multi-scale copy has no 1x layer '{canon}' before it", layer=layer.name)
        same = len(ref) == len(layer.blobs) and all(
            a.shape == b.shape and np.array_equal(a, b) for a, b in zip(ref, layer.blobs)
        )
        if not same:
            raise ConversionError(path, f"multi-scale copy differs from '{canon}'; the scales must share weights",
                                  layer=layer.name)


def batchnorm_statistics(blobs: list[np.ndarray], *, path: str | os.PathLike, layer: str) -> dict[str, np.ndarray]:
    """``running_mean``/``running_var`` from Caffe's ``[mean*s, var*s, s]`` BatchNorm blobs."""
    if len(blobs) != 3:
        raise ConversionError(path, f"BatchNorm has {len(blobs)} blobs, expected 3 (mean, variance, factor)",
                              layer=layer)
    factor = float(np.asarray(blobs[2]).reshape(-1)[0])
    if factor == 0.0:
        raise ConversionError(path, "BatchNorm moving-average factor (blob 2) is zero: no statistics were stored",
                              layer=layer)
    mean = (blobs[0].astype(np.float64) / factor).astype(np.float32).reshape(-1)
    var = (blobs[1].astype(np.float64) / factor).astype(np.float32).reshape(-1)
    return {"running_mean": mean, "running_var": var}


def fold_scale(blobs: list[np.ndarray], channels: int, *, path: str | os.PathLike, layer: str) -> dict[str, np.ndarray]:
    """BN ``weight``/``bias`` from the following Scale layer's ``[gamma, beta]`` (beta 0 without bias_term)."""
    if len(blobs) not in (1, 2):
        raise ConversionError(path, f"Scale has {len(blobs)} blobs, expected gamma and beta", layer=layer)
    gamma = blobs[0].reshape(-1)
    beta = blobs[1].reshape(-1) if len(blobs) == 2 else np.zeros_like(gamma)
    if gamma.size != channels or beta.size != channels:
        raise ConversionError(path, f"Scale has {gamma.size} channels, its BatchNorm has {channels}", layer=layer)
    return {"weight": gamma.astype(np.float32), "bias": beta.astype(np.float32)}


def convolution_params(blobs: list[np.ndarray], *, path: str | os.PathLike, layer: str) -> dict[str, np.ndarray]:
    """``weight`` (OIHW, as Caffe stores it) and, when present, ``bias``."""
    if len(blobs) not in (1, 2) or blobs[0].ndim != 4:
        raise ConversionError(path, f"Convolution has {len(blobs)} blobs of shapes "
                              f"{[list(b.shape) for b in blobs]}, expected a 4-D weight and an optional bias",
                              layer=layer)
    out = {"weight": blobs[0]}
    if len(blobs) == 2:
        out["bias"] = blobs[1].reshape(-1)
    return out


@dataclass
class NamedArrays:
    """Arrays named ``<caffe layer>.<tensor>`` plus per-layer metadata (type, BN eps)."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    layer_type: dict[str, str] = field(default_factory=dict)
    bn_eps: dict[str, float] = field(default_factory=dict)

    def layer_of(self, key: str) -> str:
        return key.rsplit(".", 1)[0]


def layer_arrays(layers: Iterable[CaffeLayer], path: str | os.PathLike) -> NamedArrays:
    """Apply the BatchNorm, Scale and Convolution passes to every weighted layer.

    Layers without blobs are skipped. A weighted layer of another type is an error
    naming it: the DeepLab releases contain only these.
    """
    out = NamedArrays()
    bn_by_blob: dict[str, str] = {}  # top blob name -> BN layer name, to find the Scale that follows
    for layer in layers:
        name = layer.name
        if layer.type == "BatchNorm":
            if layer.blobs:
                stats = batchnorm_statistics(layer.blobs, path=path, layer=name)
                out.arrays.update({f"{name}.{k}": v for k, v in stats.items()})
                c = stats["running_mean"].size
                # Without a Scale layer Caffe's BN has no affine part: identity weight and bias.
                out.arrays[f"{name}.weight"] = np.ones(c, np.float32)
                out.arrays[f"{name}.bias"] = np.zeros(c, np.float32)
                out.layer_type[name] = "BatchNorm"
                out.bn_eps[name] = float(layer.param.batch_norm_param.eps)
                for top in layer.tops:
                    bn_by_blob[top] = name
            continue
        if not layer.blobs:
            continue
        if layer.type == "Scale":
            bn = bn_by_blob.get(layer.bottoms[0]) if layer.bottoms else None
            if bn is None:
                raise ConversionError(path, "Scale layer does not follow a BatchNorm", layer=name)
            channels = out.arrays[f"{bn}.running_mean"].size
            out.arrays.update({f"{bn}.{k}": v for k, v in fold_scale(layer.blobs, channels, path=path,
                                                                     layer=name).items()})
        elif layer.type in ("Convolution", "InnerProduct"):
            blobs = layer.blobs
            if layer.type == "InnerProduct":
                blobs = [blobs[0].reshape(blobs[0].shape[-2], blobs[0].shape[-1], 1, 1), *blobs[1:]]
            out.arrays.update({f"{name}.{k}": v for k, v in convolution_params(blobs, path=path, layer=name).items()})
            out.layer_type[name] = layer.type
        else:
            raise ConversionError(path, f"weighted layer of unsupported type '{layer.type}'", layer=name)
    return out
