"""Seeded mutation fuzzing of every reader of foreign files, each case under a time and memory limit.

Formats (``FORMATS``): ``caffemodel``, ``tf_index`` and ``tf_data`` (a V2 checkpoint's two files),
``tf_v1`` (a V1 TensorSlice checkpoint file),
``palette_png``, ``mat`` (SBD / COCO-Stuff 10k labels), ``deepfashion2_json`` and ``image`` (the shared
image decoder on EXIF-oriented JPEGs, 16-bit PNGs, float TIFFs, palette, LA and CMYK files). Each has a small


``palette_png``, ``mat`` (SBD / COCO-Stuff 10k labels), ``deepfashion2_json`` and ``config`` (a training
config YAML: alias bombs, deep nesting, tags, odd and non-finite values, bases, duplicate keys). Each has a small
valid seed written here (no TensorFlow needed: the checkpoints are written by :func:`write_v2_checkpoint`
and :func:`write_v1_checkpoint`, which the tests check against our reader and, when installed, TensorFlow's), a reader call that
must either accept the file or raise the project's error (``ConversionError`` / ``DatasetError`` / ``ConfigError``),
and mutators: generic byte ones (bit flips, byte insertions and deletions, truncations, random runs,
huge varints, duplicated ranges) plus structured ones per format (swapped and reshaped blobs, changed
layer types, wrong dtypes / shapes / offsets / sizes / shard counts in the TF index, chunk surgery
with valid CRCs in PNGs, nested and mistyped JSON, far-out coordinates).

Case ``i`` of a format is fully determined by ``(format, seed, i)``. Cases run in worker processes
(``python -m tests.fuzzing worker ...``) that limit their own address space (``RLIMIT_AS``: what
they use after imports plus :data:`MEMORY_HEADROOM`); the parent gives each case
:data:`CASE_TIMEOUT` seconds. Outcomes: ``accepted`` and ``error`` (our error) are fine;
``crash`` (any other exception, or the worker dying), ``memory`` (``MemoryError``) and ``hang``
(time limit) are failures, reported with the case number so it can be replayed with :func:`replay`.
"""

from __future__ import annotations

import json
import os
import random
import select
import struct
import subprocess
import sys
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CASE_TIMEOUT = 20.0  # seconds per case (the slowest legitimate case takes well under one)
STARTUP_TIMEOUT = 120.0  # seconds for a worker to import torch, scipy, cv2 on a loaded machine
MEMORY_HEADROOM = 1 << 30  # bytes of address space a worker may add to what its imports took

# --------------------------------------------------------------------------- generic byte mutators
HUGE_VARINTS = [b"\xff" * 9 + b"\x01", b"\xff\xff\xff\xff\x0f", b"\x80\x80\x80\x80\x08", b"\xff" * 12]


def _bitflips(r: random.Random, b: bytearray) -> bytearray:
    for _ in range(r.randint(1, 8)):
        p = r.randrange(len(b))
        b[p] ^= 1 << r.randrange(8)
    return b


def _insert(r: random.Random, b: bytearray) -> bytearray:
    p = r.randrange(len(b) + 1)
    b[p:p] = bytes(r.randrange(256) for _ in range(r.randint(1, 16)))
    return b


def _delete(r: random.Random, b: bytearray) -> bytearray:
    p = r.randrange(len(b))
    del b[p : p + r.randint(1, 16)]
    return b


def _truncate(r: random.Random, b: bytearray) -> bytearray:
    return b[: r.randrange(len(b))]


def _random_run(r: random.Random, b: bytearray) -> bytearray:
    p = r.randrange(len(b))
    n = r.randint(1, 64)
    b[p : p + n] = bytes(r.choice((0, 0xFF, r.randrange(256))) for _ in range(min(n, len(b) - p)))
    return b


def _huge_varint(r: random.Random, b: bytearray) -> bytearray:
    p = r.randrange(len(b))
    v = r.choice(HUGE_VARINTS)
    if r.random() < 0.5:
        b[p : p + len(v)] = v
    else:
        b[p:p] = v
    return b


def _duplicate(r: random.Random, b: bytearray) -> bytearray:
    p = r.randrange(len(b))
    chunk = b[p : p + r.randint(1, 256)]
    q = r.randrange(len(b) + 1)
    b[q:q] = chunk
    return b


BYTE_MUTATORS: list[Callable[[random.Random, bytearray], bytearray]] = [
    _bitflips, _insert, _delete, _truncate, _random_run, _huge_varint, _duplicate,
]


def mutate_bytes(r: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(1 if r.random() < 0.7 else r.randint(2, 4)):
        if not b:
            break
        b = r.choice(BYTE_MUTATORS)(r, b)
    return bytes(b)


# --------------------------------------------------------------------------- TF checkpoint writer (seeds)
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _mask_crc(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def sstable(entries: list[tuple[bytes, bytes]]) -> bytes:
    """An SSTable (LevelDB table format, as TensorFlow writes checkpoint indexes): one data block
    holding ``entries`` (keys not prefix-compressed), an empty meta-index block, an index block, the footer."""
    from converters.tf.reader import crc32c

    out = bytearray()

    def block(items: list[tuple[bytes, bytes]]) -> tuple[int, int]:
        body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in items)
        body += struct.pack("<II", 0, 1)  # one restart point at 0
        offset = len(out)
        out.extend(body)
        out.extend(b"\x00" + struct.pack("<I", _mask_crc(crc32c(body + b"\x00"))))
        return offset, len(body)

    data = block(entries)
    meta = block([])
    index = block([(entries[-1][0] if entries else b"", _varint(data[0]) + _varint(data[1]))])
    footer = _varint(meta[0]) + _varint(meta[1]) + _varint(index[0]) + _varint(index[1])
    out.extend(footer.ljust(40, b"\x00") + struct.pack("<Q", 0xDB4775248B80FB57))
    return bytes(out)


def bundle_messages():
    from converters.proto import load_messages

    m = load_messages("tensor_bundle")
    return m["tensorflow.BundleHeaderProto"], m["tensorflow.BundleEntryProto"]


_TF_DTYPES = {np.dtype("<f4"): 1, np.dtype("<f8"): 2, np.dtype("<i4"): 3, np.dtype("<i8"): 9, np.dtype("u1"): 4}


def flip_tensor_byte(prefix: Path, name: str) -> Path:
    """Flip one bit in the middle of tensor ``name``'s bytes in the V2 checkpoint at ``prefix`` (a data
    shard whose CRC-32C no longer matches); returns the shard."""
    from converters.tf.reader import open_checkpoint

    with open_checkpoint(prefix) as ckpt:
        entry = ckpt._entries[name]
    shard = Path(f"{prefix}.data-00000-of-00001")
    data = bytearray(shard.read_bytes())
    data[entry.offset + entry.size // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    return shard


def write_v2_checkpoint(prefix: Path, values: dict[str, np.ndarray]) -> Path:
    """A V2 checkpoint (``PREFIX.index`` + ``PREFIX.data-00000-of-00001``) as TensorFlow's BundleWriter lays it out."""
    from converters.tf.reader import crc32c

    header_cls, entry_cls = bundle_messages()
    data = bytearray()
    entries = [(b"", header_cls(num_shards=1, endianness=0).SerializeToString())]
    for name in sorted(values):
        a = np.ascontiguousarray(values[name])
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        e = entry_cls(dtype=_TF_DTYPES[a.dtype], shard_id=0, offset=len(data), size=len(raw),
                      crc32c=_mask_crc(crc32c(raw)))
        for d in a.shape:
            e.shape.dim.add(size=d)
        entries.append((name.encode(), e.SerializeToString()))
        data.extend(raw)
    Path(f"{prefix}.index").write_bytes(sstable(entries))
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bytes(data))
    return prefix


def write_v1_checkpoint(path: Path, values: dict[str, np.ndarray]) -> Path:
    """A V1 (TensorSliceWriter) checkpoint file: the table of contents under the empty key, then one
    full-extent slice record per tensor (``float_val`` / ``double_val`` / ``int_val`` / ``int64_val``)."""
    from converters.proto import load_messages
    from converters.tf.reader import _ordered_encode

    m = load_messages("tensor_bundle")
    toc = m["tensorflow.SavedTensorSlices"]()
    records = []
    fields = {1: "float_val", 2: "double_val", 3: "int_val", 4: "int_val", 9: "int64_val"}
    for name in sorted(values):
        a = values[name]
        dtype = _TF_DTYPES[a.dtype.newbyteorder("<") if a.dtype.itemsize > 1 else a.dtype]
        meta = toc.meta.tensor.add(name=name, type=dtype)
        for d in a.shape:
            meta.shape.dim.add(size=d)
        slice_ = meta.slice.add()
        for _ in a.shape:
            slice_.extent.add()  # start 0, no length: the whole dimension
        record = m["tensorflow.SavedTensorSlices"]()
        record.data.name = name
        record.data.slice.CopyFrom(slice_)
        record.data.data.dtype = dtype
        getattr(record.data.data, fields[dtype]).extend(a.reshape(-1).tolist())
        records.append((_ordered_encode(name, tuple((0, -1) for _ in a.shape)), record.SerializeToString()))
    toc.meta.versions.producer = 1
    path.write_bytes(sstable(sorted([(b"", toc.SerializeToString()), *records])))
    return path


def seed_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a/weights": rng.standard_normal((3, 3, 4, 8)).astype(np.float32),
        "a/biases": rng.standard_normal(8).astype(np.float32),
        "b/moving_mean": rng.standard_normal(8),
        "global_step": np.array(1234, np.int64),
        "c/ids": np.arange(6, dtype=np.int32).reshape(2, 3),
        "d/mask": (rng.random(5) * 255).astype(np.uint8),
    }


# --------------------------------------------------------------------------- formats
@dataclass
class Format:
    """A fuzzed format: seed files, mutation of one case, and the reader under test."""

    name: str
    make_seed: Callable[[Path], None]  # writes the seed files into a folder
    mutate: Callable[[random.Random, Path, Path], None]  # (rng, seed folder, case folder) -> mutated files
    read: Callable[[Path], object]  # reads the case folder; raises our error on bad input
    errors: tuple = field(default_factory=tuple)


