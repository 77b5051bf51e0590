"""Preprocessing contracts that travel with converted weights.

A model's ``forward`` takes an already-preprocessed NCHW float tensor; the
contract of the weights says how to make it. It is written into every
provenance record and applied by :meth:`Preprocessing.apply`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB uint8 image becomes the model input.

    ``channel_order``: order of the input channels ("BGR" for the Caffe releases).
    ``mean`` / ``std``: per channel, in ``channel_order``, on the 0-255 scale
    (x - mean) / std after multiplying by ``scale``.
    ``pad_value_image`` / ``pad_value_label``: what bottom/right padding to the
    crop size fills with (the mean, so padded pixels are 0 after subtraction; 255 = ignore).
    """

    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    scale: float = 1.0
    train_crop: int = 321
    test_crop: int = 513
    pad: str = "bottom/right to the crop size; image with the mean, label with 255"
    crop: str = "random position in training, centre at test time"
    resize: str = "bilinear for images, nearest for labels; logits resized with align_corners=True"
    pad_value_label: int = 255

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def apply(self, image_rgb: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB image -> 1x3xHxW float32 tensor following the contract."""
        img = np.asarray(image_rgb, dtype=np.float32)
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
        if self.channel_order == "BGR":
            img = img[..., ::-1]
        img = (img * self.scale - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


# DeepLab v2 Caffe releases: BGR, mean 104.008/116.669/122.675 subtracted, no scaling.
CAFFE_DEEPLAB_V2 = Preprocessing(channel_order="BGR", mean=(104.008, 116.669, 122.675))
