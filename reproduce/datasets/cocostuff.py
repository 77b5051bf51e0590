"""COCO-Stuff readers: the 10k release (.mat labels) and the full 164k release (PNG stuffthingmaps).

On-disk layouts::

    cocostuff-10k-v1.1/images/<id>.jpg
    cocostuff-10k-v1.1/annotations/<id>.mat      variable S: 0 = unlabeled, 1..182 = classes
    cocostuff-10k-v1.1/imageLists/{train,test,all}.txt

    cocostuff/images/{train2017,val2017}/<id>.jpg
    cocostuff/annotations/{train2017,val2017}/<id>.png   0..181 = classes, 255 = unlabeled

Both give 182 classes (0..181) and ignore 255. Only 171 of the 182 indices ever occur: eleven
COCO thing classes have no annotations, which is why the COCO-Stuff evaluation averages over
classes present in the ground truth (``ConfusionMatrix.compute(classes="present_in_gt")``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import DatasetError, OnError, SampleRef, SegmentationDataset, Transform, read_split_file, resize_pair
from .matfile import MatProblem, read_label

__all__ = ["CocoStuff10k", "CocoStuff164k", "read_cocostuff10k_mat", "COCOSTUFF_NUM_CLASSES"]

COCOSTUFF_NUM_CLASSES = 182


def _class_names(root: Path) -> tuple[str, ...] | None:
    """Class names from an optional ``labels.txt`` ("<index>: <name>" or one name per line, 182 lines)."""
    path = root / "labels.txt"
    if not path.is_file():
        return None
    names = [ln.split(":", 1)[-1].strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(names) == COCOSTUFF_NUM_CLASSES + 1 and names[0] == "unlabeled":
        names = names[1:]
    if len(names) != COCOSTUFF_NUM_CLASSES:
        raise DatasetError(path, f"expected {COCOSTUFF_NUM_CLASSES} class names, found {len(names)}")
    return tuple(names)


def read_cocostuff10k_mat(path: str | os.PathLike, *, contained: bool = True) -> np.ndarray:
    """Read variable ``S`` of a COCO-Stuff 10k annotation and map it to the DeepLab convention.

    ``S`` 1..182 -> 0..181 and 0 (unlabeled) -> 255, as ``convertAnnotationsDeeplab.m`` does.
    The arithmetic is done in int64, so it does not depend on the stored dtype (the ``-1`` trick
    used elsewhere relies on a signed or wrapping dtype). Values > 182 are kept out of range
    (shifted, > 181) so the caller's range check reports them. The file is parsed in a helper
    process unless ``contained=False`` (see :mod:`reproduce.datasets.matfile`), so a file that
    crashes scipy's reader is a :class:`DatasetError` naming it.
    """
    try:
        return read_label("cocostuff10k", path, contained=contained)
    except MatProblem as e:
        if str(e) == "file not found":
            raise DatasetError(path, "annotation .mat file not found") from None
        raise DatasetError(path, str(e)) from None


class CocoStuff10k(SegmentationDataset):
    """COCO-Stuff 10k v1.1: ``split`` in train (9,000) / test (1,000) / all.

    ``warp_size=513`` resizes image (bilinear) and label (nearest) to 513x513, the official
    DeepLab ResNet-101 protocol (``rescaleImages.py`` / ``rescaleAnnotations.py``) that the
    published 34.4 mIoU used. ``meta["orig_size"]`` keeps the size before the warp.
    """

    name = "cocostuff10k"
    exif = False  # labels on the stored pixels (SegmentationDataset.exif)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        warp_size: int | None = None,
        on_error: OnError = "error",
        transform: Transform | None = None,
    ) -> None:
        root = Path(root)
        # The GitHub release nests everything under dataset/; the zip kazuto uses does not.
        self.root = root / "dataset" if (root / "dataset" / "imageLists").is_dir() else root
        if not (self.root / "imageLists").is_dir():
            raise DatasetError(root, "no imageLists/ folder here (expected cocostuff-10k-v1.1/imageLists)")
        if warp_size is not None and warp_size < 1:
            raise ValueError(f"warp_size must be positive, got {warp_size}")
        self.warp_size = warp_size
        refs = [
            SampleRef(i, self.root / "images" / f"{i}.jpg", self.root / "annotations" / f"{i}.mat")
            for i, _, _ in read_split_file(self.root / "imageLists" / f"{split}.txt")
        ]
        super().__init__(
            refs,
            split=split,
            num_classes=COCOSTUFF_NUM_CLASSES,
            class_names=_class_names(self.root),
            on_error=on_error,
            transform=transform,
        )

    def read_label(self, ref: SampleRef) -> np.ndarray:
        return read_cocostuff10k_mat(ref.label)

    def postprocess(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.warp_size is None:
            return image, label
        return resize_pair(image, label, (self.warp_size, self.warp_size))


class CocoStuff164k(SegmentationDataset):
    """COCO-Stuff 164k: ``split`` train2017 (118k) or val2017 (5k); "train"/"val" are accepted aliases.

    The sample list is every ``images/<split>/*.jpg``, sorted, as in kazuto1011's reader.
    """

    name = "cocostuff164k"
    exif = False  # labels on the stored pixels (SegmentationDataset.exif)
    ALIASES = {"train": "train2017", "val": "val2017"}

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train2017",
        *,
        on_error: OnError = "error",
        transform: Transform | None = None,
    ) -> None:
        self.root = Path(root)
        split = self.ALIASES.get(split, split)
        image_dir = self.root / "images" / split
        if not image_dir.is_dir():
            raise DatasetError(image_dir, "image folder not found (expected images/{train2017,val2017})")
        label_dir = self.root / "annotations" / split
        refs = [SampleRef(p.stem, p, label_dir / f"{p.stem}.png") for p in sorted(image_dir.glob("*.jpg"))]
        super().__init__(
            refs,
            split=split,
            num_classes=COCOSTUFF_NUM_CLASSES,
            class_names=_class_names(self.root),
            on_error=on_error,
            transform=transform,
        )
