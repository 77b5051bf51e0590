"""Check a folder of images and masks before training on it; class histograms; a seeded train/val split.

:func:`check_folder` reads every mask once (and each image's header, for its size) and returns a
:class:`DataCheck`: the good image/mask pairs, one-line ``problems`` (that stop a run), ``warnings``
and ``notes`` (what it understood, e.g. the exact colour -> class map it will use for colour masks),
and a pixel histogram per sample. The layout is ``reproduce.datasets.folder``'s: ``images/<name>.*``,
``labels/<name>.png``. Masks may be

* index PNGs (grayscale ``L``/``I``: the value is the class; palette ``P``: the *index* is the class
  whatever colour the palette gives it, listed in a note), or
* colour (RGB/RGBA) PNGs: each colour is mapped to a class by ``classes.txt`` lines
  ``name R G B``, or, when no line gives a colour, by the VOC colour map (class k = VOC colour k,
  VOC's boundary colour 224 224 192 = ignore) if every colour found is in it. A colour outside the
  map is a problem naming the file. :func:`write_index_masks` writes the converted index masks.

Problems: an image without a mask, a mask without an image, a mask that is not a PNG, an
unreadable file, image/mask size mismatches, mask values outside the classes and the ignore
label, colours outside the map. Warnings: classes with (almost) no pixels, class imbalance,
classes missing from the validation split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .datasets.base import _PIL_ERRORS, DatasetError, check_png_chunks
from .datasets.folder import IMAGE_SUFFIXES

__all__ = ["ClassList", "DataCheck", "read_classes", "check_folder", "make_split", "read_split", "format_histogram",
           "imbalance_warning", "write_index_masks", "VOC_VOID"]

VOC_VOID = (224, 224, 192)   # VOC's boundary colour: ignore
NEAR_EMPTY_SHARE = 5e-4      # a class below this share of the labelled pixels is near-empty (< 1 pixel in 2000)
NEAR_EMPTY_IMAGES = 2        # ... or present in fewer images than this
IMBALANCE_RATIO = 20.0       # largest / smallest class share that earns the imbalance warning
MAX_LISTED = 10              # problems of one kind listed one by one; the rest are counted


@dataclass(frozen=True)
class ClassList:
    """Class names in index order and, when ``classes.txt`` gives them, each class's mask colour."""

    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...] | None = None


