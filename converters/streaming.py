"""Write a state dict one tensor at a time: ``.pth`` (``torch.save``'s zip layout) and ``.safetensors``.

Both formats can be written front to back once every tensor's name, shape and dtype is known (a
converter knows them from the source's index before reading any data), so a converter can read one
tensor, write it and drop it: peak memory is one tensor plus buffers, never the whole state dict.

``.pth``: ``torch.save`` writes a zip archive (stored, not compressed) holding ``<archive>/data.pkl``
(the pickled dict; each tensor refers to a storage record by key), ``.format_version``,
``.storage_alignment``, ``byteorder``, one ``data/<key>`` record per storage (its raw bytes, the record
data aligned to 64 bytes), ``version`` and ``.data/serialization_id``. The pickle needs only the
metadata, so it is written first by a pickler that emits for each tensor exactly what
``torch.Tensor.__reduce_ex__`` and ``torch.save``'s ``persistent_id`` emit for a contiguous CPU tensor
(``torch._utils._rebuild_tensor_v2`` on a ``('storage', torch.FloatStorage, key, 'cpu', numel)``
persistent id: the globals ``torch.load(weights_only=True)`` allows); the records are written with
the standard library's ``zipfile`` (CRC-32 of every record included, which ``torch.save`` also writes).
``tests/test_streaming.py`` checks that ``data.pkl`` is byte-for-byte ``torch.save``'s.

No torch needed: dtypes are named as numpy names them (``float32``, ``int64``; ``bfloat16`` too);
the pickle's torch globals are written by name (the pure-Python pickler, a marker object per global);
tensors are numpy arrays, or torch tensors when the caller has imported torch (never imported here).

``.safetensors``: an 8-byte little-endian header length, the JSON header (per tensor its dtype, shape
and byte range; padded with spaces to 8 bytes), then the bytes, tensors laid out as the
``safetensors`` library lays them out (by dtype, largest first, then by name), so the file is
byte-for-byte ``safetensors.torch.save_file``'s.
"""

from __future__ import annotations

import collections
import contextlib
import json
import pickle
import secrets
import struct
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import IO, Any

import numpy as np

from converters.io import WEIGHT_SUFFIXES, atomic_path, check_pth_file, check_safetensors_file

__all__ = ["TensorSpec", "return_freed_buffers_to_the_os", "write_state_dict_streamed"]

ALIGNMENT = 64  # torch.save's storage alignment (its .storage_alignment record)
_PICKLE_PROTOCOL = 2  # torch.serialization.DEFAULT_PROTOCOL
_ZIP_PADDING_ID = 0x4246  # the extra-field id torch's zip writer pads record headers with ("FB")

# dtype name -> (torch.save storage class name, safetensors dtype, safetensors layout rank: larger first,
# bytes per element)
_DTYPES: dict[str, tuple[str, str, int, int]] = {
    "int64": ("LongStorage", "I64", 9, 8),
    "float64": ("DoubleStorage", "F64", 8, 8),
    "float32": ("FloatStorage", "F32", 7, 4),
    "int32": ("IntStorage", "I32", 6, 4),
    "bfloat16": ("BFloat16Storage", "BF16", 5, 2),
    "float16": ("HalfStorage", "F16", 4, 2),
    "int16": ("ShortStorage", "I16", 3, 2),
    "int8": ("CharStorage", "I8", 2, 1),
    "uint8": ("ByteStorage", "U8", 1, 1),
    "bool": ("BoolStorage", "BOOL", 0, 1),
}


