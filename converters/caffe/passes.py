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
from collections.abc import Iterable, Iterator, Mapping
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
    if blobs[2].size != 1:
        raise ConversionError(path, f"BatchNorm moving-average factor (blob 2) holds {blobs[2].size} values, "
                              "expected 1", layer=layer)
    if blobs[0].size != blobs[1].size or blobs[0].size == 0:
        raise ConversionError(path, f"BatchNorm mean and variance (blobs 0, 1) hold {blobs[0].size} and "
                              f"{blobs[1].size} values, expected one per channel", layer=layer)
    factor = float(np.asarray(blobs[2]).reshape(-1)[0])
    if factor == 0.0:
        raise ConversionError(path, "BatchNorm moving-average factor (blob 2) is zero: no statistics were stored",
                              layer=layer)
    if not np.isfinite(factor):
        raise ConversionError(path, f"BatchNorm moving-average factor (blob 2) is {factor}", layer=layer)
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
    """``weight`` (OIHW, as Caffe stores it) and, when present, ``bias`` (one value per output channel)."""
    if len(blobs) not in (1, 2) or blobs[0].ndim != 4 or (len(blobs) == 2 and blobs[1].size != blobs[0].shape[0]):
        raise ConversionError(path, f"Convolution has {len(blobs)} blobs of shapes "
                              f"{[list(b.shape) for b in blobs]}, expected a 4-D weight and an optional bias "
                              "of one value per output channel", layer=layer)
    out = {"weight": blobs[0]}
    if len(blobs) == 2:
        out["bias"] = blobs[1].reshape(-1)
    return out


def inner_product_params(blobs: list[np.ndarray], *, path: str | os.PathLike, layer: str) -> dict[str, np.ndarray]:
    """An InnerProduct's ``[out, in]`` weight (any leading ones) as a 1x1 convolution's OIHW weight."""
    if not 1 <= len(blobs) <= 2 or blobs[0].ndim < 2 or any(d != 1 for d in blobs[0].shape[:-2]):
        raise ConversionError(path, f"InnerProduct has {len(blobs)} blobs of shapes "
                              f"{[list(b.shape) for b in blobs]}, expected an [out, in] weight and an optional bias",
                              layer=layer)
    weight = blobs[0].reshape(blobs[0].shape[-2], blobs[0].shape[-1], 1, 1)
    return convolution_params([weight, *blobs[1:]], path=path, layer=layer)


@dataclass
class NamedArrays:
    """Arrays named ``<caffe layer>.<tensor>`` plus per-layer metadata (type, BN eps, Scale pairing).

    ``scale_pairing[scale] = (batchnorm, how)``: which BatchNorm each Scale layer was folded
    into and how that was decided (``"bottom/top"``: the Scale reads the BatchNorm's top blob;
    ``"official topology"`` or ``"layer names"``: the file's records carry no bottom/top).
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    layer_type: dict[str, str] = field(default_factory=dict)
    bn_eps: dict[str, float] = field(default_factory=dict)
    scale_pairing: dict[str, tuple[str, str]] = field(default_factory=dict)

    def layer_of(self, key: str) -> str:
        return key.rsplit(".", 1)[0]

    def pairing_methods(self) -> dict[str, int]:
        """How many Scale layers were paired each way (for the provenance record)."""
        counts: dict[str, int] = {}
        for _, how in self.scale_pairing.values():
            counts[how] = counts.get(how, 0) + 1
        return counts


_SCALE_PREFIX = re.compile(r"^scale_?")


def bn_by_name(scale: str) -> str:
    """The BatchNorm a Scale layer belongs to by the MSRA naming habit: ``scale_conv1`` -> ``bn_conv1``,
    ``scale2a_branch1`` -> ``bn2a_branch1``; other names map onto ``bn_<name>``."""
    m = _SCALE_PREFIX.match(scale)
    if m is None:
        return f"bn_{scale}"
    return ("bn_" if m.group(0) == "scale_" else "bn") + scale[m.end():]


def layer_arrays(layers: Iterable[CaffeLayer], path: str | os.PathLike, *,
                 scale_to_bn: Mapping[str, str] | None = None) -> NamedArrays:
    """Apply the BatchNorm, Scale and Convolution passes to every weighted layer.

    Layers without blobs are skipped. A weighted layer of another type is an error
    naming it: the DeepLab releases contain only these.

    A Scale layer is folded into the BatchNorm whose top blob it reads. Files written by
    tools that strip ``bottom``/``top`` from the records (weights-only caffemodels) leave
    no blobs to follow: there the Scale is paired through ``scale_to_bn`` (Scale layer ->
    BatchNorm layer, from the official topology of the architecture being converted) or,
    for a Scale it does not list, through the layer names (:func:`bn_by_name`). The
    BatchNorm must come before its Scale in the file either way.
    """
    out = NamedArrays()
    bn_by_blob: dict[str, str] = {}  # top blob name -> BN layer name, to find the Scale that follows
    bn_layers: set[str] = set()
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
                bn_layers.add(name)
                for top in layer.tops:
                    bn_by_blob[top] = name
            continue
        if not layer.blobs:
            continue
        if layer.type == "Scale":
            if layer.bottoms:
                bn, how = bn_by_blob.get(layer.bottoms[0]), "bottom/top"
                if bn is None:
                    raise ConversionError(path, "Scale layer does not follow a BatchNorm", layer=name)
            elif scale_to_bn is not None and name in scale_to_bn:
                bn, how = scale_to_bn[name], "official topology"
            else:
                bn, how = bn_by_name(name), "layer names"
            if bn not in bn_layers:
                raise ConversionError(path, f"Scale layer has no bottom blob and its BatchNorm '{bn}' ({how}) "
                                      "does not come before it in the file", layer=name)
            if bn in {b for b, _ in out.scale_pairing.values()}:
                raise ConversionError(path, f"a second Scale layer for BatchNorm '{bn}'", layer=name)
            channels = out.arrays[f"{bn}.running_mean"].size
            out.arrays.update({f"{bn}.{k}": v for k, v in fold_scale(layer.blobs, channels, path=path,
                                                                     layer=name).items()})
            out.scale_pairing[name] = (bn, how)
        elif layer.type == "Convolution":
            out.arrays.update({f"{name}.{k}": v for k, v in convolution_params(layer.blobs, path=path,
                                                                               layer=name).items()})
            out.layer_type[name] = layer.type
        elif layer.type == "InnerProduct":
            out.arrays.update({f"{name}.{k}": v for k, v in inner_product_params(layer.blobs, path=path,
                                                                                 layer=name).items()})
            out.layer_type[name] = layer.type
        else:
            raise ConversionError(path, f"weighted layer of unsupported type '{layer.type}'", layer=name)
    return out
