"""The sample contract shared by every reader, file readers, and the one dataset error.

Sample contract (every reader, every index)::

    image, label, meta = dataset[i]
    image  np.ndarray uint8, shape (H, W, 3), RGB channel order, values 0..255, as viewers show the
           file (EXIF orientation applied, 16-bit and [0, 1] float scaled: :func:`read_image`)
    label  np.ndarray uint8, shape (H, W), class indices in [0, num_classes) or ignore_index (255)
    meta   dict: "id" (str), "image_path" (str), "label_path" (str), "dataset" (str), "split" (str),
           "orig_size" ((H, W) of the files before any optional warp)

Readers are raw: no mean subtraction, no BGR swap, no crop. Those are the transforms' job and
travel with the model's preprocessing record. An optional ``transform(image, label, meta)``
callable is applied last and its result returned as is.

Bad samples (missing file, unreadable image, image/label size mismatch, label values outside
the classes) raise :class:`DatasetError`, whose message is one line naming the file. With
``on_error="skip"`` they are recorded in ``dataset.skipped`` (id -> message) instead: missing
files at construction, content problems when first read (the next good sample is returned in
its place so batches stay full) or, for an exact count before training or evaluation, by
``dataset.validate()`` which reads everything once and drops the bad samples for good. With a
multi-process DataLoader, the lazily found skips are counted in the worker processes, so call
``validate()`` first when the count matters (always for evaluation).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch.utils.data
from PIL import Image, UnidentifiedImageError

from converters.errors import DeeplabError

__all__ = [
    "DatasetError",
    "OnError",
    "SampleRef",
    "SegmentationDataset",
    "read_image",
    "read_index_png",
    "read_split_file",
    "check_label",
]

OnError = Literal["error", "skip"]
Transform = Callable[[np.ndarray, np.ndarray, dict], Any]

# Errors PIL raises for truncated, corrupt or non-image files. Its decoders also check some
# structure with ``assert`` (a palette PNG without PLTE) and index or unpack bytes they trust.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError, AssertionError,
               IndexError, KeyError, TypeError, EOFError, struct.error, zlib.error)


class DatasetError(DeeplabError, ValueError):
    """A malformed or missing dataset file; ``str(error)`` is one line: ``<path>: <problem>``."""

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = " ".join(str(problem).split())  # keep it on one line
        super().__init__(f"{self.path or '<dataset>'}: {self.problem}")


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives on disk."""

    id: str
    image: Path
    label: Path


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png_chunks(path: str | os.PathLike) -> None:
    """Refuse a PNG whose chunks declare more bytes than the file holds, before PIL allocates them.

    PIL reads a chunk of the declared length in one piece: a flipped length bit would make it
    ask for up to 2 GiB. Files that are not PNGs are left to PIL.
    """
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != _PNG_SIGNATURE:
                return
            size = os.fstat(fh.fileno()).st_size
            pos = 8
            while pos + 8 <= size:
                fh.seek(pos)
                head = fh.read(8)
                length, kind = int.from_bytes(head[:4], "big"), head[4:]
                if pos + 12 + length > size:
                    shown = kind.decode("latin-1").encode("unicode_escape").decode()
                    raise DatasetError(path, f"PNG chunk {shown!r} at byte {pos} declares {length} bytes, only "
                                       f"{size - pos - 12} remain (truncated or corrupt)")
                if kind == b"IEND":
                    return
                pos += 12 + length
    except FileNotFoundError:
        return  # PIL says so in the caller's words
    except OSError as e:
        raise DatasetError(path, f"cannot read file ({e.strerror or e})") from None


