"""Miniature datasets in the exact on-disk layouts of the real ones, for tests and smoke runs.

Every writer is deterministic given ``seed`` (same files, same bytes) and small by default (image
sides drawn from ``sizes=(24, 41)`` pixels), so a whole tree is written in well under a second;
pass a larger ``sizes`` for smoke runs that crop 321 or 513 pixels. Images are the label's VOC
colour plus noise, so a model can actually learn them in a smoke run. Nothing here is used to
produce reported numbers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from converters.io import save_image, write_text_atomic

from .palette import voc_palette, voc_palette_flat

__all__ = [
    "random_label",
    "image_from_label",
    "add_void_boundaries",
    "save_jpeg",
    "save_palette_png",
    "save_gray_png",
    "VOCAugTree",
    "write_voc",
    "write_sbd",
    "write_voc_aug_sources",
    "write_cocostuff10k",
    "write_cocostuff164k",
    "write_deepfashion2",
    "write_folder",
]

SIZES = (24, 41)  # default image sides in pixels, drawn from [low, high); pass sizes=(321, 400) for crop-sized data


def _size(rng: np.random.Generator, sizes: tuple[int, int]) -> tuple[int, int]:
    low, high = sizes
    if not 1 <= low < high:
        raise ValueError(f"sizes must be (low, high) with 1 <= low < high, got {sizes}")
    h, w = rng.integers(low, high, size=2)
    return int(h), int(w)


def random_label(
    rng: np.random.Generator, height: int, width: int, classes: Sequence[int], cells: int = 4
) -> np.ndarray:
    """A blocky ``(height, width)`` uint8 label: a random ``cells x cells`` grid of ``classes``, upsampled nearest."""
    import cv2

    grid = rng.choice(np.asarray(classes, dtype=np.uint8), size=(cells, cells))
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_NEAREST)


def add_void_boundaries(label: np.ndarray, void: int = 255) -> np.ndarray:
    """Mark pixels whose right or lower neighbour has another class as ``void``, like VOC's object outlines."""
    out = label.copy()
    edge = np.zeros(label.shape, dtype=bool)
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge[:-1, :] |= label[:-1, :] != label[1:, :]
    out[edge] = void
    return out


def image_from_label(rng: np.random.Generator, label: np.ndarray, noise: int = 20) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB image: each pixel is its class's VOC colour plus uniform noise."""
    base = voc_palette()[label].astype(np.int16)
    jitter = rng.integers(-noise, noise + 1, size=base.shape, dtype=np.int16)
    return np.clip(base + jitter, 0, 255).astype(np.uint8)


def save_jpeg(path: Path, image: np.ndarray) -> None:
    """Write an RGB uint8 array as a JPEG (quality 95), creating parent folders (atomically, decoded back)."""
    save_image(path, Image.fromarray(image, mode="RGB"), "JPEG", quality=95)


def save_palette_png(path: Path, label: np.ndarray) -> None:
    """Write an index mask as a palette ("P") PNG with the VOC colour map, as VOC's SegmentationClass."""
    im = Image.fromarray(label.astype(np.uint8), mode="L").convert("P")
    im.putpalette(voc_palette_flat())
    save_image(path, im, "PNG")


def save_gray_png(path: Path, label: np.ndarray) -> None:
    """Write an index mask as a grayscale ("L") PNG, as SegmentationClassAug and stuffthingmaps."""
    save_image(path, Image.fromarray(label.astype(np.uint8), mode="L"), "PNG")


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    write_text_atomic(path, "".join(f"{ln}\n" for ln in lines))


