"""Write official-format caffemodels with random weights (tests, demos, smoke runs).

The file is what Caffe itself would write for the official topology
(``converters.caffe.topology``): a ``NetParameter`` whose layers carry their
definitions and blobs, the 3-scale copies (``*_res075``, ``*_res05``) holding
identical blobs as in the released MSC models. Weights are random but
realistic: He-scaled convolutions, BatchNorm blobs stored the Caffe way (mean
and variance multiplied by a moving-average factor of ~999.98), some channels
with variances near eps so that a wrong eps is visible, and non-zero ASPP biases.

Layers are written one record at a time (the blob payload is encoded as packed
floats directly from numpy), so a 530 MB file needs no 530 MB buffer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from converters.caffe import topology
from converters.caffe.passes import canonical_name
from converters.io import atomic_path, write_text_atomic

BN_SCALE_FACTOR = 999.982  # what 20k iterations of Caffe's moving average leave in blob 2



def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_blob(array: np.ndarray, *, legacy_shape: bool = False, double: bool = False) -> bytes:
    """Serialize a ``BlobProto``: shape (field 7, or legacy fields 1-4) + packed data (5, or double_data 8)."""
    array = np.asarray(array)
    if legacy_shape:
        dims = (1,) * (4 - array.ndim) + tuple(array.shape)
        header = b"".join(_varint(i << 3) + _varint(int(d)) for i, d in enumerate(dims, start=1))
    else:
        header = _field(7, _field(1, b"".join(_varint(int(d)) for d in array.shape)))
    if double:
        return header + _field(8, np.ascontiguousarray(array, dtype="<f8").tobytes())
    return header + _field(5, np.ascontiguousarray(array, dtype="<f4").tobytes())


def random_blobs(layer: Any, in_channels: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Realistic random blobs for one parametric layer (empty list for the others)."""
    if layer.type == "Convolution":
        cp = layer.convolution_param
        k = int(cp.kernel_size[0])
        out = int(cp.num_output)
        fan_in = in_channels * k * k
        is_classifier = layer.name.startswith(("fc1_", "fc8_"))
        std = 0.01 if is_classifier else np.sqrt(2.0 / fan_in)
        blobs = [rng.normal(0.0, std, size=(out, in_channels, k, k)).astype(np.float32)]
        if cp.bias_term:
            blobs.append(rng.normal(0.0, 0.5 if is_classifier else 0.1, size=(out,)).astype(np.float32))
        return blobs
    if layer.type == "BatchNorm":
        c = in_channels
        mean = rng.normal(0.0, 0.2, size=c)
        var = rng.uniform(0.3, 2.0, size=c)
        tiny = rng.random(c) < 0.05  # channels whose variance is comparable to eps
        var[tiny] = rng.uniform(1e-6, 2e-5, size=int(tiny.sum()))
        s = BN_SCALE_FACTOR
        return [(mean * s).astype(np.float32), (var * s).astype(np.float32), np.array([s], dtype=np.float32)]
    if layer.type == "Scale":
        return []  # filled by :func:`_bn_scale_blobs`, which needs the BatchNorm variances
    return []


def _bn_scale_blobs(bn_blobs: list[np.ndarray], last_in_branch: bool, rng: np.random.Generator) -> list[np.ndarray]:
    var = bn_blobs[1] / bn_blobs[2][0]
    # gamma ~ sqrt(var + eps): the normalised output keeps a sane magnitude even
    # where var ~ eps, while eps still decides the value for those channels.
    gamma = rng.uniform(0.5, 1.0, size=var.shape) * np.sqrt(var + 1e-5)
    if last_in_branch:
        gamma *= 0.2  # keep 33 residual additions from blowing up the activations
    beta = rng.normal(0.0, 0.1, size=var.shape)
    return [gamma.astype(np.float32), beta.astype(np.float32)]


def small_net(name: str = "small", *, conv: str = "conv1", bn: str = "bn_conv1",
              scale: str | None = "scale_conv1") -> Any:
    """The smallest net with every kind of Caffe blob: a 1x3x9x9 input, layer ``conv`` (3x3, 4 outputs,
    bias), ``bn`` (BatchNorm) and, unless ``scale`` is None, ``scale`` (Scale with bias), all in place.
    For tests and fuzzing seeds; fill it with :func:`write_caffemodel`."""
    from converters.caffe.reader import caffe_pb

    net = caffe_pb().NetParameter(name=name)
    net.input.append("data")
    net.input_shape.add().dim.extend([1, 3, 9, 9])
    layer = net.layer.add(name=conv, type="Convolution", bottom=["data"], top=[conv])
    layer.convolution_param.num_output = 4
    layer.convolution_param.kernel_size.append(3)
    net.layer.add(name=bn, type="BatchNorm", bottom=[conv], top=[conv])
    if scale is not None:
        net.layer.add(name=scale, type="Scale", bottom=[conv], top=[conv]).scale_param.bias_term = True
    return net


