"""DeepLab v3 / v3+ as torchvision and VainF/DeepLabV3Plus-Pytorch compute them (not as DeepLab-TF does).

Read in torchvision (``models/segmentation/deeplabv3.py``, ``_utils.py``, ``fcn.py``, ``models/resnet.py``,
``models/mobilenetv3.py``) and VainF (``network/_deeplab.py``, ``modeling.py``, ``utils.py``,
``backbone/resnet.py``, ``backbone/mobilenetv2.py``); written from that reading, not copied.
Where they differ from DeepLab's original:

* ResNet trunk in torchvision's layout: one 7x7 stem conv (not three 3x3), ``MaxPool2d(3, 2, 1)``
  with floor rounding, the stride on the 3x3 conv of a block, ``replace_stride_with_dilation``
  (OS 8: layer3/4 dilated 2/4; OS 16: layer4 dilated 2; a dilated stage's first block keeps the
  previous dilation), no multi-grid; BatchNorm eps 1e-5 everywhere (PyTorch's default).
* ASPP: 1x1, three 3x3 atrous, image pooling (``AdaptiveAvgPool2d(1)`` -> 1x1 conv -> BN -> ReLU,
  back to the feature size with ``align_corners=False``); concat order [1x1, rates..., pooling];
  projection 1x1 -> BN -> ReLU -> Dropout (0.5 in torchvision, 0.1 in VainF).
* v3 head: ASPP -> 3x3 conv 256 -> BN -> ReLU -> 1x1 classes (torchvision's ``DeepLabHead``; the
  atrous rates are 12/24/36 in torchvision whatever the backbone, by output stride in VainF).
* VainF v3+: low-level 1x1 48 -> BN -> ReLU; ASPP output resized (``align_corners=False``) to the
  low-level size; concat [low-level, ASPP]; 3x3 304 -> 256 -> BN -> ReLU; 1x1 classes. With VainF's
  ``--separable_conv`` every 3x3 conv of the head (ASPP rates, decoder) is depthwise + pointwise.
* The logits are resized to the input size (bilinear, ``align_corners=False``): the model returns
  what torchvision returns as ``out`` (and what VainF's model returns), a tensor.
* torchvision's MobileNet-v3-Large (``dilated=True``: the last stage stride 1, dilation 2; BN eps
  1e-3; Hardswish; squeeze-excitation with Hardsigmoid); its head reads the 960-channel last conv.
* VainF's MobileNet-v2: the stem conv has no padding; every inverted residual pads its *input*
  (before the 1x1 expansion, so the padding the depthwise conv sees is BN(0), not 0) by fixed
  padding for its dilation; OS 8/16 turn later strides into dilations; ``features[0:4]`` is the
  low-level end point (24 channels, stride 4), ``features[4:18]`` the high level (320 channels).

The auxiliary FCN head (``aux=True``, torchvision's ``aux_classifier`` on ResNet layer3 / MobileNet
C2) holds the weights of files trained with ``aux_loss``; ``forward`` returns ``out`` only, and
:meth:`TorchDeepLab.forward_dict` returns ``{"out", "aux"}`` as torchvision does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model, validate_output_stride

__all__ = ["TVResNet", "TVMobileNetV3Large", "TorchASPP", "TorchDeepLab", "VainFMobileNetV2"]


def _cbr(in_ch: int, out_ch: int, k: int, *, stride: int = 1, padding: int = 0, dilation: int = 1, groups: int = 1,
         act: type[nn.Module] | None = nn.ReLU, eps: float = 1e-5) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, k, stride, padding, dilation=dilation, groups=groups,
                                         bias=False), nn.BatchNorm2d(out_ch, eps=eps)]
    if act is not None:
        layers.append(act(inplace=True))  # on BatchNorm's (or, folded, the conv's) fresh output
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- torchvision ResNet


class TVBottleneck(nn.Module):
    """torchvision ``Bottleneck``: 1x1 -> 3x3 (stride, dilation) -> 1x1, projection on the first block."""

    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))  # folded by reproduce.inference.fuse_for_inference

    def __init__(self, in_ch: int, width: int, *, stride: int, dilation: int, project: bool) -> None:
        super().__init__()
        out = width * 4
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(in_ch, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                           if project else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        y += identity  # bn3's (or, folded, conv3's) fresh output, summed in place as torchvision does
        return self.relu(y)


class TVResNet(nn.Module):
    """torchvision ResNet-50/101 trunk at output stride 8 or 16. ``forward`` -> ``{"low_level", "aux", "out"}``
    (layer1: 256 ch, stride 4; layer3: 1024 ch; layer4: 2048 ch at the output stride)."""

    conv_bn_pairs = (("conv1", "bn1"),)  # folded by reproduce.inference.fuse_for_inference

    def __init__(self, blocks: Sequence[int], *, output_stride: int) -> None:
        super().__init__()
        validate_output_stride(output_stride, (8, 16))
        dilate = (False, True, True) if output_stride == 8 else (False, False, True)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch, dilation = 64, 1
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
            stride, previous = (1 if i == 1 else 2), dilation
            if i > 1 and dilate[i - 2]:
                dilation, stride = dilation * stride, 1
            units = [TVBottleneck(in_ch if j == 0 else width * 4, width, stride=stride if j == 0 else 1,
                                  dilation=previous if j == 0 else dilation, project=j == 0) for j in range(n)]
            setattr(self, f"layer{i}", nn.Sequential(*units))
            in_ch = width * 4
        self.output_stride = output_stride
        self.feature_info = {"low_level": (256, 4), "aux": (1024, min(16, output_stride)), "out": (2048, output_stride)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        aux = self.layer3(self.layer2(low))
        return {"low_level": low, "aux": aux, "out": self.layer4(aux)}


# ----------------------------------------------------------------------------- torchvision MobileNet-v3-Large


class SqueezeExcitation(nn.Module):
    """torchvision ``SqueezeExcitation`` with ReLU and Hardsigmoid: ``x * hsig(fc2(relu(fc1(mean(x)))))``."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True)))))
        return scale * x


