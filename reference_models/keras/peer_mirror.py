"""Keras twins of the peer-flavoured models (``reference_models/kazuto_style.py``, ``torchvision_style.py``).

Called by :class:`reference_models.keras.mirror.KerasMirror` before its own dispatch, so a flavour
that subclasses one of our models (kazuto's MSC is a ``DeepLabV2``) is mirrored as the flavour.
Each function returns ``None`` for a module it does not know.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
from torch import nn

from reference_models.kazuto_style import KazutoMSC
from reference_models.torchvision_style import (
    ASPPPooling,
    MNv3Block,
    SqueezeExcitation,
    TorchASPP,
    TorchDeepLab,
    TVBottleneck,
    TVMobileNetV3Large,
    TVResNet,
    VainFInvertedResidual,
    VainFMobileNetV2,
)

from .peer_layers import TorchBilinear

if TYPE_CHECKING:  # pragma: no cover
    from .mirror import KerasMirror

L = keras.layers
Tensor = Any


def kazuto_msc(mirror: KerasMirror, m: KazutoMSC, x: Tensor) -> Tensor:
    head = getattr(m, m.head_name)

    def single(inp: Tensor) -> Tensor:
        return mirror.head_v2(head, mirror.backbone(m.backbone, inp)["out"])

    logits = single(x)
    fused = logits
    for scale in m.pyramid:
        native = single(TorchBilinear(scale)(x))
        fused = L.Maximum()([fused, TorchBilinear()([native, logits])])
    return fused


# ----------------------------------------------------------------------------- torchvision / VainF


def conv(mirror: KerasMirror, m: nn.Conv2d, x: Tensor) -> Tensor:
    """``nn.Conv2d`` with symmetric zero padding, depthwise (``groups == in_channels``) or not."""
    if m.groups == 1:
        return mirror.conv(m, x)
    if m.groups != m.in_channels:
        raise NotImplementedError("grouped (non-depthwise) nn.Conv2d has no Keras mirror")
    k, s, d, p = m.kernel_size[0], m.stride[0], m.dilation[0], m.padding[0]
    same = s == 1 and 2 * p == d * (k - 1)
    if p and not same:
        x = L.ZeroPadding2D(p)(x)
    layer = mirror._layer(m, lambda name: L.DepthwiseConv2D(
        k, strides=s, dilation_rate=d, padding="same" if same else "valid",
        depth_multiplier=m.out_channels // m.in_channels, use_bias=m.bias is not None, name=name))  # fmt: skip
    return layer(x)


def seq(mirror: KerasMirror, m: nn.Module, x: Tensor) -> Tensor:
    """A ``Sequential`` of convs, BatchNorms, activations, dropout and squeeze-excitation."""
    if isinstance(m, nn.Sequential):
        for child in m:
            x = seq(mirror, child, x)
        return x
    if isinstance(m, nn.Conv2d):
        return conv(mirror, m, x)
    if isinstance(m, nn.ReLU6):
        return L.ReLU(max_value=6.0)(x)
    if isinstance(m, nn.Hardswish):
        return L.Activation("hard_swish")(x)
    if isinstance(m, SqueezeExcitation):
        scale = L.ReLU()(mirror.conv(m.fc1, L.GlobalAveragePooling2D(keepdims=True)(x)))
        scale = L.Activation("hard_sigmoid")(mirror.conv(m.fc2, scale))  # Keras 3: relu6(x + 3) / 6, as PyTorch
        return L.Multiply()([scale, x])
    return mirror.module(m, x)


def tv_resnet(mirror: KerasMirror, m: TVResNet, x: Tensor) -> dict[str, Tensor]:
    x = L.ReLU()(mirror.bn(m.bn1, mirror.conv(m.conv1, x)))
    # MaxPool2d(3, 2, 1), floor rounding: zero padding is exact here because the input is post-ReLU (>= 0)
    x = L.MaxPooling2D(3, 2, padding="valid")(L.ZeroPadding2D(1)(x))
    outs = {}
    for i in (1, 2, 3, 4):
        for unit in getattr(m, f"layer{i}"):
            x = tv_bottleneck(mirror, unit, x)
        outs[i] = x
    return {"low_level": outs[1], "aux": outs[3], "out": outs[4]}


def tv_bottleneck(mirror: KerasMirror, m: TVBottleneck, x: Tensor) -> Tensor:
    identity = x if m.downsample is None else mirror.module(m.downsample, x)
    y = L.ReLU()(mirror.bn(m.bn1, mirror.conv(m.conv1, x)))
    y = L.ReLU()(mirror.bn(m.bn2, mirror.conv(m.conv2, y)))
    return L.ReLU()(L.Add()([mirror.bn(m.bn3, mirror.conv(m.conv3, y)), identity]))


def tv_mobilenet_v3(mirror: KerasMirror, m: TVMobileNetV3Large, x: Tensor) -> dict[str, Tensor]:
    aux = None
    for i, layer in enumerate(m.features):
        if isinstance(layer, MNv3Block):
            y = seq(mirror, layer.block, x)
            x = L.Add()([y, x]) if layer.use_res_connect else y
        else:
            x = seq(mirror, layer, x)
        if i == 4:
            aux = x
    return {"aux": aux, "out": x}


def vainf_mobilenet_v2(mirror: KerasMirror, m: VainFMobileNetV2, x: Tensor) -> dict[str, Tensor]:
    low = None
    for i, layer in enumerate(m.features):
        if isinstance(layer, VainFInvertedResidual):
            beg, end = layer.padding
            y = seq(mirror, layer.conv, L.ZeroPadding2D(((beg, end), (beg, end)))(x))
            x = L.Add()([x, y]) if layer.use_res_connect else y
        else:
            x = seq(mirror, layer, x)
        if i == 3:
            low = x
    return {"low_level": low, "out": x}


def torch_aspp(mirror: KerasMirror, m: TorchASPP, x: Tensor) -> Tensor:
    branches = []
    for branch in m.convs:
        if isinstance(branch, ASPPPooling):
            y = L.ReLU()(mirror.bn(branch.bn, mirror.conv(branch.conv, L.GlobalAveragePooling2D(keepdims=True)(x))))
            branches.append(TorchBilinear()([y, x]))
        else:
            branches.append(seq(mirror, branch, x))
    return seq(mirror, m.project, L.Concatenate(axis=-1)(branches))


def torch_deeplab(mirror: KerasMirror, m: TorchDeepLab, x: Tensor) -> Tensor:
    features = mirror.backbone(m.backbone, x)
    y = torch_aspp(mirror, m.aspp, features["out"])
    if m.project is not None:
        low = seq(mirror, m.project, features["low_level"])
        y = L.Concatenate(axis=-1)([low, TorchBilinear()([y, low])])
    out = TorchBilinear()([seq(mirror, m.head, y), x])  # logits at the input size, align_corners=False
    if m.aux_classifier is None:
        return out
    # aux=True (torchvision's published files carry the FCN head): the twin returns forward_dict's {"out", "aux"}
    return {"out": out, "aux": TorchBilinear()([seq(mirror, m.aux_classifier, features["aux"]), x])}


def model(mirror: KerasMirror, m: Any, x: Tensor) -> Tensor | None:
    """The Keras graph of a peer-flavoured model, or ``None`` if ``m`` is not one.

    A torchvision flavour built with ``aux=True`` gives a Keras model with two outputs, ``{"out", "aux"}``
    (its ``forward_dict``), so every tensor of an imported torchvision file has a Keras home.
    """
    if isinstance(m, KazutoMSC):
        return kazuto_msc(mirror, m, x)
    if isinstance(m, TorchDeepLab):
        return torch_deeplab(mirror, m, x)
    return None


def backbone(mirror: KerasMirror, m: Any, x: Tensor) -> dict[str, Tensor] | None:
    """The Keras graph of a peer-flavoured backbone, or ``None``."""
    for cls, fn in ((TVResNet, tv_resnet), (TVMobileNetV3Large, tv_mobilenet_v3), (VainFMobileNetV2, vainf_mobilenet_v2)):
        if isinstance(m, cls):
            return fn(mirror, m, x)
    return None
