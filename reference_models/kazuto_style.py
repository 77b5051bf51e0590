"""DeepLab v2 ResNet-101 MSC as kazuto1011/deeplab-pytorch computes it (``DeepLabV2_ResNet101_MSC``).

The single-scale network is the Caffe release's, unchanged (read in ``libs/models/resnet.py`` and
``deeplabv2.py``: 7x7 stem, ``MaxPool2d(3, 2, 1, ceil_mode=True)``, the stride on the 1x1 ``reduce``
conv, dilations 2 / 4 in the last two stages, BatchNorm eps 1e-5, four biased 3x3 ASPP convs
summed), so it is our :class:`~reference_models.deeplab_v2.CaffeResNet` + ``ASPPv2``. What differs is
the multi-scale fusion (``libs/models/msc.py``), which is not Caffe's:

* the extra scales are 0.5 and 0.75, each input made with ``F.interpolate(x, scale_factor=s,
  mode="bilinear", align_corners=False)``: output size ``floor(H * s)``, and the sampling grid uses
  ``s`` itself (not the size ratio), so 321 -> 160 / 240 (Caffe's Interp gives 161 / 241);
* each scale's logits are resized to the 1x logits' size with ``align_corners=False`` bilinear
  (Caffe: ``align_corners=True``), and the fused output is their element-wise max;
* eval mode returns the fused logits at output stride 8 (not upsampled to the input).

In training mode the model returns ``{"fused", "scale_1", "scale_0.5", "scale_0.75"}``, the
logits kazuto's training loss uses (each scale at its native size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .deeplab_v2 import ASPPv2, CaffeResNet, DeepLabV2
from .registry import register_model

__all__ = ["KAZUTO_SCALES", "KazutoMSC"]

KAZUTO_SCALES = (0.5, 0.75)  # MSC(base, scales=[0.5, 0.75]); the 1x logits come first


def resize_by_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """PyTorch's ``scale_factor`` resize (floor size, grid from the factor), as kazuto's MSC calls it."""
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


class KazutoMSC(DeepLabV2):
    """Shared-weight multi-scale DeepLab v2, fused as kazuto's ``MSC`` fuses (see the module docstring)."""

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module, *,
                 pyramid: Sequence[float] = KAZUTO_SCALES, freeze_bn: bool = True) -> None:
        super().__init__(backbone, head, scales=(1.0, *pyramid), freeze_bn=freeze_bn)
        self.pyramid = tuple(float(s) for s in pyramid)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        logits = self._single(x)
        size = tuple(logits.shape[-2:])
        native = {s: self._single(resize_by_scale(x, s)) for s in self.pyramid}
        fused = logits
        for out in native.values():
            fused = torch.maximum(fused, F.interpolate(out, size=size, mode="bilinear", align_corners=False))
        if not self.training:
            return fused
        return {"fused": fused, "scale_1": logits, **{f"scale_{s:g}": out for s, out in native.items()}}


@register_model("kazuto_deeplabv2_resnet101_msc")
def kazuto_deeplabv2_resnet101_msc(*, num_classes: int, freeze_bn: bool = True) -> KazutoMSC:
    """kazuto1011's ``DeepLabV2_ResNet101_MSC``: Caffe DeepLab v2 ResNet-101 at scales 1, 0.5, 0.75
    (``align_corners=False`` resizes) fused by max; eval output at stride 8."""
    return KazutoMSC(CaffeResNet(), ASPPv2(2048, num_classes), freeze_bn=freeze_bn)
