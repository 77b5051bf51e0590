"""Writing outputs safely: atomic, verified files, checksums, state dicts and provenance.

Nothing a command writes is ever half-written: data goes to a uniquely named temporary file in the
destination folder, is read back (its size; a decode of images; the structure of weights files), flushed
to disk, and is renamed over the target only when complete (``os.replace`` is atomic on POSIX and
Windows). A failure (a full disk, a file-size limit, a writer that reports nothing, such as Pillow's
JPEG encoder on a short write) is one :class:`converters.errors.OutputError` naming the final file,
with the temporary removed. Every writer in the project goes through :class:`StagedFile` /
:func:`atomic_path` (or a helper built on them: :func:`write_text_atomic`, :func:`write_json_atomic`,
:func:`save_state_dict`, :func:`save_torch`, :func:`save_image`).
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

from converters.errors import OutputError

WEIGHT_SUFFIXES = (".pth", ".safetensors")


class StagedFile:
    """A uniquely named temporary file beside ``target`` that becomes ``target`` only once verified.

    The name is ``.<target name>.<random><suffix>`` (unique per writer, so two runs writing the same output
    never share a temporary; ``suffix`` keeps an extension a writer insists on, e.g. OpenCV's video
    container). :meth:`commit` checks the bytes (non-empty, or exactly ``size``; then ``check(path)``, e.g.
    a decode), fsyncs and renames; any failure removes the temporary and raises :class:`OutputError` naming
    ``target``, so nothing is ever left under the final name that was not read back. Use :func:`atomic_path`
    unless the file must outlive one ``with`` block (a video kept after Ctrl-C).
    """

    def __init__(self, target: str | os.PathLike, *, suffix: str = ".tmp") -> None:
        self.target = Path(target)
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=suffix, dir=self.target.parent)
        except OSError as exc:
            raise write_failure(self.target, None, exc) from None
        try:
            os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs get what the umask gives
        finally:
            os.close(fd)
        self.path = Path(tmp)

    def commit(self, *, size: int | None = None, check: Callable[[Path], None] | None = None) -> Path:
        """Verify the temporary (``size`` bytes if given, else non-empty; then ``check``), fsync it and rename it
        onto ``target``. Raises :class:`OutputError` (the temporary removed) when anything is off."""
        try:
            actual = self.path.stat().st_size
            if size is not None and actual != size:
                raise OutputError(self.target, f"could not be written: {actual} of {size} bytes reached the disk "
                                  "(disk full or a file-size limit?)")
            if size is None and actual == 0:
                raise OutputError(self.target, "could not be written: the writer left an empty file (disk full?)")
            if check is not None:
                check(self.path)
            with open(self.path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self.path, self.target)
        except BaseException as exc:
            self.discard()
            if isinstance(exc, OSError):
                raise write_failure(self.target, self.path, exc) from None
            raise
        return self.target

    def discard(self) -> None:
        """Remove the temporary (nothing is written under ``target``)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def write_failure(target: Path, tmp: Path | None, exc: BaseException) -> OutputError:
    """The one-line :class:`OutputError` for ``exc`` raised while writing ``target`` through ``tmp``."""
    filename = getattr(exc, "filename", None)
    if isinstance(exc, OSError) and exc.strerror and filename in (None, str(tmp), str(target)):
        reason = exc.strerror  # e.g. "File too large": the path is the temporary's, the message names target
    else:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    return OutputError(target, f"could not be written ({reason})")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, suffix: str = ".tmp", size: int | None = None,
                check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a unique temporary path beside ``target``; verify it and rename it onto ``target`` on success
    (see :class:`StagedFile`: non-empty or exactly ``size`` bytes, then ``check(path)``).

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``target`` is left
    untouched; an ``OSError`` (full disk, file-size limit, permissions) becomes one :class:`OutputError`
    naming ``target``.
    """
    staged = StagedFile(target, suffix=suffix)
    try:
        yield staged.path
    except BaseException as exc:
        staged.discard()
        if isinstance(exc, OSError):
            raise write_failure(staged.target, staged.path, exc) from None
        raise
    staged.commit(size=size, check=check)


def current_umask() -> int:
    """The process umask (read by setting it and setting it back; there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(target: str | os.PathLike, writer: Callable[[Path], None], *, size: int | None = None,
                 check: Callable[[Path], None] | None = None) -> Path:
    """Call ``writer(tmp_path)``, verify the result (:func:`atomic_path`) and atomically move it to ``target``."""
    with atomic_path(target, size=size, check=check) as tmp:
        writer(tmp)
    return Path(target)


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8, atomically, checking that every byte reached the disk."""
    data = text.encode("utf-8")
    return write_atomic(target, lambda p: p.write_bytes(data), size=len(data))


def write_json_atomic(target: str | os.PathLike, record: Mapping[str, Any], **dumps: Any) -> Path:
    """Write ``record`` as indented JSON (``json.dumps`` keywords as ``dumps``), atomically and checked."""
    return write_text_atomic(target, json.dumps(record, **{"indent": 2, "sort_keys": False, **dumps}) + "\n")


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
        write_text_atomic(path, new)
    return False


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_state_dict(state_dict: Mapping[str, Any], target: str | os.PathLike) -> Path:
    """Save a plain ``{name: tensor}`` dict as ``.pth`` or ``.safetensors``, atomically and checked.

    ``.pth`` files load with ``torch.load(path, weights_only=True)``;
    ``.safetensors`` with ``safetensors.torch.load_file``.
    """
    target = Path(target)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if target.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        def write(p: Path) -> None:
            try:
                save_file(tensors, str(p))
            except SafetensorError as exc:  # its I/O errors (e.g. "File too large") are not OSErrors
                raise OSError(f"safetensors: {exc}") from None

        return write_atomic(target, write, check=check_safetensors_file)
    if target.suffix == ".pth":
        return save_torch(tensors, target)
    raise ValueError(f"{target}: output must end in one of {', '.join(WEIGHT_SUFFIXES)}")


def save_torch(obj: Any, target: str | os.PathLike) -> Path:
    """``torch.save(obj)`` at ``target``, atomically and checked (a complete zip archive). ``torch.save``
    reports a failed write as a ``RuntimeError`` ("PytorchStreamWriter failed writing ..."): one
    :class:`OutputError` naming ``target`` instead."""
    import torch

    def write(p: Path) -> None:
        try:
            torch.save(obj, p)
        except RuntimeError as exc:
            raise OSError(f"torch.save: {' '.join(str(exc).split())[:200]}") from None

    return write_atomic(target, write, check=check_pth_file)


def check_pth_file(path: Path) -> None:
    """A ``torch.save`` zip is complete: its central directory (written last) reads and holds a ``data.pkl``."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise OSError(f"the written archive does not read back ({exc})") from None
    if not any(n.endswith("data.pkl") for n in names):
        raise OSError("the written archive holds no data.pkl")


def check_safetensors_file(path: Path) -> None:
    """A ``.safetensors`` file is complete: 8-byte header length, JSON header, data up to the last offset."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise OSError(f"the written header does not read back ({size} bytes)")
        try:
            header = json.loads(fh.read(n))
        except ValueError as exc:
            raise OSError(f"the written header does not read back ({exc})") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) != size:
        raise OSError(f"{size} bytes on disk, the header declares {8 + n + max(ends, default=0)}")


def save_image(target: str | os.PathLike, image: Any, format: str, **params: Any) -> Path:
    """Encode the PIL ``image`` as ``format`` at ``target``, atomically, and decode it back before naming it:
    the same size and mode, and (lossless formats) the same pixels. Pillow's JPEG encoder ignores a short
    write (a full disk gives a truncated file and no error); the decode is what catches it."""
    import numpy as np
    from PIL import Image

    lossless = format.upper() in ("PNG", "BMP", "TIFF", "PPM")

    def check(p: Path) -> None:
        try:
            with Image.open(p) as back:
                back.load()
                same = back.size == image.size and back.mode == image.mode
                if same and lossless:
                    same = np.array_equal(np.asarray(back), np.asarray(image))
        except Exception as exc:  # noqa: BLE001 - any decoder failure means the file is not what was meant
            raise OutputError(target, f"could not be written: it does not decode back ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]}; disk full?)") from None
        if not same:
            raise OutputError(target, "could not be written: it decodes to another image than was written")

    return write_atomic(target, lambda p: image.save(p, format=format, **params), check=check)


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
