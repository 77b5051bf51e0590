"""DeepLab v3+ exactly as jfzhang95/pytorch-deeplab-xception computes it (seed 004's upstream).

Read from its ``modeling/{deeplab,aspp,decoder}.py`` and ``modeling/backbone/*.py`` (not copied).
Registered flavours ``jfzhang95_deeplabv3plus_{resnet101,xception,drn,mobilenetv2}``: eval mode
returns what its ``DeepLab(backbone=..., output_stride=...)`` returns in eval mode -- logits
bilinearly upsampled to the INPUT size with ``align_corners=True``.

Where it differs from DeepLab-TF's head (``reference_models/deeplab_v3.py``, reused here):

* ASPP concatenates ``[1x1, rate1, rate2, rate3, image pooling]`` (pooling LAST); BN eps 1e-5;
  dropout 0.5 after the projection (identity in eval);
* the decoder's two 3x3 convs (with dropout 0.5 / 0.1 in training) and the classifier are one
  ``last_conv`` Sequential; low-level channels: ResNet 256 (``layer1``), Xception 128 (after
  ``block1`` + ReLU), DRN 256 (``layer3``), MobileNet-v2 24 (``features[0:4]``);
* ``backbone='drn'`` forces output stride 8 (ASPP rates 12/24/36) whatever is asked;
* backbones (all PyTorch BatchNorm, eps 1e-5):
  - ``ResNet101``: torchvision layout (7x7/2 stem, max-pool 3x3/2 pad 1, stride on the 3x3), OS 16:
    strides (1, 2, 2, 1) dilations (1, 1, 1, 2); OS 8: (1, 2, 1, 1) / (1, 1, 2, 4); every block of a
    stage at the stage's dilation (the first included); ``layer4`` has 3 blocks at multi-grid
    (1, 2, 4) x dilation;
  - ``AlignedXception``: separable convs are depthwise -> BN -> pointwise (no ReLU inside) with
    DeepLab's ``fixed_padding``; 20 blocks + conv3..5; the ReLU that opens a block is in place, so
    a block's shortcut (identity or 1x1 ``skip``) reads the RELU'D input; ReLU after ``block1``
    (the low-level feature) and after ``block20``;
  - ``drn_d_54``: fyu's DRN-D-54 (``reference_models/drn.py``), output stride 8;
  - ``MobileNetV2``: each inverted residual pads its INPUT (``fixed_padding``) before the whole
    block, so the 1x1 expansion + BN + ReLU6 runs on the zero border and the depthwise conv sees
    ``relu6(BN(0))`` there instead of zeros; atrous rule as slim's (stride dropped once the target is
    reached, rate grows from the next group); low-level = ``features[0:4]``.

State-dict keys are ours (``converters/peers/jfzhang95.py`` maps theirs by rules), except inside
the jfzhang95-only backbones, whose module trees keep their names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .deeplab_v3 import ASPP, DeepLabV3
from .drn import DRN, DRNBottleneck
from .registry import register_model, validate_output_stride
from .tf_ops import fixed_pad_amounts

__all__ = ["JfzASPP", "JfzAlignedXception", "JfzDeepLab", "JfzMobileNetV2", "JfzResNet"]

BN_EPS = 1e-5
ASPP_DROPOUT = 0.5
LOW_LEVEL = {"resnet": 256, "xception": 128, "drn": 256, "mobilenet": 24}
HIGH_LEVEL = {"resnet": 2048, "xception": 2048, "drn": 512, "mobilenet": 320}


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


# ----------------------------------------------------------------------------- head


class JfzASPP(ASPP):
    """Our ASPP modules with jfzhang95's concat order (image pooling last) and dropout 0.5."""

    def __init__(self, in_channels: int, atrous_rates: Sequence[int]) -> None:
        super().__init__(in_channels, atrous_rates, separable=False)
        self.dropout = nn.Dropout(ASPP_DROPOUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.aspp0(x)] + [getattr(self, f"aspp{i}")(x) for i in range(1, len(self.atrous_rates) + 1)]
        pooled = self.image_pooling(x.mean(dim=(2, 3), keepdim=True))
        branches.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=True))
        return self.dropout(self.concat_projection(torch.cat(branches, dim=1)))


