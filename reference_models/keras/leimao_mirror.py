"""Keras twins of the leimao/DeepLab-V3 flavours (``reference_models/leimao_style.py``), NHWC.

Called by :class:`reference_models.keras.mirror.KerasMirror` before its own dispatch. Layer names are
module paths as everywhere else. The one quirk layer, :class:`TF1LegacyBilinear`, is the op their
graph runs: ``tf.compat.v1.image.resize_bilinear`` with TF1's defaults (``align_corners=False``,
``half_pixel_centers=False``), resizing ``x`` to a reference tensor's H, W.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
import tensorflow as tf

from reference_models.leimao_style import LeimaoASPP, LeimaoDeepLabV3, MobileNetV2Base

from .layers import PACKAGE, ResizeLike

if TYPE_CHECKING:  # pragma: no cover
    from .mirror import KerasMirror

L = keras.layers
Tensor = Any

__all__ = ["TF1LegacyBilinear"]


@keras.saving.register_keras_serializable(package=PACKAGE)
class TF1LegacyBilinear(keras.layers.Layer):
    """``call([x, reference])``: ``tf.compat.v1.image.resize_bilinear(x, reference's H, W)`` (legacy grid)."""

    def call(self, inputs):
        x, reference = inputs
        return tf.compat.v1.image.resize_bilinear(x, tf.shape(reference)[1:3], align_corners=False,
                                                  half_pixel_centers=False)

    def compute_output_shape(self, input_shapes):
        x, reference = input_shapes
        return (x[0], reference[1], reference[2], x[3])


def aspp(mirror: KerasMirror, m: LeimaoASPP, x: Tensor) -> Tensor:
    pooled = mirror.conv(m.conv2d, L.GlobalAveragePooling2D(keepdims=True)(x))
    pooled = ResizeLike()([pooled, x])  # their resize_bilinear(align_corners=True) of the 1x1 map
    branches = [mirror.conv(m.aspp1x1, x), mirror.conv(m.aspp3x3_1, x), mirror.conv(m.aspp3x3_2, x),
                mirror.conv(m.aspp3x3_3, x), pooled]
    return mirror.conv(m.aspp_outputs, L.Concatenate(axis=-1)(branches))


def model(mirror: KerasMirror, m: Any, x: Tensor) -> Tensor | None:
    """The Keras graph of a leimao flavour, or ``None`` if ``m`` is not one."""
    if not isinstance(m, LeimaoDeepLabV3):
        return None
    logits = mirror.conv(m.logits, aspp(mirror, m.aspp, mirror.backbone(m.backbone, x)["out"]))
    return TF1LegacyBilinear()([logits, x])


def backbone(mirror: KerasMirror, m: Any, x: Tensor) -> dict[str, Tensor] | None:
    if not isinstance(m, MobileNetV2Base):
        return None
    feats = mirror.mobilenet_v2(m, x)
    return {"out": mirror.conv(m.Conv_1, feats["out"]), "low_level": feats["low_level"]}