def make_divisible(v: float, divisor: int = 8) -> int:
    """The channel rounding of torchvision / slim MobileNets (never more than 10% down)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class MNv3Block(nn.Module):
    """torchvision MobileNet-v3 ``InvertedResidual``: ``block`` = [expand] depthwise [SE] project."""

    def __init__(self, in_ch: int, k: int, exp: int, out: int, se: bool, hs: bool, stride: int, dilation: int) -> None:
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        eps = 1e-3
        layers: list[nn.Module] = []
        if exp != in_ch:
            layers.append(_cbr(in_ch, exp, 1, act=act, eps=eps))
        layers.append(_cbr(exp, exp, k, stride=1 if dilation > 1 else stride, padding=(k - 1) // 2 * dilation,
                           dilation=dilation, groups=exp, act=act, eps=eps))
        if se:
            layers.append(SqueezeExcitation(exp, make_divisible(exp // 4)))
        layers.append(_cbr(exp, out, 1, act=None, eps=eps))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and in_ch == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.use_res_connect else y


# (input, kernel, expanded, output, SE, hard-swish, stride, dilation) of mobilenet_v3_large(dilated=True)
MNV3_LARGE = (
    (16, 3, 16, 16, False, False, 1, 1), (16, 3, 64, 24, False, False, 2, 1), (24, 3, 72, 24, False, False, 1, 1),
    (24, 5, 72, 40, True, False, 2, 1), (40, 5, 120, 40, True, False, 1, 1), (40, 5, 120, 40, True, False, 1, 1),
    (40, 3, 240, 80, False, True, 2, 1), (80, 3, 200, 80, False, True, 1, 1), (80, 3, 184, 80, False, True, 1, 1),
    (80, 3, 184, 80, False, True, 1, 1), (80, 3, 480, 112, True, True, 1, 1), (112, 3, 672, 112, True, True, 1, 1),
    (112, 5, 672, 160, True, True, 2, 2), (160, 5, 960, 160, True, True, 1, 2), (160, 5, 960, 160, True, True, 1, 2),
)  # fmt: skip


class TVMobileNetV3Large(nn.Module):
    """torchvision ``mobilenet_v3_large(dilated=True).features`` (output stride 16).
    ``forward`` -> ``{"aux": features[4] (40 ch, stride 8), "out": features[16] (960 ch, stride 16)}``."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [_cbr(3, 16, 3, stride=2, padding=1, act=nn.Hardswish, eps=1e-3)]
        layers += [MNv3Block(*cfg) for cfg in MNV3_LARGE]
        layers.append(_cbr(160, 960, 1, act=nn.Hardswish, eps=1e-3))
        self.features = nn.Sequential(*layers)
        self.output_stride = 16
        self.feature_info = {"aux": (40, 8), "out": (960, 16)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        aux = self.features[:5](x)
        return {"aux": aux, "out": self.features[5:](aux)}


# ----------------------------------------------------------------------------- VainF's MobileNet-v2


class VainFInvertedResidual(nn.Module):
    """VainF ``InvertedResidual``: fixed-pad the input, then ``conv`` = [1x1 expand] depthwise (no padding) project."""

    def __init__(self, in_ch: int, out: int, *, stride: int, dilation: int, expand: int) -> None:
        super().__init__()
        hidden = int(round(in_ch * expand))
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_cbr(in_ch, hidden, 1, act=nn.ReLU6))
        layers.append(_cbr(hidden, hidden, 3, stride=stride, dilation=dilation, groups=hidden, act=nn.ReLU6))
        layers += [nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out)]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and in_ch == out
        total = 2 * dilation  # effective 3x3 kernel minus one
        self.padding = (total // 2, total - total // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beg, end = self.padding
        y = self.conv(F.pad(x, (beg, end, beg, end)))
        return x + y if self.use_res_connect else y


# (expansion t, channels c, repeats n, stride s) of VainF's MobileNetV2
MNV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))