def _conversion_error():
    from converters.errors import ConversionError

    return ConversionError


def _dataset_error():
    from reproduce.datasets.base import DatasetError

    return DatasetError


# -- caffemodel
def _caffe_seed(folder: Path) -> None:
    from converters.caffe import synth

    net = synth.small_net("seed")
    net.layer.add(name="conv1_relu", type="ReLU", bottom=["conv1"], top=["conv1"])
    conv2 = net.layer.add(name="fc1_voc12_c0", type="Convolution", bottom=["conv1"], top=["fc1"])
    conv2.convolution_param.num_output = 3
    conv2.convolution_param.kernel_size.append(1)
    conv2.convolution_param.bias_term = True
    synth.write_caffemodel(net, folder / "seed.caffemodel", seed=1)
    net.layer.add(name="conv1_res05", type="Convolution", bottom=["data"], top=["c05"]).CopyFrom(net.layer[0])
    net.layer[-1].name = "conv1_res05"
    synth.write_caffemodel(net, folder / "seed_msc.caffemodel", seed=1)
    synth.write_caffemodel(net, folder / "seed_legacy.caffemodel", seed=1, legacy_shape=True, double=True)


_CAFFE_TYPES = ["Convolution", "BatchNorm", "Scale", "InnerProduct", "ReLU", "Deconvolution", "", "Eltwise"]


def _caffe_structured(r: random.Random, data: bytes, *, last: bool = True) -> bytes:
    from converters.caffe.reader import caffe_pb

    net = caffe_pb().NetParameter.FromString(data)
    lp = r.choice(list(net.layer))
    kind = r.randrange(8)
    if kind == 0 and len(lp.blobs) >= 2:  # swapped blobs
        i, j = r.sample(range(len(lp.blobs)), 2)
        a, b = type(lp.blobs[i])(), type(lp.blobs[j])()
        a.CopyFrom(lp.blobs[i])
        b.CopyFrom(lp.blobs[j])
        lp.blobs[i].CopyFrom(b)
        lp.blobs[j].CopyFrom(a)
    elif kind == 1 and lp.blobs:  # reshaped blob: other dims, too many, negative or huge ones
        blob = r.choice(list(lp.blobs))
        del blob.shape.dim[:]
        n = r.choice([0, 1, 2, 4, 5, 33, 70])
        blob.shape.dim.extend(r.choice([1, 2, 3, 4, 0, -1, 2**31, 2**40, 2**62]) for _ in range(n))
    elif kind == 2:  # changed type
        lp.type = r.choice(_CAFFE_TYPES)
    elif kind == 3 and lp.blobs:  # a blob emptied or dropped
        blob = r.choice(list(lp.blobs))
        if r.random() < 0.5:
            del blob.data[:]
            blob.shape.dim[:] = [0]
        else:
            del lp.blobs[r.randrange(len(lp.blobs))]
    elif kind == 4:  # bottoms/tops stripped or rewired
        del lp.bottom[:]
        if r.random() < 0.5:
            lp.bottom.append(r.choice(["data", "conv1", "nothing", ""]))
    elif kind == 5 and lp.blobs:  # non-finite or extreme values
        blob = r.choice(list(lp.blobs))
        if len(blob.data):
            blob.data[r.randrange(len(blob.data))] = r.choice([float("nan"), float("inf"), -0.0, 3e38])
    elif kind == 6 and lp.blobs and r.random() < 0.3:  # emptied, with a zero axis beside huge ones
        blob = r.choice(list(lp.blobs))
        del blob.data[:]
        del blob.double_data[:]
        del blob.shape.dim[:]
        dims = [0] + [r.choice([1, 3, 2**31, 2**40, 2**62, 2**63 - 1]) for _ in range(r.randint(1, 4))]
        r.shuffle(dims)
        blob.shape.dim.extend(dims)
    elif kind == 6:  # renamed: MSC copy markers, clashes
        lp.name = r.choice(["conv1_res075", "conv1", "bn_conv1", "scale_x", "fc1_voc12_c0", "a.b", ""])
    else:  # an extra blob of a random shape
        blob = lp.blobs.add()
        dims = [r.randint(0, 3) for _ in range(r.randint(0, 4))]
        blob.shape.dim.extend(dims)
        blob.data.extend([1.0] * int(np.prod(dims)) if r.random() < 0.8 else [1.0])
    out = net.SerializeToString()
    if last and r.random() < 0.2:  # a name that is not UTF-8 (the API refuses to set one; the file no longer parses)
        out = out.replace(lp.name.encode() or b"conv1", b"\xff\xfe" + (lp.name.encode() or b"x")[2:], 1)
    return out


def _structured_rounds(r: random.Random) -> int:
    """How many structured mutations one case stacks: mostly one, sometimes two or three (an emptied
    blob or tensor whose shape is then changed reaches checks no single change does)."""
    return 1 if r.random() < 0.7 else r.randint(2, 3)


def _caffe_mutate(r: random.Random, seed: Path, case: Path) -> None:
    src = r.choice(sorted(seed.glob("*.caffemodel")))
    data = src.read_bytes()
    if r.random() < 0.4:
        rounds = _structured_rounds(r)
        for i in range(rounds):
            data = _caffe_structured(r, data, last=i == rounds - 1)
    else:
        data = mutate_bytes(r, data)
    (case / "m.caffemodel").write_bytes(data)


def _caffe_read(case: Path) -> object:
    from converters.caffe import passes
    from converters.caffe.reader import iter_layers

    path = case / "m.caffemodel"
    named = passes.layer_arrays(passes.drop_msc_copies(iter_layers(path), path), path,
                                scale_to_bn={"scale_conv1": "bn_conv1"})
    return len(named.arrays)


# -- TF checkpoint
def _tf_seed(folder: Path) -> None:
    write_v2_checkpoint(folder / "model.ckpt", seed_tensors())


def _tf_index_structured(r: random.Random, index: bytes) -> bytes:
    from converters.tf.reader import _table_entries

    header_cls, entry_cls = bundle_messages()
    entries = list(_table_entries(index))
    i = r.randrange(len(entries))
    key, value = entries[i]
    if key == b"":
        h = header_cls.FromString(value)
        choice = r.randrange(4)
        if choice == 0:
            h.num_shards = r.choice([0, 2, 2**31 - 1, -(2**31), 100000])
        elif choice == 1:
            h.endianness = r.choice([1, 2, 7])
        elif choice == 2:
            h.version.producer = r.randrange(1 << 20)
        else:
            h.num_shards = -5 if r.random() < 0.5 else 2**20
        value = h.SerializeToString()
    else:
        e = entry_cls.FromString(value)
        choice = r.randrange(9)
        if choice == 0:
            e.dtype = r.choice([0, 2, 3, 5, 7, 9, 10, 14, 19, 20, 21, 23, 100, 2**20])
        elif choice == 1:
            del e.shape.dim[:]
            for _ in range(r.choice([0, 1, 2, 5, 40, 70])):
                e.shape.dim.add(size=r.choice([0, 1, 3, -1, 2**31, 2**40, 2**62]))
        elif choice == 2:
            e.shard_id = r.choice([1, 5, 2**31 - 1, -1])
        elif choice == 3:
            e.offset = r.choice([1, 7, 2**31, 2**62, -8])
        elif choice == 4:
            e.size = r.choice([0, 1, 3, 2**31, 2**62, -1])
        elif choice == 5:
            e.crc32c = r.randrange(1 << 32)
        elif choice == 6:
            s = e.slices.add()
            for _ in range(r.randint(0, 4)):
                ext = s.extent.add()
                ext.start = r.choice([0, 1, -1, 2**40])
                if r.random() < 0.7:
                    ext.length = r.choice([0, 1, 2, -3, 2**40])
        elif choice == 7:
            e.shape.unknown_rank = True
        elif choice == 8 and r.random() < 0.5:  # no bytes: a zero dimension beside huge ones, size 0, its CRC
            del e.shape.dim[:]
            dims = [0] + [r.choice([1, 3, 2**31, 2**40, 2**62]) for _ in range(r.randint(1, 4))]
            r.shuffle(dims)
            for d in dims:
                e.shape.dim.add(size=d)
            e.size, e.crc32c = 0, _mask_crc(0)
            e.dtype = r.choice([e.dtype, e.dtype, 7, 14, 19])
        else:
            key = r.choice([b"\x00" + key, key + b"\xff", b"\xff\xfe", b"\x00\x01\x00\x01", key[:1]])
        value = e.SerializeToString()
    entries[i] = (key, value)
    if r.random() < 0.2:
        r.shuffle(entries)
    return sstable(entries)


def _tf_index_mutate(r: random.Random, seed: Path, case: Path) -> None:
    index = (seed / "model.ckpt.index").read_bytes()
    if r.random() < 0.6:
        for _ in range(_structured_rounds(r)):
            index = _tf_index_structured(r, index)
    else:
        index = mutate_bytes(r, index)
    (case / "model.ckpt.index").write_bytes(index)
    (case / "model.ckpt.data-00000-of-00001").write_bytes((seed / "model.ckpt.data-00000-of-00001").read_bytes())


def _tf_v1_seed(folder: Path) -> None:
    write_v1_checkpoint(folder / "model.ckpt", seed_tensors())


