"""DeepLab v2 (Chen et al., TPAMI 2017) with the Caffe release's exact semantics.

Registered models:
- ``deeplabv2_resnet101``: dilated ResNet-101 (output stride 8) + ASPP-L (rates
  6/12/18/24, four 3x3 convs with bias, summed). Caffe's ``fc1_voc12``.
- ``deeplabv2_resnet101_msc``: the same network run at scales 1, 0.75 and 0.5
  with shared weights and fused by element-wise max (Caffe's ``fc_fusion``).
  Same state dict as the single-scale model.
- ``deeplabv2_vgg16``: VGG-16 ASPP-L (four fc6/fc7/fc8 branches, summed).
- ``deeplabv2_vgg16_largefov``: VGG-16 LargeFOV (one branch, rate 12).
- ``deeplabv1_resnet101``: dilated ResNet-101 + one 1x1 classifier: the
  container of the MS-COCO ``init.caffemodel`` (91 classes).

Input: the preprocessed NCHW tensor of the release's contract (BGR, mean
104.008/116.669/122.675 subtracted, no scaling). Eval mode returns the score
map at output stride 8 (Caffe's size rules: 321 -> 41, 513 -> 65). In train
mode the multi-scale model returns a dict of every output the 4-term loss needs.
BatchNorm is frozen by default (Caffe's ``use_global_stats: true``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .caffe_ops import caffe_resize, scale_factors, scaled_size
from .registry import register_model

BN_EPS = 1e-5  # Caffe's BatchNormParameter default; the prototxts set no eps
MSC_SCALES = (1.0, 0.75, 0.5)
ASPP_RATES = (6, 12, 18, 24)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=1 - 0.999)  # Caffe moving_average_fraction 0.999


class CaffeBottleneck(nn.Module):
    """MSRA/Caffe bottleneck: the stride is on the first 1x1 conv, not the 3x3."""

    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))  # foldable for inference

    def __init__(self, in_ch: int, mid: int, out: int, *, stride: int, dilation: int, project: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, mid, 1, stride=stride, bias=False)
        self.bn1 = _bn(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = _bn(mid)
        self.conv3 = nn.Conv2d(mid, out, 1, bias=False)
        self.bn3 = _bn(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_ch, out, 1, stride=stride, bias=False), _bn(out)) if project else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        y += identity  # bn3's fresh output (BatchNorm's backward needs its input, not its output)
        return self.relu(y)


class CaffeResNet(nn.Module):
    """Dilated ResNet of DeepLab v2's Caffe release (output stride 8).

    Differences from torchvision, all from the released prototxt: ``pool1`` is
    3x3/2 with pad 1 and Caffe's ceil rounding; the stride sits on the 1x1 convs
    of ``res3a`` only; res4 uses dilation 2 and res5 dilation 4. Returns
    ``{"low_level": res2c (256 ch, stride 4), "out": res5c (2048 ch, stride 8)}``.
    """

    conv_bn_pairs = (("conv1", "bn1"),)  # foldable for inference

    def __init__(self, blocks: Sequence[int] = (3, 4, 23, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        widths = ((64, 256), (128, 512), (256, 1024), (512, 2048))
        strides, dilations = (1, 2, 1, 1), (1, 1, 2, 4)
        in_ch = 64
        for i, (n, (mid, out), s, d) in enumerate(zip(blocks, widths, strides, dilations), start=1):
            units = [CaffeBottleneck(in_ch if j == 0 else out, mid, out, stride=s if j == 0 else 1, dilation=d,
                                     project=j == 0) for j in range(n)]
            setattr(self, f"layer{i}", nn.Sequential(*units))
            in_ch = out
        self.feature_info = {"low_level": (256, 4), "out": (2048, 8)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        x = self.layer4(self.layer3(self.layer2(low)))
        return {"low_level": low, "out": x}


class CaffeVGG16(nn.Module):
    """VGG-16 of DeepLab v2 (output stride 8): pool4/pool5 keep stride 1, conv5 dilation 2.

    Module names are Caffe's (``conv1_1`` ... ``conv5_3``). Every pool is 3x3, pad 1,
    Caffe ceil rounding. Returns ``{"out": pool5 (512 ch, stride 8)}``.
    """

    PLAN = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))

    def __init__(self) -> None:
        super().__init__()
        in_ch = 3
        self._order: list[str] = []
        for block, (n, width) in enumerate(self.PLAN, start=1):
            dil = 2 if block == 5 else 1
            for i in range(1, n + 1):
                name = f"conv{block}_{i}"
                setattr(self, name, nn.Conv2d(in_ch, width, 3, padding=dil, dilation=dil))
                self._order.append(name)
                in_ch = width
            pool = nn.MaxPool2d(3, stride=2 if block <= 3 else 1, padding=1, ceil_mode=True)
            setattr(self, f"pool{block}", pool)
            self._order.append(f"pool{block}")
        self.feature_info = {"out": (512, 8)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for name in self._order:
            x = getattr(self, name)(x)
            if name.startswith("conv"):
                x = torch.relu_(x)
        return {"out": x}


class SummedBranches(nn.Module):
    """Parallel branches on one input, summed (Caffe's Eltwise SUM): the shape of every v2 head."""

    branches: nn.ModuleList

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class ASPPv2(SummedBranches):
    """ASPP of DeepLab v2 ResNet: parallel 3x3 atrous convs (with bias) to classes, summed."""

    def __init__(self, in_ch: int, num_classes: int, rates: Sequence[int] = ASPP_RATES) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_ch, num_classes, 3, padding=r, dilation=r) for r in rates)