def read_classes(path: str | os.PathLike) -> ClassList:
    """``classes.txt``: one class per line, line k (from 0) = class k; ``name`` or ``name R G B`` (its mask colour).

    Colours must be given for every class or for none.
    """
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError:
        raise DatasetError(path, "class list not found (one class name per line, line k = class k)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(path, f"cannot read the class list ({e})") from None
    names: list[str] = []
    colours: list[tuple[int, int, int] | None] = []
    for lineno, line in enumerate(lines, 1):
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        tail = parts[-3:]
        if len(parts) >= 4 and all(t.isdigit() for t in tail):
            rgb = tuple(int(t) for t in tail)
            if max(rgb) > 255:
                raise DatasetError(path, f"line {lineno}: colour {rgb} has a value above 255")
            names.append(" ".join(parts[:-3]))
            colours.append(rgb)  # type: ignore[arg-type]
        else:
            names.append(line)
            colours.append(None)
    if not names:
        raise DatasetError(path, "class list is empty")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DatasetError(path, f"class list has duplicate names: {', '.join(dup)}")
    if len(names) > 255:
        raise DatasetError(path, f"{len(names)} classes do not fit uint8 masks (at most 255 besides ignore 255)")
    given = [c for c in colours if c is not None]
    if given and len(given) != len(names):
        raise DatasetError(path, f"{len(given)} of {len(names)} classes have a colour: give 'name R G B' for every "
                           "class or for none")
    if given and len(set(given)) != len(given):
        raise DatasetError(path, "two classes share one colour")
    return ClassList(tuple(names), tuple(given) if given else None)  # type: ignore[arg-type]


@dataclass
class Sample:
    id: str
    image: Path
    label: Path


@dataclass
class DataCheck:
    """What :func:`check_folder` found; ``ok`` when there is no problem."""

    samples: list[Sample] = field(default_factory=list)            # good pairs, sorted by id
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    histograms: dict[str, np.ndarray] = field(default_factory=dict)  # id -> pixels per class
    colour_map: dict[tuple[int, int, int], int] | None = None       # set when some masks are colour images
    colour_masks: set[str] = field(default_factory=set)              # ids whose mask is a colour image

    @property
    def ok(self) -> bool:
        return not self.problems

    def histogram(self, ids: Sequence[str] | None = None) -> np.ndarray:
        ids = list(self.histograms) if ids is None else ids
        return np.sum([self.histograms[i] for i in ids], axis=0) if ids else np.zeros(0, np.int64)

    def images_with(self, ids: Sequence[str]) -> np.ndarray:
        """How many of ``ids`` contain each class."""
        return np.sum([self.histograms[i] > 0 for i in ids], axis=0)


class _Listed:
    """Problems of one kind: the first MAX_LISTED one per line, then a count."""

    def __init__(self, out: list[str]) -> None:
        self.out, self.kinds = out, {}

    def add(self, kind: str, line: str) -> None:
        n = self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if n <= MAX_LISTED:
            self.out.append(line)

    def close(self) -> None:
        for kind, n in self.kinds.items():
            if n > MAX_LISTED:
                self.out.append(f"... and {n - MAX_LISTED} more {kind}")


def _voc_map(num_classes: int) -> dict[tuple[int, int, int], int]:
    from .palette import voc_palette

    pal = voc_palette(num_classes)
    return {**{tuple(int(v) for v in pal[k]): k for k in range(num_classes)}, VOC_VOID: 255}


def _read_mask(path: Path) -> tuple[np.ndarray, str, np.ndarray | None]:
    """(array, PIL mode, palette as (256, 3) or None); raises DatasetError one line."""
    check_png_chunks(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            palette = None
            if mode == "P":
                raw = im.getpalette() or []
                palette = np.zeros((256, 3), np.int64)
                flat = np.asarray(raw[: 256 * 3], np.int64).reshape(-1, 3)
                palette[: len(flat)] = flat
                return np.asarray(im).copy(), mode, palette
            if mode in ("RGBA", "LA", "PA", "CMYK", "YCbCr"):
                im = im.convert("RGB")
            return np.asarray(im).copy(), mode, None
    except _PIL_ERRORS as e:
        raise DatasetError(path, f"cannot decode the mask ({type(e).__name__}: {e})") from None


def _image_size(path: Path) -> tuple[int, int]:
    """(W, H) from the header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except _PIL_ERRORS as e:
        raise DatasetError(path, f"cannot read the image ({type(e).__name__}: {e})") from None


def _colour_codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb[..., :3].astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _rgb(code: int) -> tuple[int, int, int]:
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


def check_folder(root: str | os.PathLike, classes: ClassList, *, image_dir: str = "images", label_dir: str = "labels",
                 ignore_index: int = 255) -> DataCheck:
    """Check every image/mask pair of ``root`` (module docstring); never raises for a bad file."""
    root = Path(root)
    out = DataCheck()
    listed = _Listed(out.problems)
    images_dir, labels_dir = root / image_dir, root / label_dir
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            out.problems.append(f"{d}: folder not found (the layout is {image_dir}/<name>.jpg|png and "
                                f"{label_dir}/<name>.png)")
    if out.problems:
        return out
    images: dict[str, Path] = {}
    for p in sorted(images_dir.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in images:
                listed.add("duplicate images", f"{p}: a second image named {p.stem!r} (also {images[p.stem].name})")
                continue
            images[p.stem] = p
    masks: dict[str, Path] = {}
    for p in sorted(labels_dir.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if p.suffix.lower() != ".png":
            listed.add("non-PNG masks", f"{p}: masks must be PNG files (JPEG changes the values at edges); save it "
                                        "as labels/<name>.png")
            continue
        masks[p.stem] = p
    if not images:
        out.problems.append(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    for name in sorted(set(images) - set(masks)):
        listed.add("images without masks", f"{images[name]}: image without mask (expected {labels_dir / name}.png)")
    for name in sorted(set(masks) - set(images)):
        listed.add("masks without images", f"{masks[name]}: mask without image (expected {images_dir / name}"
                                           ".jpg or .png)")
    num_classes = len(classes.names)
    colour_map = None if classes.colours is None else {c: k for k, c in enumerate(classes.colours)}
    colours_seen: dict[int, tuple[str, Path]] = {}  # colour code -> (first id, file) of colour masks
    palettes_seen: dict[int, tuple[int, int, int]] = {}
    modes: set[str] = set()
    colour_counts: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # id -> (colour codes, pixels): small
    for name in sorted(set(images) & set(masks)):
        image, mask = images[name], masks[name]
        try:
            w, h = _image_size(image)
            arr, mode, palette = _read_mask(mask)
        except DatasetError as e:
            listed.add("unreadable files", str(e))
            continue
        modes.add(mode)
        if arr.shape[:2] != (h, w):
            listed.add("size mismatches", f"{mask}: mask size {arr.shape[1]}x{arr.shape[0]} (WxH) != image size "
                                          f"{w}x{h} of {image.name}")
            continue
        if arr.ndim == 3:  # a colour mask: colours -> classes later, when the map is known
            codes, counts = np.unique(_colour_codes(arr), return_counts=True)
            for c in codes.tolist():
                colours_seen.setdefault(c, (name, mask))
            colour_counts[name] = (codes, counts)
            out.colour_masks.add(name)
            out.samples.append(Sample(name, image, mask))
            continue
        values, counts = np.unique(arr, return_counts=True)
        bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore_index)]
        if bad:
            shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
            listed.add("masks with values outside the classes",
                       f"{mask}: values {{{shown}}} are outside classes 0..{num_classes - 1} and the ignore label "
                       f"{ignore_index} ({num_classes} classes in the class list)")
            continue
        if palette is not None:
            for v in values.tolist():
                palettes_seen.setdefault(int(v), tuple(int(x) for x in palette[v]))
        hist = np.zeros(num_classes, np.int64)
        keep = values != ignore_index
        hist[values[keep].astype(np.int64)] = counts[keep]
        out.histograms[name] = hist
        out.samples.append(Sample(name, image, mask))
    if colours_seen:
        colour_map = _resolve_colour_map(colour_map, set(colours_seen), num_classes, out)
        out.colour_map = colour_map
        known = {(k[0] << 16) | (k[1] << 8) | k[2] for k in colour_map}
        for code, (_, mask) in sorted(colours_seen.items(), key=lambda kv: kv[1][0]):
            if code not in known:
                listed.add("colours outside the colour map",
                           f"{mask}: colour {_rgb(code)} is not a class colour (give each class its colour in "
                           "classes.txt as 'name R G B')")
        lut = {(k[0] << 16) | (k[1] << 8) | k[2]: v for k, v in colour_map.items()}
        bad_ids = {name for code, (name, _) in colours_seen.items() if code not in lut}
        for name, (codes, counts) in colour_counts.items():
            if name in bad_ids or any(c not in lut for c in codes.tolist()):
                out.samples = [s for s in out.samples if s.id != name]
                continue
            hist = np.zeros(num_classes, np.int64)
            for c, n in zip(codes.tolist(), counts.tolist()):
                if lut[c] != ignore_index:
                    hist[lut[c]] += n
            out.histograms[name] = hist
    listed.close()
    out.samples.sort(key=lambda s: s.id)
    out.notes.extend(_mask_notes(modes, palettes_seen, classes, out.colour_map, ignore_index))
    return out


def _resolve_colour_map(given: dict | None, seen: set[int], num_classes: int, out: DataCheck) -> dict:
    if given is not None:
        return {**given, VOC_VOID: 255} if VOC_VOID not in given else dict(given)
    voc = _voc_map(num_classes)
    voc_codes = {(k[0] << 16) | (k[1] << 8) | k[2] for k in voc}
    if seen <= voc_codes:
        out.notes.append("colour masks without colours in classes.txt: every colour found is in the VOC colour map, "
                         "so class k = VOC colour k")
    return voc


def _mask_notes(modes: set[str], palettes: dict[int, tuple[int, int, int]], classes: ClassList,
                colour_map: dict | None, ignore_index: int) -> list[str]:
    notes = []
    if modes & {"L", "I", "I;16", "1"}:
        notes.append("grayscale masks: the pixel value is the class index")
    if "P" in modes:
        pairs = ", ".join(f"{v} {c} = {classes.names[v] if v < len(classes.names) else 'ignore'}"
                          for v, c in sorted(palettes.items()))
        notes.append(f"palette masks: the palette index is the class, whatever its colour (index colour = class: "
                     f"{pairs})")
    if colour_map is not None:
        pairs = ", ".join(f"{c} = {classes.names[k] if k != ignore_index else 'ignore'}"
                          for c, k in sorted(colour_map.items(), key=lambda kv: kv[1]))
        notes.append(f"colour masks, converted with this colour -> class map: {pairs}")
    return notes


def write_index_masks(check: DataCheck, target: str | os.PathLike) -> Path:
    """Every good sample's mask as an index PNG in ``target`` (colour masks converted by ``check.colour_map``)."""
    from converters.io import write_atomic

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    lut = {(c[0] << 16) | (c[1] << 8) | c[2]: k for c, k in (check.colour_map or {}).items()}
    for s in check.samples:
        arr, _, _ = _read_mask(s.label)
        if arr.ndim == 3:
            uniq, inv = np.unique(_colour_codes(arr), return_inverse=True)
            arr = np.asarray([lut[c] for c in uniq.tolist()], np.uint8)[inv.reshape(arr.shape[:2])]
        write_atomic(target / f"{s.id}.png",
                     lambda p, a=arr: Image.fromarray(a.astype(np.uint8)).save(p, format="PNG"))
    return target


# ============================================================================ split and histogram
def make_split(ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded random split: ``round(n * val_fraction)`` ids (at least 1, leaving 1) for val, in sorted order."""
    ids = sorted(ids)
    n = len(ids)
    if n < 2:
        raise DatasetError(None, f"{n} usable image/mask pair(s): a train/val split needs at least 2")
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    order = np.random.default_rng([seed, 0x5B17]).permutation(n)
    val = sorted(ids[i] for i in order[:n_val])
    return [i for i in ids if i not in set(val)], val


def read_split(path: Path) -> list[str]:
    from .datasets.base import read_split_file

    return [sample_id for sample_id, _, _ in read_split_file(path)]


def format_histogram(hist: np.ndarray, images: np.ndarray, names: Sequence[str], title: str) -> list[str]:
    """Text lines: one per class with its pixel share, a bar, and the number of images containing it."""
    total = max(int(hist.sum()), 1)
    width = max(len(n) for n in names)
    lines = [title]
    for k, name in enumerate(names):
        share = hist[k] / total
        bar = "#" * int(round(share * 40))
        lines.append(f"  {k:3d} {name:<{width}} {100 * share:7.3f} %  {int(images[k]):5d} image(s)  {bar}")
    return lines


def imbalance_warning(hist: np.ndarray, names: Sequence[str], images: np.ndarray) -> list[str]:
    """Warnings for empty, near-empty and imbalanced classes of a (training) histogram."""
    total = int(hist.sum())
    out = []
    if total == 0:
        return ["warning: the masks label no pixel with a class (all ignore)"]
    share = hist / total
    for k, name in enumerate(names):
        if hist[k] == 0:
            out.append(f"warning: class {k} {name!r} has no pixel in the training masks: the model cannot learn it")
        elif share[k] < NEAR_EMPTY_SHARE or images[k] < NEAR_EMPTY_IMAGES:
            out.append(f"warning: class {k} {name!r} is near-empty: {int(hist[k])} pixels "
                       f"({100 * share[k]:.4f} %) in {int(images[k])} image(s); it will barely be learned")
    present = np.flatnonzero(hist)
    if len(present) > 1:
        big, small = present[np.argmax(share[present])], present[np.argmin(share[present])]
        ratio = share[big] / share[small]
        if ratio >= IMBALANCE_RATIO:
            out.append(f"warning: imbalanced classes: {names[big]!r} {100 * share[big]:.2f} % vs {names[small]!r} "
                       f"{100 * share[small]:.2f} % of the labelled pixels ({ratio:.0f}x); plain cross-entropy "
                       "drifts to the large classes: consider --class-weights auto or --top-k-percent-pixels 0.25")
    return out