def _tf_v1_structured(r: random.Random, data: bytes) -> bytes:
    from converters.proto import load_messages
    from converters.tf.reader import _table_entries

    cls = load_messages("tensor_bundle")["tensorflow.SavedTensorSlices"]
    entries = list(_table_entries(data))
    i = r.randrange(len(entries))
    key, value = entries[i]
    msg = cls.FromString(value)
    if key == b"":
        meta = r.choice(list(msg.meta.tensor))
        choice = r.randrange(6)
        if choice == 5:  # an empty tensor: a zero dimension beside huge ones, its record without values
            dims = [0] + [r.choice([1, 3, 2**31, 2**40, 2**62]) for _ in range(r.randint(1, 4))]
            r.shuffle(dims)
            return _tf_v1_emptied(entries, meta.name, dims)
        if choice == 0:
            meta.type = r.choice([0, 2, 3, 7, 8, 14, 19, 20, 100])
        elif choice == 1:
            del meta.shape.dim[:]
            for _ in range(r.choice([0, 1, 3, 40])):
                meta.shape.dim.add(size=r.choice([0, 1, 5, -1, 2**40]))
        elif choice == 2:
            ext = meta.slice.add().extent.add()
            ext.start, ext.length = r.choice([(0, 1), (2**40, 2), (-1, 3), (0, 2**40)])
        elif choice == 3:
            meta.name = r.choice(["", "a/weights", "x" * 300, "\x00"])
        else:
            del meta.slice[:]
    else:
        t = msg.data.data
        choice = r.randrange(4)
        if choice == 0:
            t.dtype = r.choice([0, 1, 2, 3, 7, 9, 10, 100])
        elif choice == 1:
            for f in ("float_val", "double_val", "int_val", "int64_val"):
                vals = getattr(t, f)
                if len(vals):
                    del vals[r.randrange(len(vals)) :]
        elif choice == 2:
            t.tensor_content = bytes(r.randrange(256) for _ in range(r.choice([1, 3, 8, 4 * 288])))
        else:
            t.float_val.extend([1.0] * r.randint(1, 50))
    entries[i] = (key, msg.SerializeToString())
    return sstable(entries)


def _tf_v1_emptied(entries: list[tuple[bytes, bytes]], name: str, dims: list[int]) -> bytes:
    """The V1 file of ``entries`` with tensor ``name`` declared of shape ``dims`` (its one full-extent
    slice re-keyed) and its record holding no values."""
    from converters.proto import load_messages
    from converters.tf.reader import _ordered_encode

    cls = load_messages("tensor_bundle")["tensorflow.SavedTensorSlices"]
    full = tuple((0, -1) for _ in dims)
    out = []
    for key, value in entries:
        msg = cls.FromString(value)
        if key == b"":
            meta = next(t for t in msg.meta.tensor if t.name == name)
            del meta.shape.dim[:]
            del meta.slice[:]
            for d in dims:
                meta.shape.dim.add(size=d)
            slice_ = meta.slice.add()
            for _ in dims:
                slice_.extent.add()
        elif msg.data.name == name:
            key = _ordered_encode(name, full)
            dtype = msg.data.data.dtype
            msg = cls()
            msg.data.name = name
            for _ in dims:
                msg.data.slice.extent.add()
            msg.data.data.dtype = dtype
        out.append((key, msg.SerializeToString()))
    return sstable(sorted(out))


def _tf_v1_mutate(r: random.Random, seed: Path, case: Path) -> None:
    data = (seed / "model.ckpt").read_bytes()
    if r.random() < 0.5:
        for _ in range(_structured_rounds(r)):
            data = _tf_v1_structured(r, data)
    else:
        data = mutate_bytes(r, data)
    (case / "model.ckpt").write_bytes(data)


def _tf_data_mutate(r: random.Random, seed: Path, case: Path) -> None:
    (case / "model.ckpt.index").write_bytes((seed / "model.ckpt.index").read_bytes())
    data = (seed / "model.ckpt.data-00000-of-00001").read_bytes()
    (case / "model.ckpt.data-00000-of-00001").write_bytes(mutate_bytes(r, data))


def _tf_read(case: Path) -> object:
    from converters.tf.reader import open_checkpoint

    with open_checkpoint(case / "model.ckpt") as ckpt:
        return sum(ckpt.read(n).size for n in ckpt.names())


# -- palette PNG
def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos + 8 <= len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    return out


