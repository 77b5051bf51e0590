"""DeepFashion2 as semantic segmentation: polygon JSON annotations rasterised to index PNGs.

On-disk layout::

    <root>/{train,validation}/image/<id>.jpg
    <root>/{train,validation}/annos/<id>.json   {"item1": {"category_id": 1..13, "segmentation": [[x1, y1, ...], ...]}, ...}
    <root>/{train,validation}/masks/<id>.png    written by `python -m reproduce.prepare deepfashion2 --data-root <root>`

Masks use 0 = background and 1..13 = the clothing categories (14 classes, as in
giovanniguidi/deeplabV3-PyTorch). Items are painted in numeric order (item1, item2, ..., item10),
later items over earlier ones, so where garments overlap the later item wins.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .base import DatasetError, OnError, SampleRef, SegmentationDataset, Transform

__all__ = ["DEEPFASHION2_CLASSES", "DeepFashion2", "rasterize_annotation", "load_annotation"]

DEEPFASHION2_CLASSES: tuple[str, ...] = (
    "background", "short sleeve top", "long sleeve top", "short sleeve outwear", "long sleeve outwear", "vest",
    "sling", "shorts", "trousers", "skirt", "short sleeve dress", "long sleeve dress", "vest dress", "sling dress",
)  # fmt: skip

_ITEM_KEY = re.compile(r"^item(\d+)$")
SPLIT_ALIASES = {"val": "validation"}


MAX_JSON_DEPTH = 32  # an annotation is 4 levels deep (object -> item -> polygon list -> polygon)
MAX_JSON_BYTES = 64 << 20  # the largest DeepFashion2 annotation is a few hundred kB
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def json_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in JSON ``text`` (brackets inside strings ignored), without recursion."""
    skeleton = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8", errors="replace"), dtype=np.uint8)
    steps = np.isin(skeleton, (ord("["), ord("{"))).astype(np.int64) - np.isin(skeleton, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def load_annotation(path: str | os.PathLike) -> dict[str, Any]:
    """Parse one annotation JSON; a :class:`DatasetError` names the file if it is not valid JSON.

    Nesting deeper than :data:`MAX_JSON_DEPTH` is refused before parsing (Python's parser recurses).
    """
    try:
        size = os.path.getsize(path)
        if size > MAX_JSON_BYTES:
            raise DatasetError(path, f"annotation is {size} bytes, more than any DeepFashion2 annotation")
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        depth = json_depth(text)
        if depth > MAX_JSON_DEPTH:
            raise DatasetError(path, f"JSON nested {depth} levels deep (an annotation has 4; at most "
                               f"{MAX_JSON_DEPTH} are read)")
        anno = json.loads(text)
    except FileNotFoundError:
        raise DatasetError(path, "annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DatasetError(path, f"invalid JSON ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise DatasetError(path, f"cannot read annotation ({e.strerror or e})") from None
    if not isinstance(anno, dict):
        raise DatasetError(path, f"expected a JSON object, got {type(anno).__name__}")
    return anno


def rasterize_annotation(
    anno: Mapping[str, Any], height: int, width: int, *, path: str | os.PathLike | None = None
) -> np.ndarray:
    """Paint every item's polygons into an ``(height, width)`` uint8 mask (0 background, 1..13).

    Coordinates are pixel positions (x right, y down) rounded to the nearest integer; polygons
    are clipped to the image by the fill. Each polygon is filled on its own so that two
    overlapping polygons of one item never cancel out (cv2's multi-contour fill is even-odd).
    Coordinates must be finite and within one image size of the image on every side (a point
    like -1e308 is a corrupt file, and would make the fill overflow or crawl).
    """
    if height < 1 or width < 1:
        raise DatasetError(path, f"image size {width}x{height} (WxH) is empty")
    import cv2

    items = []
    for key, item in anno.items():
        m = _ITEM_KEY.match(key)
        if m:
            items.append((int(m.group(1)), key, item))
    mask = np.zeros((height, width), dtype=np.uint8)
    for _, key, item in sorted(items):  # numeric order: item10 after item9
        if not isinstance(item, dict):
            raise DatasetError(path, f"{key} is not an object")
        cat = item.get("category_id")
        if not isinstance(cat, int) or isinstance(cat, bool) or not 1 <= cat <= 13:
            raise DatasetError(path, f"{key}: category_id must be an integer in 1..13, got {cat!r}")
        polygons = item.get("segmentation")
        if not isinstance(polygons, list):
            raise DatasetError(path, f"{key}: 'segmentation' must be a list of polygons")
        for n, poly in enumerate(polygons):
            try:
                pts = np.asarray(poly, dtype=np.float64)
            except (TypeError, ValueError):
                raise DatasetError(path, f"{key}: polygon {n} is not a list of numbers") from None
            if pts.ndim != 1 or pts.size < 6 or pts.size % 2 or not np.isfinite(pts).all():
                raise DatasetError(path, f"{key}: polygon {n} needs >= 3 finite (x, y) pairs, got {pts.size} values")
            xy = pts.reshape(-1, 2)
            far = (np.abs(xy[:, 0] - width / 2) > 1.5 * width) | (np.abs(xy[:, 1] - height / 2) > 1.5 * height)
            if far.any():
                x, y = xy[np.argmax(far)]
                raise DatasetError(path, f"{key}: polygon {n} has the point ({x:g}, {y:g}), far outside the "
                                   f"{width}x{height} image")
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32).reshape(-1, 1, 2)], int(cat))
    return mask


class DeepFashion2(SegmentationDataset):
    """DeepFashion2 ``train`` or ``validation`` ("val" accepted) with masks from ``prepare deepfashion2``."""

    name = "deepfashion2"
    exif = False  # labels on the stored pixels (SegmentationDataset.exif)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        mask_dir: str = "masks",
        on_error: OnError = "error",
        transform: Transform | None = None,
    ) -> None:
        self.root = Path(root)
        split = SPLIT_ALIASES.get(split, split)
        image_dir = self.root / split / "image"
        if not image_dir.is_dir():
            raise DatasetError(image_dir, "image folder not found (expected <root>/{train,validation}/image)")
        masks = self.root / split / mask_dir
        if not masks.is_dir():
            raise DatasetError(
                masks, f"mask folder not found; run `python -m reproduce.prepare deepfashion2 --data-root {self.root}` first"
            )
        refs = [SampleRef(p.stem, p, masks / f"{p.stem}.png") for p in sorted(image_dir.glob("*.jpg"))]
        super().__init__(
            refs,
            split=split,
            num_classes=len(DEEPFASHION2_CLASSES),
            class_names=DEEPFASHION2_CLASSES,
            on_error=on_error,
            transform=transform,
        )
