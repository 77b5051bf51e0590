"""A procedurally generated segmentation dataset: textured shapes on textured backgrounds.

Used to check that training *learns* (tests/test_train_learning.py: a tiny model reaches mIoU >= 0.9
on held-out images in a few CPU minutes). Every sample is a pure function of ``(seed, index)``,
so train and held-out sets are reproducible and disjoint by seed.

Scene: a background of random oriented stripes plus noise in low-saturation colours; 1-4 shapes
(disc, rectangle, triangle, ellipse) of classes ``1..num_classes-1``. Each class has its own hue
and a random texture (stripes or checks) over it, and later shapes occlude earlier ones. With
``void_outline=True`` the pixels on a class boundary are 255 (ignore), like VOC's object outlines.
Items follow the readers' contract: ``(RGB uint8 HxWx3, uint8 HxW label, meta)``.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch.utils.data

__all__ = ["ShapesDataset", "render_scene", "class_colours"]


def class_colours(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` float RGB base colours: index 0 unused (background), the others spread in hue."""
    out = np.zeros((num_classes, 3), dtype=np.float32)
    for c in range(1, num_classes):
        out[c] = np.asarray(colorsys.hsv_to_rgb((c - 1) / max(num_classes - 1, 1), 0.85, 0.9)) * 255
    return out


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An (h, w) pattern in [0, 1]: oriented stripes or a checkerboard with a random period."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(3.0, 9.0)
    if rng.random() < 0.5:
        theta = rng.uniform(0, np.pi)
        phase = (xx * np.cos(theta) + yy * np.sin(theta)) / period
        return 0.5 + 0.5 * np.sin(2 * np.pi * phase + rng.uniform(0, 2 * np.pi))
    return (((xx // period) + (yy // period)) % 2).astype(np.float32)


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    cy, cx = int(rng.integers(h // 8, h - h // 8)), int(rng.integers(w // 8, w - w // 8))
    r = int(rng.integers(max(min(h, w) // 8, 3), max(min(h, w) // 3, 4)))
    kind = int(rng.integers(0, 4))
    if kind == 0:
        cv2.circle(mask, (cx, cy), r, 1, -1)
    elif kind == 1:
        rh = int(rng.integers(max(r // 2, 2), r + 1))
        cv2.rectangle(mask, (cx - r, cy - rh), (cx + r, cy + rh), 1, -1)
    elif kind == 2:
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
        pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1).round().astype(np.int32)
        cv2.fillPoly(mask, [pts], 1)
    else:
        axes = (r, int(rng.integers(max(r // 2, 2), r + 1)))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask.astype(bool)


def render_scene(
    rng: np.random.Generator, *, size: int = 64, num_classes: int = 4, max_shapes: int = 4, void_outline: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(image RGB uint8 (size, size, 3), label uint8 (size, size))`` scene drawn from ``rng``."""
    h = w = size
    grey = rng.uniform(60, 200)
    tint = rng.uniform(-25, 25, size=3)
    background = grey + tint + 40 * (_texture(rng, h, w)[..., None] - 0.5)
    image = background.astype(np.float32)
    label = np.zeros((h, w), dtype=np.uint8)
    colours = class_colours(num_classes)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        c = int(rng.integers(1, num_classes))
        mask = _shape_mask(rng, h, w)
        shade = colours[c] * rng.uniform(0.75, 1.1) * (0.8 + 0.2 * _texture(rng, h, w))[..., None]
        image[mask] = shade[mask]
        label[mask] = c
    image += rng.normal(0, 6, size=image.shape).astype(np.float32)
    if void_outline:
        edge = np.zeros(label.shape, dtype=bool)
        edge[:, :-1] |= label[:, :-1] != label[:, 1:]
        edge[:-1, :] |= label[:-1, :] != label[1:, :]
        label = np.where(edge, np.uint8(255), label)
    return np.clip(image, 0, 255).astype(np.uint8), label


class ShapesDataset(torch.utils.data.Dataset):
    """``length`` scenes; scene ``i`` depends only on ``(seed, i)``. ``transform(image, label, meta)`` is optional."""

    name = "shapes"

    def __init__(
        self,
        *,
        length: int = 512,
        seed: int = 0,
        size: int = 64,
        num_classes: int = 4,
        max_shapes: int = 4,
        void_outline: bool = True,
        transform: Callable[[np.ndarray, np.ndarray, dict], Any] | None = None,
        split: str = "train",
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.length, self.seed, self.size = length, seed, size
        self.num_classes, self.max_shapes, self.void_outline = num_classes, max_shapes, void_outline
        self.ignore_index = 255
        self.transform = transform
        self.split = split
        self.class_names = ("background", *[f"shape{c}" for c in range(1, num_classes)])

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        rng = np.random.default_rng([self.seed, index])
        image, label = render_scene(rng, size=self.size, num_classes=self.num_classes, max_shapes=self.max_shapes,
                                    void_outline=self.void_outline)
        meta = {"id": f"shapes_{self.seed}_{index:06d}", "dataset": self.name, "split": self.split,
                "orig_size": label.shape, "image_path": "", "label_path": ""}
        return image, label, meta

    def __getitem__(self, index: int) -> Any:
        image, label, meta = self.load(index)
        if self.transform is not None:
            return self.transform(image, label, meta)
        return image, label, meta