def _png_join(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(len(d).to_bytes(4, "big") + t + d + zlib.crc32(t + d).to_bytes(4, "big") for t, d in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def _png_seed(folder: Path) -> None:
    from reproduce import synthetic

    label = np.random.default_rng(0).integers(0, 21, (24, 32)).astype(np.uint8)
    label[:3] = 255
    synthetic.save_palette_png(folder / "seed.png", label)


def _png_mutate(r: random.Random, seed: Path, case: Path) -> None:
    data = (seed / "seed.png").read_bytes()
    if r.random() < 0.5:
        data = mutate_bytes(r, data)
    else:  # chunk surgery with valid CRCs, so the decoder gets past the checksum
        chunks = _png_chunks(data)
        kind = r.randrange(7)
        if kind == 0:
            chunks = [c for c in chunks if c[0] != b"PLTE"]
        elif kind == 1:
            i = r.randrange(len(chunks))
            chunks.insert(r.randrange(len(chunks) + 1), chunks[i])
        elif kind == 2:
            del chunks[r.randrange(len(chunks))]
        elif kind == 3:  # IHDR fields: size, bit depth, colour type, interlace
            t, d = chunks[0]
            d = bytearray(d.ljust(13, b"\x00"))
            field_ = r.randrange(5)
            if field_ == 0:
                d[0:4] = r.choice([0, 1, 2**31 - 1, 100000]).to_bytes(4, "big")
            elif field_ == 1:
                d[4:8] = r.choice([0, 1, 2**31 - 1, 100000]).to_bytes(4, "big")
            elif field_ == 2:
                d[8] = r.choice([1, 2, 4, 8, 16, 3, 0])
            elif field_ == 3:
                d[9] = r.choice([0, 2, 3, 4, 6, 1, 7])
            else:
                d[12] = r.choice([0, 1, 2])
            chunks[0] = (t, bytes(d))
        elif kind == 4:  # IDAT contents: other zlib data
            i = next(i for i, c in enumerate(chunks) if c[0] == b"IDAT")
            raw = zlib.decompress(chunks[i][1])
            raw = mutate_bytes(r, raw) or b"\x00"
            chunks[i] = (b"IDAT", zlib.compress(raw))
        elif kind == 5:  # a PLTE of another length, tRNS, or an unknown critical chunk
            extra = r.choice([(b"PLTE", bytes(r.randrange(256) for _ in range(r.choice([0, 3, 5, 768, 771])))),
                              (b"tRNS", bytes(r.randrange(256) for _ in range(r.randint(0, 300)))),
                              (b"ABCD", b"x"), (b"IHDR", chunks[0][1])])
            chunks.insert(r.randint(1, len(chunks) - 1), extra)
        else:
            i = r.randrange(len(chunks))
            t, d = chunks[i]
            chunks[i] = (t, mutate_bytes(r, d) if d else d)
        data = _png_join(chunks)
    (case / "m.png").write_bytes(data)


def _png_read(case: Path) -> object:
    from reproduce.datasets.base import check_label, read_image, read_index_png

    path = case / "m.png"
    label = check_label(read_index_png(path), path, 21)
    read_image(path)
    return label.shape


# -- .mat
def _mat_seed(folder: Path) -> None:
    import scipy.io

    rng = np.random.default_rng(0)
    seg = rng.integers(0, 21, (30, 40)).astype(np.uint8)
    gt = {"Segmentation": seg, "Boundaries": (seg % 2).astype(np.uint8), "CategoriesPresent": np.unique(seg)}
    scipy.io.savemat(folder / "sbd_compressed.mat", {"GTcls": gt}, do_compression=True)
    scipy.io.savemat(folder / "sbd_plain.mat", {"GTcls": gt}, do_compression=False)
    s = rng.integers(0, 183, (30, 40)).astype(np.uint16)
    scipy.io.savemat(folder / "coco_compressed.mat", {"S": s, "names": np.array(["a", "b"], object)},
                     do_compression=True)


def _mat_mutate(r: random.Random, seed: Path, case: Path) -> None:
    src = r.choice(sorted(seed.glob("*.mat")))
    data = src.read_bytes()
    if r.random() < 0.3:  # mutate inside the zlib stream of a compressed element, and recompress
        pos = 128
        if len(data) > pos + 8 and int.from_bytes(data[pos : pos + 4], "little") == 15:
            n = int.from_bytes(data[pos + 4 : pos + 8], "little")
            try:
                inner = zlib.decompress(data[pos + 8 : pos + 8 + n])
                packed = zlib.compress(mutate_bytes(r, inner))
                data = data[:pos] + struct.pack("<II", 15, len(packed)) + packed + data[pos + 8 + n :]
            except zlib.error:
                pass
        else:
            data = mutate_bytes(r, data)
    else:
        data = mutate_bytes(r, data)
    (case / f"{src.stem.split('_')[0]}.mat").write_bytes(data)


def _mat_read(case: Path) -> object:
    from reproduce.datasets.cocostuff import read_cocostuff10k_mat
    from reproduce.datasets.voc import read_sbd_mat

    path = next(case.glob("*.mat"))
    return (read_sbd_mat(path) if path.stem == "sbd" else read_cocostuff10k_mat(path)).shape


# -- DeepFashion2 JSON
def _json_seed(folder: Path) -> None:
    anno = {
        "source": "shop", "pair_id": 1,
        "item1": {"category_id": 1, "style": 1, "bounding_box": [1, 2, 30, 20],
                  "segmentation": [[2, 2, 30, 2, 30, 20, 2, 20], [5, 5, 9, 5, 9, 9]],
                  "landmarks": [3, 4, 2] * 5},
        "item2": {"category_id": 8, "segmentation": [[10, 10, 40, 12, 25, 30]]},
    }
    (folder / "seed.json").write_text(json.dumps(anno), encoding="utf-8")


_JSON_VALUES = [None, True, 0, -1, 14, 2**70, 1e308, -1e308, float("nan"), float("inf"), "", "x" * 100, [], {},
                [[]], [[1, 2]], [1, 2, 3], [[1e308, 0, 0, 1e308, -1e308, 5]], [[0, 0, 1, 1, 2, 2] * 1000],
                [["1", "2", "3", "4", "5", "6"]], [[True, False, True, 0, 1, 2]], {"category_id": 3}]


def _json_mutate(r: random.Random, seed: Path, case: Path) -> None:
    anno = json.loads((seed / "seed.json").read_text(encoding="utf-8"))
    kind = r.randrange(5)
    if kind == 0:  # deep nesting, somewhere
        depth = r.choice([10, 50, 200, 1000, 5000, 100_000])
        text = json.dumps(anno)
        p = r.choice([m for m in range(len(text)) if text[m] in ":,["]) + 1
        text = text[:p] + "[" * depth + "1" + "]" * depth + text[p:]
    elif kind in (1, 2):  # a value of the wrong type or range
        item = anno[r.choice(["item1", "item2"])]
        key = r.choice(["category_id", "segmentation", "segmentation", "style"])
        if key == "segmentation" and r.random() < 0.5 and item["segmentation"]:
            poly = item["segmentation"][0]
            poly[r.randrange(len(poly))] = r.choice(_JSON_VALUES[:12])
        else:
            item[key] = r.choice(_JSON_VALUES)
        text = json.dumps(anno)
    elif kind == 3:  # items renamed, replaced, multiplied
        choice = r.randrange(4)
        if choice == 0:
            anno[r.choice(["item0", "item99999999999999999999", "item-1", "item"])] = anno.pop("item1")
        elif choice == 1:
            anno["item1"] = r.choice(_JSON_VALUES)
        elif choice == 2:
            for i in range(3, 3 + r.choice([10, 500])):
                anno[f"item{i}"] = anno["item2"]
        else:
            anno = r.choice([[anno], "text", 3, None])
        text = json.dumps(anno)
    else:
        text = mutate_bytes(r, json.dumps(anno).encode()).decode("utf-8", errors="surrogateescape")
        (case / "m.json").write_bytes(text.encode("utf-8", errors="surrogateescape"))
        return
    (case / "m.json").write_text(text, encoding="utf-8")


def _json_read(case: Path) -> object:
    from reproduce.datasets.deepfashion2 import load_annotation, rasterize_annotation

    path = case / "m.json"
    return int(rasterize_annotation(load_annotation(path), 32, 48, path=path).sum())


# ------------------------------------------------------------------------ training config (YAML) [config helper]
# Seeds: the tiny shapes config as written (comments, flow maps) and a full resolved VOC config (every section),
# each beside a base file it may be pointed at. Mutators work on the YAML text: a random key or value is
# replaced by a YAML snippet (aliases, anchors, tags, odd scalars), and some whole-file surgery (duplicate
# keys, bases, bytes). The reader is the config loader with validation, then what a run does with the result.
_CONFIG_SEEDS = ("deeplabv3plus_tiny-shapes-64.yaml", "deeplabv3_resnet101-os16-vocaug-513-30k.yaml")


def _laughs(levels: int, width: int = 10) -> str:
    """A flow-style "billion laughs": ``width ** levels`` strings from a few hundred bytes."""
    parts = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    parts += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "{" + ", ".join(parts) + "}"


_CONFIG_SNIPPETS: list[Callable[[random.Random], str]] = [
    lambda r: _laughs(r.randint(4, 12), r.choice([2, 10, 16])),                   # alias bomb
    lambda r: "[" * (n := r.choice([30, 70, 500, 5000])) + "1" + "]" * n,          # deep nesting
    lambda r: "{a: " * (n := r.choice([30, 70, 500])) + "1" + "}" * n,
    lambda r: "&x [1, 2]",                                                         # a lone anchor
    lambda r: "[*x]",                                                              # an undefined alias
    lambda r: r.choice(["four", "'4'", "[]", "{}", "null", "true", "no", "~", "''", "[1, two]", "{a: 1}"]),
    lambda r: r.choice([".nan", ".NaN", ".inf", "-.inf", "1e999", "-1e999", "1.0e+400", "0x7fffffffffffffffff"]),
    lambda r: r.choice(["0", "-1", "-2147483648", "0.0", "-0.0", "-1e-300", "[0, 0]", "[-1]", "[64, 64, 64]"]),
    lambda r: r.choice(["2147483648", "9223372036854775808", str(2**200), "1" * r.choice([100, 4300, 5000]),
                        "1e308", "123456789012345678901234567890.5"]),
    lambda r: r.choice(["!!python/object/apply:os.system ['echo pwned']", "!!python/name:os.system",
                        "!!python/object:argparse.Namespace {}", "!!binary aGVsbG8=", "!!binary '%%%'",
                        "!!timestamp 2001-12-14", "!!timestamp 2001-99-99", "!!set {a, b}", "!!omap [a: 1]",
                        "!!int abc", "!!float abc", "!!bool maybe", "!!str [1]", "!!map [1]", "!!null x",
                        "!custom 1", "!!merge x"]),
    lambda r: "'" + r.choice(["x", "\u00e9", "\u202e", "(", "[a-", ".*" * 50, "\\x00"]) * r.choice([1, 10, 10_000]) + "'",
    lambda r: "{<<: {a: 1}, b: 2}" if r.random() < 0.5 else "{<<: [1, 2]}",
    lambda r: "[" + ", ".join(str(r.choice([0, 1, -1, 0.5, 1e9])) for _ in range(r.randint(0, 8))) + "]",
]


def _config_seed(folder: Path) -> None:
    import yaml

    from reproduce.training.config import CONFIGS_DIR, load_config, to_dict

    (folder / "tiny.yaml").write_text((CONFIGS_DIR / _CONFIG_SEEDS[0]).read_text(encoding="utf-8"), encoding="utf-8")
    full = to_dict(load_config(CONFIGS_DIR / _CONFIG_SEEDS[1]))
    (folder / "full.yaml").write_text(yaml.safe_dump(full, sort_keys=False), encoding="utf-8")


def _config_lines(text: str) -> list[int]:
    """Indices of the lines holding a ``key: value`` or a ``- item`` (what a mutation may replace)."""
    return [i for i, line in enumerate(text.splitlines()) if ":" in line.split("#")[0] or line.lstrip().startswith("- ")]


def _config_structured(r: random.Random, text: str) -> str:
    if not _config_lines(text):  # emptied or cut by an earlier round
        text += "\nname: x\n"
    lines = text.splitlines()
    kind = r.randrange(8)
    if kind <= 3:  # a value replaced by a snippet (most mutations)
        i = r.choice(_config_lines(text))
        line = lines[i].split(" #")[0]
        head = line[: line.index(":") + 1] if ":" in line else line[: len(line) - len(line.lstrip()) + 2]
        lines[i] = f"{head} {r.choice(_CONFIG_SNIPPETS)(r)}"
    elif kind == 4:  # an unknown or repeated key at some level
        i = r.choice(_config_lines(text))
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        key = r.choice(["flipp", "base_lrr", "name", "model", "solver", "seed", "1", "null", "'a b'", "_delete_",
                        lines[i].strip().split(":")[0]])
        lines.insert(i + r.randint(0, 1), f"{indent}{key}: {r.choice(_CONFIG_SNIPPETS)(r)}")
    elif kind == 5:  # a base: itself, the other seed, missing, a bomb, a folder, a non-string
        target = r.choice(["config.yaml", "other.yaml", "missing.yaml", "bomb.yaml", ".", "[a]", "1", "''",
                           "../config.yaml", '"other.yaml\\0"', "other.yaml/x", "'" + "a/" * 3000 + "'"])
        lines.insert(0, f"base: {target}")
    elif kind == 6:  # the file cut, doubled or emptied
        cut = r.randrange(len(lines) + 1)
        lines = r.choice([lines[:cut], lines + lines, [], ["---", *lines, "---", *lines], [lines[0]] * 5000])
    else:  # a whole section replaced
        section = r.choice(["model", "solver", "augment", "preprocessing", "data", "init", "eval", "loss"])
        lines = [ln for ln in lines if not ln.startswith(section + ":")] + [f"{section}: {r.choice(_CONFIG_SNIPPETS)(r)}"]
    return "\n".join(lines) + "\n"


def _config_mutate(r: random.Random, seed: Path, case: Path) -> None:
    seeds = sorted(seed.glob("*.yaml"))
    text = r.choice(seeds).read_text(encoding="utf-8")
    if r.random() < 0.75:
        for _ in range(_structured_rounds(r)):
            text = _config_structured(r, text)
        data = text.encode("utf-8", errors="surrogatepass")
    else:
        data = mutate_bytes(r, text.encode("utf-8"))
    (case / "config.yaml").write_bytes(data)
    (case / "other.yaml").write_text(r.choice(seeds).read_text(encoding="utf-8"), encoding="utf-8")
    (case / "bomb.yaml").write_text(f"model: {{kwargs: {_laughs(9)}}}\n", encoding="utf-8")


def _config_read(case: Path) -> object:
    import json

    import yaml

    from reproduce.training.config import fingerprint, load_config, to_dict

    cfg = load_config(case / "config.yaml")
    # what a run does next with an accepted config: dump it beside the run, compare fingerprints
    yaml.safe_dump(to_dict(cfg), sort_keys=False)
    return len(json.dumps(fingerprint(cfg), default=str))


def _config_error():
    from reproduce.training.config import ConfigError

    return ConfigError


CONFIG_FORMATS: dict[str, Format] = {"config": Format("config", _config_seed, _config_mutate, _config_read)}
CONFIG_ERRORS = {"config": _config_error}
# ------------------------------------------------------------------------ end of the config block


FORMATS: dict[str, Format] = {
    "caffemodel": Format("caffemodel", _caffe_seed, _caffe_mutate, _caffe_read),
    "tf_index": Format("tf_index", _tf_seed, _tf_index_mutate, _tf_read),
    "tf_data": Format("tf_data", _tf_seed, _tf_data_mutate, _tf_read),
    "tf_v1": Format("tf_v1", _tf_v1_seed, _tf_v1_mutate, _tf_read),
    "palette_png": Format("palette_png", _png_seed, _png_mutate, _png_read),
    "mat": Format("mat", _mat_seed, _mat_mutate, _mat_read),
    "deepfashion2_json": Format("deepfashion2_json", _json_seed, _json_mutate, _json_read),
}
OUR_ERRORS = {"caffemodel": _conversion_error, "tf_index": _conversion_error, "tf_data": _conversion_error,
              "tf_v1": _conversion_error,
              "palette_png": _dataset_error, "mat": _dataset_error, "deepfashion2_json": _dataset_error}
FORMATS.update(CONFIG_FORMATS)
OUR_ERRORS.update(CONFIG_ERRORS)


# --------------------------------------------------------------------------- run checkpoints and latest.json (resume)
# Both formats are a run folder (the case folder itself) read by the resume entry point of the training loop
# (``loop._find_resume`` then ``loop._restore``, as ``reproduce.train`` does): it must resume from a checkpoint
# that loads or raise ``CheckpointError``, and never run code (a planted pickle writes ``marker`` if unpickled).
_RESUME: dict[str, object] = {}


def _resume_run() -> tuple:
    """The config and model every resume case checks against (built once per worker)."""
    if not _RESUME:
        from reproduce.training import loop
        from tests.test_train import tiny_config

        cfg = loop.parse_config(tiny_config("v3"))
        _RESUME.update(cfg=cfg, model=loop.build_model(cfg))
    return _RESUME["cfg"], _RESUME["model"]


def _checkpoint_error():
    from reproduce.checkpoint import CheckpointError

    return CheckpointError


def _resume_seed(folder: Path) -> None:
    """ckpt_0000001.pt and ckpt_0000002.pt (written by save_checkpoint, momentum buffers filled) + latest.json."""
    import torch

    from reproduce.checkpoint import rng_state, save_checkpoint
    from reproduce.training import loop

    cfg, model = _resume_run()
    optimizer = loop.build_solver(cfg, model)
    for it in (1, 2):
        for param in model.parameters():
            param.grad = torch.full_like(param, 0.01)
        optimizer.step()
        save_checkpoint(folder, it, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "scaler": {}, "rng": [rng_state()], "config": loop.to_dict(cfg), "init": {},
                                     "skipped_per_rank": [[]], "best": None}, keep=0)


class _Planted:
    """Unpickling it writes ``marker``: the reader must never get that far."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _planted_pickle(r: random.Random, data: bytes, marker: Path) -> bytes:
    """The checkpoint with its ``data.pkl`` replaced by (or prefixed with) opcodes that call a global."""
    import io
    import pickle
    import zipfile

    calls = [pickle.dumps(_Planted(str(marker)), protocol=r.choice([0, 2, 4])),
             b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.",
             b"cbuiltins\neval\n(S'open(\"" + str(marker).encode() + b"\", \"w\")'\ntR.",
             b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00."]
    evil = r.choice(calls)
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename.endswith("data.pkl"):
                body = evil if r.random() < 0.7 else body[: r.randrange(len(body))] + evil
            dst.writestr(info, body)
    return out.getvalue()


def _swap_value(r: random.Random, value: object) -> object:
    """A value of another type or shape in place of ``value``."""
    import torch

    if isinstance(value, torch.Tensor) and value.dim() > 0 and r.random() < 0.6:
        shape = list(value.shape)
        shape[r.randrange(len(shape))] += r.choice([-1, 1, 7])
        return r.choice([torch.zeros([max(n, 0) for n in shape], dtype=value.dtype), value.to(torch.float64),
                         value.to(torch.uint8), value.reshape(-1), value[:0], torch.tensor(float("nan"))])
    return r.choice([None, True, -1, 0, 2**63 - 1, 1.5, float("nan"), "x", "", [], {}, [[]], {"a": 1},
                     torch.zeros(3), torch.zeros(0), torch.zeros(2, 2, dtype=torch.int64), [torch.zeros(1)]])


def _mutate_structure(r: random.Random, ckpt: dict) -> dict:
    """Remove, mistype or reshape one entry somewhere in the checkpoint's nested state."""
    path: list = []
    node: object = ckpt
    while isinstance(node, (dict, list)) and node and r.random() < 0.75:
        key = r.choice(list(node)) if isinstance(node, dict) else r.randrange(len(node))
        path.append(key)
        node = node[key]
    if not path:
        key = r.choice(list(ckpt))
        path, node = [key], ckpt[key]
    parent: object = ckpt
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if r.random() < 0.25 and isinstance(parent, dict):
        del parent[last]
    elif r.random() < 0.15 and isinstance(parent, dict):
        parent[r.choice(["extra", 7, "model", "rng"])] = parent.pop(last)  # renamed
    else:
        parent[last] = _swap_value(r, node)
    return ckpt


def _run_checkpoint_mutate(r: random.Random, seed: Path, case: Path) -> None:
    import shutil

    import torch

    shutil.copyfile(seed / "latest.json", case / "latest.json")
    if r.random() < 0.4:  # an older good checkpoint to fall back to
        shutil.copyfile(seed / "ckpt_0000001.pt", case / "ckpt_0000001.pt")
    data = (seed / "ckpt_0000002.pt").read_bytes()
    target = case / "ckpt_0000002.pt"
    kind = r.randrange(6)
    if kind == 0:
        target.write_bytes(mutate_bytes(r, data))
    elif kind == 1:
        target.write_bytes(data[: r.randrange(len(data))])
    elif kind == 2:
        target.write_bytes(_planted_pickle(r, data, case / "marker"))
    elif kind == 3:  # a whole pickled object, as a planted file would be
        torch.save(r.choice([_Planted(str(case / "marker")), {"iteration": 2, "rng": [np.random.get_state()]}]),
                   target)
    else:  # a loadable file whose contents are wrong
        ckpt = torch.load(seed / "ckpt_0000002.pt", weights_only=True)
        if r.random() < 0.1:
            ckpt["config"]["model"]["num_classes"] = r.choice([5, 21, 0, -1])  # another run's checkpoint
        for _ in range(r.randint(1, 3)):
            ckpt = _mutate_structure(r, ckpt)
        torch.save(ckpt, target)


def _resume_read(case: Path) -> object:
    import torch

    from reproduce.training import loop
    from reproduce.training.distributed import Dist

    cfg, model = _resume_run()
    try:
        found = loop._find_resume(case, cfg, model, lambda text: None)
        if found is None:
            return None
        optimizer = loop.build_solver(cfg, model)
        state = {"skipped": [], "best": None}
        return loop._restore(*found, model, optimizer, torch.amp.GradScaler("cpu"), Dist(), state, None)[0]
    finally:
        if (case / "marker").exists():
            raise AssertionError("a planted pickle ran code")


_POINTER_NAMES = ["ckpt_0000002.pt", "ckpt_0000001.pt", "ckpt_0000003.pt", "", ".", "..", "/", "latest.json",
                  "ckpt_0000002.pt/..", "./ckpt_0000002.pt", "../seeds/latest_json/ckpt_0000002.pt", "/etc/passwd",
                  "ckpt_0000002.pt\x00x", "x" * 300, "ckpt_" + "9" * 400 + ".pt", "link.pt", "ckpt_0000009.pt",
                  "\u00e9.pt", "ckpt_-1.pt", "ckpt_1e3.pt", "ckpt_0000002.pth"]


def _latest_json_mutate(r: random.Random, seed: Path, case: Path) -> None:
    import shutil

    for name in ("ckpt_0000001.pt", "ckpt_0000002.pt"):
        if r.random() < 0.6:  # else missing: the pointer names a deleted file, or nothing is left to fall back to
            shutil.copyfile(seed / name, case / name)
    record: object = {"iteration": 2, "file": "ckpt_0000002.pt"}
    kind = r.randrange(6)
    if kind in (0, 1):  # the file names something else
        name = r.choice(_POINTER_NAMES)
        if name == "../seeds/latest_json/ckpt_0000002.pt" and r.random() < 0.5:
            name = str((seed / "ckpt_0000002.pt").resolve())  # an absolute path outside the run folder
        record = {"iteration": r.choice([2, -1, None, "2", 2**70]), "file": name}
    elif kind == 2:  # mistyped or missing keys, other shapes
        record = r.choice([[], "ckpt_0000002.pt", 2, None, {"file": r.choice(_JSON_VALUES)}, {"iteration": 2},
                           {"file": ["ckpt_0000002.pt"]}, {"file": {"x": 1}}, [record]])
    elif kind == 3:  # links: out of the folder, dangling, looping, to a folder
        which = r.randrange(5)
        target = {0: seed / "ckpt_0000002.pt", 1: case / "nowhere.pt", 2: case / "link.pt", 3: seed,
                  4: seed / "latest.json"}[which]
        name = "latest.json" if which == 4 else r.choice(["link.pt", "ckpt_0000003.pt", "ckpt_0000002.pt"])
        (case / name).unlink(missing_ok=True)
        (case / name).symlink_to(target)
        if which == 4:
            return
        record = {"iteration": 2, "file": name}
    text = json.dumps(record)
    if kind == 4:
        text = mutate_bytes(r, text.encode()).decode("utf-8", errors="surrogateescape")
    elif kind == 5:
        depth = r.choice([10, 1000, 100_000])
        text = r.choice(["[" * depth + "]" * depth, '{"file": ' + "[" * depth + "]" * depth + "}",
                         json.dumps({"file": "ckpt_0000002.pt", "pad": "x" * r.choice([10, 1 << 17])})])
    (case / "latest.json").write_bytes(text.encode("utf-8", errors="surrogateescape"))


FORMATS.update({
    "run_checkpoint": Format("run_checkpoint", _resume_seed, _run_checkpoint_mutate, _resume_read),
    "latest_json": Format("latest_json", _resume_seed, _latest_json_mutate, _resume_read),
})
OUR_ERRORS.update({"run_checkpoint": _checkpoint_error, "latest_json": _checkpoint_error})


# --------------------------------------------------------------------------- archives: tar and zip (staged unpacking)
# The reader is reproduce.unpack.unpack_archive into a fresh destination: it must either unpack or raise
# UnpackError, and after an error nothing may be left where the destination would be (checked in the case).
# Mutations are archive-aware (a member list is changed, then written by tarfile / zipfile or by hand): links in
# and out, link chains and loops, members through links, hard links, devices and fifos, file/folder collisions,
# duplicates and case-only duplicates, absolute and '..' names, declared sizes huge or lying, decompression
# bombs; then, for some cases, the generic byte mutators (bit flips, truncation, ...) on the written archive.
_ARCHIVE_SEED: list[tuple[str, str, bytes | str]] = [
    ("release/", "dir", b""),
    ("release/model.ckpt.index", "file", b"index" * 40),
    ("release/model.ckpt.data-00000-of-00001", "file", bytes(range(256)) * 8),
    ("release/sub/", "dir", b""),
    ("release/sub/notes.txt", "file", b"hello\n"),
    ("release/latest", "symlink", "model.ckpt.index"),
    ("release/same", "hardlink", "release/sub/notes.txt"),
    ("top.txt", "file", b"x"),
]
_LINKS_OUT = ["..", "../x", "/etc/passwd", "../../..", "sub/../..", "./../.", "a/../../b", "//x", "..\\..\\x"]
_BAD_NAMES = ["/abs", "../up", "a/../../up", "./dot", "x//y", "", ".", "./", "C:drive", "..\\win", "a\nb",
              "n" * 300, "/".join(["d"] * 2000), "\udcff\udcfe"]
BOMB_MIB = 80  # more than unpack.MIN_LIMIT: a small archive that inflates past the bound


def raw_zip(entries: list[tuple[str, int, int, bytes, int]]) -> bytes:
    """A zip of ``(name, method, crc32, stored bytes, declared size)`` entries, written by hand (zipfile cannot
    store data compressed elsewhere, nor declare sizes it did not write)."""
    out, central = bytearray(), bytearray()
    for name, method, crc, data, size in entries:
        n = name.encode("utf-8", "surrogateescape")
        offset = len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size, len(n), 0)
        out += n + data
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data), size,
                               len(n), 0, 0, 0, 0, 0, offset) + n
    out += central + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central),
                                 len(out), 0)
    return bytes(out)