class VainFMobileNetV2(nn.Module):
    """VainF's MobileNet-v2 ``features[0:18]`` at output stride 8 or 16 (the 1280-channel last conv is not used).
    ``forward`` -> ``{"low_level": features[3] (24 ch, stride 4), "out": features[17] (320 ch)}``."""

    def __init__(self, *, output_stride: int) -> None:
        super().__init__()
        validate_output_stride(output_stride, (8, 16))
        layers: list[nn.Module] = [_cbr(3, 32, 3, stride=2, act=nn.ReLU6)]  # padding 0: VainF's ConvBNReLU
        current, dilation, in_ch = 2, 1, 32
        for t, c, n, s in MNV2_SETTING:
            previous = dilation
            if current == output_stride:
                stride, dilation = 1, dilation * s
            else:
                stride, current = s, current * s
            for i in range(n):
                layers.append(VainFInvertedResidual(in_ch, c, stride=stride if i == 0 else 1,
                                                    dilation=previous if i == 0 else dilation, expand=t))
                in_ch = c
        self.features = nn.Sequential(*layers)
        self.output_stride = output_stride
        self.feature_info = {"low_level": (24, 4), "out": (320, output_stride)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = self.features[:4](x)
        return {"low_level": low, "out": self.features[4:](low)}


# ----------------------------------------------------------------------------- heads and the model


class ASPPPooling(nn.Module):
    """Image pooling branch: global mean -> 1x1 -> BN -> ReLU, resized back with ``align_corners=False``."""

    conv_bn_pairs = (("conv", "bn"),)  # folded by reproduce.inference.fuse_for_inference

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.conv(x.mean(dim=(2, 3), keepdim=True))))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def separable(in_ch: int, out_ch: int, k: int, *, padding: int, dilation: int = 1) -> nn.Sequential:
    """VainF's ``AtrousSeparableConvolution`` (``--separable_conv``): depthwise k x k then pointwise 1x1, no
    BatchNorm or activation between, no biases (it copies the replaced conv's ``bias=False``)."""
    return nn.Sequential(OrderedDict(
        depthwise=nn.Conv2d(in_ch, in_ch, k, padding=padding, dilation=dilation, groups=in_ch, bias=False),
        pointwise=nn.Conv2d(in_ch, out_ch, 1, bias=False)))


