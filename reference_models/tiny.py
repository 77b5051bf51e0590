"""Tiny DeepLab models for tests, learning checks and smoke runs on a CPU (not for reported numbers).

They reuse the real heads, so training code meets the same outputs as with the full models:

- ``deeplabv3_tiny`` / ``deeplabv3plus_tiny``: :class:`TinyBackbone` + the v3 ASPP (image pooling,
  trained BatchNorm, dropout) and, for v3+, the decoder. ~0.5M parameters with ``aspp_channels`` 64.
- ``deeplabv2_tiny_msc``: :class:`TinyBackbone` without BatchNorm + v2 ASPP-L (summed 3x3
  atrous convs with bias), run at scales 1, 0.75, 0.5 with max fusion: the same train-mode dict
  (``fused``, ``scale_1``, ``scale_0.75``, ``scale_0.5``) and Caffe size rules (321 -> 41) as
  ``deeplabv2_resnet101_msc``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .deeplab_v2 import MSC_SCALES, ASPPv2, DeepLabV2
from .deeplab_v3 import ASPP, Decoder, DeepLabV3, atrous_rates_for
from .registry import register_backbone, register_model, validate_output_stride

__all__ = ["TinyBackbone"]


def _block(in_ch: int, out_ch: int, *, stride: int, dilation: int, bn: bool) -> nn.Sequential:
    # k3 s2 p1 gives (H-1)//2 + 1, so three of them give Caffe's (H-1)//8 + 1 (321 -> 41).
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation,
                                         bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(out_ch, eps=1e-5, momentum=1 - 0.9997))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class TinyBackbone(nn.Module):
    """Four 3x3 stages (stride 2, 2, 2, 2 -> dilated past ``output_stride``).

    Returns ``{"low_level": stride-4 features, "out": stride-``output_stride`` features}`` and
    carries ``feature_info`` like the real backbones.
    """

    def __init__(self, *, output_stride: int = 8, widths: Sequence[int] = (16, 32, 48, 64), bn: bool = True) -> None:
        super().__init__()
        validate_output_stride(output_stride, (8, 16))
        stride, dilation = 1, 1
        stages = []
        in_ch = 3
        for i, width in enumerate(widths):
            if stride < output_stride:
                s, d = 2, dilation
                stride *= 2
            else:
                s, d = 1, dilation * 2
                dilation = d
            stages.append(nn.Sequential(_block(in_ch, width, stride=s, dilation=d, bn=bn),
                                        _block(width, width, stride=1, dilation=d, bn=bn) if i else nn.Identity()))
            in_ch = width
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.feature_info = {"low_level": (widths[1], 4), "out": (widths[3], output_stride)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = self.stage2(self.stage1(x))
        return {"low_level": low, "out": self.stage4(self.stage3(low))}


@register_backbone("tiny")
def tiny(*, output_stride: int, bn: bool = True) -> TinyBackbone:
    """:class:`TinyBackbone` at output stride 8 or 16."""
    return TinyBackbone(output_stride=output_stride, bn=bn)


def _v3(num_classes: int, output_stride: int, decoder: bool, aspp_channels: int, dropout: float) -> DeepLabV3:
    model = DeepLabV3(TinyBackbone(output_stride=output_stride), num_classes=num_classes,
                      atrous_rates=atrous_rates_for(output_stride), aspp_separable=False, decoder=decoder)
    # Narrower head than the real 256 channels, same structure (the real ASPP/decoder classes).
    out_ch = model.backbone.feature_info["out"][0]
    model.aspp = ASPP(out_ch, atrous_rates_for(output_stride), separable=False, channels=aspp_channels)
    model.aspp.dropout.p = dropout
    if decoder:
        low_ch = model.backbone.feature_info["low_level"][0]
        model.decoder = Decoder(aspp_channels, low_ch, separable=False)
    model.logits = nn.ModuleDict({"semantic": nn.Conv2d(256 if decoder else aspp_channels, num_classes, 1)})
    return model


@register_model("deeplabv3_tiny")
def deeplabv3_tiny(*, num_classes: int, output_stride: int = 8, aspp_channels: int = 64,
                   dropout: float = 0.1) -> DeepLabV3:
    """DeepLab v3 head on :class:`TinyBackbone`; logits at stride ``output_stride``."""
    return _v3(num_classes, output_stride, False, aspp_channels, dropout)


@register_model("deeplabv3plus_tiny")
def deeplabv3plus_tiny(*, num_classes: int, output_stride: int = 16, aspp_channels: int = 64,
                       dropout: float = 0.1) -> DeepLabV3:
    """DeepLab v3+ (ASPP + decoder) on :class:`TinyBackbone`; logits at stride 4."""
    return _v3(num_classes, output_stride, True, aspp_channels, dropout)


@register_model("deeplabv2_tiny_msc")
def deeplabv2_tiny_msc(*, num_classes: int, scales: Sequence[float] = MSC_SCALES) -> DeepLabV2:
    """DeepLab v2 ASPP-L on a BatchNorm-free :class:`TinyBackbone` (OS 8), multi-scale with max fusion."""
    backbone = TinyBackbone(output_stride=8, bn=False)
    return DeepLabV2(backbone, ASPPv2(backbone.feature_info["out"][0], num_classes), scales=scales, freeze_bn=True)