def deflate_zeros(mib: int) -> tuple[bytes, int]:
    """(raw deflate stream, crc32) of ``mib`` MiB of zeros: one compressed MiB, flushed to a byte boundary with an
    empty history, repeated (about 1 KB per MiB), then an empty final block."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    zero, crc = bytes(1 << 20), 0
    for _ in range(mib):
        crc = zlib.crc32(zero, crc)
    return block * mib + zlib.compressobj(9, zlib.DEFLATED, -15).flush(), crc


def _archive_seed(folder: Path) -> None:
    import io
    import tarfile

    data, crc = deflate_zeros(BOMB_MIB)
    (folder / "bomb.deflate").write_bytes(data)
    (folder / "bomb.crc").write_text(str(crc))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("release/zeros.bin")
        info.size = BOMB_MIB << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    (folder / "bomb.tar.gz").write_bytes(zlib.compress(buf.getvalue(), 9, wbits=31))
    (folder / "seed.tar").write_bytes(_write_tar(_ARCHIVE_SEED, "w"))
    (folder / "seed.zip").write_bytes(_write_zip(_ARCHIVE_SEED))


def _write_tar(entries: list[tuple[str, str, bytes | str]], mode: str) -> bytes:
    import io
    import tarfile

    types = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
             "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "file": tarfile.REGTYPE}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as tf:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.type = types[kind]
            if kind == "file":
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            else:
                info.linkname = payload if isinstance(payload, str) else ""
                tf.addfile(info)
    return buf.getvalue()


def _write_zip(entries: list[tuple[str, str, bytes | str]]) -> bytes:
    import io
    import stat
    import warnings
    import zipfile

    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore")  # "Duplicate name": duplicates are what some cases test
        for name, kind, payload in entries:
            info = zipfile.ZipInfo(name.rstrip("/") + "/" if kind == "dir" else name)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = {"dir": stat.S_IFDIR | 0o755, "symlink": stat.S_IFLNK | 0o777, "fifo": stat.S_IFIFO | 0o644,
                    "chr": stat.S_IFCHR | 0o644, "blk": stat.S_IFBLK | 0o644}.get(kind, stat.S_IFREG | 0o644)
            info.external_attr = mode << 16
            data = payload if isinstance(payload, bytes) else payload.encode("utf-8", "surrogateescape")
            zf.writestr(info, b"" if kind in ("dir", "hardlink") else data)
    return buf.getvalue()


def _mutate_members(r: random.Random, entries: list, links: bool = True) -> list:
    """One structured change of the member list (``links``: as often links as anything else; a zip refuses
    every link, so there they are rare)."""
    files = [e for e in entries if e[1] == "file"] or [("top.txt", "file", b"x")]
    dirs = sorted({e[0].rstrip("/") for e in entries if e[1] == "dir"} | {""})
    where = r.choice(dirs)
    at = (where + "/") if where else ""
    pos = r.randrange(len(entries) + 1)
    kind = r.randrange(13) if links or r.random() < 0.1 else r.randrange(6, 13)
    if kind == 0:  # a link in: to a member of the archive
        target = r.choice(files)[0]
        entries.insert(pos, (at + f"in{r.randrange(99)}", "symlink", "../" * at.count("/") + target))
    elif kind == 1:  # a link out
        entries.insert(pos, (at + "out", "symlink", r.choice(_LINKS_OUT)))
    elif kind == 2:  # a chain of links, each harmless alone
        chain = [("a", "."), ("b", "a/.."), ("c", "b/../.."), ("d", "c/x")][: r.randint(2, 4)]
        for i, (name, target) in enumerate(chain):
            entries.insert(min(pos + i, len(entries)), (at + name, "symlink", target))
    elif kind == 3:  # a loop
        entries[pos:pos] = [(at + "x", "symlink", "y"), (at + "y", "symlink", r.choice(["x", "./x", "../" + at + "x"]))]
    elif kind == 4:  # a member through a link (the link before or after it)
        link = (at + "via", "symlink", r.choice([".", "sub", "release", "../release"]))
        member = (at + "via/f", "file", b"through")
        entries[pos:pos] = [link, member] if r.random() < 0.5 else [member, link]
    elif kind == 5:  # hard links
        target = r.choice([r.choice(files)[0], "missing", "../x", "/etc/passwd", "release/latest", "release",
                           entries[-1][0]])
        entries.insert(pos if r.random() < 0.5 else len(entries), (at + "hard", "hardlink", target))
    elif kind == 6:  # devices and fifos
        entries.insert(pos, (at + "dev", r.choice(["fifo", "chr", "blk"]), ""))
    elif kind == 7:  # a file and a folder of the same name
        name = r.choice(files)[0] if r.random() < 0.5 else at + "both"
        pair = [(name, "file", b"file"), (name + "/inner", "file", b"inner")]
        entries[pos:pos] = pair if r.random() < 0.5 else pair[::-1]
    elif kind == 8:  # a duplicate
        entries.insert(pos, r.choice(entries))
    elif kind == 9:  # a case-only duplicate
        name, k, payload = r.choice(entries)
        entries.insert(pos, (name.upper() if name != name.upper() else name.lower(), k, payload))
    elif kind == 10:  # a bad name
        entries.insert(pos, (r.choice(_BAD_NAMES), r.choice(["file", "dir", "symlink"]), b"bad"))
    elif kind == 11:  # members removed
        for _ in range(r.randint(1, 3)):
            if len(entries) > 1:
                entries.pop(r.randrange(len(entries)))
    else:  # many members
        entries.extend((f"many/{i}", "file", b"") for i in range(r.choice([100, 400])))
    return entries


def _set_tar_size(r: random.Random, data: bytes) -> bytes:
    """Declare a huge or wrong size in one header of a plain tar (with a valid header checksum)."""
    b = bytearray(data)
    headers = [o for o in range(0, len(b) - 511, 512) if b[o + 257 : o + 262] == b"ustar"]
    if not headers:
        return data
    o = r.choice(headers)
    value = r.choice([2**33 - 1, 2**40, 2**62, 1, 0, len(data), 10**9])
    field_ = (b"%011o\0" % value) if value < 8**11 else b"\x80" + value.to_bytes(11, "big")
    b[o + 124 : o + 136] = field_
    b[o + 148 : o + 156] = b" " * 8
    b[o + 148 : o + 156] = b"%06o\0 " % sum(b[o : o + 512])
    return bytes(b)


def _tar_mutate(r: random.Random, seed: Path, case: Path) -> None:
    import bz2
    import lzma

    entries = list(_ARCHIVE_SEED)
    choice = r.random()
    if choice < 0.06:  # a gzip bomb: 80 MiB of zeros in a few hundred KB
        data = (seed / "bomb.tar.gz").read_bytes()
    else:
        if choice < 0.85:
            for _ in range(r.randint(1, 3)):
                entries = _mutate_members(r, entries)
        try:
            data = _write_tar(entries, "w")
        except (ValueError, UnicodeError):  # a name tarfile cannot write (e.g. surrogates): the seed instead
            data = _write_tar(_ARCHIVE_SEED, "w")
        if r.random() < 0.15:
            data = _set_tar_size(r, data)
        if r.random() < 0.3:
            data = mutate_bytes(r, data)
        data = r.choice([lambda d: d, lambda d: zlib.compress(d, 6, wbits=31), bz2.compress,
                         lzma.compress])(data)
        if r.random() < 0.1:
            data = mutate_bytes(r, data)  # after compression: damaged streams
    (case / "m.tar").write_bytes(data)


def _zip_sizes(r: random.Random, data: bytes) -> bytes:
    """Rewrite the declared sizes, flags or method of one central-directory entry (and its local header)."""
    b = bytearray(data)
    cds = [o for o in range(len(b) - 46) if b[o : o + 4] == b"PK\x01\x02"]
    if not cds:
        return data
    o = r.choice(cds)
    local = struct.unpack_from("<I", b, o + 42)[0]
    what = r.randrange(4)
    if what == 0:  # uncompressed size: huge, zero, off by one
        value = r.choice([0xFFFFFFFF, 2**31, 0, 1, struct.unpack_from("<I", b, o + 24)[0] + 1])
        struct.pack_into("<I", b, o + 24, value)
        if local + 26 <= len(b):
            struct.pack_into("<I", b, local + 22, value)
    elif what == 1:  # compressed size
        struct.pack_into("<I", b, o + 20, r.choice([0xFFFFFFFF, 0, 1, 10**6]))
    elif what == 2:  # encrypted flag
        struct.pack_into("<H", b, o + 8, struct.unpack_from("<H", b, o + 8)[0] | 1)
    else:  # compression method: unknown or another known one
        struct.pack_into("<H", b, o + 10, r.choice([1, 6, 9, 12, 14, 98, 99, 0]))
    return bytes(b)


def _zip_mutate(r: random.Random, seed: Path, case: Path) -> None:
    choice = r.random()
    if choice < 0.08:  # a deflate bomb: 80 MiB declared (honestly, or lying small) in about 80 KB
        bomb = (seed / "bomb.deflate").read_bytes()
        size = BOMB_MIB << 20 if r.random() < 0.6 else r.choice([100, 1 << 20])
        entries = [("release/zeros.bin", 8, int((seed / "bomb.crc").read_text()), bomb, size)]
        if r.random() < 0.5:  # the same data under many names (the entries overlap nothing here, but add up)
            entries = [(f"z{i}", 8, entries[0][2], bomb, size) for i in range(r.randint(2, 5))]
        data = raw_zip(entries)
    else:
        entries = [e for e in _ARCHIVE_SEED if e[1] in ("file", "dir")]  # zip: no links
        if choice < 0.85:
            for _ in range(r.randint(1, 3)):
                entries = _mutate_members(r, entries, links=False)
        try:
            data = _write_zip(entries)
        except (ValueError, UnicodeError):  # a name zipfile cannot write (e.g. surrogates): the seed instead
            data = _write_zip([e for e in _ARCHIVE_SEED if e[1] in ("file", "dir")])
        if r.random() < 0.2:
            data = _zip_sizes(r, data)
    if r.random() < 0.3:
        data = mutate_bytes(r, data)
    (case / "m.zip").write_bytes(data)


def _unpack_error():
    from reproduce.unpack import UnpackError

    return UnpackError


def _archive_read(case: Path) -> object:
    import shutil

    from reproduce.unpack import STAGING_PREFIX, UnpackError, size_limit, unpack_archive

    archive = next(case.glob("m.*"))
    out = case / "out"
    out.mkdir()
    try:
        result = unpack_archive(archive, out / "dest", kind=archive.suffix[1:],
                                limit=size_limit(archive.stat().st_size))
        left = [p.name for p in (out / "dest").iterdir() if p.name.startswith(STAGING_PREFIX)]
        if left:
            raise AssertionError(f"a staging folder is left after unpacking: {left}")
        outside = sorted({p.name for p in case.iterdir()} - {archive.name, "out"}) + [p.name for p in out.iterdir()
                                                                                      if p.name != "dest"]
        root = (out / "dest").resolve()
        for folder, dirs, files in os.walk(out / "dest"):  # links are not followed
            for name in dirs + files:
                path = Path(folder) / name
                if path.is_symlink() and root not in path.resolve().parents and path.resolve() != root:
                    outside.append(f"{path} -> {os.readlink(path)}")
        if outside:
            raise AssertionError(f"an accepted archive wrote or links outside its destination: {outside[:5]}")
        return result
    except UnpackError:
        left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
        if left:
            raise AssertionError(f"partial output after an error: {left[:5]}") from None
        raise
    finally:
        shutil.rmtree(out, ignore_errors=True)


FORMATS["tar"] = Format("tar", _archive_seed, _tar_mutate, _archive_read)
FORMATS["zip"] = Format("zip", _archive_seed, _zip_mutate, _archive_read)
OUR_ERRORS["tar"] = OUR_ERRORS["zip"] = _unpack_error


# --------------------------------------------------------------------------- images (issue 26: EXIF, depths, modes)
# The shared image decoder (reproduce.datasets.read_image: predict, evaluation, training) on JPEGs with EXIF
# orientations, 8/16-bit PNGs, float TIFFs, palette, LA and CMYK files; mutators for the EXIF block (orientation
# values out of range, broken IFD counts, offsets, types, loops), bit depths and modes (values out of range
# included), declared sizes, truncation and bytes.
_IMAGE_SEEDS = ("exif.jpg", "rgb8.png", "gray16.png", "float.tif", "palette.png", "la.png", "cmyk.jpg")


def _image_exif(orientation: int) -> object:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "fuzz camera"  # Make
    exif[0x0132] = "2026:12:07 12:00:00"  # DateTime
    exif[0x8769] = {0x9003: "2026:12:07 12:00:00", 0xA002: 32, 0xA003: 24}  # an Exif sub-IFD
    return exif


def _image_seed(folder: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "exif.jpg", quality=90, exif=_image_exif(6))
    Image.fromarray(rgb).save(folder / "rgb8.png", exif=_image_exif(3))
    Image.fromarray(rng.integers(0, 65536, (24, 32), dtype=np.uint16)).save(folder / "gray16.png")
    Image.fromarray(rng.random((24, 32), dtype=np.float32)).save(folder / "float.tif")
    pal = Image.fromarray(rng.integers(0, 16, (24, 32), dtype=np.uint8), mode="P")
    pal.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tolist())
    pal.save(folder / "palette.png", transparency=3)
    Image.fromarray(rng.integers(0, 256, (24, 32, 2), dtype=np.uint8), mode="LA").save(folder / "la.png")
    Image.fromarray(rng.integers(0, 256, (24, 32, 4), dtype=np.uint8), mode="CMYK").save(folder / "cmyk.jpg")


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start of payload, payload length) of a JPEG's segments up to the scan."""
    out, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker, n = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        out.append((marker, pos + 4, n - 2))
        if marker == 0xDA:
            break
        pos += 2 + n
    return out


