"""PASCAL VOC 2012 (incl. the SegmentationClassAug / train_aug set) and SBD readers.

On-disk layouts::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png        palette PNG; pixel values are class ids, 255 = void
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    VOCdevkit/VOC2012/SegmentationClassAug/<id>.png     grayscale index PNG (python -m reproduce.prepare voc_aug)
    VOCdevkit/VOC2012/ImageSets/SegmentationAug/train_aug.txt

    benchmark_RELEASE/dataset/img/<id>.jpg
    benchmark_RELEASE/dataset/cls/<id>.mat              MATLAB v5, struct GTcls with field Segmentation (0..20)
    benchmark_RELEASE/dataset/{train,val}.txt
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from .base import DatasetError, OnError, SampleRef, SegmentationDataset, Transform, read_split_file
from .matfile import MatProblem, read_label

__all__ = [
    "VOC_CLASSES",
    "VOCSegmentation",
    "SBDSegmentation",
    "find_voc2012",
    "find_sbd",
    "read_sbd_mat",
]

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

VOC_SPLITS = ("train", "val", "trainval")


def find_voc2012(root: str | os.PathLike) -> Path:
    """Resolve ``root`` (the ``VOC2012`` folder, ``VOCdevkit``, or the folder holding ``VOCdevkit``)."""
    root = Path(root)
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise DatasetError(root, "no VOC2012/JPEGImages folder here (expected VOCdevkit/VOC2012/JPEGImages)")


def find_sbd(root: str | os.PathLike) -> Path:
    """Resolve ``root`` to SBD's ``dataset`` folder (the one holding ``cls/``, ``img/`` and the split files)."""
    root = Path(root)
    for cand in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (cand / "cls").is_dir():
            return cand
    raise DatasetError(root, "no SBD dataset/cls folder here (expected benchmark_RELEASE/dataset/cls)")


def read_sbd_mat(path: str | os.PathLike, *, contained: bool = True) -> np.ndarray:
    """Read ``GTcls.Segmentation`` from an SBD ``cls/<id>.mat`` file as an ``(H, W)`` uint8 array (0..20).

    Raises :class:`DatasetError` naming the file when it is missing, not a MATLAB file, lacks the
    struct/field, or crashes scipy's reader (parsed in a helper process unless ``contained=False``;
    see :mod:`reproduce.datasets.matfile`).
    """
    try:
        return read_label("sbd", path, contained=contained)
    except MatProblem as e:
        if str(e) == "file not found":
            raise DatasetError(path, "SBD .mat file not found") from None
        raise DatasetError(path, str(e)) from None


class VOCSegmentation(SegmentationDataset):
    """VOC 2012 segmentation: ``split`` in train/val/trainval, or an aug list such as ``train_aug``.

    ``labels="auto"`` reads ``SegmentationClass`` for the official splits and ``SegmentationClassAug``
    for lists under ``ImageSets/SegmentationAug`` (where ``prepare voc_aug`` writes ``train_aug.txt``).
    Pass ``labels="SegmentationClassAug"`` to evaluate val against the aug labels as kazuto1011 does.
    ``aug_root`` is where ``prepare voc_aug --out`` wrote its outputs (default: the VOC2012 folder).
    """

    name = "voc12"
    exif = False  # labels on the stored pixels (SegmentationDataset.exif)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        labels: Literal["auto", "SegmentationClass", "SegmentationClassAug"] = "auto",
        aug_root: str | os.PathLike | None = None,
        on_error: OnError = "error",
        transform: Transform | None = None,
    ) -> None:
        self.root = find_voc2012(root)
        self.aug_root = Path(aug_root) if aug_root is not None else self.root
        if split in VOC_SPLITS:
            split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
            default_labels = "SegmentationClass"
        else:
            split_file = self.aug_root / "ImageSets" / "SegmentationAug" / f"{split}.txt"
            default_labels = "SegmentationClassAug"
            if not split_file.is_file():
                raise DatasetError(
                    split_file,
                    f"split {split!r} not found; official splits are {VOC_SPLITS}, "
                    "and train_aug is built by `python -m reproduce.prepare voc_aug`",
                )
        label_set = default_labels if labels == "auto" else labels
        if label_set not in ("SegmentationClass", "SegmentationClassAug"):
            raise ValueError(f"labels must be 'auto', 'SegmentationClass' or 'SegmentationClassAug', got {labels!r}")
        label_dir = (self.root if label_set == "SegmentationClass" else self.aug_root) / label_set
        refs = []
        for sample_id, image_rel, label_rel in read_split_file(split_file):
            image = self.root / image_rel if image_rel else self.root / "JPEGImages" / f"{sample_id}.jpg"
            if label_rel and labels == "auto":
                # Pair lists name their label file relative to the VOC2012 folder (kazuto/DrSleep format).
                label = self.root / label_rel
                if not label.is_file() and (self.aug_root / label_rel).is_file():
                    label = self.aug_root / label_rel
            else:
                label = label_dir / f"{sample_id}.png"
            refs.append(SampleRef(sample_id, image, label))
        self.label_set = label_set
        super().__init__(
            refs, split=split, num_classes=21, class_names=VOC_CLASSES, on_error=on_error, transform=transform
        )


class SBDSegmentation(SegmentationDataset):
    """Semantic Boundaries Dataset class labels (``cls/*.mat``), split ``train`` (8,498) or ``val`` (2,857)."""

    name = "sbd"
    exif = False  # labels on the stored pixels (SegmentationDataset.exif)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        on_error: OnError = "error",
        transform: Transform | None = None,
    ) -> None:
        self.root = find_sbd(root)
        if split not in ("train", "val"):
            raise ValueError(f"SBD split must be 'train' or 'val', got {split!r}")
        refs = [
            SampleRef(i, self.root / "img" / f"{i}.jpg", self.root / "cls" / f"{i}.mat")
            for i, _, _ in read_split_file(self.root / f"{split}.txt")
        ]
        super().__init__(
            refs, split=split, num_classes=21, class_names=VOC_CLASSES, on_error=on_error, transform=transform
        )

    def read_label(self, ref: SampleRef) -> np.ndarray:
        return read_sbd_mat(ref.label)