# ---------------------------------------------------------------------------------------- VOC / SBD
def write_voc(
    root: str | os.PathLike,
    *,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    extra_image_ids: Sequence[str] = (),
    seed: int = 0,
    sizes: tuple[int, int] = SIZES,
) -> Path:
    """Write ``VOCdevkit/VOC2012`` under ``root``; return the ``VOC2012`` path.

    Writes ``JPEGImages`` for train, val and ``extra_image_ids`` (images without VOC labels, like
    the SBD-only ones), palette ``SegmentationClass`` PNGs with 255 outlines for train and val,
    and ``ImageSets/Segmentation/{train,val,trainval}.txt``. The image for an id depends only on
    ``seed`` and the id, so :func:`write_sbd` can write matching labels.
    """
    voc = Path(root) / "VOCdevkit" / "VOC2012"
    for sample_id in [*train_ids, *val_ids, *extra_image_ids]:
        label = _voc_label(sample_id, seed, sizes)
        save_jpeg(voc / "JPEGImages" / f"{sample_id}.jpg", image_from_label(_rng(seed, sample_id, 1), label))
        if sample_id in train_ids or sample_id in val_ids:
            save_palette_png(voc / "SegmentationClass" / f"{sample_id}.png", add_void_boundaries(label))
    sets = voc / "ImageSets" / "Segmentation"
    _write_lines(sets / "train.txt", train_ids)
    _write_lines(sets / "val.txt", val_ids)
    _write_lines(sets / "trainval.txt", sorted([*train_ids, *val_ids]))
    return voc


def write_sbd(
    root: str | os.PathLike,
    *,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    seed: int = 0,
    sizes: tuple[int, int] = SIZES,
) -> Path:
    """Write ``benchmark_RELEASE/dataset`` (``img/``, ``cls/*.mat``, ``train.txt``, ``val.txt``); return ``benchmark_RELEASE``.

    Each ``cls/<id>.mat`` is a MATLAB v5 file holding struct ``GTcls`` with fields ``Segmentation``
    (uint8, 0..20, no void outlines, as SBD), ``Boundaries`` (a cell of sparse matrices) and
    ``CategoriesPresent``, as in the real release. For ids also in :func:`write_voc` with the same
    seed, the segmentation equals the VOC label without its 255 outlines.
    """
    import scipy.io
    import scipy.sparse

    sbd = Path(root) / "benchmark_RELEASE"
    ds = sbd / "dataset"
    for sample_id in sorted({*train_ids, *val_ids}):
        label = _voc_label(sample_id, seed, sizes)
        save_jpeg(ds / "img" / f"{sample_id}.jpg", image_from_label(_rng(seed, sample_id, 1), label))
        boundaries = np.empty((20, 1), dtype=object)
        for k in range(20):
            boundaries[k, 0] = scipy.sparse.csc_matrix(label.shape, dtype=np.uint8)
        present = np.unique(label[label > 0]).astype(np.uint8).reshape(-1, 1)
        gt = {"Segmentation": label, "Boundaries": boundaries, "CategoriesPresent": present}
        (ds / "cls").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(ds / "cls" / f"{sample_id}.mat", {"GTcls": gt}, format="5", do_compression=True)
    _write_lines(ds / "train.txt", train_ids)
    _write_lines(ds / "val.txt", val_ids)
    return sbd


@dataclass
class VOCAugTree:
    """Paths and expected set algebra of a miniature VOC + SBD pair."""

    voc_root: Path
    sbd_root: Path
    voc_train: list[str]
    voc_val: list[str]
    sbd_train: list[str]
    sbd_val: list[str]
    train_aug: list[str] = field(default_factory=list)  # (voc_train | sbd_train | sbd_val) - voc_val, sorted