class JfzDeepLab(DeepLabV3):
    """jfzhang95's ``DeepLab``: backbone -> ASPP -> decoder -> classifier -> upsample to the input size.

    ``forward(x)`` -> logits (N, classes, H, W) at the input's H, W. The decoder's dropouts (0.5 after
    the first 3x3, 0.1 after the second) sit in ``decoder_dropouts`` (identity in eval mode).
    """

    def __init__(self, backbone: nn.Module, *, num_classes: int, atrous_rates: Sequence[int]) -> None:
        super().__init__(backbone, num_classes=num_classes, atrous_rates=atrous_rates, aspp_separable=False,
                         decoder=True, decoder_separable=False)
        self.aspp = JfzASPP(backbone.feature_info["out"][0], atrous_rates)
        self.decoder_dropouts = nn.ModuleList([nn.Dropout(0.5), nn.Dropout(0.1)])
        self.logits_stride = 1  # upsampled to the input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        y = self.aspp(features["out"])
        dec = self.decoder
        low = dec.feature_projection0(features["low_level"])
        y = torch.cat([F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=True), low], dim=1)
        y = self.decoder_dropouts[0](dec.decoder_conv0.decoder_conv0_1(y))
        y = self.decoder_dropouts[1](dec.decoder_conv0.decoder_conv0_2(y))
        y = self.logits["semantic"](y)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self(x).argmax(dim=1)


# ----------------------------------------------------------------------------- backbones


