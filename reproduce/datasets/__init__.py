"""Raw readers for the datasets DeepLab was trained and evaluated on, in their real on-disk formats.

Every reader is a ``torch.utils.data.Dataset`` whose items are ``(image, label, meta)``:
``image`` (H, W, 3) uint8 RGB, ``label`` (H, W) uint8 class indices with 255 = ignore, ``meta``
a dict with the sample id and file paths. See :mod:`reproduce.datasets.base` for the full
contract and the error/skip policy.

>>> ds = build_dataset("voc12", root="data/VOCdevkit", split="val")   # doctest: +SKIP
>>> image, label, meta = ds[0]                                       # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

from .base import DatasetError, SampleRef, SegmentationDataset, read_image, read_index_png, read_split_file
from .cocostuff import CocoStuff10k, CocoStuff164k, read_cocostuff10k_mat
from .deepfashion2 import DEEPFASHION2_CLASSES, DeepFashion2, rasterize_annotation
from .folder import FolderSegmentation, read_class_list
from .voc import VOC_CLASSES, SBDSegmentation, VOCSegmentation, find_sbd, find_voc2012, read_sbd_mat

__all__ = [
    "DATASETS",
    "build_dataset",
    "DatasetError",
    "SampleRef",
    "SegmentationDataset",
    "VOCSegmentation",
    "SBDSegmentation",
    "CocoStuff10k",
    "CocoStuff164k",
    "DeepFashion2",
    "FolderSegmentation",
    "VOC_CLASSES",
    "DEEPFASHION2_CLASSES",
    "find_voc2012",
    "find_sbd",
    "read_image",
    "read_index_png",
    "read_split_file",
    "read_sbd_mat",
    "read_cocostuff10k_mat",
    "read_class_list",
    "rasterize_annotation",
]

DATASETS: dict[str, type[SegmentationDataset]] = {
    "voc12": VOCSegmentation,
    "sbd": SBDSegmentation,
    "cocostuff10k": CocoStuff10k,
    "cocostuff164k": CocoStuff164k,
    "deepfashion2": DeepFashion2,
    "folder": FolderSegmentation,
}


def build_dataset(
    name: str, *, root: str | os.PathLike, split: str | None = None, **kwargs: Any
) -> SegmentationDataset:
    """Build a registered reader by name (keys of :data:`DATASETS`); extra keywords go to its constructor."""
    try:
        cls = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}") from None
    if split is not None:
        kwargs["split"] = split
    return cls(root, **kwargs)
