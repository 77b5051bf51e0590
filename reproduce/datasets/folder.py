"""Your own data: a folder of images and index-mask PNGs with a class list.

Layout::

    <root>/images/<name>.jpg|.jpeg|.png|.bmp
    <root>/labels/<name>.png        single-channel index mask: pixel value = class index, 255 = ignore
    <root>/classes.txt              one class name per line; line k (from 0) names class k
    <root>/splits/<split>.txt       optional; or <root>/<split>.txt. One name per line, or
                                    "images/a.jpg labels/a.png" pairs relative to <root>

Label PNGs may be palette ("P", as VOC's) or grayscale ("L"); what matters is that the stored
value is the class index. Colour (RGB) masks are refused with an explanation, because their
pixels are colours, not classes (convert them with ``reproduce.palette.rgb_to_index``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .base import DatasetError, OnError, SampleRef, SegmentationDataset, Transform, read_split_file

__all__ = ["FolderSegmentation", "IMAGE_SUFFIXES", "read_class_list"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def read_class_list(path: str | os.PathLike) -> tuple[str, ...]:
    """Class names, one per non-empty line, in index order."""
    path = Path(path)
    try:
        names = tuple(ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip())
    except FileNotFoundError:
        raise DatasetError(path, "class list not found (one class name per line, line k = class k)") from None
    if not names:
        raise DatasetError(path, "class list is empty")
    if len(set(names)) != len(names):
        raise DatasetError(path, "class list has duplicate names")
    return names


class FolderSegmentation(SegmentationDataset):
    """Images + index-mask PNGs + ``classes.txt``; ``split=None`` takes every image in ``images/``.

    ``split_dir``: the folder holding ``<split>.txt`` (default: ``<root>/splits``, then ``<root>``);
    ``label_dir`` may be an absolute path (e.g. masks converted from colour images elsewhere).
    """

    name = "folder"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        *,
        image_dir: str = "images",
        label_dir: str = "labels",
        classes: str | Sequence[str] = "classes.txt",
        split_dir: str | os.PathLike | None = None,
        ignore_index: int = 255,
        on_error: OnError = "error",
        transform: Transform | None = None,
    ) -> None:
        self.root = Path(root)
        images = self.root / image_dir
        labels = self.root / label_dir
        if not images.is_dir():
            raise DatasetError(images, "image folder not found")
        class_names = read_class_list(self.root / classes) if isinstance(classes, str) else tuple(classes)
        if len(class_names) > 255 or (0 <= ignore_index < len(class_names)):
            raise DatasetError(
                self.root / classes if isinstance(classes, str) else self.root,
                f"{len(class_names)} classes do not fit uint8 labels with ignore_index {ignore_index}",
            )
        if split is None:
            refs = [
                SampleRef(p.stem, p, labels / f"{p.stem}.png")
                for p in sorted(images.iterdir())
                if p.suffix.lower() in IMAGE_SUFFIXES
            ]
        else:
            places = (
                (Path(split_dir) / f"{split}.txt",)
                if split_dir is not None
                else (self.root / "splits" / f"{split}.txt", self.root / f"{split}.txt")
            )
            split_file = next((p for p in places if p.is_file()), None)
            if split_file is None:
                where = f"{places[0]} does not exist" if split_dir is not None else (
                    f"neither splits/{split}.txt nor {split}.txt exists")
                raise DatasetError(self.root, f"split {split!r}: {where}")
            refs = [
                SampleRef(i, self.root / img, self.root / lab)
                if img
                else SampleRef(i, self._find_image(images, i), labels / f"{i}.png")
                for i, img, lab in read_split_file(split_file)
            ]
        super().__init__(
            refs,
            split=split or "all",
            num_classes=len(class_names),
            class_names=class_names,
            ignore_index=ignore_index,
            on_error=on_error,
            transform=transform,
        )

    @staticmethod
    def _find_image(images: Path, name: str) -> Path:
        """The image file for a split-file name, whatever its extension (first match; .jpg if none)."""
        for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
            cand = images / f"{name}{suffix}"
            if cand.is_file():
                return cand
        return images / f"{name}.jpg"