class TorchASPP(nn.Module):
    """torchvision / VainF ``ASPP``: ``convs`` = [1x1, 3x3 atrous x3, pooling], ``project`` 1x1 + BN + ReLU + Dropout.

    ``separable_convs=True``: the 3x3 atrous convs are VainF's depthwise + pointwise pairs (:func:`separable`).
    """

    def __init__(self, in_ch: int, rates: Sequence[int], *, dropout: float, channels: int = 256,
                 separable_convs: bool = False) -> None:
        super().__init__()
        self.rates = tuple(rates)
        branches: list[nn.Module] = [_cbr(in_ch, channels, 1)]
        for r in self.rates:
            branch = _cbr(in_ch, channels, 3, padding=r, dilation=r)
            if separable_convs:
                branch[0] = separable(in_ch, channels, 3, padding=r, dilation=r)
            branches.append(branch)
        branches.append(ASPPPooling(in_ch, channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(OrderedDict(conv=nn.Conv2d(len(branches) * channels, channels, 1, bias=False),
                                                 bn=nn.BatchNorm2d(channels), relu=nn.ReLU(inplace=True),
                                                 dropout=nn.Dropout(dropout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class TorchDeepLab(nn.Module):
    """Backbone -> ASPP -> [v3+ decoder] -> 3x3 + 1x1 head -> logits resized to the input (``align_corners=False``).

    ``decoder=False``: ``head`` = 3x3 256 -> BN -> ReLU -> 1x1 classes on the ASPP output (``DeepLabHead``).
    ``decoder=True`` (VainF's ``DeepLabHeadV3Plus``): ``project`` (1x1 48) on the low-level features,
    the ASPP output resized to their size, concat [low-level, ASPP], then the head on 304 channels.
    ``forward(x)`` -> (N, classes, H, W), the input's size.
    """

    def __init__(self, backbone: nn.Module, *, num_classes: int, rates: Sequence[int], dropout: float,
                 decoder: bool = False, aux: bool = False, separable_convs: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        out_ch, self.output_stride = backbone.feature_info["out"]
        self.aspp = TorchASPP(out_ch, rates, dropout=dropout, separable_convs=separable_convs)
        head_in = 256
        self.project = None
        if decoder:
            low_ch, _ = backbone.feature_info["low_level"]
            self.project = _cbr(low_ch, 48, 1)
            head_in = 256 + 48
        head_conv = (separable(head_in, 256, 3, padding=1) if separable_convs
                     else nn.Conv2d(head_in, 256, 3, padding=1, bias=False))
        self.head = nn.Sequential(OrderedDict(conv=head_conv, bn=nn.BatchNorm2d(256), relu=nn.ReLU(inplace=True),
                                              logits=nn.Conv2d(256, num_classes, 1)))
        self.aux_classifier = None
        if aux:
            aux_ch, _ = backbone.feature_info["aux"]
            self.aux_classifier = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(aux_ch, aux_ch // 4, 3, padding=1, bias=False), bn=nn.BatchNorm2d(aux_ch // 4),
                relu=nn.ReLU(inplace=True), dropout=nn.Dropout(0.1), logits=nn.Conv2d(aux_ch // 4, num_classes, 1)))
        self.logits_stride = 1  # resized to the input

    def _logits(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        y = self.aspp(features["out"])
        if self.project is not None:
            low = self.project(features["low_level"])
            y = torch.cat([low, F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)], dim=1)
        return self.head(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self._logits(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward_dict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """torchvision's return value: ``{"out"}``, plus ``"aux"`` when the model has the auxiliary head."""
        features = self.backbone(x)
        size = x.shape[-2:]
        result = {"out": F.interpolate(self._logits(features), size=size, mode="bilinear", align_corners=False)}
        if self.aux_classifier is not None:
            aux = self.aux_classifier(features["aux"])
            result["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return result


_DEPTH = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
TV_RATES = (12, 24, 36)  # torchvision's DeepLabHead, for every backbone


def _vainf_rates(output_stride: int) -> tuple[int, int, int]:
    validate_output_stride(output_stride, (8, 16))
    return (12, 24, 36) if output_stride == 8 else (6, 12, 18)


@register_model("torchvision_deeplabv3_resnet50")
def torchvision_deeplabv3_resnet50(*, num_classes: int, aux: bool = False) -> TorchDeepLab:
    """torchvision ``deeplabv3_resnet50`` (OS 8, rates 12/24/36); returns its ``out``."""
    return TorchDeepLab(TVResNet(_DEPTH[50], output_stride=8), num_classes=num_classes, rates=TV_RATES, dropout=0.5,
                        aux=aux)


@register_model("torchvision_deeplabv3_resnet101")
def torchvision_deeplabv3_resnet101(*, num_classes: int, aux: bool = False) -> TorchDeepLab:
    """torchvision ``deeplabv3_resnet101`` (OS 8, rates 12/24/36); returns its ``out``."""
    return TorchDeepLab(TVResNet(_DEPTH[101], output_stride=8), num_classes=num_classes, rates=TV_RATES, dropout=0.5,
                        aux=aux)


@register_model("torchvision_deeplabv3_mobilenet_v3_large")
def torchvision_deeplabv3_mobilenet_v3_large(*, num_classes: int, aux: bool = False) -> TorchDeepLab:
    """torchvision ``deeplabv3_mobilenet_v3_large`` (OS 16, rates 12/24/36); returns its ``out``."""
    return TorchDeepLab(TVMobileNetV3Large(), num_classes=num_classes, rates=TV_RATES, dropout=0.5, aux=aux)


def _vainf(backbone: str, decoder: bool, num_classes: int, output_stride: int,
           separable_convs: bool = False) -> TorchDeepLab:
    rates = _vainf_rates(output_stride)
    trunk = (VainFMobileNetV2(output_stride=output_stride) if backbone == "mobilenet"
             else TVResNet(_DEPTH[int(backbone[len("resnet"):])], output_stride=output_stride))
    return TorchDeepLab(trunk, num_classes=num_classes, rates=rates, dropout=0.1, decoder=decoder,
                        separable_convs=separable_convs)


@register_model("vainf_deeplabv3_resnet50")
def vainf_deeplabv3_resnet50(*, num_classes: int, output_stride: int = 16) -> TorchDeepLab:
    """VainF ``deeplabv3_resnet50`` (OS 8 or 16); logits at the input size."""
    return _vainf("resnet50", False, num_classes, output_stride)


@register_model("vainf_deeplabv3_resnet101")
def vainf_deeplabv3_resnet101(*, num_classes: int, output_stride: int = 16) -> TorchDeepLab:
    """VainF ``deeplabv3_resnet101`` (OS 8 or 16); logits at the input size."""
    return _vainf("resnet101", False, num_classes, output_stride)


@register_model("vainf_deeplabv3plus_resnet50")
def vainf_deeplabv3plus_resnet50(*, num_classes: int, output_stride: int = 16,
                               separable_convs: bool = False) -> TorchDeepLab:
    """VainF ``deeplabv3plus_resnet50`` (OS 8 or 16; ``separable_convs``: its ``--separable_conv``)."""
    return _vainf("resnet50", True, num_classes, output_stride, separable_convs)


@register_model("vainf_deeplabv3plus_resnet101")
def vainf_deeplabv3plus_resnet101(*, num_classes: int, output_stride: int = 16,
                               separable_convs: bool = False) -> TorchDeepLab:
    """VainF ``deeplabv3plus_resnet101`` (OS 8 or 16); logits at the input size."""
    return _vainf("resnet101", True, num_classes, output_stride, separable_convs)


@register_model("vainf_deeplabv3_mobilenet")
def vainf_deeplabv3_mobilenet(*, num_classes: int, output_stride: int = 16) -> TorchDeepLab:
    """VainF ``deeplabv3_mobilenet`` (its MobileNet-v2, OS 8 or 16); logits at the input size."""
    return _vainf("mobilenet", False, num_classes, output_stride)


@register_model("vainf_deeplabv3plus_mobilenet")
def vainf_deeplabv3plus_mobilenet(*, num_classes: int, output_stride: int = 16,
                               separable_convs: bool = False) -> TorchDeepLab:
    """VainF ``deeplabv3plus_mobilenet`` (its MobileNet-v2, OS 8 or 16); logits at the input size."""
    return _vainf("mobilenet", True, num_classes, output_stride, separable_convs)
