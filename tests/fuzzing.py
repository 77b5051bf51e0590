"""Seeded mutation fuzzing of every reader of foreign files, each case under a time and memory limit.

Formats (``FORMATS``): ``caffemodel``, ``tf_index`` and ``tf_data`` (a V2 checkpoint's two files),
``tf_v1`` (a V1 TensorSlice checkpoint file),
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


def _main(argv: list[str]) -> int:
    if argv[:1] == ["worker"]:
        worker([tuple(x) for x in json.loads(argv[3])], int(argv[1]), Path(argv[2]))
        return 0
    if argv[:1] == ["replay"]:
        print(json.dumps(replay(argv[1], int(argv[2]), Path(argv[3])), indent=1))
        return 0
    n = int(argv[0]) if argv else 2000
    workdir = Path(argv[1]) if len(argv) > 1 else Path("/tmp/deeplab-repro-fuzz")
    report = run([(fmt, 0, n) for fmt in FORMATS], workdir, progress=lambda t: print(t, file=sys.stderr))
    print(report.table())
    print(f"{report.seconds:.0f} s")
    for f in report.failures[:50]:
        print(json.dumps(f))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


__all__ = ["FORMATS", "FuzzReport", "run", "replay", "write_v2_checkpoint", "sstable"]
