"""DeepLab v3 as leimao/DeepLab-V3 builds it (``model.py``, ``modules.py``, ``feature_extractor.py``).

Read, not copied. That project wires TF-slim trunks to its own ASPP with ``tf.layers`` ops:

* **trunks** (``feature_extractor.py``): ``resnet_v2_50`` / ``resnet_v2_101`` (pre-activation ResNet
  **v2**, not v1) with ``global_pool=False, output_stride=16``; the feature map is the trunk's output
  after ``postnorm`` (BN + ReLU, 2048 channels). The ``mobilenet_*`` backbone is slim
  **MobileNet-v2** ``mobilenet_base(depth_multiplier=..., output_stride=16)``: the WHOLE base, so the
  1x1 ``Conv_1`` (1280 channels, BN, ReLU6) is included (DeepLab-TF stops at ``layer_18``, 320).
  ``download.py``'s ``mobilenet_1.0_224`` entry downloads ``mobilenet_v2_1.0_224.tgz`` (MobileNet-v2).
  Note: ``model.py`` reads the multiplier as ``float(name.split('_')[-1])``, so only a name ending in
  the multiplier (``mobilenet_1.0``) builds the 1.0 network; ``mobilenet_1.0_224`` asks for 224.0.
  BatchNorm epsilon: 1e-5 in the ResNets (``resnet_arg_scope``), 1e-3 in MobileNet-v2 (slim default).
* **ASPP** (``modules.atrous_spatial_pyramid_pooling``, 256 filters): ``aspp1x1`` (1x1), ``aspp3x3_1``
  / ``_2`` / ``_3`` (3x3, rates 6 / 12 / 18, ``SAME``) and image pooling (spatial mean -> 1x1 conv,
  TF name ``conv2d`` -> ``resize_bilinear(align_corners=True)`` back to the feature size); every
  conv is a ``tf.layers.conv2d`` with its default bias and NO BatchNorm, NO activation.
  Concat order ``[1x1, r6, r12, r18, pool]`` -> ``aspp_outputs`` 1x1 (bias, linear). No dropout.
* **logits**: 1x1 conv with bias (``logits``), then ``tf.image.resize_bilinear(logits, size)`` to the
  target size (the input size in their train / test code) with TF1's defaults
  ``align_corners=False, half_pixel_centers=False``: the legacy grid ``src = dst * in / out``
  (neither PyTorch's ``align_corners=False`` nor ``True``): :func:`resize_bilinear_legacy`.

Input (``utils.py``): ``cv2.imread`` images (BGR, 0-255) minus per-channel means of the training
images (``channel_means.npz``, also BGR), although their comments say RGB.

So from the trunk on, the head is affine (nothing between the ASPP convs and the logits is nonlinear).
The models return (N, classes, H, W) at the input's size, as their ``outputs`` tensor (NCHW here).
Module names are their TF scope names (``aspp.aspp3x3_1`` <-> ``aspp3x3_1/kernel``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .mobilenet_v2 import MOBILENET_BN_EPS, MobileNetV2TF
from .registry import register_model, validate_output_stride
from .resnet_tf import ResNetTF
from .tf_ops import Conv2dTF

__all__ = ["LEIMAO_RATES", "LeimaoASPP", "LeimaoDeepLabV3", "MobileNetV2Base", "resize_bilinear_legacy"]

LEIMAO_RATES = (6, 12, 18)  # hard-coded in their ASPP, whatever the output stride
LEIMAO_FILTERS = 256


def _legacy_axis(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lower index, upper index, upper weight) per output position: TF's ``LegacyScaler`` in float32.

    Sizes may be symbolic (ONNX export with dynamic shapes): no ``int()`` or Python branches on them. The
    float32 product with the Python quotient equals TF's ``static_cast<float>(in) / out`` for sizes < 2**24.
    """
    src = torch.arange(n_out, dtype=torch.float32, device=device) * (n_in / n_out)
    low = src.floor()
    weight = src - low
    low = low.long().clamp(max=n_in - 1)
    return low, (low + 1).clamp(max=n_in - 1), weight