def write_voc_aug_sources(
    root: str | os.PathLike, *, seed: int = 0, scale: int = 1, sizes: tuple[int, int] = SIZES
) -> VOCAugTree:
    """Write a VOC 2012 tree and an SBD tree whose id sets overlap the way the real ones do.

    Some VOC train ids are in SBD train or SBD val, some VOC val ids are in SBD train/val (they
    must be excluded from train_aug), and some SBD ids are not in VOC's segmentation sets at all.
    ``scale`` multiplies every group size. With ``scale=1``: 6 VOC train, 4 VOC val, 6 SBD-only,
    and a train_aug of 12.
    """
    ids = [f"2008_{i:06d}" for i in range(1, 16 * scale + 1)]
    t, v, s = ids[: 6 * scale], ids[6 * scale : 10 * scale], ids[10 * scale :]
    h = scale
    voc_train, voc_val = t, v
    sbd_train = sorted([*t[: 3 * h], *v[:h], *s[: 4 * h]])
    sbd_val = sorted([*t[3 * h : 4 * h], *v[h : 2 * h], *s[4 * h :]])
    voc_root = write_voc(root, train_ids=voc_train, val_ids=voc_val, extra_image_ids=s, seed=seed, sizes=sizes)
    sbd_root = write_sbd(root, train_ids=sbd_train, val_ids=sbd_val, seed=seed, sizes=sizes)
    train_aug = sorted(({*voc_train} | {*sbd_train} | {*sbd_val}) - {*voc_val})
    return VOCAugTree(voc_root, sbd_root, list(voc_train), list(voc_val), sbd_train, sbd_val, train_aug)


def _rng(seed: int, sample_id: str, stream: int) -> np.random.Generator:
    """A generator that depends on (seed, id, stream) only, so files do not depend on write order."""
    return np.random.default_rng([seed, stream, *sample_id.encode()])


def _voc_label(sample_id: str, seed: int, sizes: tuple[int, int]) -> np.ndarray:
    rng = _rng(seed, sample_id, 0)
    h, w = _size(rng, sizes)
    return random_label(rng, h, w, classes=[0, 0, *rng.choice(np.arange(1, 21), size=3, replace=False)])


# ---------------------------------------------------------------------------------------- COCO-Stuff
def write_cocostuff10k(
    root: str | os.PathLike, *, n_train: int = 4, n_test: int = 2, seed: int = 0, sizes: tuple[int, int] = SIZES
) -> Path:
    """Write ``cocostuff-10k-v1.1`` (images, annotations/*.mat with ``S``, imageLists); return its path.

    ``S`` is uint16 with 0 = unlabeled and 1..182 = classes (the v1.1 convention); every file uses
    class 182 and unlabeled pixels, so the 1..182 -> 0..181, 0 -> 255 shift is exercised.
    """
    import scipy.io

    base = Path(root) / "cocostuff-10k-v1.1"
    rng = np.random.default_rng(seed)
    ids = [f"COCO_train2014_{i:012d}" for i in rng.choice(10**6, size=n_train + n_test, replace=False)]
    for sample_id in ids:
        h, w = _size(rng, sizes)
        s = random_label(rng, h, w, classes=[0, 182, *rng.integers(1, 182, size=3)]).astype(np.uint16)
        s[0, 0], s[-1, -1] = 0, 182
        shown = np.where(s == 0, 255, s - 1).astype(np.uint8)
        save_jpeg(base / "images" / f"{sample_id}.jpg", image_from_label(rng, shown))
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        names = np.array(["unlabeled", *[f"class{k}" for k in range(1, 183)]], dtype=object)
        scipy.io.savemat(base / "annotations" / f"{sample_id}.mat", {"S": s, "names": names}, format="5")
    _write_lines(base / "imageLists" / "train.txt", ids[:n_train])
    _write_lines(base / "imageLists" / "test.txt", ids[n_train:])
    _write_lines(base / "imageLists" / "all.txt", ids)
    return base


def write_cocostuff164k(
    root: str | os.PathLike, *, n_train: int = 4, n_val: int = 2, seed: int = 0, sizes: tuple[int, int] = SIZES
) -> Path:
    """Write ``cocostuff/images/{train2017,val2017}`` and ``annotations/...`` stuffthingmap PNGs (0..181, 255)."""
    base = Path(root) / "cocostuff"
    rng = np.random.default_rng(seed)
    ids = [f"{i:012d}" for i in rng.choice(10**6, size=n_train + n_val, replace=False)]
    for k, sample_id in enumerate(ids):
        split = "train2017" if k < n_train else "val2017"
        h, w = _size(rng, sizes)
        label = random_label(rng, h, w, classes=[255, 181, *rng.integers(0, 182, size=3)])
        save_jpeg(base / "images" / split / f"{sample_id}.jpg", image_from_label(rng, label))
        save_gray_png(base / "annotations" / split / f"{sample_id}.png", label)
    return base


