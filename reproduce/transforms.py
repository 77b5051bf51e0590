"""Training transforms: random scale, pad bottom/right, random crop, flip, then the weights' preprocessing.

The order and every rule are the official pipelines' (Caffe ``DataTransformer::TransformImgAndSeg``
for DeepLab v2; TF ``input_preprocess.preprocess_image_and_label`` for v3/v3+):

1. random scale: one factor per image, either drawn from a list (``scales=[0.5, 0.75, ...]``, the
   Caffe ``scale_factors`` and TF's ``scale_factor_step_size`` grids) or uniform in a range
   (``scale_range=(0.5, 1.5)``). Image bilinear, label nearest.
2. pad bottom/right to at least the crop size: image with the mean pixel (0 after preprocessing),
   label with ``ignore_index`` (255).
3. random crop (uniform position, both axes).
4. random left-right flip (probability 0.5).
5. preprocessing contract of the weights (:class:`reference_models.preprocessing.Preprocessing`):
   channel order, mean, std.

Resize rules differ between the frameworks and are named by ``resize``:

- ``"caffe"``: ``cv::resize(img, dst, Size(), s, s, INTER_LINEAR)`` / ``INTER_NEAREST``; the new
  size is ``round(side * s)`` (OpenCV's rule for a scale factor).
- ``"tf"``: ``tf.image.resize_bilinear`` / ``resize_nearest_neighbor`` with ``align_corners=True``;
  the new size is ``int(side * s)`` (truncation, as DeepLab's ``randomly_scale_image_and_label``).

Randomness comes only from the ``np.random.Generator`` passed in, so a sample's augmentation is
a pure function of its seed (see :class:`reproduce.train.DeterministicBatchSampler`): resuming,
changing the number of workers or of processes does not change what a sample looks like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from reference_models.preprocessing import Preprocessing

__all__ = ["TrainTransform", "resize_pair", "pad_bottom_right", "random_crop", "pad_pixel_rgb"]

Resize = Literal["caffe", "tf"]


def pad_pixel_rgb(preprocessing: Preprocessing) -> tuple[float, float, float]:
    """The RGB 0-255 pixel that the contract maps to 0: the mean, in RGB order, divided by ``scale``."""
    mean = np.asarray(preprocessing.mean, dtype=np.float64) / preprocessing.scale
    if preprocessing.channel_order == "BGR":
        mean = mean[::-1]
    return tuple(float(v) for v in mean)


def _tf_resize_nearest_align_corners(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """TF1 ``resize_nearest_neighbor(align_corners=True)``: source = round(dst * (in-1)/(out-1))."""
    h, w = label.shape
    out_h, out_w = size

    def index(n_in: int, n_out: int) -> np.ndarray:
        if n_out <= 1:
            return np.zeros(max(n_out, 0), dtype=np.int64)
        scale = np.float32((n_in - 1) / (n_out - 1))
        src = np.round(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
        return np.minimum(src, n_in - 1)

    return label[index(h, out_h)][:, index(w, out_w)]


def resize_pair(
    image: np.ndarray, label: np.ndarray, scale: float, resize: Resize = "caffe"
) -> tuple[np.ndarray, np.ndarray]:
    """Scale an (H, W, 3) uint8 image (bilinear) and its (H, W) label (nearest) by ``scale``."""
    if scale == 1.0:
        return image, label
    h, w = label.shape
    if resize == "caffe":
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        return image, label
    if resize == "tf":
        size = (max(int(h * scale), 1), max(int(w * scale), 1))
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=True)
        # TF keeps the resized image in float until it is cast for the crop; we keep float32 too.
        out = t[0].permute(1, 2, 0).numpy()
        return out, _tf_resize_nearest_align_corners(label, size)
    raise ValueError(f"resize must be 'caffe' or 'tf', got {resize!r}")


def pad_bottom_right(
    image: np.ndarray, label: np.ndarray, crop: tuple[int, int], pixel: Sequence[float], ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """Pad to at least ``crop`` = (H, W) at the bottom/right only (Caffe ``copyMakeBorder(0, ph, 0, pw)``)."""
    h, w = label.shape
    ph, pw = max(crop[0] - h, 0), max(crop[1] - w, 0)
    if ph == 0 and pw == 0:
        return image, label
    # Pad in float32: a uint8 image cannot hold a fractional mean, and padded pixels must be exactly it.
    padded = np.empty((h + ph, w + pw, 3), dtype=np.float32)
    padded[...] = np.asarray(pixel, dtype=np.float32)
    padded[:h, :w] = image
    lab = np.full((h + ph, w + pw), ignore_index, dtype=label.dtype)
    lab[:h, :w] = label
    return padded, lab


def random_crop(
    image: np.ndarray, label: np.ndarray, crop: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A ``crop`` = (H, W) window at a uniformly random position (the input is at least that large)."""
    h, w = label.shape
    top = int(rng.integers(0, h - crop[0] + 1))
    left = int(rng.integers(0, w - crop[1] + 1))
    return image[top : top + crop[0], left : left + crop[1]], label[top : top + crop[0], left : left + crop[1]]


@dataclass
class TrainTransform:
    """``(image RGB uint8 HWC, label uint8 HW, rng) -> (image float32 CHW tensor, label int64 HW tensor)``.

    Give exactly one of ``scales`` (a list to choose from) or ``scale_range`` (uniform ``(low, high)``).
    """

    preprocessing: Preprocessing
    crop_size: int | tuple[int, int]
    scales: Sequence[float] | None = None
    scale_range: tuple[float, float] | None = None
    flip: bool = True
    resize: Resize = "caffe"
    ignore_index: int = 255
    _crop: tuple[int, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if (self.scales is None) == (self.scale_range is None):
            raise ValueError("give exactly one of scales (a list) or scale_range (low, high)")
        if self.scales is not None and (not self.scales or min(self.scales) <= 0):
            raise ValueError(f"scales must be positive, got {self.scales}")
        if self.scale_range is not None and not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {self.scale_range}")
        c = self.crop_size
        self._crop = (int(c), int(c)) if isinstance(c, int) else (int(c[0]), int(c[1]))
        if self.resize not in ("caffe", "tf"):
            raise ValueError(f"resize must be 'caffe' or 'tf', got {self.resize!r}")

    def draw_scale(self, rng: np.random.Generator) -> float:
        if self.scales is not None:
            return float(self.scales[int(rng.integers(0, len(self.scales)))])
        low, high = self.scale_range  # type: ignore[misc]
        return float(rng.uniform(low, high))

    def geometry(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Steps 1-4 on raw pixels: returns an (h, w, 3) float32 RGB crop and its uint8 label."""
        if image.shape[:2] != label.shape:
            raise ValueError(f"image {image.shape[:2]} and label {label.shape} sizes differ")
        scale = self.draw_scale(rng)
        image, label = resize_pair(image, label, scale, self.resize)
        pixel = pad_pixel_rgb(self.preprocessing)
        if self.resize == "caffe":  # Caffe pads the uint8 cv::Mat, so its Scalar(mean) is rounded
            pixel = tuple(float(round(v)) for v in pixel)
        image, label = pad_bottom_right(image, label, self._crop, pixel, self.ignore_index)
        image, label = random_crop(image, label, self._crop, rng)
        if self.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return np.asarray(image, dtype=np.float32), np.ascontiguousarray(label)

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.geometry(image, label, rng)
        x = self.preprocessing.apply(image)[0]  # apply() takes any float HxWx3 RGB array
        return x, torch.from_numpy(label.astype(np.int64))
