"""Read TensorFlow checkpoints, V2 and V1, with numpy and protobuf only.

A V2 checkpoint ``PREFIX`` is the files ``PREFIX.index`` and
``PREFIX.data-SSSSS-of-NNNNN``. The index is a LevelDB-style sorted string table
(SSTable) that maps each tensor name to a ``BundleEntryProto`` (dtype, shape,
shard, byte offset, size, CRC-32C); the data shards are the raw tensor bytes,
row-major, in the byte order the index header names.

A V1 checkpoint (the old ``TensorSliceWriter`` format, e.g. TF-slim's 2016
ImageNet ``resnet_v1_101.ckpt``) is one SSTable file ``PREFIX`` (or, from a
sharded saver, the files ``PREFIX-SSSSS-of-NNNNN``, opened by that glob pattern
or by ``PREFIX`` alone) holding the data itself: every value is a
``SavedTensorSlices`` message. The value under the empty key is the table of
contents (``SavedTensorSliceMeta``: per tensor its name, dtype, full shape and
the slices stored); every other record holds one slice of one tensor as a
``TensorProto`` with one typed repeated field (``float_val``, ``int64_val``,
...) of its elements in row-major order, keyed by the same OrderedCode
name+slice key as V2 partitions. TensorFlow writes each slice as one record
(refusing slices over 2 GB), one full-extent slice per ordinary variable and one
per part of a partitioned variable. Opening reads the footer, the index block
and the table of contents; :meth:`TFCheckpoint.read` then reads only the blocks
holding that tensor's slices. Learned from ``core/util/saved_tensor_slice.proto``,
``tensor_slice_writer.{h,cc}``, ``tensor_slice_reader.cc`` and
``saved_tensor_slice_util.{h,cc}``.

Public API: :func:`open_checkpoint` returning a :class:`TFCheckpoint`.

Format details learned from TensorFlow's ``core/lib/io/{format,block,table}.cc``,
``core/util/tensor_bundle/tensor_bundle.cc``, ``core/util/saved_tensor_slice_util.cc``
and ``core/lib/strings/ordered_code.cc`` (read, not copied):

* SSTable file = data blocks, a (here empty) meta-index block, an index block,
  and a 48-byte footer: two varint block handles, zero padding to 40 bytes, then
  the 64-bit magic ``0xdb4775248b80fb57`` little-endian.
* Every block is followed by a 5-byte trailer: 1 compression-type byte and the
  masked CRC-32C of block + type byte. TensorFlow writes checkpoint indexes
  uncompressed (``BundleWriter::Finish`` forces ``kNoCompression``); Snappy
  blocks (possible from ~TF 1.1) are decoded by a small pure-Python decoder.
* A block is a run of entries ``varint shared, varint non_shared, varint
  value_len, key suffix, value`` (keys prefix-compressed against the previous
  key), then uint32 restart offsets and their uint32 count. We scan every block
  front to back, so restart points only serve to find where entries end.
* The key ``""`` holds the ``BundleHeaderProto``. A partitioned variable has a
  full-tensor entry whose ``slices`` list its parts; each part is stored under a
  binary key (OrderedCode: ``0x00``, escaped name, rank, signed start/length per
  dimension). Those keys start with a NUL byte, so they never clash with names.

Not supported: variant/resource and quantized dtypes.
"""

from __future__ import annotations

import glob
import os
import re
import struct
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import IO

import numpy as np
from google.protobuf.message import DecodeError

from converters.errors import ConversionError
from converters.proto import load_messages

try:  # the crc32c package (C, SSE4.2/ARMv8 CRC instructions, any buffer without a copy): ~2.5 GB/s here
    import crc32c as _crc32c_package
except ImportError:  # pragma: no cover - depends on the environment
    _crc32c_package = None

try:  # ml_dtypes ships with TensorFlow and JAX; without it bfloat16 is read as float32 (exact: the same bits
    # with 16 zero bits appended), never as its raw uint16 bit patterns, which read as numbers are wrong weights.
    import ml_dtypes

    BFLOAT16: np.dtype = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    BFLOAT16 = np.dtype("<f4")
_DT_BFLOAT16 = 14
_BF16_STORED = BFLOAT16 if BFLOAT16.itemsize == 2 else np.dtype("<u2")  # how the file holds it

__all__ = ["BFLOAT16", "TFCheckpoint", "crc32c", "open_checkpoint"]

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # 2 block handles padded to 2 * 20 bytes, then the 8-byte magic
_TRAILER_SIZE = 5  # compression type byte + masked crc32c
_NO_COMPRESSION, _SNAPPY = 0, 1
_MAX_SHARDS = 99_999  # shard files are named -SSSSS-of-NNNNN: five digits
_MAX_RANK = 254  # TensorShape's limit
_MAX_ELEMENTS = 2**59  # numpy's limit (2**63 bytes) for the widest element (complex128, 16 bytes)
_MAX_SNAPPY_RATIO = 32  # a Snappy copy op expands 3 bytes to at most 64: a longer declared output is corrupt

# TensorFlow DataType enum value -> numpy dtype of the stored bytes (little-endian).
_NUMPY_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    8: np.dtype("<c8"),  # DT_COMPLEX64
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL: one byte per element
    14: _BF16_STORED,  # DT_BFLOAT16 (read() returns BFLOAT16)
    17: np.dtype("<u2"),  # DT_UINT16
    18: np.dtype("<c16"),  # DT_COMPLEX128
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}
_DT_STRING = 7


# --------------------------------------------------------------------------- CRC-32C
# TensorFlow checksums blocks and tensors with CRC-32C (Castagnoli). zlib only has
# CRC-32 (IEEE), and a byte-at-a-time Python loop runs at ~10 MB/s, so large inputs are
# cut into equal chunks whose CRCs numpy advances side by side; the chunk CRCs are then
# chained with a precomputed "append L zero bytes" operator (CRC is linear over GF(2)).
_CRC_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def _make_crc_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_CRC_POLY), t >> 1).astype(np.uint32)
    return t