def dtype_name(dtype: Any) -> str:
    """numpy's name of a dtype given as a name, a numpy dtype (or type) or a torch dtype: ``float32``..."""
    if isinstance(dtype, str):
        return dtype
    text = str(dtype)
    if text.startswith("torch."):
        return text.removeprefix("torch.")
    return np.dtype(dtype).name


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the state dict to write: its key, shape and dtype (contiguous, on the CPU). ``dtype``
    may be given as a numpy or torch dtype; it is kept as its numpy name (``float32``)."""

    key: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", dtype_name(self.dtype))

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * _DTYPES[self.dtype][3]


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


CHUNK_BYTES = 1 << 20  # a non-contiguous tensor (a layout transpose) is made contiguous this much at a time


def _as_array(tensor: Any) -> tuple[np.ndarray, str]:
    """(a numpy view of ``tensor``'s values, its dtype name): a numpy array as it is (in native byte order),
    a torch tensor (only when torch is imported already) detached, on the CPU, bfloat16 as int16 bits."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(tensor, torch.Tensor):
        name = dtype_name(tensor.dtype)
        tensor = tensor.detach().cpu()
        return (tensor.view(torch.int16) if name == "bfloat16" else tensor).numpy(), name
    array = np.asarray(tensor)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array, array.dtype.name


def _tensor_chunks(spec: TensorSpec, tensor: Any) -> Iterator[memoryview]:
    """The raw bytes of ``tensor`` (a numpy array, or a torch tensor; any strides) in row-major order, after
    checking it matches ``spec``. A contiguous tensor is one view, no copy; a strided one (e.g. a transposed
    view of what was read) is copied :data:`CHUNK_BYTES` at a time along its first dimension, never whole."""
    array, name = _as_array(tensor)
    if tuple(array.shape) != spec.shape or name != spec.dtype:
        raise ValueError(f"'{spec.key}': got {tuple(array.shape)} {name}, the plan says {spec.shape} {spec.dtype}")
    if array.size == 0:
        return
    if array.ndim == 0 or array.flags.c_contiguous:
        yield memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        return
    row_bytes = array[0].size * array.itemsize
    step = max(1, CHUNK_BYTES // max(1, row_bytes))
    for start in range(0, array.shape[0], step):
        yield memoryview(np.ascontiguousarray(array[start:start + step]).reshape(-1).view(np.uint8))


class _StreamWriter:
    """Writes the tensors of ``specs`` in the order :attr:`order` says; :meth:`finish` completes the file."""

    order: list[str]

    def __init__(self, fh: IO[bytes], specs: Sequence[TensorSpec]) -> None:
        self._fh = fh
        self._specs = {s.key: s for s in specs}
        if len(self._specs) != len(specs):
            raise ValueError("duplicate keys in the state dict plan")
        for spec in specs:
            if spec.dtype not in _DTYPES:
                raise ValueError(f"'{spec.key}': dtype {spec.dtype} is not supported by the streaming writer")
        self._next = 0

    def write(self, key: str, tensor: Any) -> None:
        if self._next >= len(self.order) or key != self.order[self._next]:
            expected = self.order[self._next] if self._next < len(self.order) else "nothing"
            raise ValueError(f"tensors must come in the writer's order: got '{key}', expected {expected!r}")
        self._write(self._specs[key], _tensor_chunks(self._specs[key], tensor))
        self._next += 1

    def finish(self) -> None:
        if self._next != len(self.order):
            raise ValueError(f"{len(self.order) - self._next} tensors were not written")
        self._finish()

    def abort(self) -> None:
        """After a failure: release what the writer holds (the file itself is removed by the caller)."""

    def _write(self, spec: TensorSpec, chunks: Iterator[memoryview]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _finish(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------- .pth
class _StorageRef:
    """Stands for a tensor's storage in the pickle (its persistent id); holds no data."""

    __slots__ = ("key", "numel", "storage_class")

    def __init__(self, key: str, storage_class: str, numel: int) -> None:
        self.key, self.storage_class, self.numel = key, storage_class, numel


class _Global:
    """Stands for a module-level object the pickle names (``GLOBAL module name``) without importing it."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # pickle requires a reduce function to be callable
        raise TypeError(f"{self.module}.{self.name} is only named in a pickle here")


_REBUILD_TENSOR = _Global("torch._utils", "_rebuild_tensor_v2")
_STORAGE_CLASSES = {name: _Global("torch", name) for name, *_ in _DTYPES.values()}


class _TensorRef:
    """Pickles as ``torch.Tensor.__reduce_ex__`` reduces a contiguous CPU tensor without hooks."""

    __slots__ = ("shape", "storage")

    def __init__(self, storage: _StorageRef, shape: tuple[int, ...]) -> None:
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        return (_REBUILD_TENSOR,
                (self.storage, 0, self.shape, _contiguous_strides(self.shape), False, collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):
    """The pure-Python pickler (it writes what the C one writes), writing a :class:`_Global` as the
    ``GLOBAL`` opcode of the object it names, memoized like any global."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_named_global(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[_Global] = _save_named_global

    def persistent_id(self, obj: Any) -> tuple | None:
        if isinstance(obj, _StorageRef):
            return ("storage", _STORAGE_CLASSES[obj.storage_class], obj.key, "cpu", obj.numel)
        return None


def torch_save_pickle(specs: Sequence[TensorSpec]) -> bytes:
    """The ``data.pkl`` ``torch.save`` writes for a dict of contiguous CPU tensors ``specs`` (storage
    keys ``"0"``, ``"1"`` ... in this order)."""
    obj = {}
    for index, spec in enumerate(specs):
        storage = _StorageRef(str(index), _DTYPES[spec.dtype][0], prod(spec.shape))
        obj[spec.key] = _TensorRef(storage, tuple(spec.shape))
    buf = _Buffer()
    _TorchPickler(buf, protocol=_PICKLE_PROTOCOL).dump(obj)
    return bytes(buf.data)


class _Buffer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, b: bytes) -> int:
        self.data += b
        return len(b)


class _PthWriter(_StreamWriter):
    def __init__(self, fh: IO[bytes], specs: Sequence[TensorSpec], archive: str) -> None:
        super().__init__(fh, specs)
        self.order = [s.key for s in specs]
        self._storage_key = {s.key: str(i) for i, s in enumerate(specs)}
        self._archive = archive
        self._zip = zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._small("data.pkl", torch_save_pickle(specs))
        self._small(".format_version", b"1")
        self._small(".storage_alignment", str(ALIGNMENT).encode())
        self._small("byteorder", sys.byteorder.encode())

    def _write(self, spec: TensorSpec, chunks: Iterator[memoryview]) -> None:
        self._record(f"data/{self._storage_key[spec.key]}", chunks, spec.nbytes)

    def _finish(self) -> None:
        self._small("version", b"3\n")
        serialization_id = "".join(str(secrets.randbelow(10)) for _ in range(40))
        self._small(".data/serialization_id", serialization_id.encode())
        self._zip.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the temporary file is deleted next; only close the archive
            self._zip.close()

    def _small(self, name: str, data: bytes) -> None:
        self._record(name, iter([memoryview(data)]), len(data))

    def _record(self, name: str, chunks: Iterator[memoryview], size: int) -> None:
        """One stored zip entry whose data starts at a multiple of :data:`ALIGNMENT` (as torch pads them)."""
        info = zipfile.ZipInfo(f"{self._archive}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = size
        zip64 = info.file_size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule for a declared size
        header = 30 + len(info.filename.encode("utf-8")) + (20 if zip64 else 0) + 4
        pad = -(self._fh.tell() + header) % ALIGNMENT
        info.extra = struct.pack("<HH", _ZIP_PADDING_ID, pad) + b"Z" * pad
        with self._zip.open(info, "w", force_zip64=zip64) as out:
            if self._fh.tell() % ALIGNMENT:
                raise RuntimeError(f"zip record {name} is not aligned to {ALIGNMENT} bytes")
            written = 0
            for chunk in chunks:
                out.write(chunk)
                written += chunk.nbytes
        if written != size:
            raise RuntimeError(f"zip record {name}: {written} bytes written, {size} declared")


# --------------------------------------------------------------------------- .safetensors
class _SafetensorsWriter(_StreamWriter):
    def __init__(self, fh: IO[bytes], specs: Sequence[TensorSpec]) -> None:
        super().__init__(fh, specs)
        if sys.byteorder != "little":
            raise ValueError("safetensors files are little-endian; writing them on a big-endian machine is not "
                             "supported")
        ordered = sorted(specs, key=lambda s: (-_DTYPES[s.dtype][2], s.key))
        self.order = [s.key for s in ordered]
        header, offset = {}, 0
        for spec in ordered:
            header[spec.key] = {"dtype": _DTYPES[spec.dtype][1], "shape": list(spec.shape),
                                "data_offsets": [offset, offset + spec.nbytes]}
            offset += spec.nbytes
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        text += b" " * (-len(text) % 8)
        fh.write(struct.pack("<Q", len(text)))
        fh.write(text)

    def _write(self, spec: TensorSpec, chunks: Iterator[memoryview]) -> None:
        written = 0
        for chunk in chunks:
            self._fh.write(chunk)
            written += chunk.nbytes
        if written != spec.nbytes:
            raise RuntimeError(f"'{spec.key}': {written} bytes written, {spec.nbytes} declared")

    def _finish(self) -> None:
        pass


def return_freed_buffers_to_the_os(threshold: int = 1 << 20) -> bool:
    """Make glibc's ``malloc`` serve every allocation of ``threshold`` bytes or more with its own ``mmap``,
    unmapped on ``free`` (``mallopt(M_MMAP_THRESHOLD)``, see mallopt(3)); returns whether it applied.

    By default glibc raises that threshold (up to 32 MiB) each time such a block is freed, so the
    buffers of a streamed conversion (one tensor read, freed, the next read) are recycled through the
    heap and its free pages stay resident: the process keeps several tensors' worth it no longer uses.
    For a command that streams tensors this keeps the peak at one tensor. No-op off glibc.
    """
    import ctypes
    import platform

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD; 1 on success
    except (OSError, AttributeError):
        return False


# --------------------------------------------------------------------------- the entry point
def write_state_dict_streamed(
    target: str | Path,
    specs: Sequence[TensorSpec],
    produce: Callable[[str], Any],
    *,
    progress: Callable[[Iterable[str]], Iterable[str]] | None = None,
) -> Path:
    """Write the state dict ``specs`` describes at ``target`` (``.pth`` or ``.safetensors``), atomically,
    calling ``produce(key)`` for one tensor (torch tensor or numpy array) at a time, in the order the
    format lays them out; each is written and dropped before the next is asked for.

    An exception from ``produce`` (e.g. a checksum mismatch) or Ctrl-C removes the temporary file and
    leaves ``target`` untouched. ``progress`` wraps the key iterator (e.g. ``tqdm``).
    """
    target = Path(target)
    if target.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"{target}: output must end in one of {', '.join(WEIGHT_SUFFIXES)}")
    specs = list(specs)
    check = check_pth_file if target.suffix == ".pth" else check_safetensors_file
    with atomic_path(target, check=check) as tmp:
        with open(tmp, "wb") as fh:
            if target.suffix == ".pth":
                writer: _StreamWriter = _PthWriter(fh, specs, archive=target.stem or "archive")
            else:
                writer = _SafetensorsWriter(fh, specs)
            keys: Iterable[str] = progress(writer.order) if progress else writer.order
            try:
                for key in keys:
                    writer.write(key, produce(key))
                writer.finish()
            except BaseException:
                writer.abort()
                raise
    return target