def write_caffemodel(net: Any, path: str | os.PathLike, *, seed: int = 0, legacy_shape: bool = False,
                     double: bool = False, v1: bool = False,
                     mutate: Callable[[Any, list[np.ndarray]], list[np.ndarray]] | None = None) -> Path:
    """Fill ``net`` with random blobs and write it as a binary caffemodel at ``path``.

    Weight-shared multi-scale copies get the blobs of their 1x layer. Options
    exercise the legacy encodings: ``legacy_shape`` (num/channels/height/width),
    ``double`` (``double_data``), ``v1`` (``layers`` records of V1LayerParameter).
    ``mutate(layer, blobs) -> blobs`` may alter what one layer stores (tests of bad files).
    """
    rng = np.random.default_rng(seed)
    channels: dict[str, int] = {name: 3 for name in net.input}
    by_name: dict[str, list[np.ndarray]] = {}
    last_bn: dict[str, list[np.ndarray]] = {}
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        if net.name:
            fh.write(_field(1, net.name.encode()))
        for name in net.input:
            fh.write(_field(3, name.encode()))
        for shape in net.input_shape:
            fh.write(_field(8, shape.SerializeToString()))
        for lp in net.layer:
            c_in = channels.get(lp.bottom[0], 3) if lp.bottom else 3
            canon = canonical_name(lp.name)
            if canon in by_name:
                blobs = by_name[canon]
            elif lp.type == "Scale":
                bn = last_bn[lp.bottom[0]]
                blobs = _bn_scale_blobs(bn, "branch2c" in lp.name, rng)
            else:
                blobs = random_blobs(lp, c_in, rng)
            if blobs:
                by_name[canon] = blobs
            if lp.type == "BatchNorm":
                last_bn[lp.top[0]] = blobs
            out_c = int(lp.convolution_param.num_output) if lp.type == "Convolution" else c_in
            for top in lp.top:
                channels[top] = out_c
            if mutate is not None:
                blobs = mutate(lp, [b.copy() for b in blobs])
            _write_layer(fh, lp, blobs, legacy_shape=legacy_shape, double=double, v1=v1)
    return path


_V1_TYPE_IDS = {"Convolution": 4, "Pooling": 17, "ReLU": 18, "Eltwise": 25, "Dropout": 6, "InnerProduct": 14}


def _write_layer(fh: BinaryIO, lp: Any, blobs: list[np.ndarray], *, legacy_shape: bool, double: bool,
                 v1: bool) -> None:
    if v1:
        from converters.caffe.reader import caffe_pb

        if lp.type not in _V1_TYPE_IDS:
            raise ValueError(f"layer type {lp.type} has no V1 encoding here")
        v = caffe_pb().V1LayerParameter(name=lp.name, type=_V1_TYPE_IDS[lp.type])
        v.bottom.extend(lp.bottom)
        v.top.extend(lp.top)
        for fname in ("convolution_param", "pooling_param", "eltwise_param", "dropout_param"):
            if lp.HasField(fname):
                getattr(v, fname).CopyFrom(getattr(lp, fname))
        body = v.SerializeToString() + b"".join(_field(6, encode_blob(b, legacy_shape=legacy_shape, double=double))
                                                for b in blobs)
        fh.write(_field(2, body))
        return
    body = lp.SerializeToString() + b"".join(
        _field(7, encode_blob(b, legacy_shape=legacy_shape, double=double)) for b in blobs
    )
    fh.write(_field(100, body))


def write_prototxt(net: Any, path: str | os.PathLike) -> Path:
    """Write ``net`` as a text prototxt (atomically)."""
    from google.protobuf import text_format

    text = text_format.MessageToString(net)
    return write_text_atomic(path, text)


def official_caffemodel(arch: str, path: str | os.PathLike, *, num_classes: int, exp: str = "voc12",
                        seed: int = 0, input_hw: tuple[int, int] = (321, 321)) -> Any:
    """Write a random-weight caffemodel of an official topology; return its ``NetParameter``."""
    net = topology.build_net(arch, num_classes=num_classes, exp=exp, input_hw=input_hw)
    write_caffemodel(net, path, seed=seed)
    return net