def _image_broken_exif(r: random.Random, data: bytearray) -> bytearray:
    """Surgery inside the JPEG's APP1 Exif block, its length kept: IFD counts, entry types, offsets, loops."""
    app1 = next(((s, n) for m, s, n in _jpeg_segments(bytes(data)) if m == 0xE1 and data[s : s + 6] == b"Exif\0\0"),
                None)
    if app1 is None:
        return _bitflips(r, data)
    start, n = app1[0] + 6, app1[1] - 6  # the TIFF header: byte order, 42, first IFD offset
    tiff = data[start : start + n]
    little = tiff[:2] == b"II"
    order = "little" if little else "big"
    ifd = int.from_bytes(tiff[4:8], order)
    kind = r.randrange(6)
    if kind == 0 and ifd + 2 <= len(tiff):  # entry count: none, many, all
        tiff[ifd : ifd + 2] = r.choice([0, 1, 0x7FFF, 0xFFFF]).to_bytes(2, order)
    elif kind == 1 and ifd + 14 <= len(tiff):  # one entry's type, count or value/offset
        e = ifd + 2 + 12 * r.randrange(max(1, int.from_bytes(tiff[ifd : ifd + 2], order)))
        if e + 12 <= len(tiff):
            part = r.choice([(2, 4, [0, 13, 14, 0xFFFF, 7]), (4, 8, [0, 1, 2**31 - 1, 2**32 - 1]),
                             (8, 12, [0, 8, len(tiff), 2**31, 2**32 - 1])])
            tiff[e + part[0] : e + part[1]] = r.choice(part[2]).to_bytes(part[1] - part[0], order)
    elif kind == 2:  # the first IFD (or the next-IFD link) points at itself, past the end, or at the header
        tiff[4:8] = r.choice([0, 2, 8, len(tiff) + 100, 2**32 - 1]).to_bytes(4, order)
    elif kind == 3:  # byte order or magic broken
        tiff[0:4] = r.choice([b"MM\x00\x2a", b"II\x2a\x00", b"IM\x2a\x00", b"II\x2b\x00", b"\x00" * 4])
    elif kind == 4:  # the orientation entry's value: every 16-bit value can appear
        tag = (0x0112).to_bytes(2, order)
        at = tiff.find(tag)
        if at >= 0 and at + 12 <= len(tiff):
            tiff[at + 8 : at + 10] = r.choice([0, 1, 5, 8, 9, 255, 0x8000, 0xFFFF]).to_bytes(2, order)
    else:
        tiff = bytearray(mutate_bytes(r, bytes(tiff)).ljust(n, b"\x00")[:n])
    data[start : start + n] = tiff
    return data


