"""Slim MobileNet-v2 (``research/slim/nets/mobilenet``) up to DeepLab's ``layer_18`` end point.

What DeepLab's ``feature_extractor._mobilenet_v2`` builds (read, not copied): ``mobilenet_base``
with ``V2_DEF``, scope ``MobilenetV2``, ``final_endpoint='layer_18'`` -- so the last inverted
residual (320 channels) is the feature map and the 1280-channel ``Conv_1`` is NOT part of it.

* all convs use TF's native ``SAME`` padding (``use_explicit_padding=False``), so the strided 3x3
  convs pad asymmetrically (extra pixel bottom/right) -- computed per forward;
* ``expanded_conv``: ``expand`` 1x1 + BN + ReLU6 (only when the expansion makes it wider: the first
  block, factor 1, has none), ``depthwise`` 3x3 + BN + ReLU6, ``project`` 1x1 + BN (linear), and a
  residual sum when the layer stride is 1 and depths match;
* output stride via ``mobilenet_base``'s rule (strides become atrous rates of later layers);
* BatchNorm epsilon 1e-3: ``training_scope`` sets only ``decay``, so slim's default 0.001 holds.

Only ``depth_multiplier=1.0`` is implemented.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_backbone, validate_output_stride
from .tf_ops import Conv2dTF, dense_schedule

__all__ = ["ExpandedConv", "MobileNetV2TF"]

MOBILENET_BN_EPS = 1e-3
# V2_DEF spec after the stem: (expansion factor, output channels, stride) per expanded_conv.
_V2_SPEC = (
    (1, 16, 1),
    (6, 24, 2),
    (6, 24, 1),
    (6, 32, 2),
    (6, 32, 1),
    (6, 32, 1),
    (6, 64, 2),
    (6, 64, 1),
    (6, 64, 1),
    (6, 64, 1),
    (6, 96, 1),
    (6, 96, 1),
    (6, 96, 1),
    (6, 160, 2),
    (6, 160, 1),
    (6, 160, 1),
    (6, 320, 1),
)


class ExpandedConv(nn.Module):
    """slim ``conv_blocks.expanded_conv`` (inverted residual) with ``expand`` / ``depthwise`` / ``project``."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int, *, stride: int, rate: int) -> None:
        super().__init__()
        eps = MOBILENET_BN_EPS
        inner = in_channels * expansion  # expand_input(6) rounds to a multiple of 8: exact for V2_DEF at 1.0
        self.expand = Conv2dTF(in_channels, inner, 1, bn_eps=eps, activation="relu6") if inner > in_channels else None
        self.depthwise = Conv2dTF(
            inner, inner, 3, stride=stride, dilation=rate, groups=inner, bn_eps=eps, activation="relu6"
        )
        self.project = Conv2dTF(inner, out_channels, 1, bn_eps=eps, activation=None)
        self.residual = stride == 1 and in_channels == out_channels

    def forward_with_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(block output, ``depthwise_output`` end point)."""
        h = self.expand(x) if self.expand is not None else x
        depthwise = self.depthwise(h)
        out = self.project(depthwise)
        return (out.add_(x) if self.residual else out), depthwise  # project's fresh output, summed in place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_tap(x)[0]


class MobileNetV2TF(nn.Module):
    """MobileNet-v2 trunk (``layer_1`` .. ``layer_18``). ``forward(x)`` -> ``{"out", "low_level"}``.

    ``x``: preprocessed NCHW (DeepLab maps [0, 255] to [-1, 1]). ``out``: 320 channels at
    ``output_stride``; ``low_level``: ``layer_4/depthwise_output`` (144 channels, stride 4), the
    decoder end point later DeepLab versions name (the 2018 zoo models use no decoder).
    Child names are TF's scope names (``Conv``, ``expanded_conv``, ``expanded_conv_1``, ...).
    """

    def __init__(self, *, output_stride: int = 16) -> None:
        super().__init__()
        validate_output_stride(output_stride, (8, 16, 32))
        self.output_stride, self.tf_scope = output_stride, "MobilenetV2"
        schedule = dense_schedule([2] + [s for _, _, s in _V2_SPEC], output_stride)
        (stem_stride, _), unit_schedule = schedule[0], schedule[1:]
        # "Conv" (capital C) is slim's default scope name for the first conv2d; kept for the rename table.
        self.Conv = Conv2dTF(3, 32, 3, stride=stem_stride, bn_eps=MOBILENET_BN_EPS, activation="relu6")
        self._names: list[str] = []
        channels = 32
        for i, ((expansion, out, _), (layer_stride, layer_rate)) in enumerate(zip(_V2_SPEC, unit_schedule)):
            name = "expanded_conv" if i == 0 else f"expanded_conv_{i}"
            self.add_module(name, ExpandedConv(channels, out, expansion, stride=layer_stride, rate=layer_rate))
            self._names.append(name)
            channels = out
        self.feature_info = {"out": (channels, output_stride), "low_level": (144, 4)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.Conv(x)
        low_level = x
        for name in self._names:
            if name == "expanded_conv_2":  # layer_4
                x, low_level = getattr(self, name).forward_with_tap(x)
            else:
                x = getattr(self, name)(x)
        return {"out": x, "low_level": low_level}


@register_backbone("mobilenet_v2")
def mobilenet_v2(*, output_stride: int) -> MobileNetV2TF:
    """Slim MobileNet-v2 (depth multiplier 1.0) up to layer_18, at output_stride 8, 16 or 32."""
    return MobileNetV2TF(output_stride=output_stride)