def read_image(path: str | os.PathLike, *, exif: bool = True) -> np.ndarray:
    """Decode an image file to ``(H, W, 3)`` uint8 RGB, as a photo viewer shows it: the one image decoder of
    predict, evaluation and the training datasets. Raises a one-line :class:`DatasetError` naming the file.

    - EXIF orientation (values 2..8) is applied as photo viewers do (``PIL.ImageOps.exif_transpose``), so a
      portrait phone photo is upright; ``exif=False`` keeps the pixels as stored (``predict --ignore-exif``).
      Orientation values outside 1..8 are ignored, as viewers ignore them; an EXIF block that cannot be
      applied is an error naming the way out (``--ignore-exif``). Label files are index masks, never rotated
      (:func:`read_index_png`): a rotated image whose label was not is refused as an image/label size mismatch.
      Datasets choose per reader (``SegmentationDataset.exif``): your own folders apply it, the benchmark
      readers (VOC, SBD, COCO-Stuff, DeepFashion2) keep the stored pixels their labels were drawn on.
    - 16-bit images (PIL modes ``I;16*``, and 32-bit ``I`` whose values all lie in 0..65535, which is how
      Pillow opens 16-bit PGM/PPM) are scaled to 0..255 by dividing by 257 (rounded: 65535 -> 255), never
      clipped; larger or negative integers are refused. 16-bit RGB(A) PNGs are decoded by Pillow to 8 bits.
    - Float images (mode ``F``, e.g. TIFF) are scaled by 255 when every value lies in [0, 1]; any other range
      (or NaN) is refused rather than guessed.
    - Palette (with or without transparency), ``LA``/``PA``/``RGBA`` (the alpha channel is dropped, the
      stored colours kept), ``CMYK``, ``YCbCr`` and bilevel images are converted by Pillow; COCO holds
      grayscale JPEGs, hence conversion rather than a channel-count check.

    Pillow's decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) applies: a huge declared size is an error.
    """
    check_png_chunks(path)
    try:
        with Image.open(path) as im:
            im.load()  # force full decode so truncated files fail here, not later
            if exif:
                im = _upright(im, path)
            return _to_rgb8(im, path)
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(path, "image file not found") from None
    except _PIL_ERRORS as e:
        raise DatasetError(path, f"cannot decode image ({type(e).__name__}: {e})") from None