# ---------------------------------------------------------------------------------------- DeepFashion2
def write_deepfashion2(
    root: str | os.PathLike, *, n_train: int = 3, n_val: int = 2, seed: int = 0, sizes: tuple[int, int] = SIZES
) -> Path:
    """Write ``{train,validation}/image/*.jpg`` and ``annos/*.json`` polygon annotations; return ``root``.

    Each image has 1-3 items; item polygons are axis-aligned rectangles (as 4-point polygons) and
    triangles with integer corners, and the last two items overlap so paint order matters.
    """
    base = Path(root)
    rng = np.random.default_rng(seed)
    counter = 0
    for split, n in (("train", n_train), ("validation", n_val)):
        for _ in range(n):
            counter += 1
            name = f"{counter:06d}"
            h, w = _size(rng, sizes)
            anno: dict[str, object] = {"source": "shop", "pair_id": counter}
            n_items = int(rng.integers(1, 4))
            for k in range(1, n_items + 1):
                x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
                x1, y1 = int(rng.integers(x0 + 3, w)), int(rng.integers(y0 + 3, h))
                polys = [[x0, y0, x1, y0, x1, y1, x0, y1]]
                if rng.random() < 0.5:  # a second, triangular part of the same garment
                    polys.append([0, h - 1, w // 3, h - 1, 0, h - 1 - h // 3])
                cat = int(rng.integers(1, 14))
                anno[f"item{k}"] = {
                    "segmentation": polys,
                    "category_id": cat,
                    "category_name": f"category {cat}",
                    "bounding_box": [x0, y0, x1, y1],
                    "style": 1,
                    "occlusion": 1,
                }
            image = image_from_label(rng, np.zeros((h, w), dtype=np.uint8), noise=60)
            save_jpeg(base / split / "image" / f"{name}.jpg", image)
            write_text_atomic(base / split / "annos" / f"{name}.json", json.dumps(anno))
    return base


# ---------------------------------------------------------------------------------------- your own data
def write_folder(
    root: str | os.PathLike,
    *,
    n: int = 5,
    classes: Sequence[str] = ("background", "cat", "dog"),
    label_format: str = "palette",
    splits: dict[str, Sequence[int]] | None = None,
    seed: int = 0,
    sizes: tuple[int, int] = SIZES,
) -> Path:
    """Write ``images/``, ``labels/``, ``classes.txt`` and ``splits/*.txt`` under ``root``; return ``root``.

    ``label_format``: "palette" (P-mode index PNGs), "gray" (L-mode index PNGs) or "rgb" (colour
    masks, which readers must refuse). ``splits`` maps a split name to sample positions
    (default: first n-2 train, last 2 val). A few labels contain 255 (ignore).
    """
    if label_format not in ("palette", "gray", "rgb"):
        raise ValueError(f"label_format must be 'palette', 'gray' or 'rgb', got {label_format!r}")
    base = Path(root)
    rng = np.random.default_rng(seed)
    names = [f"img_{k:03d}" for k in range(n)]
    for k, name in enumerate(names):
        h, w = _size(rng, sizes)
        label = random_label(rng, h, w, classes=range(len(classes)))
        if k % 2:
            label[:2, :2] = 255
        save_jpeg(base / "images" / f"{name}.jpg", image_from_label(rng, label))
        path = base / "labels" / f"{name}.png"
        if label_format == "palette":
            save_palette_png(path, label)
        elif label_format == "gray":
            save_gray_png(path, label)
        else:
            save_image(path, Image.fromarray(voc_palette()[label], mode="RGB"), "PNG")
    _write_lines(base / "classes.txt", classes)
    if splits is None:
        splits = {"train": range(max(n - 2, 0)), "val": range(max(n - 2, 0), n)}
    for split, positions in splits.items():
        _write_lines(base / "splits" / f"{split}.txt", [names[p] for p in positions])
    return base