def _image_sized(r: random.Random, data: bytearray, name: str) -> bytearray:
    """Declared width/height changed: PNG IHDR (valid CRC) or the JPEG frame header."""
    size = r.choice([0, 1, 7, 65535, 100000, 2**31 - 1, 2**32 - 1])
    if name.endswith(".png"):
        chunks = _png_chunks(bytes(data))
        t, d = chunks[0]
        d = bytearray(d)
        at = r.choice([0, 4])
        d[at : at + 4] = min(size, 2**32 - 1).to_bytes(4, "big")
        chunks[0] = (t, bytes(d))
        return bytearray(_png_join(chunks))
    sof = next(((s, n) for m, s, n in _jpeg_segments(bytes(data)) if m in (0xC0, 0xC1, 0xC2)), None)
    if sof is not None:
        at = sof[0] + r.choice([1, 3])  # height, width (16-bit each)
        data[at : at + 2] = min(size, 65535).to_bytes(2, "big")
    return data


_IMAGE_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "I;16B", "F", "LAB", "HSV")


def _image_mode_file(r: random.Random, case: Path) -> None:
    """A fresh image of a random mode and size, values in and out of the sensible range, in a format that takes it."""
    from PIL import Image

    mode = r.choice(_IMAGE_MODES)
    h, w = r.choice([1, 2, 17]), r.choice([1, 3, 31])
    rng = np.random.default_rng(r.randrange(2**32))
    if mode == "F":
        values = r.choice([rng.random((h, w)), rng.normal(0, 100, (h, w)), np.full((h, w), np.nan),
                           np.full((h, w), np.inf), np.full((h, w), 1.0 + 1e-6)])
        im = Image.fromarray(values.astype(np.float32), mode="F")
    elif mode == "I":
        low, high = r.choice([(0, 256), (0, 65536), (-(2**31), 2**31 - 1), (65536, 2**31 - 1)])
        im = Image.fromarray(rng.integers(low, high, (h, w), dtype=np.int64).astype(np.int32), mode="I")
    elif mode.startswith("I;16"):
        im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)).convert(mode) if mode != "I;16" else \
            Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        im = Image.new(mode, (w, h))
        im.frombytes(rng.integers(0, 256, len(im.tobytes()), dtype=np.uint8).tobytes())
    formats = {"PNG": ".png", "TIFF": ".tif", "JPEG": ".jpg", "BMP": ".bmp", "PPM": ".ppm", "WEBP": ".webp"}
    fmt = r.choice(sorted(formats))
    extra = {"exif": _image_exif(r.choice([1, 6, 8, 0, 9]))} if fmt in ("PNG", "JPEG", "WEBP") else {}
    for name in (fmt, "TIFF"):  # TIFF takes most modes; a mode no writer takes falls back to bytes below
        try:
            im.save(case / f"m{formats[name]}", format=name, **(extra if name == fmt else {}))
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            for p in case.iterdir():
                p.unlink()
    (case / "m.png").write_bytes(im.convert("RGB").tobytes()[:64] or b"\x00")