def _upright(im: Image.Image, path: str | os.PathLike) -> Image.Image:
    """``im`` turned as its EXIF orientation says (``PIL.ImageOps.exif_transpose``); unchanged without one."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(im)
    except _PIL_ERRORS as e:
        raise DatasetError(path, f"cannot apply its EXIF orientation ({type(e).__name__}: {e}); "
                           "--ignore-exif reads the pixels as stored") from None


def _to_rgb8(im: Image.Image, path: str | os.PathLike) -> np.ndarray:
    """``im`` as a writable ``(H, W, 3)`` uint8 RGB array: 16-bit divided by 257, [0, 1] floats times 255
    (see :func:`read_image`); ranges that have no defined meaning in 0..255 are refused in one line."""
    mode = im.mode
    if mode == "RGB":
        return np.array(im)  # a writable copy: torch warns on read-only arrays
    if mode.startswith("I") or mode == "F":
        values = np.asarray(im)
        if values.ndim != 2:
            raise DatasetError(path, f"unsupported {mode} image of shape {values.shape}")
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if mode == "F":
            if not (np.isfinite(values).all() and lo >= 0.0 and hi <= 1.0):
                raise DatasetError(path, f"float image with values in [{lo:g}, {hi:g}]: only [0, 1] is scaled to "
                                   "0..255; save it as an 8-bit image")
            gray = np.rint(values.astype(np.float32) * np.float32(255.0))
        else:
            if lo < 0 or hi > 65535:
                raise DatasetError(path, f"{mode} integer image with values in [{lo:g}, {hi:g}]: only 8- and "
                                   "16-bit images (0..65535) are read; save it as an 8- or 16-bit image")
            gray = (values.astype(np.int32) + 128) // 257  # round(v / 257): 16-bit to 8-bit, 65535 -> 255
        return np.repeat(gray.astype(np.uint8)[:, :, None], 3, axis=2)
    if mode in ("P", "PA") or "A" in mode or "a" in mode:
        im = im.convert("RGBA")  # palette transparency and alpha: keep the stored colours, drop the alpha
    return np.array(im.convert("RGB"))


def read_index_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as an ``(H, W)`` array of class indices (uint8, or wider for 16-bit files).

    Palette ("P") images give their indices, not their colours; grayscale ("L", "I;16", "I")
    give their values. Colour (RGB/RGBA) masks are refused with an explanation: their pixels
    are colours, not class indices, and guessing the mapping silently is how labels go wrong.
    """
    check_png_chunks(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("P", "L"):
                return np.asarray(im).copy()
            if mode == "1":
                return np.asarray(im).astype(np.uint8)
            if mode.startswith("I"):
                arr = np.asarray(im)
                return arr.astype(np.int64) if arr.dtype.kind in "iu" else arr
            if mode in ("RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr"):
                raise DatasetError(
                    path,
                    f"label is a {mode} colour image, but labels must be single-channel index masks "
                    "(PNG mode 'P' or 'L' whose pixel values are class ids 0..N-1, 255 = ignore); "
                    "convert colours to indices first, e.g. reproduce.palette.rgb_to_index",
                )
            raise DatasetError(path, f"unsupported label PNG mode {mode!r}")
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(path, "label file not found") from None
    except _PIL_ERRORS as e:
        raise DatasetError(path, f"cannot decode label ({type(e).__name__}: {e})") from None


def check_label(label: np.ndarray, path: str | os.PathLike, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Return ``label`` as uint8 after checking every value is a class index or ``ignore_index``."""
    if label.ndim != 2:
        raise DatasetError(path, f"label must be 2-D, got shape {label.shape}")
    valid = label < num_classes
    if label.dtype.kind == "i":
        valid &= label >= 0
    valid |= label == ignore_index
    if not valid.all():
        bad = np.unique(label[~valid])
        shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
        raise DatasetError(
            path, f"label values {{{shown}}} outside [0, {num_classes - 1}] and not ignore_index {ignore_index}"
        )
    return label.astype(np.uint8, copy=False)


def read_split_file(path: str | os.PathLike) -> list[tuple[str, str | None, str | None]]:
    """Parse a split list: one ``id`` per line, or ``image_path label_path`` pairs.

    The pair form is the DrSleep/kazuto list format (``/JPEGImages/x.jpg /SegmentationClassAug/x.png``);
    paths are returned without their leading slash, relative to the dataset root. Blank lines
    and ``#`` comments are skipped. Returns ``(id, image_rel or None, label_rel or None)``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(path, "split file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(path, f"cannot read split file ({e})") from None
    entries: list[tuple[str, str | None, str | None]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        if len(parts) == 1:
            entries.append((parts[0], None, None))
        elif len(parts) == 2:
            image_rel, label_rel = (p.lstrip("/") for p in parts)
            entries.append((Path(image_rel).stem, image_rel, label_rel))
        else:
            raise DatasetError(path, f"line {lineno}: expected 'id' or 'image_path label_path', got {line.strip()!r}")
    return entries


class SegmentationDataset(torch.utils.data.Dataset):
    """Base reader: a list of :class:`SampleRef` plus label decoding; see the module docstring."""

    name: ClassVar[str] = "segmentation"
    # Whether images are turned upright by their EXIF orientation before they meet their labels. True for
    # your own data (annotation tools such as labelme, CVAT and Label Studio draw on the photo as viewers
    # show it); the benchmark readers set False: their labels, and the published numbers, are on the
    # stored pixels (MATLAB imread, Caffe's OpenCV 2.4 and TensorFlow's decode_jpeg ignore EXIF).
    exif: ClassVar[bool] = True

    def __init__(
        self,
        refs: Sequence[SampleRef],
        *,
        split: str,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int = 255,
        on_error: OnError = "error",
        transform: Transform | None = None,
    ) -> None:
        if on_error not in ("error", "skip"):
            raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
        if not 1 <= num_classes <= 255 or (0 <= ignore_index < num_classes):
            raise ValueError(f"need 1 <= num_classes <= 255 and ignore_index outside the classes, got {num_classes}")
        self.split = split
        self.num_classes = num_classes
        self.class_names = tuple(class_names) if class_names is not None else None
        self.ignore_index = ignore_index
        self.on_error = on_error
        self.transform = transform
        self.skipped: dict[str, str] = {}
        self.refs: list[SampleRef] = []
        # Where each sample stands in the split's list (refs and files left out alike), so that "the
        # first N samples of the split" means the same whichever files are missing: every place of each id,
        # in order (a split list may name a sample twice; each line counts).
        self.listed_positions: dict[str, list[int]] = {}
        # A stat per file is cheap next to decoding and catches the commonest mistake up front.
        for position, ref in enumerate(refs):
            self.listed_positions.setdefault(ref.id, []).append(position)
            missing = next((p for p in (ref.image, ref.label) if not p.is_file()), None)
            if missing is None:
                self.refs.append(ref)
                continue
            kind = "image" if missing == ref.image else "label"
            err = DatasetError(missing, f"{kind} file for sample {ref.id!r} not found")
            if on_error == "error":
                raise err
            self.skipped[ref.id] = str(err)

    # -------------------------------------------------------------- hooks for subclasses
    def read_label(self, ref: SampleRef) -> np.ndarray:
        """Decode the label file to an integer ``(H, W)`` array (values checked afterwards)."""
        return read_index_png(ref.label)

    def postprocess(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Optional per-dataset protocol step after validation (e.g. COCO-Stuff 10k's 513x513 warp)."""
        return image, label

    # -------------------------------------------------------------- loading
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """Read sample ``index`` strictly (raises :class:`DatasetError`), without ``transform``."""
        ref = self.refs[index]
        image = read_image(ref.image, exif=self.exif)
        label = check_label(self.read_label(ref), ref.label, self.num_classes, self.ignore_index)
        if image.shape[:2] != label.shape:
            turned = self.exif and image.shape[1::-1] == label.shape and label.shape[0] != label.shape[1]
            raise DatasetError(
                ref.label,
                f"label size {label.shape[1]}x{label.shape[0]} (WxH) != image size "
                f"{image.shape[1]}x{image.shape[0]} of {ref.image.name}"
                + (" (the image is turned upright by its EXIF orientation; the label fits its stored pixels: "
                   "draw the label on the upright photo, or remove the orientation tag)" if turned else ""),
            )
        orig_size = tuple(label.shape)
        image, label = self.postprocess(image, label)
        meta = {
            "id": ref.id,
            "image_path": str(ref.image),
            "label_path": str(ref.label),
            "dataset": self.name,
            "split": self.split,
            "orig_size": orig_size,
        }
        return image, label, meta

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> Any:
        if not -len(self.refs) <= index < len(self.refs):
            raise IndexError(f"index {index} out of range for {len(self.refs)} samples")
        index %= len(self.refs)
        for attempt in range(len(self.refs)):
            i = (index + attempt) % len(self.refs)
            try:
                image, label, meta = self.load(i)
                break
            except DatasetError as e:
                if self.on_error == "error":
                    raise
                self.skipped[self.refs[i].id] = str(e)
        else:
            raise DatasetError(None, f"{self.name} {self.split}: no readable sample among {len(self.refs)}")
        if self.transform is not None:
            return self.transform(image, label, meta)
        return image, label, meta

    def validate(self, progress: bool = False) -> dict[str, str]:
        """Read every sample once. ``on_error="skip"``: drop bad ones and return ``skipped``.

        With ``on_error="error"`` the first bad sample raises :class:`DatasetError`.
        """
        refs: Iterable[int] = range(len(self.refs))
        if progress:
            from tqdm import tqdm

            refs = tqdm(refs, desc=f"validate {self.name} {self.split}", unit="img")
        good: list[SampleRef] = []
        for i in refs:
            try:
                self.load(i)
                good.append(self.refs[i])
            except DatasetError as e:
                if self.on_error == "error":
                    raise
                self.skipped[self.refs[i].id] = str(e)
        self.refs = good
        return dict(self.skipped)

    @property
    def skip_count(self) -> int:
        """Number of distinct samples skipped so far (in this process)."""
        return len(self.skipped)

    @property
    def ids(self) -> list[str]:
        """Sample ids in index order."""
        return [r.id for r in self.refs]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, samples={len(self)}, num_classes={self.num_classes}, "
            f"skipped={self.skip_count})"
        )


def resize_pair(image: np.ndarray, label: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``size`` = (H, W): image bilinear, label nearest (labels must never be interpolated)."""
    import cv2

    h, w = size
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    return image, label