_CRC_TABLE = _make_crc_table()
_CRC_TABLE_LIST: list[int] = _CRC_TABLE.tolist()
_CHUNK = 4096  # bytes per lane; also the number of lanes per 16 MB batch
_shift_tables: np.ndarray | None = None


def _crc_scalar(reg: int, data: bytes | memoryview) -> int:
    """Advance the raw CRC register ``reg`` over ``data`` one byte at a time (small inputs)."""
    table = _CRC_TABLE_LIST
    for byte in bytes(data):
        reg = table[(reg ^ byte) & 0xFF] ^ (reg >> 8)
    return reg


def _zero_shift_tables() -> np.ndarray:
    """``T[j][b]`` = register ``b << 8j`` advanced over ``_CHUNK`` zero bytes (4 x 256 table)."""
    global _shift_tables
    if _shift_tables is None:
        reg = (np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32))[:, None]).ravel()
        for _ in range(_CHUNK):
            reg = _CRC_TABLE[reg & 0xFF] ^ (reg >> 8)
        _shift_tables = reg.reshape(4, 256)
    return _shift_tables


def _crc_vector(reg: int, data: memoryview) -> int:
    """Advance ``reg`` over ``len(data)`` bytes, a multiple of ``_CHUNK``, with numpy lanes."""
    t0, t1, t2, t3 = (t.tolist() for t in _zero_shift_tables())
    arr = np.frombuffer(data, dtype=np.uint8)
    batch = _CHUNK * _CHUNK
    for start in range(0, arr.size, batch):
        block = arr[start : start + batch]
        lanes = block.size // _CHUNK
        # Transposed copy (<= 16 MB) so each step reads one contiguous row of lane bytes.
        rows = np.ascontiguousarray(block.reshape(lanes, _CHUNK).T)
        lane_reg = np.zeros(lanes, dtype=np.uint32)
        for row in rows:
            lane_reg = _CRC_TABLE[(lane_reg ^ row) & 0xFF] ^ (lane_reg >> 8)
        for part in lane_reg.tolist():
            reg = t0[reg & 0xFF] ^ t1[(reg >> 8) & 0xFF] ^ t2[(reg >> 16) & 0xFF] ^ t3[reg >> 24] ^ part
    return reg


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """Return the CRC-32C (Castagnoli) of ``data``.

    With the ``crc32c`` package (a dependency; hardware CRC instructions, GB/s) that package
    computes it; without it, :func:`crc32c_numpy` (about 100 MB/s).
    """
    if _crc32c_package is not None:
        return _crc32c_package.crc32c(data)
    return crc32c_numpy(data)


def crc32c_numpy(data: bytes | bytearray | memoryview) -> int:
    """The CRC-32C of ``data`` with numpy only (the fallback of :func:`crc32c`)."""
    view = memoryview(data).cast("B")
    reg = 0xFFFFFFFF
    bulk = len(view) - len(view) % _CHUNK if len(view) >= 16 * _CHUNK else 0
    if bulk:
        reg = _crc_vector(reg, view[:bulk])
    return _crc_scalar(reg, view[bulk:]) ^ 0xFFFFFFFF