def resize_bilinear_legacy(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``tf.compat.v1.image.resize_bilinear(x, size)`` with its defaults (``align_corners=False``,
    ``half_pixel_centers=False``): source ``dst * in / out``, upper neighbour clamped to the edge.
    (Same size: the weights are 0, so the result is ``x`` exactly.)"""
    out_h, out_w = size[0], size[1]
    h, w = x.shape[-2:]
    lo, hi, wy = _legacy_axis(h, out_h, x.device)
    wy = wy.to(x.dtype)[:, None]
    x = x.index_select(-2, lo) * (1 - wy) + x.index_select(-2, hi) * wy
    lo, hi, wx = _legacy_axis(w, out_w, x.device)
    wx = wx.to(x.dtype)
    return x.index_select(-1, lo) * (1 - wx) + x.index_select(-1, hi) * wx


class MobileNetV2Base(MobileNetV2TF):
    """Slim ``mobilenet_v2.mobilenet_base``: :class:`MobileNetV2TF` (``layer_18``) plus ``Conv_1``
    (1x1 to 1280, BN eps 1e-3, ReLU6). ``out`` is ``Conv_1``'s output; ``low_level`` unchanged."""

    def __init__(self, *, output_stride: int = 16) -> None:
        super().__init__(output_stride=output_stride)
        # "Conv_1": slim's second unnamed conv2d in scope MobilenetV2 (a 1x1 conv: its atrous rate is moot).
        self.Conv_1 = Conv2dTF(320, 1280, 1, bn_eps=MOBILENET_BN_EPS, activation="relu6")
        self.feature_info = {**self.feature_info, "out": (1280, output_stride)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = super().forward(x)
        return {"out": self.Conv_1(feats["out"]), "low_level": feats["low_level"]}


class LeimaoASPP(nn.Module):
    """Their ASPP: five biased, linear convs (no BN / ReLU), concat, biased linear 1x1 projection."""

    def __init__(self, in_channels: int, *, filters: int = LEIMAO_FILTERS, rates: Sequence[int] = LEIMAO_RATES) -> None:
        super().__init__()
        if len(rates) != 3:
            raise ValueError(f"three atrous rates expected, got {tuple(rates)}")
        self.rates = tuple(int(r) for r in rates)
        self.aspp1x1 = Conv2dTF(in_channels, filters, 1, bias=True)
        for i, rate in enumerate(self.rates, start=1):
            self.add_module(f"aspp3x3_{i}", Conv2dTF(in_channels, filters, 3, dilation=rate, bias=True))
        self.conv2d = Conv2dTF(in_channels, filters, 1, bias=True)  # image pooling; tf.layers' default name
        self.aspp_outputs = Conv2dTF(5 * filters, filters, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a 1x1 map resized with align_corners=True is a broadcast of its one value
        pooled = self.conv2d(x.mean(dim=(2, 3), keepdim=True)).expand(-1, -1, *x.shape[-2:])
        branches = [self.aspp1x1(x), self.aspp3x3_1(x), self.aspp3x3_2(x), self.aspp3x3_3(x), pooled]
        return self.aspp_outputs(torch.cat(branches, dim=1))


class LeimaoDeepLabV3(nn.Module):
    """Trunk ``out`` -> :class:`LeimaoASPP` -> ``logits`` (1x1, bias) -> legacy TF1 bilinear resize to
    the input size. ``forward(x)`` -> (N, classes, H, W); ``x`` preprocessed as their code does
    (``utils.py``: ``cv2.imread``, so **BGR**, 0-255, minus the per-channel means of their training images
    kept in ``channel_means.npz``; no scaling), whatever the ImageNet trunk was trained with."""

    def __init__(self, backbone: nn.Module, *, num_classes: int, rates: Sequence[int] = LEIMAO_RATES) -> None:
        super().__init__()
        self.backbone = backbone
        channels, self.output_stride = backbone.feature_info["out"]
        self.aspp = LeimaoASPP(channels, rates=rates)
        self.logits = Conv2dTF(LEIMAO_FILTERS, num_classes, 1, bias=True)
        self.num_classes = num_classes
        self.logits_stride = 1  # resized to the input

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Their ``logits`` tensor (before ``resized_outputs``), at the trunk's output stride."""
        return self.logits(self.aspp(self.backbone(x)["out"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_bilinear_legacy(self.forward_logits(x), x.shape[-2:])

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel labels (N, H, W), the argmax of their ``outputs``."""
        return self.forward(x).argmax(dim=1)


def _resnet(depth: int, num_classes: int, output_stride: int) -> LeimaoDeepLabV3:
    validate_output_stride(output_stride, (8, 16))
    return LeimaoDeepLabV3(ResNetTF(depth=depth, version=2, output_stride=output_stride), num_classes=num_classes)


@register_model("leimao_deeplabv3_resnet_v2_50")
def leimao_deeplabv3_resnet_v2_50(*, num_classes: int, output_stride: int = 16) -> LeimaoDeepLabV3:
    """leimao/DeepLab-V3 ``resnet_50``: slim resnet_v2_50 (OS 16 in their code) + their bias-only linear
    ASPP (rates 6/12/18) + logits, resized to the input with TF1's legacy bilinear grid."""
    return _resnet(50, num_classes, output_stride)


@register_model("leimao_deeplabv3_resnet_v2_101")
def leimao_deeplabv3_resnet_v2_101(*, num_classes: int, output_stride: int = 16) -> LeimaoDeepLabV3:
    """leimao/DeepLab-V3 ``resnet_101`` (their default backbone): slim resnet_v2_101, otherwise as
    ``leimao_deeplabv3_resnet_v2_50``."""
    return _resnet(101, num_classes, output_stride)


@register_model("leimao_deeplabv3_mobilenet_v2")
def leimao_deeplabv3_mobilenet_v2(*, num_classes: int, output_stride: int = 16) -> LeimaoDeepLabV3:
    """leimao/DeepLab-V3 ``mobilenet_1.0``: slim MobileNet-v2 1.0 base INCLUDING ``Conv_1`` (1280 channels)
    + their ASPP + logits, resized to the input with TF1's legacy bilinear grid."""
    validate_output_stride(output_stride, (8, 16))
    return LeimaoDeepLabV3(MobileNetV2Base(output_stride=output_stride), num_classes=num_classes)