def _image_mutate(r: random.Random, seed: Path, case: Path) -> None:
    kind = r.randrange(6)
    if kind == 0:
        _image_mode_file(r, case)
        return
    name = r.choice(_IMAGE_SEEDS)
    data = bytearray((seed / name).read_bytes())
    if kind == 1:
        data = _image_broken_exif(r, bytearray((seed / "exif.jpg").read_bytes()))
        name = "exif.jpg"
    elif kind == 2:
        data = _image_sized(r, data, name)
    elif kind == 3:
        data = data[: r.randrange(len(data))]
    else:
        data = bytearray(mutate_bytes(r, bytes(data)))
    (case / name).write_bytes(bytes(data))


def _image_read(case: Path) -> object:
    from reproduce.datasets.base import read_image

    path = next(p for p in case.iterdir() if p.is_file())
    image = read_image(path)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, (image.dtype, image.shape)
    return image.shape


FORMATS["image"] = Format("image", _image_seed, _image_mutate, _image_read)
OUR_ERRORS["image"] = _dataset_error
# --------------------------------------------------------------------------- end of the image block


# --------------------------------------------------------------------------- running cases
def run_case(fmt: str, seed_dir: Path, case_dir: Path, seed: int, i: int) -> dict:
    """Mutate and read case ``i`` in this process; the outcome as a dict."""
    f = FORMATS[fmt]
    r = random.Random(f"{fmt}:{seed}:{i}")
    for p in case_dir.iterdir():
        p.unlink()
    try:
        f.mutate(r, seed_dir, case_dir)
    except Exception as e:  # noqa: BLE001 - a bug of the fuzzer itself, not of the reader
        return {"case": i, "outcome": "crash", "detail": f"mutator failed: {type(e).__name__}: {e}"}
    ours = OUR_ERRORS[fmt]()
    try:
        f.read(case_dir)
    except ours as e:
        text = str(e)
        if "\n" in text or str(case_dir) not in text:
            return {"case": i, "outcome": "crash", "detail": f"our error is not one line naming the file: {text!r}"}
        return {"case": i, "outcome": "error"}
    except MemoryError:
        return {"case": i, "outcome": "memory", "detail": traceback.format_exc(limit=-3)}
    except Exception as e:  # noqa: BLE001 - anything else is what the fuzzer looks for
        return {"case": i, "outcome": "crash", "detail": f"{type(e).__name__}: {e}"[:300],
                "where": traceback.format_exc(limit=-3)[-1500:]}
    return {"case": i, "outcome": "accepted"}


def _limit_memory() -> None:
    import resource

    with open("/proc/self/statm") as fh:
        vm = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm + MEMORY_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def worker(plan: list[tuple[str, int, int]], seed: int, workdir: Path) -> None:
    """Run ``plan`` ([(format, first case, count), ...]); print ``S fmt i`` before and ``R {json}`` after each."""
    import cv2  # noqa: F401
    import scipy.io  # noqa: F401

    import converters.caffe.passes  # noqa: F401 - every import before the memory limit is set
    import converters.tf.reader  # noqa: F401
    import reproduce.datasets.cocostuff  # noqa: F401
    import reproduce.datasets.deepfashion2  # noqa: F401
    import reproduce.datasets.voc  # noqa: F401
    import reproduce.training.config  # noqa: F401
    import reproduce.training.loop  # noqa: F401 - the resume formats' reader
    from reproduce.datasets import matfile

    matfile.read_label("sbd", next((workdir / "seeds" / "mat").glob("sbd_*.mat")))  # start the helper now
    _limit_memory()
    for fmt, start, count in plan:
        case_dir = workdir / f"case-{fmt}-{os.getpid()}"
        case_dir.mkdir(exist_ok=True)
        for i in range(start, start + count):
            print(f"S {fmt} {i}", flush=True)
            result = run_case(fmt, workdir / "seeds" / fmt, case_dir, seed, i)
            print("R " + json.dumps({"format": fmt, **result}), flush=True)


def make_seeds(workdir: Path, formats: list[str]) -> None:
    for fmt in formats:
        folder = workdir / "seeds" / fmt
        if not folder.is_dir():
            folder.mkdir(parents=True)
            FORMATS[fmt].make_seed(folder)
    if not (workdir / "seeds" / "mat").is_dir():
        (workdir / "seeds" / "mat").mkdir(parents=True)
        _mat_seed(workdir / "seeds" / "mat")


@dataclass
class FuzzReport:
    counts: dict[str, Counter] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        lines = [f"{'format':<20}{'cases':>7}{'accepted':>10}{'our error':>11}{'crash':>7}{'hang':>6}{'memory':>8}"]
        for fmt, c in self.counts.items():
            lines.append(f"{fmt:<20}{sum(c.values()):>7}{c['accepted']:>10}{c['error']:>11}{c['crash']:>7}"
                         f"{c['hang']:>6}{c['memory']:>8}")
        return "\n".join(lines)


def run(plan: list[tuple[str, int, int]], workdir: Path, *, seed: int = 0, case_timeout: float = CASE_TIMEOUT,
        progress: Callable[[str], None] | None = None) -> FuzzReport:
    """Run ``plan`` in worker processes, restarting after a case that crashes or hangs a worker."""
    workdir.mkdir(parents=True, exist_ok=True)
    make_seeds(workdir, sorted({fmt for fmt, _, _ in plan}))
    report = FuzzReport(counts={fmt: Counter() for fmt, _, _ in plan})
    remaining = [[fmt, start, count] for fmt, start, count in plan if count > 0]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    t0 = time.monotonic()
    while remaining:
        cmd = [sys.executable, "-m", "tests.fuzzing", "worker", str(seed), str(workdir), json.dumps(remaining)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO, env=env)
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = b""
        current: tuple[str, int] | None = None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        ended = None
        while ended is None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                proc.kill()
                proc.wait()
                ended = "hang"
                break
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                ended = f"worker died ({_exit_text(proc.wait())})"
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.startswith(b"S "):
                    _, fmt, i = line.decode().split()
                    current = (fmt, int(i))
                    deadline = time.monotonic() + case_timeout
                elif line.startswith(b"R "):
                    result = json.loads(line[2:])
                    report.counts[result["format"]][result["outcome"]] += 1
                    if result["outcome"] not in ("accepted", "error"):
                        report.failures.append(result)
                    _advance(remaining, result["format"], result["case"])
                    current = None
            if current is None and not remaining:
                proc.wait()
                ended = "done"
        if ended != "done" and current is not None:
            fmt, i = current
            outcome = "hang" if ended == "hang" else "crash"
            report.counts[fmt][outcome] += 1
            report.failures.append({"format": fmt, "case": i, "outcome": outcome, "detail": ended})
            _advance(remaining, fmt, i)
        elif ended not in ("done",) and current is None and remaining:
            raise RuntimeError(f"fuzz worker failed before its first case: {ended}")
        if progress:
            progress(report.table())
    report.seconds = time.monotonic() - t0
    return report


def _advance(remaining: list[list], fmt: str, case: int) -> None:
    """Drop case ``case`` (and those before it) of ``fmt`` from the plan."""
    for item in remaining:
        if item[0] == fmt:
            end = item[1] + item[2]
            item[1] = case + 1
            item[2] = end - item[1]
    remaining[:] = [item for item in remaining if item[2] > 0]


def _exit_text(rc: int) -> str:
    import signal

    return f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"


def replay(fmt: str, case: int, workdir: Path, seed: int = 0) -> dict:
    """Run one case in this process (to debug a failure)."""
    make_seeds(workdir, [fmt])
    case_dir = workdir / f"replay-{fmt}"
    case_dir.mkdir(parents=True, exist_ok=True)
    return run_case(fmt, workdir / "seeds" / fmt, case_dir, seed, case)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["worker"]:
        worker([tuple(x) for x in json.loads(argv[3])], int(argv[1]), Path(argv[2]))
        return 0
    if argv[:1] == ["replay"]:
        print(json.dumps(replay(argv[1], int(argv[2]), Path(argv[3])), indent=1))
        return 0
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.fuzzing",
                                     description="Seeded mutation fuzzing of every reader of foreign files.")
    parser.add_argument("cases", nargs="?", type=int, default=2000, help="cases per format (default 2000)")
    parser.add_argument("workdir", nargs="?", type=Path, default=Path("/tmp/deeplab-repro-fuzz"),
                        help="scratch folder for seeds and cases (default /tmp/deeplab-repro-fuzz)")
    parser.add_argument("--formats", nargs="+", choices=sorted(FORMATS), default=list(FORMATS), metavar="FORMAT",
                        help=f"formats to fuzz (default all: {', '.join(FORMATS)})")
    parser.add_argument("--seed", type=int, default=0, help="the seed: case i of a format is fixed by (seed, i)")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error("cases must be >= 1")
    report = run([(fmt, 0, args.cases) for fmt in args.formats], args.workdir, seed=args.seed,
                 progress=lambda t: print(t, file=sys.stderr))
    print(report.table())
    print(f"{report.seconds:.0f} s")
    for f in report.failures[:50]:
        print(json.dumps(f))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


__all__ = ["FORMATS", "FuzzReport", "run", "replay", "write_v2_checkpoint", "sstable"]
