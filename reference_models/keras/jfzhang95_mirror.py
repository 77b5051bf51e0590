"""Keras twins of the jfzhang95 flavours (``reference_models/jfzhang95_style.py``), NHWC.

Called by :class:`reference_models.keras.mirror.KerasMirror` before its own dispatch (``JfzDeepLab``
is a ``DeepLabV3``). Each function mirrors the PyTorch ``forward`` of the same module, layer names
are module paths as everywhere else. Padding quirks, written once more in Keras ops:

* DeepLab ``fixed_padding`` (symmetric ``dilation`` pixels for a 3x3) before VALID depthwise convs;
* MobileNetV2: the padding comes before the whole inverted residual (the 1x1 expansion runs on it);
* ResNet ``MaxPool2d(3, 2, padding=1)`` after a ReLU: zero padding equals PyTorch's -inf padding there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras

from reference_models.jfzhang95_style import (
    JfzAlignedXception,
    JfzASPP,
    JfzDeepLab,
    JfzInvertedResidual,
    JfzMobileNetV2,
    JfzResNet,
    JfzSeparableConv2d,
    JfzXceptionBlock,
)
from reference_models.tf_ops import fixed_pad_amounts

from .layers import ResizeLike

if TYPE_CHECKING:  # pragma: no cover
    from .mirror import KerasMirror

L = keras.layers
Tensor = Any


def _fixed_pad(x: Tensor, dilation: int) -> Tensor:
    beg, end = fixed_pad_amounts(3, dilation)
    return L.ZeroPadding2D(((beg, end), (beg, end)))(x)


def separable(mirror: KerasMirror, m: JfzSeparableConv2d, x: Tensor) -> Tensor:
    x = mirror.conv(m.conv1, _fixed_pad(x, m.conv1.dilation[0]))
    return mirror.conv(m.pointwise, mirror.bn(m.bn, x))


def _rep(mirror: KerasMirror, modules: Any, x: Tensor) -> Tensor:
    for child in modules:
        x = separable(mirror, child, x) if isinstance(child, JfzSeparableConv2d) else mirror.module(child, x)
    return x


def xception_block(mirror: KerasMirror, m: JfzXceptionBlock, x: Tensor) -> Tensor:
    if m.start_with_relu:
        x = L.ReLU()(x)  # in place in theirs: the shortcut reads it too
        y = _rep(mirror, list(m.rep)[1:], x)
    else:
        y = _rep(mirror, m.rep, x)
    skip = mirror.bn(m.skipbn, mirror.conv(m.skip, x)) if m.skip is not None else x
    return L.Add()([y, skip])


def aligned_xception(mirror: KerasMirror, m: JfzAlignedXception, x: Tensor) -> dict[str, Tensor]:
    x = L.ReLU()(mirror.bn(m.bn1, mirror.conv(m.conv1, x)))
    x = L.ReLU()(mirror.bn(m.bn2, mirror.conv(m.conv2, x)))
    low = x = L.ReLU()(xception_block(mirror, m.block1, x))
    for i in range(2, 21):
        x = xception_block(mirror, getattr(m, f"block{i}"), x)
    x = L.ReLU()(x)
    for i in (3, 4, 5):
        x = L.ReLU()(mirror.bn(getattr(m, f"bn{i}"), separable(mirror, getattr(m, f"conv{i}"), x)))
    return {"out": x, "low_level": low}


def resnet(mirror: KerasMirror, m: JfzResNet, x: Tensor) -> dict[str, Tensor]:
    x = L.ReLU()(mirror.bn(m.bn1, mirror.conv(m.conv1, x)))
    x = L.MaxPooling2D(3, 2, padding="valid")(L.ZeroPadding2D(1)(x))  # x >= 0: zero pad == -inf pad
    low = x = mirror.module_seq(m.layer1, x)
    for layer in (m.layer2, m.layer3, m.layer4):
        x = mirror.module_seq(layer, x)
    return {"out": x, "low_level": low}


def inverted_residual(mirror: KerasMirror, m: JfzInvertedResidual, x: Tensor) -> Tensor:
    y = mirror.module(m.conv, _fixed_pad(x, m.dilation))
    return L.Add()([x, y]) if m.residual else y


def mobilenet_v2(mirror: KerasMirror, m: JfzMobileNetV2, x: Tensor) -> dict[str, Tensor]:
    x = mirror.module(m.features[0], x)
    low = x
    for i, unit in enumerate(list(m.features)[1:], start=1):
        x = inverted_residual(mirror, unit, x)
        if i == 3:
            low = x
    return {"out": x, "low_level": low}


def aspp(mirror: KerasMirror, m: JfzASPP, x: Tensor) -> Tensor:
    branches = [mirror.conv(m.aspp0, x)] + [mirror.conv(getattr(m, f"aspp{i}"), x)
                                            for i in range(1, len(m.atrous_rates) + 1)]  # fmt: skip
    pooled = mirror.conv(m.image_pooling, L.GlobalAveragePooling2D(keepdims=True)(x))
    branches.append(ResizeLike()([pooled, x]))
    return L.Dropout(m.dropout.p)(mirror.conv(m.concat_projection, L.Concatenate(axis=-1)(branches)))


def deeplab(mirror: KerasMirror, m: JfzDeepLab, x: Tensor) -> Tensor:
    features = mirror.backbone(m.backbone, x)
    y = aspp(mirror, m.aspp, features["out"])
    dec = m.decoder
    low = mirror.conv(dec.feature_projection0, features["low_level"])
    y = L.Concatenate(axis=-1)([ResizeLike()([y, low]), low])
    y = L.Dropout(m.decoder_dropouts[0].p)(mirror.conv(dec.decoder_conv0.decoder_conv0_1, y))
    y = L.Dropout(m.decoder_dropouts[1].p)(mirror.conv(dec.decoder_conv0.decoder_conv0_2, y))
    return ResizeLike()([mirror.conv(m.logits["semantic"], y), x])


def model(mirror: KerasMirror, m: Any, x: Tensor) -> Tensor | None:
    """The Keras graph of a jfzhang95 flavour, or ``None`` if ``m`` is not one."""
    return deeplab(mirror, m, x) if isinstance(m, JfzDeepLab) else None


def backbone(mirror: KerasMirror, m: Any, x: Tensor) -> dict[str, Tensor] | None:
    for cls, fn in ((JfzResNet, resnet), (JfzAlignedXception, aligned_xception), (JfzMobileNetV2, mobilenet_v2)):
        if isinstance(m, cls):
            return fn(mirror, m, x)
    return None