class JfzResNet(nn.Module):
    """jfzhang95's ``ResNet101`` (torchvision keys ``conv1``, ``bn1``, ``layer{1..4}.{j}.*``; no ``fc``)."""

    def __init__(self, *, output_stride: int = 16, blocks: Sequence[int] = (3, 4, 23)) -> None:
        super().__init__()
        validate_output_stride(output_stride, (8, 16))
        strides, dilations = ((1, 2, 2, 1), (1, 1, 1, 2)) if output_stride == 16 else ((1, 2, 1, 1), (1, 1, 2, 4))
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = 64
        plan = [(64 * 2**i, [dilations[i]] * n) for i, n in enumerate(blocks)]
        plan.append((512, [g * dilations[3] for g in (1, 2, 4)]))  # _make_MG_unit, blocks=[1, 2, 4]
        for i, (planes, rates) in enumerate(plan):
            n = len(rates)
            units = []
            for j in range(n):
                units.append(_jfz_bottleneck(in_ch, planes, stride=strides[i] if j == 0 else 1, dilation=rates[j]))
                in_ch = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*units))
        self.feature_info = {"out": (2048, output_stride), "low_level": (256, 4)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        return {"out": self.layer4(self.layer3(self.layer2(low))), "low_level": low}


def _jfz_bottleneck(in_ch: int, planes: int, *, stride: int, dilation: int) -> DRNBottleneck:
    """torchvision-layout bottleneck (the same module as fyu's: stride on the 3x3, projection when needed)."""
    return DRNBottleneck(in_ch, planes, stride=stride, dilation=dilation)


class JfzSeparableConv2d(nn.Module):
    """jfzhang95's ``SeparableConv2d``: fixed padding, depthwise ``conv1`` (VALID) -> ``bn`` -> 1x1 ``pointwise``."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, stride, 0, dilation, groups=in_ch, bias=False)
        self.bn = _bn(in_ch)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beg, end = fixed_pad_amounts(3, self.conv1.dilation[0])
        return self.pointwise(self.bn(self.conv1(F.pad(x, (beg, end, beg, end)))))


class JfzXceptionBlock(nn.Module):
    """jfzhang95's ``Block``: ``rep`` = [ReLU, sep, BN] x n (+ strided / last sep), ``skip`` + ``skipbn``.

    ``rep`` keeps their Sequential indices (the ReLUs occupy positions). ``start_with_relu``: their
    first ReLU runs in place on the block input, so the shortcut reads the ReLU'd input too.
    """

    def __init__(self, in_ch: int, out_ch: int, reps: int, *, stride: int = 1, dilation: int = 1,
                 start_with_relu: bool = True, grow_first: bool = True, is_last: bool = False) -> None:
        super().__init__()
        if out_ch != in_ch or stride != 1:
            self.skip = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
            self.skipbn = _bn(out_ch)
        else:
            self.skip = None
        rep: list[nn.Module] = []
        filters = in_ch
        if grow_first:
            rep += [nn.ReLU(), JfzSeparableConv2d(in_ch, out_ch, dilation=dilation), _bn(out_ch)]
            filters = out_ch
        for _ in range(reps - 1):
            rep += [nn.ReLU(), JfzSeparableConv2d(filters, filters, dilation=dilation), _bn(filters)]
        if not grow_first:
            rep += [nn.ReLU(), JfzSeparableConv2d(in_ch, out_ch, dilation=dilation), _bn(out_ch)]
        if stride != 1:
            rep += [nn.ReLU(), JfzSeparableConv2d(out_ch, out_ch, stride=2), _bn(out_ch)]
        if stride == 1 and is_last:
            rep += [nn.ReLU(), JfzSeparableConv2d(out_ch, out_ch), _bn(out_ch)]
        self.start_with_relu = start_with_relu
        self.rep = nn.Sequential(*(rep if start_with_relu else rep[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.start_with_relu:
            x = F.relu(x)  # rep[0] (in place in theirs: the shortcut sees it too)
            y = self.rep[1:](x)
        else:
            y = self.rep(x)
        skip = self.skipbn(self.skip(x)) if self.skip is not None else x
        return y + skip


class JfzAlignedXception(nn.Module):
    """jfzhang95's ``AlignedXception`` (keys ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``block1..20``, ``conv3..5``,
    ``bn3..5``). Returns ``{"out": 2048 ch at OS, "low_level": ReLU(block1) 128 ch at stride 4}``."""

    def __init__(self, *, output_stride: int = 16) -> None:
        super().__init__()
        validate_output_stride(output_stride, (8, 16))
        block3_stride, middle, exit_rates = (2, 1, (1, 2)) if output_stride == 16 else (1, 2, (2, 4))
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
        self.bn1 = _bn(32)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=1, padding=1, bias=False)
        self.bn2 = _bn(64)
        self.block1 = JfzXceptionBlock(64, 128, 2, stride=2, start_with_relu=False)
        self.block2 = JfzXceptionBlock(128, 256, 2, stride=2, start_with_relu=False)
        self.block3 = JfzXceptionBlock(256, 728, 2, stride=block3_stride, is_last=True)
        for i in range(4, 20):
            setattr(self, f"block{i}", JfzXceptionBlock(728, 728, 3, dilation=middle))
        self.block20 = JfzXceptionBlock(728, 1024, 2, dilation=exit_rates[0], grow_first=False, is_last=True)
        self.conv3 = JfzSeparableConv2d(1024, 1536, dilation=exit_rates[1])
        self.bn3 = _bn(1536)
        self.conv4 = JfzSeparableConv2d(1536, 1536, dilation=exit_rates[1])
        self.bn4 = _bn(1536)
        self.conv5 = JfzSeparableConv2d(1536, 2048, dilation=exit_rates[1])
        self.bn5 = _bn(2048)
        self.feature_info = {"out": (2048, output_stride), "low_level": (128, 4)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        low = x = F.relu(self.block1(x))
        for i in range(2, 21):
            x = getattr(self, f"block{i}")(x)
        x = F.relu(x)
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.relu(self.bn4(self.conv4(x)))
        x = F.relu(self.bn5(self.conv5(x)))
        return {"out": x, "low_level": low}


class JfzInvertedResidual(nn.Module):
    """jfzhang95's ``InvertedResidual``: fixed-pad the input, then ``conv`` = [1x1, BN, ReLU6,] dw 3x3
    (no padding), BN, ReLU6, 1x1, BN; residual when stride 1 and widths match."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int, dilation: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(in_ch * expand_ratio)
        self.dilation, self.residual = dilation, stride == 1 and in_ch == out_ch
        dw = [nn.Conv2d(hidden, hidden, 3, stride, 0, dilation, groups=hidden, bias=False), _bn(hidden), nn.ReLU6()]
        pw_linear = [nn.Conv2d(hidden, out_ch, 1, bias=False), _bn(out_ch)]
        expand = [] if expand_ratio == 1 else [nn.Conv2d(in_ch, hidden, 1, bias=False), _bn(hidden), nn.ReLU6()]
        self.conv = nn.Sequential(*expand, *dw, *pw_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beg, end = fixed_pad_amounts(3, self.dilation)
        y = self.conv(F.pad(x, (beg, end, beg, end)))
        return x + y if self.residual else y


# (expansion t, channels c, repeats n, stride s) of their interverted_residual_setting
_MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                 (6, 320, 1, 1))  # fmt: skip