class VGGBranch(nn.Module):
    """One fc6 (3x3 atrous, 1024) -> fc7 (1x1, 1024) -> fc8 (1x1, classes) branch; dropout 0.5 in training."""

    def __init__(self, in_ch: int, num_classes: int, rate: int) -> None:
        super().__init__()
        self.fc6 = nn.Conv2d(in_ch, 1024, 3, padding=rate, dilation=rate)
        self.fc7 = nn.Conv2d(1024, 1024, 1)
        self.fc8 = nn.Conv2d(1024, num_classes, 1)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(torch.relu(self.fc6(x)))
        x = self.drop(torch.relu(self.fc7(x)))
        return self.fc8(x)


class VGGASPP(SummedBranches):
    """VGG-16 ASPP: one :class:`VGGBranch` per rate, summed (LargeFOV = the single rate 12)."""

    def __init__(self, in_ch: int, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(VGGBranch(in_ch, num_classes, r) for r in rates)


class DeepLabV2(nn.Module):
    """Backbone + score head, optionally run at several scales fused by max (Caffe's MSC net).

    ``scales`` lists the input scales, 1 first; each smaller scale resizes the
    input to Caffe's Interp size (321 at 0.75 -> 241) with ``align_corners=True``
    bilinear interpolation and brings its scores back to the 1x score size the
    same way before the max.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, head_name: str = "aspp",
                 scales: Sequence[float] = (1.0,), freeze_bn: bool = True) -> None:
        super().__init__()
        if not scales or scales[0] != 1.0:
            raise ValueError(f"scales must start with 1.0, got {tuple(scales)}")
        self.backbone = backbone
        self.head_name = head_name
        setattr(self, head_name, head)
        self.scales = tuple(float(s) for s in scales)
        for s in self.scales[1:]:
            scale_factors(s)  # validates
        self.freeze_bn = freeze_bn
        if freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.requires_grad_(False)

    def train(self, mode: bool = True) -> DeepLabV2:
        super().train(mode)
        if self.freeze_bn:  # Caffe: use_global_stats: true, in training too
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def _single(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.head_name)(self.backbone(x)["out"])

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        if len(self.scales) == 1:
            return self._single(x)
        h, w = x.shape[-2:]
        full = self._single(x)
        size = tuple(full.shape[-2:])
        outputs = {"scale_1": full}
        fused = full
        for s in self.scales[1:]:
            xs = caffe_resize(x, (scaled_size(h, s), scaled_size(w, s)))
            native = self._single(xs)
            up = caffe_resize(native, size)
            fused = torch.maximum(fused, up)
            # The released train net compares the 0.5x scores at their own size with
            # labels shrunk 16x, but upsamples the 0.75x scores (labels cannot be
            # shrunk by 32/3): a scale whose inverse is a whole number stays native.
            outputs[f"scale_{s:g}"] = native if float(1 / s).is_integer() else up
        if not self.training:
            return fused
        return {"fused": fused, **outputs}


@register_model("deeplabv2_resnet101")
def deeplabv2_resnet101(*, num_classes: int, freeze_bn: bool = True) -> DeepLabV2:
    """DeepLab v2 ResNet-101 ASPP-L, single scale (Caffe ``fc1_voc12``)."""
    return DeepLabV2(CaffeResNet(), ASPPv2(2048, num_classes), freeze_bn=freeze_bn)


@register_model("deeplabv2_resnet101_msc")
def deeplabv2_resnet101_msc(*, num_classes: int, scales: Sequence[float] = MSC_SCALES,
                            freeze_bn: bool = True) -> DeepLabV2:
    """DeepLab v2 ResNet-101 ASPP-L at scales 1, 0.75, 0.5 fused by max (Caffe ``fc_fusion``)."""
    return DeepLabV2(CaffeResNet(), ASPPv2(2048, num_classes), scales=scales, freeze_bn=freeze_bn)


@register_model("deeplabv1_resnet101")
def deeplabv1_resnet101(*, num_classes: int = 91, freeze_bn: bool = True) -> DeepLabV2:
    """Dilated ResNet-101 + 1x1 classifier: the MS-COCO ``init.caffemodel`` (91 classes)."""
    return DeepLabV2(CaffeResNet(), nn.Conv2d(2048, num_classes, 1), head_name="classifier", freeze_bn=freeze_bn)


@register_model("deeplabv2_vgg16")
def deeplabv2_vgg16(*, num_classes: int) -> DeepLabV2:
    """DeepLab v2 VGG-16 ASPP-L (rates 6/12/18/24)."""
    return DeepLabV2(CaffeVGG16(), VGGASPP(512, num_classes, ASPP_RATES), freeze_bn=False)


@register_model("deeplabv2_vgg16_largefov")
def deeplabv2_vgg16_largefov(*, num_classes: int) -> DeepLabV2:
    """DeepLab v2 VGG-16 LargeFOV (a single fc6 of rate 12)."""
    return DeepLabV2(CaffeVGG16(), VGGASPP(512, num_classes, (12,)), freeze_bn=False)
