"""Streaming reader for Caffe's ``NetParameter`` files.

A ``.caffemodel`` is one protobuf ``NetParameter`` message whose layers are
length-delimited records (field 100 ``layer``, or field 2 ``layers`` in the V1
format). :func:`iter_layers` walks those records one at a time with a small
varint decoder and parses each with the project's own schema
(``converters/proto/caffe.proto``), so a 530 MB file is never held in memory
twice and a truncated or foreign file is reported by name.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from converters.errors import ConversionError
from converters.proto import load_messages

_LAYER_FIELD = 100  # NetParameter.layer (LayerParameter)
_V1_LAYER_FIELD = 2  # NetParameter.layers (V1LayerParameter)
_MAX_RECORD = 1 << 31  # protobuf's own 2 GiB message limit
MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes: a blob shape with more axes is not something Caffe wrote
MAX_BLOB_COUNT = 2**31 - 1  # Caffe's INT_MAX bound on a blob's axes and their product


def caffe_pb() -> Any:
    """A namespace of the Caffe message classes (``caffe_pb().NetParameter`` ...)."""
    msgs = load_messages("caffe")

    class _NS:
        pass

    ns = _NS()
    for full_name, cls in msgs.items():
        setattr(ns, full_name.split(".", 1)[1].replace(".", "_"), cls)
    return ns


@dataclass
class CaffeLayer:
    """One layer of a Caffe net: its definition and its blobs as numpy arrays.

    ``param`` is the ``LayerParameter`` (or ``V1LayerParameter``) message with its
    blobs removed; ``type`` is the V2 type string ("Convolution", "BatchNorm", ...)
    for both formats.
    """

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    blobs: list[np.ndarray] = field(default_factory=list)
    param: Any = None


# V1 enum name -> V2 type string, for the layer types that carry weights or
# shape the network. Others keep their enum name title-cased.
_V1_TYPES = {
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "INNER_PRODUCT": "InnerProduct",
    "POOLING": "Pooling",
    "RELU": "ReLU",
    "DROPOUT": "Dropout",
    "ELTWISE": "Eltwise",
    "CONCAT": "Concat",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "DATA": "Data",
    "IMAGE_DATA": "ImageData",
    "SPLIT": "Split",
    "SILENCE": "Silence",
    "ARGMAX": "ArgMax",
    "ACCURACY": "Accuracy",
}


def blob_to_array(blob: Any, *, path: str | os.PathLike, layer: str, index: int) -> np.ndarray:
    """Convert one ``BlobProto`` to a float32 array of its declared shape.

    Uses ``shape.dim`` when present, else the legacy num/channels/height/width
    (kept 4-D, as Caffe does). ``double_data`` is used when ``data`` is empty.
    The declared shape is checked (at most 32 axes, no negative sizes, its element
    count equal to the values stored, at most ``MAX_BLOB_COUNT`` values even when an
    axis is 0) before anything is reshaped.
    """
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    if len(shape) > MAX_BLOB_AXES:
        raise ConversionError(path, f"blob {index} declares {len(shape)} axes, Caffe allows at most {MAX_BLOB_AXES}",
                              layer=layer)
    if any(d < 0 for d in shape):
        raise ConversionError(path, f"blob {index} declares a negative size in its shape {list(shape)}", layer=layer)
    expected = math.prod(shape)  # Python integers: a huge declared shape cannot overflow into a match
    stored = len(blob.data) or len(blob.double_data)
    if stored != expected:
        raise ConversionError(
            path, f"blob {index} holds {stored} values but its shape {_shape_text(shape)} needs {expected}",
            layer=layer,
        )
    # Caffe's Blob::Reshape keeps every axis and the count of the non-empty axes within INT_MAX. An empty blob
    # with a zero axis passes the count check above whatever its other axes, and numpy refuses to shape
    # even zero values that way ("array is too big").
    if math.prod(d for d in shape if d) > MAX_BLOB_COUNT:
        raise ConversionError(path, f"blob {index} declares the shape {_shape_text(shape)}, beyond Caffe's limit of "
                              f"{MAX_BLOB_COUNT} values per blob", layer=layer)
    if len(blob.data):
        values = np.array(blob.data, dtype=np.float32)
    elif len(blob.double_data):
        with np.errstate(over="ignore"):  # doubles beyond float32 become inf, as in Caffe's own cast
            values = np.array(blob.double_data, dtype=np.float64).astype(np.float32)
    else:
        values = np.zeros(0, dtype=np.float32)
    return values.reshape(shape)


def _shape_text(shape: tuple[int, ...]) -> str:
    text = str(list(shape))
    return text if len(text) <= 80 else text[:77] + "...]"


def _text(value: Any, what: str, *, path: str | os.PathLike, record: int, layer: str | None = None) -> str:
    """A string field of a layer record; protobuf hands back ``bytes`` when they are not valid UTF-8."""
    if isinstance(value, str):
        return value
    shown = bytes(value)[:40].decode("utf-8", errors="backslashreplace")
    where = f"layer record {record}" + (f" ('{layer}')" if layer else "")
    raise ConversionError(path, f"{where}: {what} is not valid UTF-8 text ({shown!r}); not a caffemodel Caffe wrote")


def _layer_from_message(msg: Any, *, v1: bool, path: str | os.PathLike, record: int = 0) -> CaffeLayer:
    name = _text(msg.name, "layer name", path=path, record=record)
    if v1:
        enum_name = msg.DESCRIPTOR.fields_by_name["type"].enum_type.values_by_number.get(msg.type)
        raw = enum_name.name if enum_name is not None else f"V1_{msg.type}"
        ltype = _V1_TYPES.get(raw, raw.title().replace("_", ""))
    else:
        ltype = _text(msg.type, "layer type", path=path, record=record, layer=name)
    bottoms = tuple(_text(b, "a bottom blob name", path=path, record=record, layer=name) for b in msg.bottom)
    tops = tuple(_text(t, "a top blob name", path=path, record=record, layer=name) for t in msg.top)
    blobs = [blob_to_array(b, path=path, layer=name, index=i) for i, b in enumerate(msg.blobs)]
    del msg.blobs[:]
    return CaffeLayer(name=name, type=ltype, bottoms=bottoms, tops=tops, blobs=blobs, param=msg)


def _read_varint(fh: BinaryIO) -> int | None:
    """Read a base-128 varint; ``None`` at a clean end of file."""
    result = shift = 0
    while True:
        b = fh.read(1)
        if not b:
            if shift == 0:
                return None
            raise EOFError
        byte = b[0]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def iter_layers(path: str | os.PathLike, *, progress: Callable[[int], object] | None = None) -> Iterator[CaffeLayer]:
    """Yield the layers of a binary ``.caffemodel`` in file order, one at a time.

    Raises :class:`ConversionError` naming ``path`` for a missing, truncated or
    non-Caffe file. Fields of ``NetParameter`` other than layers are skipped.
    ``progress(n)`` is called with the number of bytes consumed by each record
    (e.g. ``tqdm.update``).
    """
    pb = caffe_pb()
    path = Path(path)
    if not path.is_file():
        raise ConversionError(path, "file not found")
    size = path.stat().st_size
    if size == 0:
        raise ConversionError(path, "file is empty, not a caffemodel")
    count = 0
    with open(path, "rb", buffering=1 << 20) as fh:
        while True:
            offset = fh.tell()
            try:
                key = _read_varint(fh)
            except (EOFError, ValueError):
                raise ConversionError(path, f"truncated or corrupt record header at byte {offset}") from None
            if key is None:
                break
            field_no, wire = key >> 3, key & 7
            if field_no == 0 or wire in (3, 4, 6, 7):
                raise ConversionError(path, f"not a caffemodel (invalid protobuf field at byte {offset})")
            try:
                if wire == 0:
                    if _read_varint(fh) is None:
                        raise EOFError
                    continue
                if wire in (1, 5):
                    n = 8 if wire == 1 else 4
                    if len(fh.read(n)) != n:
                        raise EOFError
                    continue
                length = _read_varint(fh)
                if length is None:
                    raise EOFError
            except (EOFError, ValueError):
                raise ConversionError(path, f"truncated file: record at byte {offset} is incomplete") from None
            if length > _MAX_RECORD or fh.tell() + length > size:
                raise ConversionError(
                    path, f"truncated file: record at byte {offset} needs {length} bytes, only {size - fh.tell()} remain"
                )
            if progress is not None:
                progress(fh.tell() + length - offset)
            if field_no not in (_LAYER_FIELD, _V1_LAYER_FIELD):
                fh.seek(length, os.SEEK_CUR)
                continue
            data = fh.read(length)
            v1 = field_no == _V1_LAYER_FIELD
            try:
                msg = (pb.V1LayerParameter if v1 else pb.LayerParameter).FromString(data)
            except DecodeError:
                raise ConversionError(
                    path, f"not a caffemodel (layer record {count} at byte {offset} does not parse)"
                ) from None
            del data
            count += 1
            yield _layer_from_message(msg, v1=v1, path=path, record=count - 1)
    if count == 0:
        raise ConversionError(path, "not a caffemodel (no layers found)")


def read_prototxt(path: str | os.PathLike, substitutions: dict[str, str] | None = None) -> Any:
    """Parse a text ``.prototxt`` into a ``NetParameter``.

    ``substitutions`` replaces ``${NAME}`` template variables (the official
    DeepLab prototxts use ``${EXP}``, ``${NUM_LABELS}`` ...) before parsing.
    Fields outside the project's schema are ignored rather than fatal.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConversionError(path, f"cannot read: {exc.strerror or exc}") from None
    for key, value in (substitutions or {}).items():
        text = text.replace("${" + key + "}", str(value))
    return parse_prototxt_text(text, path=path)


def parse_prototxt_text(text: str, *, path: str | os.PathLike | None = None) -> Any:
    """Parse prototxt text into a ``NetParameter`` (see :func:`read_prototxt`)."""
    net = caffe_pb().NetParameter()
    try:
        text_format.Merge(text, net, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise ConversionError(path, f"not a valid prototxt: {exc}") from None
    return net


def net_layers(net: Any, *, path: str | os.PathLike | None = None) -> list[CaffeLayer]:
    """The layers of an in-memory ``NetParameter`` as :class:`CaffeLayer` objects."""
    out = [_layer_from_message(_copy(m), v1=False, path=path or "<net>", record=i) for i, m in enumerate(net.layer)]
    out += [_layer_from_message(_copy(m), v1=True, path=path or "<net>", record=i) for i, m in enumerate(net.layers)]
    return out


def _copy(msg: Any) -> Any:
    new = type(msg)()
    new.CopyFrom(msg)
    return new