class JfzMobileNetV2(nn.Module):
    """jfzhang95's ``MobileNetV2`` (keys ``features.{i}.*``): ``{"out": 320 ch at OS, "low_level": features[0:4]}``."""

    def __init__(self, *, output_stride: int = 16) -> None:
        super().__init__()
        validate_output_stride(output_stride, (8, 16))
        self.output_stride = output_stride
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), _bn(32), nn.ReLU6())]
        current, rate, in_ch = 2, 1, 32
        for t, c, n, s in _MOBILENET_V2:
            if current == output_stride:
                stride, dilation = 1, rate
                rate *= s
            else:
                stride, dilation = s, 1
                current *= s
            for i in range(n):
                layers.append(JfzInvertedResidual(in_ch, c, stride=stride if i == 0 else 1, dilation=dilation,
                                                  expand_ratio=t))
                in_ch = c
        self.features = nn.Sequential(*layers)
        self.feature_info = {"out": (320, output_stride), "low_level": (24, 4)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = self.features[:4](x)
        return {"out": self.features[4:](low), "low_level": low}


# ----------------------------------------------------------------------------- registered flavours


def _rates(output_stride: int) -> tuple[int, int, int]:
    return (6, 12, 18) if output_stride == 16 else (12, 24, 36)  # their ASPP: dilations [1, 6, 12, 18] / x2


@register_model("jfzhang95_deeplabv3plus_resnet101")
def jfzhang95_deeplabv3plus_resnet101(*, num_classes: int, output_stride: int = 16) -> JfzDeepLab:
    """jfzhang95 ``DeepLab(backbone='resnet')``; OS 8 or 16; logits upsampled to the input size."""
    validate_output_stride(output_stride, (8, 16))
    return JfzDeepLab(JfzResNet(output_stride=output_stride), num_classes=num_classes, atrous_rates=_rates(output_stride))


@register_model("jfzhang95_deeplabv3plus_xception")
def jfzhang95_deeplabv3plus_xception(*, num_classes: int, output_stride: int = 16) -> JfzDeepLab:
    """jfzhang95 ``DeepLab(backbone='xception')`` (its AlignedXception); OS 8 or 16; logits at the input size."""
    validate_output_stride(output_stride, (8, 16))
    return JfzDeepLab(JfzAlignedXception(output_stride=output_stride), num_classes=num_classes,
                      atrous_rates=_rates(output_stride))


@register_model("jfzhang95_deeplabv3plus_drn")
def jfzhang95_deeplabv3plus_drn(*, num_classes: int, output_stride: int = 8) -> JfzDeepLab:
    """jfzhang95 ``DeepLab(backbone='drn')``: DRN-D-54, always output stride 8 (it overrides the argument)."""
    if output_stride != 8:
        raise ValueError(f"output_stride must be 8 (jfzhang95's DeepLab runs DRN at 8 only), got {output_stride!r}")
    return JfzDeepLab(DRN(depth=54, output_stride=8), num_classes=num_classes, atrous_rates=_rates(8))


@register_model("jfzhang95_deeplabv3plus_mobilenetv2")
def jfzhang95_deeplabv3plus_mobilenetv2(*, num_classes: int, output_stride: int = 16) -> JfzDeepLab:
    """jfzhang95 ``DeepLab(backbone='mobilenet')`` (its MobileNetV2); OS 8 or 16; logits at the input size."""
    validate_output_stride(output_stride, (8, 16))
    return JfzDeepLab(JfzMobileNetV2(output_stride=output_stride), num_classes=num_classes,
                      atrous_rates=_rates(output_stride))