def _unmask_crc(masked: int) -> int:
    """Undo LevelDB/TensorFlow's CRC masking (rotate right 15 after subtracting a constant)."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# --------------------------------------------------------------------------- SSTable
class _Corrupt(Exception):
    """Internal: malformed bytes; turned into ConversionError with the file name."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a base-128 little-endian varint at ``pos``; return (value, next position)."""
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Corrupt("bad varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _snappy_decompress(data: bytes) -> bytes:
    """Decode a raw Snappy block (the format LevelDB tables use; no framing)."""
    size, pos = _varint(data, 0)
    if size > _MAX_SNAPPY_RATIO * len(data) + 64:
        raise _Corrupt(f"snappy block declares {size} bytes from {len(data)}: corrupt")
    out = bytearray()
    while pos < len(data):
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal; lengths >= 61 follow the tag in 1-4 little-endian bytes
            length = (tag >> 2) + 1
            if length > 60:
                nbytes = length - 60
                if pos + nbytes > len(data):
                    raise _Corrupt("truncated snappy literal")
                length = int.from_bytes(data[pos : pos + nbytes], "little") + 1
                pos += nbytes
            if pos + length > len(data) or len(out) + length > size:
                raise _Corrupt("truncated snappy literal")
            out += data[pos : pos + length]
            pos += length
            continue
        if kind == 1:
            if pos >= len(data):
                raise _Corrupt("truncated snappy copy")
            length = 4 + ((tag >> 2) & 7)
            offset = ((tag >> 5) << 8) | data[pos]
            pos += 1
        else:
            nbytes = 2 if kind == 2 else 4
            if pos + nbytes > len(data):
                raise _Corrupt("truncated snappy copy")
            length = (tag >> 2) + 1
            offset = int.from_bytes(data[pos : pos + nbytes], "little")
            pos += nbytes
        if offset == 0 or offset > len(out) or len(out) + length > size:
            raise _Corrupt("bad snappy copy offset")
        start = len(out) - offset
        if offset >= length:
            out += out[start : start + length]
        else:  # overlapping copy repeats the last `offset` bytes
            pattern = bytes(out[start:])
            out += (pattern * (length // offset + 1))[:length]
    if len(out) != size:
        raise _Corrupt("snappy length mismatch")
    return bytes(out)


def _read_block(buf: bytes | memoryview, offset: int, size: int, *, check: bool = True) -> bytes | memoryview:
    """Return the contents of the block at ``[offset, offset + size)``, decompressed and, unless
    ``check`` is false, checked against its CRC-32C (a view, not a copy, when ``buf`` is a memoryview)."""
    end = offset + size
    if end + _TRAILER_SIZE > len(buf):
        raise _Corrupt("block runs past the end of the file (truncated?)")
    kind = buf[end]
    (masked,) = struct.unpack_from("<I", buf, end + 1)
    if check and crc32c(memoryview(buf)[offset : end + 1]) != _unmask_crc(masked):
        raise _Corrupt(f"block checksum mismatch at offset {offset}")
    if kind == _NO_COMPRESSION:
        return buf[offset:end]
    if kind == _SNAPPY:
        return _snappy_decompress(buf[offset:end])
    raise _Corrupt(f"unknown block compression type {kind}")


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, value) pairs of one block, undoing the keys' prefix compression."""
    if len(block) < 4:
        raise _Corrupt("block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise _Corrupt("bad restart count")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise _Corrupt("bad block entry")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        yield key, block[pos : pos + value_len]
        pos += value_len


def _index_handle(footer: bytes, not_a_table: str) -> tuple[int, int]:
    """Return the index block's (offset, size) from an SSTable's 48-byte footer; a bad magic
    number raises ``not_a_table`` plus the reason."""
    (magic,) = struct.unpack_from("<Q", footer, _FOOTER_SIZE - 8)
    if magic != _TABLE_MAGIC:
        raise _Corrupt(f"{not_a_table} (bad table magic number; truncated?)")
    _, pos = _varint(footer, 0)  # meta-index handle: offset
    _, pos = _varint(footer, pos)  # meta-index handle: size (TensorFlow writes no meta blocks)
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    return index_offset, index_size


def _block_handle(handle: bytes) -> tuple[int, int]:
    """Decode a block handle (varint offset, varint size), an index block's value."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    return offset, size


def _table_entries(buf: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield every (key, value) of an SSTable held in ``buf``, in key order."""
    if len(buf) < _FOOTER_SIZE:
        raise _Corrupt("too short to be a TensorFlow checkpoint index (truncated?)")
    index_offset, index_size = _index_handle(buf[-_FOOTER_SIZE:], "not a TensorFlow checkpoint index")
    for _, handle in _block_entries(_read_block(buf, index_offset, index_size)):
        yield from _block_entries(_read_block(buf, *_block_handle(handle)))


class _V1Table:
    """One V1 checkpoint file: an SSTable read block by block from disk, never whole.

    Opening reads the footer and the index block (one ``(last key, block handle)``
    entry per data block). :meth:`get` finds the one data block that can hold a key
    (the first whose index key is >= it; keys compare as unsigned bytes) and scans it.
    The last small block read is kept, since neighbouring small tensors share blocks.
    """

    _CACHE_LIMIT = 1 << 20  # blocks above this hold one big tensor: not worth keeping

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] | None = None
        self._cached: tuple[int, dict[bytes, bytes]] | None = None
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size < _FOOTER_SIZE:
                raise _Corrupt("too short to be a TensorFlow checkpoint (truncated?)")
            handle.seek(size - _FOOTER_SIZE)
            not_v1 = f"not a TensorFlow checkpoint: no {path.name}.index, and not a V1 checkpoint file either"
            index_offset, index_size = _index_handle(handle.read(_FOOTER_SIZE), not_v1)
            if index_offset + index_size + _TRAILER_SIZE > size - _FOOTER_SIZE:
                raise _Corrupt("index block runs past the end of the file (truncated?)")
            handle.seek(index_offset)
            index = _read_block(handle.read(index_size + _TRAILER_SIZE), 0, index_size)
        self._keys: list[bytes] = []
        self._blocks: list[tuple[int, int]] = []
        for key, value in _block_entries(index):
            offset, length = _block_handle(value)
            if offset + length + _TRAILER_SIZE > index_offset:
                raise _Corrupt("data block runs past the end of the data (truncated?)")
            self._keys.append(key)
            self._blocks.append((offset, length))
        if self._keys != sorted(self._keys):
            raise _Corrupt("index block keys out of order")

    def locate(self, key: bytes) -> tuple[int, int] | None:
        """(offset, size) of the only data block that may hold ``key``; None if past the end."""
        i = bisect_left(self._keys, key)
        return self._blocks[i] if i < len(self._keys) else None

    def get(self, key: bytes, block: tuple[int, int], *, check: bool) -> bytes | None:
        """The value stored under ``key`` in data block ``block``, or None if not there."""
        offset, size = block
        if self._cached is not None and self._cached[0] == offset:
            return self._cached[1].get(key)
        if self._handle is None:
            self._handle = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        self._handle.seek(offset)
        if size > self._CACHE_LIMIT:  # one big record: find it without keeping or copying the block
            raw = bytearray(size + _TRAILER_SIZE)  # writable: a float record's values are read in place
            if self._handle.readinto(raw) != len(raw):
                raise _Corrupt("data block runs past the end of the file (truncated?)")
            found = None
            for entry_key, value in _block_entries(_read_block(memoryview(raw), 0, size, check=check)):
                if entry_key == key:
                    found = value
                    break
            return found
        raw = self._handle.read(size + _TRAILER_SIZE)
        entries = dict(_block_entries(_read_block(raw, 0, size, check=check)))
        self._cached = (offset, entries)
        return entries.get(key)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._cached = None


# --------------------------------------------------------------------------- slice keys
def _ordered_string(key: bytes, pos: int) -> tuple[bytes, int]:
    """Decode an OrderedCode string (``\\x00\\xff`` = NUL, ``\\xff\\x00`` = 0xff, ``\\x00\\x01`` ends)."""
    out = bytearray()
    while pos + 1 < len(key):
        byte = key[pos]
        if byte == 0x00:
            nxt = key[pos + 1]
            if nxt == 0x01:
                return bytes(out), pos + 2
            if nxt != 0xFF:
                break
            out.append(0)
            pos += 2
        elif byte == 0xFF:
            if key[pos + 1] != 0x00:
                break
            out.append(0xFF)
            pos += 2
        else:
            out.append(byte)
            pos += 1
    raise _Corrupt("bad slice key")


def _ordered_unsigned(key: bytes, pos: int) -> tuple[int, int]:
    """Decode an OrderedCode unsigned number: a length byte, then big-endian bytes."""
    if pos >= len(key) or key[pos] > 8 or pos + 1 + key[pos] > len(key):
        raise _Corrupt("bad slice key")
    n = key[pos]
    return int.from_bytes(key[pos + 1 : pos + 1 + n], "big"), pos + 1 + n


def _ordered_signed(key: bytes, pos: int) -> tuple[int, int]:
    """Decode an OrderedCode signed number.

    The leading bit is the sign (1 = non-negative); it is repeated once per extra byte
    and then followed by one opposite "delimiter" bit, so the run length of sign-equal
    leading bits is the total length n (1..10). XOR-ing those n header bits away leaves
    the value as an 8n-bit two's complement big-endian integer.
    """
    if pos >= len(key):
        raise _Corrupt("bad slice key")
    negative = not key[pos] & 0x80
    flip = 0xFF if negative else 0x00
    head = int.from_bytes(bytes(b ^ flip for b in key[pos : pos + 2]).ljust(2, b"\x00"), "big")
    n = 0
    while n < 16 and head & (0x8000 >> n):
        n += 1
    if not 1 <= n <= 10 or pos + n > len(key):
        raise _Corrupt("bad slice key")
    bits = 8 * n
    raw = int.from_bytes(key[pos : pos + n], "big") ^ (((1 << n) - 1) << (bits - n))
    if negative:
        raw -= 1 << bits
    return raw, pos + n


Extents = tuple[tuple[int, int], ...]  # per dimension (start, length); length -1 = whole dimension


def _decode_slice_key(key: bytes) -> tuple[str, Extents]:
    """Split a partition key into (full tensor name, extents)."""
    lead, pos = _ordered_unsigned(key, 0)
    name, pos = _ordered_string(key, pos)
    rank, pos = _ordered_unsigned(key, pos)
    if lead != 0:
        raise _Corrupt("bad slice key")
    extents = []
    for _ in range(rank):
        start, pos = _ordered_signed(key, pos)
        length, pos = _ordered_signed(key, pos)
        extents.append((start, length) if length >= 0 else (0, -1))
    return name.decode("utf-8"), tuple(extents)


def _ordered_encode(name: str, extents: Extents) -> bytes:
    """Encode a slice key (inverse of :func:`_decode_slice_key`): OrderedCode ``0, name, rank,
    then start, length`` per dimension, a whole dimension as start 0 and length -1."""

    def unsigned(value: int) -> bytes:
        body = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return bytes([len(body)]) + body

    def signed(value: int) -> bytes:
        # Smallest n with value in [-2**(7n-1), 2**(7n-1)); its n leading sign bits are inverted.
        n = next(n for n in range(1, 11) if -(1 << (7 * n - 1)) <= value < 1 << (7 * n - 1))
        bits = 8 * n
        return ((value % (1 << bits)) ^ (((1 << n) - 1) << (bits - n))).to_bytes(n, "big")

    escaped = re.sub(rb"[\x00\xff]", lambda m: {b"\x00": b"\x00\xff", b"\xff": b"\xff\x00"}[m[0]], name.encode("utf-8"))
    key = unsigned(0) + escaped + b"\x00\x01" + unsigned(len(extents))
    for start, length in extents:
        key += signed(start) + signed(length)
    return key


def _bounds(extents: Extents, shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Per-dimension [start, stop) of a partition of a tensor of ``shape``."""
    pairs = zip(extents, shape, strict=True)  # callers check the ranks match first
    return tuple((0, dim) if length < 0 else (start, start + length) for (start, length), dim in pairs)


def _proto_extents(slice_proto) -> Extents:
    """Extents of a TensorSliceProto in the same normal form as :func:`_decode_slice_key`."""
    return tuple((e.start, e.length) if e.HasField("length") else (0, -1) for e in slice_proto.extent)


def _check_shape(name: str, shape: tuple[int, ...]) -> None:
    """Raise :class:`_Corrupt` for a declared shape no array can take: an unknown (negative) dimension,
    more than :data:`_MAX_RANK` of them, or more than :data:`_MAX_ELEMENTS` elements, counting only the
    non-zero dimensions (a tensor with a zero dimension holds no bytes, so its size check passes
    whatever the others declare, yet numpy refuses to shape even an empty array that way)."""
    if any(d < 0 for d in shape):
        raise _Corrupt(f"tensor {name!r} has an unknown shape")
    if len(shape) > _MAX_RANK:
        raise _Corrupt(f"tensor {name!r} declares {len(shape)} dimensions (at most {_MAX_RANK})")
    if prod(d for d in shape if d) > _MAX_ELEMENTS:
        text = str(list(shape))
        raise _Corrupt(f"tensor {name!r} declares the shape {text if len(text) <= 80 else text[:76] + '...]'}, "
                       f"more than {_MAX_ELEMENTS} elements")


# --------------------------------------------------------------------------- reader
@dataclass(frozen=True)
class _Entry:
    """Where one stored tensor (or one partition of it) lives.

    V1 checkpoints list every tensor with ``slices`` (one full-extent slice if it is not
    partitioned); each slice's entry then has ``key`` set, ``shard`` = file number and
    ``offset``/``size`` = the SSTable data block holding that record.
    """

    dtype: int  # TensorFlow DataType enum value
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc: int  # masked CRC-32C as stored
    slices: tuple[Extents, ...]  # non-empty only for a partitioned variable (or any V1 tensor)
    key: bytes = b""  # V1 only: the record's SSTable key


class TFCheckpoint:
    """Read-only view of one V2 or V1 checkpoint; tensors are read one at a time on request.

    V2: opening parses only the small ``.index`` file and checks that every data shard
    exists and is long enough; :meth:`read` seeks to one tensor's bytes and reads
    just those. V1: opening reads each file's footer, index block and table of
    contents; :meth:`read` reads the blocks holding that tensor's records.
    Use as a context manager (or call :meth:`close`) to close the files.
    """

    def __init__(self, prefix: str | os.PathLike, *, verify: bool = True) -> None:
        """Open the checkpoint at ``prefix``: V2 if ``PREFIX.index`` exists, else V1 (the file
        ``PREFIX``, the files a glob pattern ``PREFIX`` matches, or ``PREFIX-SSSSS-of-NNNNN``).

        ``verify`` (default, as TensorFlow does when it restores) checks each tensor's CRC-32C
        on :meth:`read`; for V1 that is the CRC of each data block read. ``verify=False``
        skips it. Index blocks (and a V1 file's table of contents) are always checked.
        """
        prefix = str(prefix)
        self.prefix = prefix = prefix.removesuffix(".index")
        self.index_path = Path(prefix + ".index")
        self.verify = verify
        self.format_version = 2
        self._files: dict[int, IO[bytes]] = {}
        self._tables: list[_V1Table] = []
        if not self.index_path.is_file():
            v1_files = _v1_files(prefix)
            if not v1_files:
                raise ConversionError(self.index_path, "checkpoint index file not found")
            self.format_version = 1
            self._num_shards = len(v1_files)
            # Errors about the checkpoint as a whole name its one file, or the pattern.
            self.index_path = v1_files[0] if len(v1_files) == 1 else Path(prefix)
            try:
                self._open_v1(v1_files)
            except ConversionError:
                self.close()
                raise
            self._names = sorted(self._entries)
            return
        entries, self._num_shards, big_endian = self._parse_index()
        self._byte_order = ">" if big_endian else "<"
        self._entries: dict[str, _Entry] = {k: v for k, v in entries.items() if isinstance(k, str)}
        # Partitions by full name and [start, stop) bounds: a whole dimension may be written
        # as length -1 or as its size, so both sides are compared in this normal form.
        self._parts: dict[str, dict[tuple[tuple[int, int], ...], _Entry]] = {}
        for key, entry in entries.items():
            full = self._entries.get(key[0]) if isinstance(key, tuple) else None
            if full is not None and len(key[1]) == len(full.shape):
                self._parts.setdefault(key[0], {})[_bounds(key[1], full.shape)] = entry
        self._names = sorted(self._entries)
        self._check_shards()

    # -- parsing --------------------------------------------------------------
    def _parse_index(self) -> tuple[dict, int, bool]:
        """Return ({name or (name, extents): _Entry}, number of shards, big-endian flag)."""
        messages = load_messages("tensor_bundle")
        header_cls = messages["tensorflow.BundleHeaderProto"]
        entry_cls = messages["tensorflow.BundleEntryProto"]
        path = self.index_path
        entries: dict[str | tuple[str, Extents], _Entry] = {}
        header = None
        try:
            for key, value in _table_entries(path.read_bytes()):
                if key == b"":
                    header = header_cls.FromString(value)
                    continue
                proto = entry_cls.FromString(value)
                shown = key.decode("utf-8", errors="backslashreplace")
                entry = _Entry(
                    dtype=proto.dtype,
                    shape=tuple(d.size for d in proto.shape.dim),
                    shard=proto.shard_id,
                    offset=proto.offset,
                    size=proto.size,
                    crc=proto.crc32c,
                    slices=tuple(_proto_extents(s) for s in proto.slices),
                )
                if proto.shape.unknown_rank:
                    raise _Corrupt(f"tensor {shown!r} has an unknown shape")
                _check_shape(shown, entry.shape)
                if entry.offset < 0 or entry.size < 0 or entry.shard < 0:
                    raise _Corrupt(f"tensor {shown!r} declares a negative offset, size or shard")
                itemsize = _NUMPY_DTYPES[entry.dtype].itemsize if entry.dtype in _NUMPY_DTYPES else None
                if itemsize is not None and not entry.slices and entry.size != prod(entry.shape) * itemsize:
                    # checked here, before anything is allocated for it
                    raise _Corrupt(f"tensor {shown!r}: the index declares {entry.size} bytes, its shape "
                                   f"{list(entry.shape)[:8]} of {_NUMPY_DTYPES[entry.dtype]} needs "
                                   f"{prod(entry.shape) * itemsize}")
                if entry.dtype == _DT_STRING and not entry.slices and entry.size < prod(entry.shape):
                    # each string takes at least its one-byte length: checked before a count of them is read
                    raise _Corrupt(f"tensor {shown!r}: the index declares {entry.size} bytes, too few for the "
                                   f"{prod(entry.shape)} strings of its shape {list(entry.shape)[:8]}")
                # Partition keys start with OrderedCode's encoding of 0, a NUL byte.
                entries[_decode_slice_key(key) if key[:1] == b"\x00" else key.decode("utf-8")] = entry
        except (_Corrupt, UnicodeDecodeError) as exc:
            raise ConversionError(path, str(exc)) from None
        except DecodeError as exc:
            raise ConversionError(path, f"unparseable checkpoint entry ({exc})") from None
        except OSError as exc:
            raise ConversionError(path, f"cannot read the checkpoint index ({exc.strerror or exc})") from None
        if header is None:
            raise ConversionError(path, "checkpoint index has no header entry")
        if not 1 <= header.num_shards <= _MAX_SHARDS:
            raise ConversionError(path, f"bad shard count {header.num_shards} (1 to {_MAX_SHARDS})")
        return entries, header.num_shards, header.endianness == 1

    def _open_v1(self, paths: list[Path]) -> None:
        """Merge the tables of contents of V1 files ``paths`` into ``_entries`` and ``_parts``."""
        messages = load_messages("tensor_bundle")
        slices_cls = messages["tensorflow.SavedTensorSlices"]
        self._entries = {}
        self._parts = {}
        for number, path in enumerate(paths):
            try:
                table = _V1Table(path)
                self._tables.append(table)
                block = table.locate(b"")
                value = None if block is None else table.get(b"", block, check=True)
                if value is None:
                    raise _Corrupt("V1 checkpoint without a table of contents (no record under the empty key)")
                meta = slices_cls.FromString(value).meta
                for tensor in meta.tensor:
                    self._add_v1_tensor(number, table, tensor)
            except (_Corrupt, UnicodeDecodeError) as exc:
                raise ConversionError(path, str(exc)) from None
            except DecodeError as exc:
                raise ConversionError(path, f"unparseable V1 table of contents ({exc})") from None
            except OSError as exc:
                raise ConversionError(path, f"cannot read V1 checkpoint file ({exc.strerror})") from None

    def _add_v1_tensor(self, number: int, table: _V1Table, tensor) -> None:
        """Register one ``SavedSliceMeta`` of file ``number``: the tensor and each slice's record."""
        name = tensor.name
        shape = tuple(d.size for d in tensor.shape.dim)
        if tensor.shape.unknown_rank:
            raise _Corrupt(f"tensor {name!r} has an unknown shape")
        _check_shape(name, shape)
        extents = [_proto_extents(s) for s in tensor.slice]
        known = self._entries.get(name)
        if known is not None and (known.shape != shape or known.dtype != tensor.type):
            raise _Corrupt(f"tensor {name!r} has another shape or dtype in another file of this checkpoint")
        full_slices = (known.slices if known else ()) + tuple(extents)
        self._entries[name] = _Entry(tensor.type, shape, -1, 0, 0, 0, full_slices)
        parts = self._parts.setdefault(name, {})
        for ext in extents:
            if len(ext) != len(shape):
                raise _Corrupt(f"slice {ext} of tensor {name!r} does not match its rank {len(shape)}")
            bounds = _bounds(ext, shape)
            if bounds in parts:
                raise _Corrupt(f"slice {ext} of tensor {name!r} is stored twice")
            key = _ordered_encode(name, ext)
            block = table.locate(key)
            if block is None:
                raise _Corrupt(f"slice {ext} of tensor {name!r} is missing (truncated?)")
            part_shape = tuple(stop - start for start, stop in bounds)
            parts[bounds] = _Entry(tensor.type, part_shape, number, block[0], block[1], 0, (), key)

    def _shard_path(self, shard: int) -> Path:
        if self._tables:
            return self._tables[shard].path
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self._num_shards:05d}")

    def _check_shards(self) -> None:
        """Fail now, not mid-conversion, if a shard is missing or shorter than the index says."""
        needed = [0] * self._num_shards  # at most _MAX_SHARDS, checked when parsing the header
        stored = [(name, e) for name, parts in self._parts.items() for e in parts.values()]
        for name, entry in stored + list(self._entries.items()):
            if entry.slices:
                continue
            if not 0 <= entry.shard < self._num_shards:
                raise ConversionError(self.index_path, f"tensor {name!r} refers to shard {entry.shard} of "
                                      f"{self._num_shards}")
            needed[entry.shard] = max(needed[entry.shard], entry.offset + entry.size)
        for shard, size in enumerate(needed):
            path = self._shard_path(shard)
            if not path.is_file():
                raise ConversionError(path, f"checkpoint data shard missing ({self._num_shards} expected)")
            actual = path.stat().st_size
            if actual < size:
                raise ConversionError(path, f"data shard truncated: {actual} bytes, index needs {size}")

    # -- queries --------------------------------------------------------------
    def names(self) -> list[str]:
        """All tensor names, sorted (partitioned variables once, under their full name)."""
        return list(self._names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None:
            raise ConversionError(self.index_path, f"no tensor named {name!r} in checkpoint")
        return entry

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of the (full) tensor ``name``; ``()`` for a scalar."""
        return self._entry(name).shape

    def dtype(self, name: str) -> np.dtype:
        """numpy dtype :meth:`read` returns: native byte order, ``object`` for strings,
        :data:`BFLOAT16` (``ml_dtypes.bfloat16``, or float32 holding the same values without ml_dtypes)."""
        code = self._entry(name).dtype
        if code == _DT_STRING:
            return np.dtype(object)
        if code == _DT_BFLOAT16:
            return BFLOAT16
        if code not in _NUMPY_DTYPES:
            raise ConversionError(self.index_path, f"tensor {name!r} has unsupported TensorFlow dtype enum {code}")
        return _NUMPY_DTYPES[code]

    # -- reading --------------------------------------------------------------
    def read(self, name: str) -> np.ndarray:
        """Return tensor ``name`` as a new writable array of :meth:`shape` and :meth:`dtype`.

        Reads only this tensor's bytes (each partition's, for a partitioned variable).
        String tensors come back as an ``object`` array of ``bytes``.
        """
        array = self._read_stored(name)
        if self._entry(name).dtype == _DT_BFLOAT16 and BFLOAT16 != _BF16_STORED:  # bfloat16 bits -> float32
            return (array.astype(np.uint32) << np.uint32(16)).view(np.float32)
        return array

    def _read_stored(self, name: str) -> np.ndarray:
        entry = self._entry(name)
        dtype = _BF16_STORED if entry.dtype == _DT_BFLOAT16 else self.dtype(name)
        if not entry.slices:
            return self._read_entry(name, entry, dtype)
        plan = []
        covered = 0
        for extents in entry.slices:
            bounds = _bounds(extents, entry.shape) if len(extents) == len(entry.shape) else None
            part = self._parts.get(name, {}).get(bounds)
            if part is None:
                raise ConversionError(self.index_path, f"partition {extents} of tensor {name!r} is missing")
            inside = all(0 <= start <= stop <= dim for (start, stop), dim in zip(bounds, entry.shape, strict=True))
            if not inside or part.shape != tuple(b - a for a, b in bounds) or part.dtype != entry.dtype:
                raise ConversionError(self.index_path, f"partition {extents} of tensor {name!r} does not fit")
            plan.append((tuple(slice(start, stop) for start, stop in bounds), part))
            covered += prod(part.shape)
        if covered != prod(entry.shape):  # TensorFlow's partitioners never overlap, so sizes must add up
            raise ConversionError(self.index_path, f"partitions of tensor {name!r} do not cover it exactly")
        if len(plan) == 1:  # one slice covering everything (every unpartitioned V1 tensor): no copy
            return self._read_entry(name, plan[0][1], dtype)
        full = np.zeros(entry.shape, dtype=dtype)
        for index, part in plan:
            full[index] = self._read_entry(name, part, dtype)
        return full

    def _read_bytes(self, name: str, entry: _Entry) -> bytearray:
        path = self._shard_path(entry.shard)
        handle = self._files.get(entry.shard)
        if handle is None:
            try:
                handle = self._files[entry.shard] = open(path, "rb")  # noqa: SIM115 - closed by close()
            except OSError as exc:
                raise ConversionError(path, f"cannot open data shard ({exc.strerror})") from None
        buf = bytearray(entry.size)  # offset + size were checked against the shard's size on opening
        try:
            handle.seek(entry.offset)
            got = handle.readinto(buf)
        except OSError as exc:
            raise ConversionError(path, f"cannot read tensor {name!r} ({exc.strerror or exc})") from None
        if got != entry.size:
            raise ConversionError(path, f"data shard truncated inside tensor {name!r}")
        # String tensors checksum a different byte sequence; _decode_strings checks them.
        if self.verify and entry.dtype != _DT_STRING and crc32c(buf) != _unmask_crc(entry.crc):
            raise ConversionError(path, f"CRC-32C mismatch in tensor {name!r} (corrupt data shard)")
        return buf

    def _read_entry(self, name: str, entry: _Entry, dtype: np.dtype) -> np.ndarray:
        if entry.key:
            return self._read_v1_slice(name, entry, dtype)
        buf = self._read_bytes(name, entry)
        if entry.dtype == _DT_STRING:
            return self._decode_strings(name, entry, buf)
        count = prod(entry.shape)
        if entry.size != count * dtype.itemsize:
            raise ConversionError(
                self.index_path, f"tensor {name!r}: {entry.size} bytes stored, shape {entry.shape} needs more/less"
            )
        array = np.frombuffer(buf, dtype=dtype.newbyteorder(self._byte_order) if dtype.itemsize > 1 else dtype)
        if self._byte_order == ">" and dtype.itemsize > 1:
            array = array.astype(dtype)  # swap to native order; only for bundles from big-endian machines
        return array.reshape(entry.shape)

    def _decode_strings(self, name: str, entry: _Entry, buf: bytearray) -> np.ndarray:
        """Strings are stored as varint64 lengths, a 4-byte checksum of them, then the bytes."""
        count = prod(entry.shape)
        data = bytes(buf)
        try:
            lengths, pos = [], 0
            for _ in range(count):
                length, pos = _varint(data, pos)
                lengths.append(length)
        except _Corrupt:
            raise ConversionError(self._shard_path(entry.shard), f"bad string tensor {name!r}") from None
        checksum = data[pos : pos + 4]
        pos += 4
        if pos + sum(lengths) != len(data):
            raise ConversionError(self._shard_path(entry.shard), f"string tensor {name!r} has a bad size")
        if self.verify:
            # The stored CRC covers each length as uint32 (uint64 if larger), not as varint bytes.
            packed = b"".join(struct.pack("<I" if n <= 0xFFFFFFFF else "<Q", n) for n in lengths)
            if crc32c(packed + checksum + data[pos:]) != _unmask_crc(entry.crc):
                raise ConversionError(self._shard_path(entry.shard), f"CRC-32C mismatch in string tensor {name!r}")
        out = np.empty(count, dtype=object)
        for i, length in enumerate(lengths):
            out[i] = data[pos : pos + length]
            pos += length
        return out.reshape(entry.shape)

    def _read_v1_slice(self, name: str, entry: _Entry, dtype: np.dtype) -> np.ndarray:
        """Read and decode one V1 record: a ``SavedTensorSlices`` whose ``data.data`` is a TensorProto."""
        table = self._tables[entry.shard]
        try:
            value = table.get(entry.key, (entry.offset, entry.size), check=self.verify)
            if value is None:
                raise _Corrupt(f"record of tensor {name!r} is missing from its block")
            if entry.dtype == 1 and isinstance(value, memoryview):  # a big float record: its values in place
                floats = _packed_float_values(value)
                if floats is not None and floats.size == prod(entry.shape):
                    return floats.reshape(entry.shape)
            proto = load_messages("tensor_bundle")["tensorflow.SavedTensorSlices"].FromString(value).data.data
            del value  # the block read (a view of it, for a big record): the message holds the values now
            array = _tensor_proto_values(proto, entry.dtype, dtype)
            del proto
        except _Corrupt as exc:
            raise ConversionError(table.path, str(exc)) from None
        except DecodeError as exc:
            raise ConversionError(table.path, f"unparseable record of tensor {name!r} ({exc})") from None
        except OSError as exc:
            raise ConversionError(table.path, f"cannot read V1 checkpoint file ({exc.strerror})") from None
        if array.size != prod(entry.shape):
            raise ConversionError(
                table.path,
                f"tensor {name!r}: record holds {array.size} values, slice shape {entry.shape} needs {prod(entry.shape)}",
            )
        return array.reshape(entry.shape)

    # -- lifetime -------------------------------------------------------------
    def close(self) -> None:
        """Close any open files; the object can still answer names/shape/dtype."""
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        for table in self._tables:
            table.close()

    def __enter__(self) -> TFCheckpoint:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        files = "shard(s)" if self.format_version == 2 else "file(s), V1"
        return f"TFCheckpoint({self.prefix!r}, {len(self._names)} tensors, {self._num_shards} {files})"


# --------------------------------------------------------------------------- V1 values
# DataType enum -> the TensorProto field TensorSliceWriter fills, and the numpy dtype that
# field's values are first collected in (np.array on a upb repeated field is a fast copy).
_V1_FIELDS: dict[int, tuple[str, np.dtype]] = {
    1: ("float_val", np.dtype(np.float32)),
    2: ("double_val", np.dtype(np.float64)),
    3: ("int_val", np.dtype(np.int32)),
    4: ("int_val", np.dtype(np.int32)),  # uint8
    5: ("int_val", np.dtype(np.int32)),  # int16
    6: ("int_val", np.dtype(np.int32)),  # int8
    7: ("string_val", np.dtype(object)),
    8: ("scomplex_val", np.dtype(np.float32)),  # (re, im) pairs
    9: ("int64_val", np.dtype(np.int64)),
    10: ("bool_val", np.dtype(np.bool_)),
    14: ("half_val", np.dtype(np.int32)),  # bfloat16 bit patterns
    17: ("int_val", np.dtype(np.int32)),  # uint16
    18: ("dcomplex_val", np.dtype(np.float64)),  # (re, im) pairs
    19: ("half_val", np.dtype(np.int32)),  # float16 bit patterns
    22: ("uint32_val", np.dtype(np.uint32)),
    23: ("uint64_val", np.dtype(np.uint64)),
}


def _proto_fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of one serialized protobuf message; a length-delimited value is a
    view of ``buf``. Raises _Corrupt on anything malformed."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise _Corrupt("bad length")
            value, pos = buf[pos : pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise _Corrupt("bad fixed field")
            value, pos = int.from_bytes(buf[pos : pos + size], "little"), pos + size
        else:
            raise _Corrupt("unsupported wire type")
        yield field, wire, value


def _packed_float_values(record: memoryview) -> np.ndarray | None:
    """The values of a V1 record (``SavedTensorSlices``) holding a float tensor as ONE packed ``float_val``
    field, as a float32 array viewing ``record`` (no copy); None for any other layout (the caller then
    decodes the record with protobuf). Spares the decoded message and its copy for big tensors.

    Path: ``SavedTensorSlices.data`` (2) -> ``SavedSlice.data`` (3) -> ``TensorProto.float_val`` (5).
    """
    try:
        def only(buf: memoryview, number: int) -> memoryview | None:
            found = [v for f, w, v in _proto_fields(buf) if f == number and w == 2]
            return found[0] if len(found) == 1 else None

        saved_slice = only(record, 2)
        tensor = only(saved_slice, 3) if saved_slice is not None else None
        if tensor is None:
            return None
        values = None
        for field, wire, value in _proto_fields(tensor):
            if field == 1 and (wire != 0 or value != 1):  # dtype must be DT_FLOAT
                return None
            if field == 4 or field >= 6 or (field == 5 and (wire != 2 or values is not None)):
                return None  # tensor_content, other value fields, or float_val split in parts
            if field == 5:
                values = value
        if values is None or len(values) % 4:
            return None
        return np.frombuffer(values, dtype="<f4").astype(np.float32, copy=False)
    except _Corrupt:
        return None


def _tensor_proto_values(proto, code: int, dtype: np.dtype) -> np.ndarray:
    """The elements of a checkpoint TensorProto as a flat array of ``dtype`` (TF enum ``code``)."""
    if proto.tensor_content and code != _DT_STRING:  # raw bytes; TensorSliceWriter never writes these
        if len(proto.tensor_content) % dtype.itemsize:
            raise _Corrupt("tensor_content length is not a multiple of the element size")
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).astype(dtype)
    field, collect = _V1_FIELDS[code]
    values = getattr(proto, field)
    if code == _DT_STRING:
        out = np.empty(len(values), dtype=object)
        out[:] = list(values)
        return out
    array = np.array(values, dtype=collect)
    if code in (14, 19):  # 16-bit patterns stored one per int32
        return array.astype(np.uint16).view(dtype)
    if code in (8, 18):
        if array.size % 2:
            raise _Corrupt("complex tensor with an odd number of components")
        return array.view(dtype)
    return array.astype(dtype, copy=False)


_SHARD_SUFFIX = re.compile(r"-(\d{5})-of-(\d{5})$")


def _v1_files(prefix: str) -> list[Path]:
    """The files of a V1 checkpoint ``prefix``, sorted; [] if there are none.

    ``prefix`` is one file, a glob pattern (what a sharded V1 saver returns, e.g.
    ``model.ckpt-?????-of-00002``) or the prefix of ``PREFIX-SSSSS-of-NNNNN`` files.
    A set of numbered shards must be complete (TensorFlow itself would just miss tensors).
    """
    if Path(prefix).is_file():
        return [Path(prefix)]
    if any(char in prefix for char in "*?["):
        matches = glob.glob(prefix)
    else:
        digits = "[0-9]" * 5
        matches = glob.glob(f"{glob.escape(prefix)}-{digits}-of-{digits}")
    paths = sorted(Path(m) for m in matches if Path(m).is_file())
    numbered = [_SHARD_SUFFIX.search(p.name) for p in paths]
    if paths and all(numbered):
        totals = {int(m[2]) for m in numbered}
        for total in totals:
            have = {int(m[1]) for m in numbered if int(m[2]) == total}
            for index in range(total):
                if index not in have:
                    stem = _SHARD_SUFFIX.sub("", str(paths[0]))
                    raise ConversionError(f"{stem}-{index:05d}-of-{total:05d}", "V1 checkpoint shard missing")
    return paths


def open_checkpoint(prefix: str | os.PathLike, *, verify: bool = True) -> TFCheckpoint:
    """Open the TensorFlow checkpoint ``prefix``: V2 (e.g. ``.../model.ckpt`` naming
    ``model.ckpt.index``; a trailing ``.index`` is accepted) or V1 (the file itself, e.g.
    ``.../resnet_v1_101.ckpt``, or a sharded ``model.ckpt-?????-of-00002`` pattern).
    ``verify`` checks every tensor's CRC-32C as it is read (TensorFlow's own behaviour).
    Raises :class:`ConversionError` naming the bad file."""
    return TFCheckpoint(prefix, verify=verify)
