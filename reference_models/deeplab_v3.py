"""DeepLab v3 (ASPP + image pooling) and v3+ (decoder) heads, as the official TF code builds them.

Behaviour reproduced from ``research/deeplab/model.py`` (read, not copied):

* ASPP: ``image_pooling`` (mean over the feature map, 1x1 conv + BN + ReLU, bilinear
  ``align_corners=True`` back to the feature size), ``aspp0`` (1x1), ``aspp{1,2,3}`` (3x3 atrous;
  split separable ``aspp{i}_depthwise`` + ``aspp{i}_pointwise`` with Xception), every conv without
  bias + BN (eps 1e-5) + ReLU; concat in the order [image_pooling, aspp0, aspp1, aspp2, aspp3];
  ``concat_projection`` 1x1 + BN + ReLU; dropout keep_prob 0.9 while training.
* v3+ decoder: ``feature_projection0`` (1x1, 48) on the backbone's low-level end point, both
  tensors resized (align_corners=True) to the decoder size, concat [encoder, projection], two 3x3
  256-channel convs (``decoder_conv{0,1}_{depthwise,pointwise}`` split separable, or
  ``decoder_conv0/decoder_conv0_{1,2}`` from ``slim.repeat`` when not separable).
* ``logits/semantic``: 1x1 conv with bias, no BN / activation.

Image pooling: the 2018 code averages with a fixed crop-size window; for an input of exactly the
crop size (VOC eval pads to 513) that is the global mean used here, which later official code
also uses when no crop size is given. Decoder size: ``scale_dimension(H, 1/4) = ceil(H / 4)``,
which equals the stride-4 low-level map's size for TF's ceil-sized features.

The eval-mode output is ``logits/semantic`` at the network's output resolution (stride 4 with a
decoder, else ``output_stride``): NOT upsampled; callers resize with align_corners=True as TF does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import mobilenet_v2, resnet_tf, xception  # noqa: F401  (registers the backbones built by name below)
from .registry import build_backbone, register_model, validate_output_stride
from .tf_ops import Conv2dTF, resize_bilinear_align_corners

__all__ = ["ASPP", "DeepLabV3", "Decoder", "atrous_rates_for"]

HEAD_BN_EPS = 1e-5  # model.py batch_norm_params: decay 0.9997, epsilon 1e-5, scale True
ASPP_CHANNELS = 256
DECODER_CHANNELS = 256
LOW_LEVEL_CHANNELS = 48
DROPOUT = 0.1  # slim.dropout(keep_prob=0.9)


def atrous_rates_for(output_stride: int) -> tuple[int, int, int]:
    """The one place output stride becomes ASPP rates: (6, 12, 18) at OS 16, doubled at OS 8."""
    validate_output_stride(output_stride, (8, 16))
    return (6, 12, 18) if output_stride == 16 else (12, 24, 36)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, *, dilation: int = 1) -> Conv2dTF:
    return Conv2dTF(in_channels, out_channels, kernel_size, dilation=dilation, bn_eps=HEAD_BN_EPS, activation="relu")


def _depthwise_bn_relu(channels: int, *, dilation: int = 1) -> Conv2dTF:
    return Conv2dTF(channels, channels, 3, dilation=dilation, groups=channels, bn_eps=HEAD_BN_EPS, activation="relu")


class ASPP(nn.Module):
    """ASPP with image pooling. ``forward(features)`` -> 256-channel map at the input's size.

    ``atrous_rates=()`` gives the MobileNet-v2 zoo head (image pooling + ``aspp0`` only).
    Child names mirror TF scopes: ``image_pooling``, ``aspp0``, ``aspp{i}`` or
    ``aspp{i}_depthwise``/``aspp{i}_pointwise``, ``concat_projection``.
    """

    def __init__(
        self,
        in_channels: int,
        atrous_rates: Sequence[int],
        *,
        separable: bool,
        image_pooling: bool = True,
        channels: int = ASPP_CHANNELS,
    ) -> None:
        super().__init__()
        self.atrous_rates, self.separable = tuple(atrous_rates), separable
        self.image_pooling = _conv_bn_relu(in_channels, channels, 1) if image_pooling else None
        self.aspp0 = _conv_bn_relu(in_channels, channels, 1)
        for i, rate in enumerate(self.atrous_rates, start=1):
            if separable:
                self.add_module(f"aspp{i}_depthwise", _depthwise_bn_relu(in_channels, dilation=rate))
                self.add_module(f"aspp{i}_pointwise", _conv_bn_relu(in_channels, channels, 1))
            else:
                self.add_module(f"aspp{i}", _conv_bn_relu(in_channels, channels, 3, dilation=rate))
        branches = len(self.atrous_rates) + 1 + (1 if image_pooling else 0)
        self.concat_projection = _conv_bn_relu(branches * channels, channels, 1)
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = []
        if self.image_pooling is not None:
            pooled = self.image_pooling(x.mean(dim=(2, 3), keepdim=True))
            branches.append(resize_bilinear_align_corners(pooled, x.shape[-2:]))
        branches.append(self.aspp0(x))
        for i in range(1, len(self.atrous_rates) + 1):
            if self.separable:
                branches.append(getattr(self, f"aspp{i}_pointwise")(getattr(self, f"aspp{i}_depthwise")(x)))
            else:
                branches.append(getattr(self, f"aspp{i}")(x))
        return self.dropout(self.concat_projection(torch.cat(branches, dim=1)))


class Decoder(nn.Module):
    """DeepLab v3+ decoder. ``forward(encoder, low_level)`` -> 256 channels at ``low_level``'s size."""

    def __init__(self, encoder_channels: int, low_level_channels: int, *, separable: bool) -> None:
        super().__init__()
        self.separable = separable
        self.feature_projection0 = _conv_bn_relu(low_level_channels, LOW_LEVEL_CHANNELS, 1)
        c_in = encoder_channels + LOW_LEVEL_CHANNELS
        if separable:
            self.decoder_conv0_depthwise = _depthwise_bn_relu(c_in)
            self.decoder_conv0_pointwise = _conv_bn_relu(c_in, DECODER_CHANNELS, 1)
            self.decoder_conv1_depthwise = _depthwise_bn_relu(DECODER_CHANNELS)
            self.decoder_conv1_pointwise = _conv_bn_relu(DECODER_CHANNELS, DECODER_CHANNELS, 1)
        else:
            # slim.repeat(..., scope='decoder_conv0') names its layers decoder_conv0/decoder_conv0_{1,2}.
            self.decoder_conv0 = nn.Sequential(
                OrderedDict(
                    decoder_conv0_1=_conv_bn_relu(c_in, DECODER_CHANNELS, 3),
                    decoder_conv0_2=_conv_bn_relu(DECODER_CHANNELS, DECODER_CHANNELS, 3),
                )
            )

    def forward(self, encoder: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        size = low_level.shape[-2:]
        projection = resize_bilinear_align_corners(self.feature_projection0(low_level), size)
        x = torch.cat([resize_bilinear_align_corners(encoder, size), projection], dim=1)
        if self.separable:
            x = self.decoder_conv0_pointwise(self.decoder_conv0_depthwise(x))
            return self.decoder_conv1_pointwise(self.decoder_conv1_depthwise(x))
        return self.decoder_conv0(x)


class DeepLabV3(nn.Module):
    """Backbone -> ASPP -> [decoder] -> ``logits.semantic``. ``forward(x)`` -> logits (N, classes, h, w).

    ``x`` is the preprocessed NCHW image; ``h = ceil(H / logits_stride)`` with ``logits_stride`` 4
    with a decoder, else ``output_stride``. The backbone must return ``{"out", "low_level"}`` and
    carry ``feature_info`` and ``tf_scope`` (see ``converters/tf/rules.py``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        atrous_rates: Sequence[int],
        aspp_separable: bool,
        decoder: bool,
        decoder_separable: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        out_channels, self.output_stride = backbone.feature_info["out"]
        self.aspp = ASPP(out_channels, atrous_rates, separable=aspp_separable)
        if decoder:
            low_channels, self.logits_stride = backbone.feature_info["low_level"]
            self.decoder = Decoder(ASPP_CHANNELS, low_channels, separable=decoder_separable)
        else:
            self.decoder, self.logits_stride = None, self.output_stride
        channels = DECODER_CHANNELS if decoder else ASPP_CHANNELS
        self.logits = nn.ModuleDict({"semantic": nn.Conv2d(channels, num_classes, 1, bias=True)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        y = self.aspp(features["out"])
        if self.decoder is not None:
            y = self.decoder(y, features["low_level"])
        return self.logits["semantic"](y)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Label map at the input size: logits resized with align_corners=True (as TF), then argmax."""
        logits = self(x)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return logits.argmax(dim=1)


_RESNET_BACKBONES = {
    50: ("resnet_v1_50_beta", "resnet_v1_50", "resnet_v2_50"),
    101: ("resnet_v1_101_beta", "resnet_v1_101", "resnet_v2_101"),
}


def _encoder(name: str, output_stride: int, **backbone_kwargs: object) -> tuple[nn.Module, tuple[int, int, int]]:
    """The one place an output stride is validated and turned into backbone dilations and ASPP rates."""
    rates = atrous_rates_for(output_stride)  # raises unless 8 or 16
    kwargs = {k: v for k, v in backbone_kwargs.items() if v is not None}  # None -> the backbone's default
    return build_backbone(name, output_stride=output_stride, **kwargs), rates


def _resnet(
    depth: int,
    plus: bool,
    *,
    num_classes: int,
    output_stride: int,
    backbone: str | None,
    multi_grid: Sequence[int] | None,
    separable: bool,
) -> DeepLabV3:
    choices = _RESNET_BACKBONES[depth]
    name = backbone or choices[0]
    if name not in choices:
        raise ValueError(f"backbone must be one of {choices}, got {name!r}")
    trunk, rates = _encoder(name, output_stride, multi_grid=multi_grid)
    return DeepLabV3(
        trunk,
        num_classes=num_classes,
        atrous_rates=rates,
        aspp_separable=separable,
        decoder=plus,
        decoder_separable=separable,
    )


# ResNet defaults: DeepLab's own ImageNet ResNet checkpoints are the "beta" ones, used with
# multi_grid (1, 2, 4) (common.py); ASPP/decoder convs are plain 3x3 unless separable=True.


@register_model("deeplabv3_resnet50")
def deeplabv3_resnet50(
    *,
    num_classes: int,
    output_stride: int = 16,
    backbone: str | None = None,
    multi_grid: Sequence[int] | None = None,
    separable: bool = False,
) -> DeepLabV3:
    """DeepLab v3 on ResNet-50 (default ``resnet_v1_50_beta``); OS 8 or 16; logits at stride OS."""
    return _resnet(
        50,
        False,
        num_classes=num_classes,
        output_stride=output_stride,
        backbone=backbone,
        multi_grid=multi_grid,
        separable=separable,
    )


@register_model("deeplabv3_resnet101")
def deeplabv3_resnet101(
    *,
    num_classes: int,
    output_stride: int = 16,
    backbone: str | None = None,
    multi_grid: Sequence[int] | None = None,
    separable: bool = False,
) -> DeepLabV3:
    """DeepLab v3 on ResNet-101 (default ``resnet_v1_101_beta``); OS 8 or 16; logits at stride OS."""
    return _resnet(
        101,
        False,
        num_classes=num_classes,
        output_stride=output_stride,
        backbone=backbone,
        multi_grid=multi_grid,
        separable=separable,
    )


@register_model("deeplabv3plus_resnet50")
def deeplabv3plus_resnet50(
    *,
    num_classes: int,
    output_stride: int = 16,
    backbone: str | None = None,
    multi_grid: Sequence[int] | None = None,
    separable: bool = False,
) -> DeepLabV3:
    """DeepLab v3+ on ResNet-50 (default ``resnet_v1_50_beta``); OS 8 or 16; logits at stride 4."""
    return _resnet(
        50,
        True,
        num_classes=num_classes,
        output_stride=output_stride,
        backbone=backbone,
        multi_grid=multi_grid,
        separable=separable,
    )


@register_model("deeplabv3plus_resnet101")
def deeplabv3plus_resnet101(
    *,
    num_classes: int,
    output_stride: int = 16,
    backbone: str | None = None,
    multi_grid: Sequence[int] | None = None,
    separable: bool = False,
) -> DeepLabV3:
    """DeepLab v3+ on ResNet-101 (default ``resnet_v1_101_beta``); OS 8 or 16; logits at stride 4."""
    return _resnet(
        101,
        True,
        num_classes=num_classes,
        output_stride=output_stride,
        backbone=backbone,
        multi_grid=multi_grid,
        separable=separable,
    )


@register_model("deeplabv3_xception65")
def deeplabv3_xception65(
    *, num_classes: int, output_stride: int = 16, multi_grid: Sequence[int] | None = None
) -> DeepLabV3:
    """DeepLab v3 on Xception-65: separable ASPP, no decoder; OS 8 or 16; logits at stride OS."""
    trunk, rates = _encoder("xception_65", output_stride, multi_grid=multi_grid)
    return DeepLabV3(trunk, num_classes=num_classes, atrous_rates=rates, aspp_separable=True, decoder=False)


@register_model("deeplabv3plus_xception65")
def deeplabv3plus_xception65(
    *, num_classes: int, output_stride: int = 16, multi_grid: Sequence[int] | None = None
) -> DeepLabV3:
    """The zoo's ``xception65_coco_voc_*``: separable ASPP + separable decoder; OS 8 or 16; logits at stride 4."""
    trunk, rates = _encoder("xception_65", output_stride, multi_grid=multi_grid)
    return DeepLabV3(
        trunk, num_classes=num_classes, atrous_rates=rates, aspp_separable=True, decoder=True, decoder_separable=True
    )


@register_model("deeplabv3_mobilenetv2")
def deeplabv3_mobilenetv2(*, num_classes: int, output_stride: int = 16) -> DeepLabV3:
    """The zoo's ``mobilenetv2_coco_voc_*``: image pooling + ``aspp0`` only, no 3x3 branches, no decoder."""
    trunk, _ = _encoder("mobilenet_v2", output_stride)  # the zoo sets no atrous_rates for MobileNet-v2
    return DeepLabV3(trunk, num_classes=num_classes, atrous_rates=(), aspp_separable=False, decoder=False)
