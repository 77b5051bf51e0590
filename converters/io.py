"""Writing outputs safely: atomic files, checksums, state dicts and provenance.

Nothing a converter writes is ever half-written: data goes to a temporary file
in the destination folder, is flushed to disk, and is renamed over the target
only when complete (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".pth", ".safetensors")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On any exception (including KeyboardInterrupt) the temporary file is removed
    and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs get what the umask gives
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def current_umask() -> int:
    """The process umask (read by setting it and setting it back; there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(target: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result to ``target``."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def write_json_atomic(target: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as indented JSON, atomically."""
    text = json.dumps(record, indent=2, sort_keys=False) + "\n"
    return write_atomic(target, lambda p: p.write_text(text, encoding="utf-8"))


def splice_marked(path: str | os.PathLike, blocks: Mapping[tuple[str, str], str], *, check: bool = False) -> bool:
    """Put each text of ``blocks`` between its ``(start, end)`` marker lines of the file at ``path`` (the
    generated README sections); with ``check`` write nothing. True if the file was already current;
    ValueError naming the file if a marker is missing. The file is rewritten atomically."""
    text = Path(path).read_text(encoding="utf-8")
    new = text
    for (start, end), body in blocks.items():
        if start not in new or end not in new:
            raise ValueError(f"{path}: the markers {start!r} and {end!r} are missing")
        head, rest = new.split(start, 1)
        _, tail = rest.split(end, 1)
        new = f"{head}{start}\n\n{body}\n{end}{tail}"
    if new == text:
        return True
    if not check:
        write_atomic(path, lambda p: p.write_text(new, encoding="utf-8"))
    return False


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_state_dict(state_dict: Mapping[str, Any], target: str | os.PathLike) -> Path:
    """Save a plain ``{name: tensor}`` dict as ``.pth`` or ``.safetensors``, atomically.

    ``.pth`` files load with ``torch.load(path, weights_only=True)``;
    ``.safetensors`` with ``safetensors.torch.load_file``.
    """
    import torch

    target = Path(target)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if target.suffix == ".safetensors":
        from safetensors.torch import save_file

        return write_atomic(target, lambda p: save_file(tensors, str(p)))
    if target.suffix == ".pth":
        return write_atomic(target, lambda p: torch.save(tensors, p))
    raise ValueError(f"{target}: output must end in one of {', '.join(WEIGHT_SUFFIXES)}")


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Load a weights file written by :func:`save_state_dict` without unpickling code."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def refused_pickle_message(path: str | os.PathLike, exc: BaseException, hint: str) -> str | None:
    """The one-line message for weights that :func:`load_state_dict` refused because they are a pickle of
    Python objects (``torch.load(weights_only=True)`` failing), or None for any other failure.

    torch's own message advises ``weights_only=False``, i.e. running whatever the file holds: never repeated
    here. ``hint`` says what to do instead (a command that converts, a safetensors file).
    """
    import pickle

    if not (isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc)):
        return None
    return (f"{path}: a pickle of Python objects, not a plain tensor state dict; it cannot be loaded safely "
            f"(unpickling runs code) and is never unpickled here; {hint}")


def provenance_path(weights: str | os.PathLike) -> Path:
    """The sidecar JSON beside PyTorch weights: ``model.pth`` -> ``model.json``.

    The Keras writers use their own names (``keras_writer.keras_provenance_path``), so the
    PyTorch and Keras outputs of one release never share (and overwrite) a provenance file.
    """
    return Path(weights).with_suffix(".json")


def check_outputs_spare_inputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike]) -> None:
    """Raise :class:`ConversionError` if an output path resolves to an input (same file, link or not).

    Outputs are written atomically by renaming over the target, so without this check a converter
    told to write where it reads would replace its own source.
    """
    from converters.errors import ConversionError

    def identities(path: Path) -> list[tuple]:
        keys: list[tuple] = [("path", os.path.normpath(os.path.abspath(path))), ("path", str(path.resolve()))]
        try:
            st = path.stat()
            keys.append(("inode", st.st_dev, st.st_ino))
        except OSError:
            pass
        return keys

    sources = {key: Path(p) for p in inputs for key in identities(Path(p))}
    for out in outputs:
        hit = next((sources[k] for k in identities(Path(out)) if k in sources), None)
        if hit is not None:
            raise ConversionError(out, f"output would overwrite the input {hit}; choose another --out")


_TF_TABLE_MAGIC = (0xDB4775248B80FB57).to_bytes(8, "little")


def sniff_kind(path: str | os.PathLike) -> str | None:
    """What kind of weights file ``path`` is, from its first and last bytes (and name):
    ``"tf"`` (a TensorFlow checkpoint index, V1 file or data shard), ``"pytorch"`` (a ``torch.save``
    zip or pickle), ``"safetensors"``, ``"keras"`` (HDF5 ``.h5`` or a ``.keras`` zip), or None."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(64)
            fh.seek(max(0, size - 8))
            tail = fh.read(8)
    except OSError:
        return None
    if tail == _TF_TABLE_MAGIC or ".data-" in name and "-of-" in name:
        return "tf"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "keras"
    if head.startswith(b"PK\x03\x04"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        if any(n.endswith("data.pkl") for n in names):
            return "pytorch"
        if "config.json" in names or name.endswith(".keras"):
            return "keras"
        return None
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") and name.endswith((".pth", ".pt")):
        return "pytorch"
    if len(head) >= 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    return None


WRONG_KIND_HINT = {
    "tf": "a TensorFlow checkpoint: convert it with tf2torch.py --checkpoint PREFIX (or tf2keras.py)",
    "caffe": "a Caffe model: convert it with caffe2torch.py --caffemodel PATH (or caffe2tf.py)",
    "pytorch": "PyTorch weights, already converted: load them with converters.io.load_state_dict",
    "safetensors": "PyTorch weights (safetensors), already converted: load them with converters.io.load_state_dict",
    "keras": "Keras weights, already converted: load them with reference_models.keras",
}


def load_generated_json(path: Path, fmt: str, command: str) -> dict[str, Any]:
    """A data file generated from code (``{"format": fmt, "archs": {...}, ...}``, e.g. the TF signatures and
    Keras layouts): a missing, unreadable or foreign one is a one-line :class:`ConversionError` naming it and
    how to regenerate it (a damaged install is named like any bad file)."""
    from converters.errors import ConversionError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConversionError(path, f"unreadable ({exc}); reinstall, or regenerate it with {command}") from None
    if not isinstance(data, dict) or data.get("format") != fmt or not isinstance(data.get("archs"), dict):
        raise ConversionError(path, f"not a '{fmt}' file; reinstall, or regenerate it with {command}")
    return data
