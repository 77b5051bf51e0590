"""Slim MobileNet-v1 (``research/slim/nets/mobilenet_v1.py``), depth multiplier 1.0, up to ``Conv2d_13_pointwise``.

Behaviour of ``mobilenet_v1_base`` and ``mobilenet_v1_arg_scope`` (read, not copied):

* ``Conv2d_0``: 3x3 conv, stride 2, 32 channels; then 13 depthwise-separable layers, each a 3x3
  ``Conv2d_<i>_depthwise`` (``separable_conv2d`` with ``num_outputs=None``, depth multiplier 1)
  and a 1x1 ``Conv2d_<i>_pointwise``; channels 64, 128, 128, 256, 256, 512 x6, 1024, 1024 with
  stride 2 on the depthwise convs of layers 2, 4, 6 and 12;
* every conv: no bias, BatchNorm (``center`` and ``scale`` True, epsilon 0.001), ReLU6;
* TF ``SAME`` padding everywhere (``use_explicit_padding=False``), so the strided convs pad the
  extra pixel bottom/right -- computed per forward, any input size;
* ``output_stride`` 8/16/32: once the running stride reaches the target, later layers get
  stride 1 and the atrous rate grows by the stride each would have had (the layer whose stride
  is removed still runs at the old rate) -- ``tf_ops.dense_schedule``, slim's exact rule.

Module names are the TF scopes (``Conv2d_0``, ``Conv2d_1_depthwise``...), so the release's
variables ``MobilenetV1/Conv2d_1_depthwise/depthwise_weights`` map by the generic rules of
``converters/tf/rules.py``. The ImageNet classifier ``MobilenetV1/Logits/...`` is not part of it.
"""

from __future__ import annotations

import torch
from torch import nn

from .deeplab_v3 import DeepLabV3, atrous_rates_for
from .registry import register_backbone, register_model, validate_output_stride
from .tf_ops import Conv2dTF, dense_schedule

__all__ = ["MobileNetV1TF"]

MOBILENET_V1_BN_EPS = 1e-3  # mobilenet_v1_arg_scope(batch_norm_epsilon=0.001)
# _CONV_DEFS after Conv2d_0: (stride, depth) of each depthwise-separable layer.
_SEPARABLE = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), (1, 512), (1, 512), (1, 512), (1, 512),
              (1, 512), (2, 1024), (1, 1024))  # fmt: skip
LOW_LEVEL_LAYER = 3  # Conv2d_3_pointwise: 128 channels, the last stride-4 end point


class MobileNetV1TF(nn.Module):
    """MobileNet-v1 trunk. ``forward(x)`` -> ``{"out": Conv2d_13_pointwise, "low_level": Conv2d_3_pointwise}``.

    ``x``: preprocessed NCHW (the slim release expects RGB scaled to [-1, 1], Inception style).
    ``out``: 1024 channels at ``output_stride``; ``low_level``: 128 channels at stride 4.
    """

    def __init__(self, *, output_stride: int = 16) -> None:
        super().__init__()
        validate_output_stride(output_stride, (8, 16, 32))
        self.output_stride, self.tf_scope = output_stride, "MobilenetV1"
        schedule = dense_schedule([2] + [s for s, _ in _SEPARABLE], output_stride)
        eps = MOBILENET_V1_BN_EPS
        self.Conv2d_0 = Conv2dTF(3, 32, 3, stride=schedule[0][0], bn_eps=eps, activation="relu6")
        channels = 32
        self._layers: list[str] = []
        for i, ((_, depth), (stride, rate)) in enumerate(zip(_SEPARABLE, schedule[1:]), start=1):
            self.add_module(f"Conv2d_{i}_depthwise", Conv2dTF(
                channels, channels, 3, stride=stride, dilation=rate, groups=channels, bn_eps=eps, activation="relu6"))
            self.add_module(f"Conv2d_{i}_pointwise", Conv2dTF(channels, depth, 1, bn_eps=eps, activation="relu6"))
            self._layers += [f"Conv2d_{i}_depthwise", f"Conv2d_{i}_pointwise"]
            channels = depth
        self.feature_info = {"out": (channels, output_stride), "low_level": (_SEPARABLE[LOW_LEVEL_LAYER - 1][1], 4)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.Conv2d_0(x)
        low_level = x
        for name in self._layers:
            x = getattr(self, name)(x)
            if name == f"Conv2d_{LOW_LEVEL_LAYER}_pointwise":
                low_level = x
        return {"out": x, "low_level": low_level}


@register_backbone("mobilenet_v1")
def mobilenet_v1(*, output_stride: int) -> MobileNetV1TF:
    """Slim MobileNet-v1 1.0 (``mobilenet_v1_1.0_224``'s network) up to Conv2d_13_pointwise, OS 8, 16 or 32."""
    return MobileNetV1TF(output_stride=output_stride)


@register_model("deeplabv3_mobilenetv1")
def deeplabv3_mobilenetv1(*, num_classes: int, output_stride: int = 16) -> DeepLabV3:
    """DeepLab v3 on MobileNet-v1 1.0 (seed 000's v3: ASPP 1x1 + 3x3 rates 6/12/18 (x2 at OS 8) + image
    pooling, no decoder, OS 16 by default); logits at stride OS."""
    rates = atrous_rates_for(output_stride)
    return DeepLabV3(MobileNetV1TF(output_stride=output_stride), num_classes=num_classes, atrous_rates=rates,
                     aspp_separable=False, decoder=False)
