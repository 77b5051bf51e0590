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

    def apply(self, image_rgb: np.ndarray, pad_to: tuple[int, int] | None = None) -> torch.Tensor:
        """HxWx3 uint8 RGB image -> 1x3xHxW float32 tensor following the contract.

        ``pad_to``: padded at the bottom/right to at least that ``(height, width)`` with 0, the mean after
        preprocessing (the official pad value). Each channel is written in place into the (padded) output,
        ``(x * scale - mean) / std`` in float32 in that order, as numpy computes it (the same bits; a multiply
        by 1 and a divide by 1 are left out, which changes no bit).
        """
        img = np.asarray(image_rgb)
        if img.dtype != np.uint8:
            img = img.astype(np.float32, copy=False)  # any float array (training transforms), as before
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
        h, w = img.shape[:2]
        size = (max(h, pad_to[0]), max(w, pad_to[1])) if pad_to is not None else (h, w)
        out = torch.empty((1, 3, *size), dtype=torch.float32)
        out[..., h:, :].zero_()  # the padding only: the image's pixels are written below
        out[..., :h, w:].zero_()
        src = torch.from_numpy(img if all(st >= 0 for st in img.strides) else np.ascontiguousarray(img))
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        scale = float(np.float32(self.scale))
        for c in range(3):  # c counts in channel_order
            dst = out[0, c, :h, :w]
            dst.copy_(src[..., 2 - c if self.channel_order == "BGR" else c])
            if scale != 1.0:
                dst.mul_(scale)
            dst.sub_(float(mean[c]))
            if std[c] != 1.0:
                dst.div_(float(std[c]))
        return out


# DeepLab v2 Caffe releases: BGR, mean 104.008/116.669/122.675 subtracted, no scaling.
CAFFE_DEEPLAB_V2 = Preprocessing(channel_order="BGR", mean=(104.008, 116.669, 122.675))


# ----------------------------------------------------------------------------- TensorFlow releases
# Sources: slim ``preprocessing_factory.py`` / ``vgg_preprocessing.py`` / ``inception_preprocessing.py``
# and DeepLab-TF ``core/feature_extractor.py`` (``_MEAN_RGB``, ``mean_pixel``) and ``input_preprocess.py``.
# ``(x - 127.5) / 127.5`` is DeepLab's ``_preprocess_zero_mean_unit_range`` ``2/255 * x - 1``; the mean
# is also DeepLab's ``mean_pixel`` (the image pad value), so padded pixels are 0 after preprocessing.

_DEEPLAB_PAD = "bottom/right to the crop size; image with mean_pixel {pad} (0 after preprocessing), label with 255"
_DEEPLAB_CROP = "random position in training, bottom/right padding only at test time (DeepLab input_preprocess)"
_DEEPLAB_RESIZE = "bilinear for images, nearest for labels; logits resized with align_corners=True"

# Slim ImageNet resnet_v1_* (and vgg): vgg_preprocessing, RGB minus the ImageNet means, no scaling.
TF_SLIM_VGG = Preprocessing(
    channel_order="RGB",
    mean=(123.68, 116.78, 103.94),
    train_crop=224,
    test_crop=224,
    pad="none (ImageNet classification)",
    crop="training: smaller side resized to a random value in [256, 512], random 224 crop, random flip; "
    "test: smaller side resized to 256, central 224 crop (vgg_preprocessing)",
    resize="bilinear, aspect ratio kept",
)

# Slim ImageNet resnet_v2_* (and inception, mobilenet): inception_preprocessing, [-1, 1], 299 crop.
TF_SLIM_INCEPTION = Preprocessing(
    channel_order="RGB",
    mean=(127.5, 127.5, 127.5),
    std=(127.5, 127.5, 127.5),
    train_crop=299,
    test_crop=299,
    pad="none (ImageNet classification)",
    crop="training: random distorted bounding box, colour distortion, flip; test: central 87.5% crop "
    "(inception_preprocessing)",
    resize="bilinear to 299x299 (aspect ratio not kept)",
)

# DeepLab-TF with resnet_v1_50 / resnet_v1_101 (non-beta): _preprocess_subtract_imagenet_mean.
DEEPLAB_TF_RESNET_V1_MEAN = Preprocessing(
    channel_order="RGB",
    mean=(123.15, 115.90, 103.06),
    train_crop=513,
    test_crop=513,
    pad=_DEEPLAB_PAD.format(pad="(123.15, 115.90, 103.06)"),
    crop=_DEEPLAB_CROP,
    resize=_DEEPLAB_RESIZE,
)

# DeepLab-TF with resnet_v1_*_beta, xception_*, mobilenet_v2: _preprocess_zero_mean_unit_range.
DEEPLAB_TF_UNIT_RANGE = Preprocessing(
    channel_order="RGB",
    mean=(127.5, 127.5, 127.5),
    std=(127.5, 127.5, 127.5),
    train_crop=513,
    test_crop=513,
    pad=_DEEPLAB_PAD.format(pad="(127.5, 127.5, 127.5)"),
    crop=_DEEPLAB_CROP,
    resize=_DEEPLAB_RESIZE,
)


# ----------------------------------------------------------------------------- by architecture
def preprocessing_for(arch: str | torch.nn.Module, *, backbone: str | None = None) -> Preprocessing:
    """The contract of an architecture when no release names one (the one place this is decided).

    ``arch``: a registered model or backbone name, or a built reference model. ``backbone``: the
    backbone a model was built with when it is not the model's default. Caffe DeepLab v1/v2 models:
    :data:`CAFFE_DEEPLAB_V2`; DeepLab-TF (``feature_extractor.py``): ``resnet_v1_50/101`` subtract the
    ImageNet mean, ``resnet_v2_*`` take inception's ``[-1, 1]`` (:data:`TF_SLIM_INCEPTION`), and the
    ``_beta`` ResNets (the ResNet DeepLab models' default), Xception and MobileNet ``[-1, 1]``.
    """
    if isinstance(arch, torch.nn.Module):
        from reference_models.deeplab_v2 import DeepLabV2

        if isinstance(arch, DeepLabV2):
            return CAFFE_DEEPLAB_V2
        trunk = getattr(arch, "backbone", arch)
        scope = str(getattr(trunk, "tf_scope", ""))
        name = scope + ("_beta" if getattr(trunk, "beta", False) else "")
    elif arch.startswith("deeplabv1") or "deeplabv2" in arch:
        return CAFFE_DEEPLAB_V2
    else:
        name = backbone or arch
    if name.startswith("resnet_v2"):
        return TF_SLIM_INCEPTION
    if name in ("resnet_v1_50", "resnet_v1_101"):
        return DEEPLAB_TF_RESNET_V1_MEAN
    return DEEPLAB_TF_UNIT_RANGE
