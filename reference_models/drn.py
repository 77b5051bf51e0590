"""Dilated Residual Networks, type D (Yu, Koltun, Funkhouser, CVPR 2017), as ``fyu/drn`` defines them.

Behaviour read from ``fyu/drn`` ``drn.py`` (not copied) and from how
``jfzhang95/pytorch-deeplab-xception`` (seed 004's upstream) uses DRN-D-54 under DeepLab v3+:

* ``layer0``: 7x7 conv (stride 1, pad 3) + BN + ReLU, 16 channels; ``layer1`` / ``layer2``: one
  3x3 conv + BN + ReLU each (16 channels stride 1, 32 channels stride 2) -- the "D" stem that
  replaces DRN-C's residual blocks;
* ``layer3``..``layer6``: bottlenecks (64/128/256/512 x 4 channels; DRN-D-54 has 3/4/6/3 of them,
  DRN-D-105 3/4/23/3), the stride on the 3x3 ``conv2`` and on the 1x1 ``downsample`` projection;
  ``layer3`` and ``layer4`` have stride 2, ``layer5`` dilation 2 and ``layer6`` dilation 4 in
  EVERY block (``new_level=False``: no half-rate first block for the bottleneck's 3x3);
* ``layer7`` / ``layer8``: the de-gridding 3x3 conv + BN + ReLU layers (512 channels, dilation 2
  then 1, no residual);
* every conv has PyTorch symmetric padding (``padding = dilation`` for 3x3), BatchNorm eps 1e-5.

The native network has output stride 8. Output stride 16 is the ResNet it was dilated from, one
level less dilated: ``layer5``'s first block keeps its stride 2 and every later dilation is
halved (at least 1): ``layer5`` 1, ``layer6`` 2, ``layer7`` 1, ``layer8`` 1. The module tree and
state-dict keys are the same at both output strides.

Module names are fyu's (``layer0.0.weight``, ``layer3.0.downsample.1.running_var``,
``layer7.1.weight``...), so its ImageNet checkpoints (``drn_d_54-0e0534ff.pth``,
``drn_d_105-12b40979.pth``) load with :func:`load_imagenet_state_dict` (which drops the 1000-class
``fc``). Features: ``{"out": layer8 (512 channels, stride OS), "low_level": layer3 (256 channels,
stride 4)}`` -- the tensors jfzhang95's DeepLab takes (its ``low_level_feat`` is ``layer3``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .deeplab_v3 import DeepLabV3, atrous_rates_for
from .registry import register_backbone, register_model, validate_output_stride

__all__ = ["DRN", "DRNBottleneck", "load_imagenet_state_dict"]

DRN_BN_EPS = 1e-5  # nn.BatchNorm2d default, as fyu/drn builds them
CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)
_BLOCKS = {54: (3, 4, 6, 3), 105: (3, 4, 23, 3)}  # layer3..layer6 bottlenecks
CLASSIFIER_KEYS = ("fc.weight", "fc.bias")  # the ImageNet head of fyu's checkpoints


class DRNBottleneck(nn.Module):
    """fyu's DRN bottleneck: 1x1 -> 3x3 (stride, dilation) -> 1x1 (x4), projection ``downsample``."""

    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))  # folded by reproduce.inference.fuse_for_inference

    expansion = 4

    def __init__(self, in_channels: int, planes: int, *, stride: int, dilation: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, eps=DRN_BN_EPS)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=DRN_BN_EPS)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out, eps=DRN_BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out, eps=DRN_BN_EPS))
            if stride != 1 or in_channels != out
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        y += identity  # bn3's (or, folded, conv3's) fresh output, summed in place as fyu's drn does
        return self.relu(y)


def _conv_layers(in_channels: int, channels: int, *, stride: int, dilation: int) -> nn.Sequential:
    """One fyu ``_make_conv_layers`` conv: 3x3 conv + BN + ReLU (indices 0, 1, 2 in the state dict)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(channels, eps=DRN_BN_EPS),
        nn.ReLU(inplace=True),
    )


class DRN(nn.Module):
    """DRN-D trunk (no classifier). ``forward(x)`` -> ``{"out", "low_level"}`` (see the module docstring).

    ``x``: NCHW RGB normalised with the ImageNet mean/std (fyu and jfzhang95 both use
    ``transforms.Normalize`` with the torchvision values).
    """

    def __init__(self, *, depth: int = 54, output_stride: int = 8) -> None:
        super().__init__()
        if depth not in _BLOCKS:
            raise ValueError(f"DRN-D depth must be one of {sorted(_BLOCKS)}, got {depth!r}")
        validate_output_stride(output_stride, (8, 16))
        self.depth, self.output_stride = depth, output_stride
        def _dilation(native: int) -> int:  # the OS-8 dilation at this output stride
            return native if output_stride == 8 else max(1, native // 2)

        c = CHANNELS
        self.layer0 = nn.Sequential(
            nn.Conv2d(3, c[0], 7, stride=1, padding=3, bias=False),
            nn.BatchNorm2d(c[0], eps=DRN_BN_EPS),
            nn.ReLU(inplace=True),
        )
        self.layer1 = _conv_layers(c[0], c[0], stride=1, dilation=1)
        self.layer2 = _conv_layers(c[0], c[1], stride=2, dilation=1)
        in_channels = c[1]
        # (planes, stride, dilation) of layer3..layer6 at this output stride
        plan = ((c[2], 2, 1), (c[3], 2, 1),
                (c[4], 1 if output_stride == 8 else 2, _dilation(2)), (c[5], 1, _dilation(4)))  # fmt: skip
        for index, ((planes, stride, dilation), blocks) in enumerate(zip(plan, _BLOCKS[depth]), start=3):
            units = []
            for j in range(blocks):
                units.append(DRNBottleneck(in_channels, planes, stride=stride if j == 0 else 1, dilation=dilation))
                in_channels = planes * DRNBottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*units))
        self.layer7 = _conv_layers(in_channels, c[6], stride=1, dilation=_dilation(2))
        self.layer8 = _conv_layers(c[6], c[7], stride=1, dilation=_dilation(1))
        self.feature_info = {"out": (c[7], output_stride), "low_level": (c[2] * DRNBottleneck.expansion, 4)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.layer2(self.layer1(self.layer0(x)))
        low_level = self.layer3(x)
        x = self.layer8(self.layer7(self.layer6(self.layer5(self.layer4(low_level)))))
        return {"out": x, "low_level": low_level}


def load_imagenet_state_dict(model: DRN, state_dict: Mapping[str, torch.Tensor]) -> DRN:
    """Load one of fyu's ImageNet checkpoints (strict, keys unchanged; its ``fc`` classifier is dropped).

    Any other extra or missing key raises (``load_state_dict(strict=True)``). Checkpoints saved
    before PyTorch 0.4 have no ``num_batches_tracked``: BatchNorm fills those in itself.
    """
    trunk = {k: v for k, v in state_dict.items() if k not in CLASSIFIER_KEYS}
    model.load_state_dict(trunk, strict=True)
    return model


@register_backbone("drn_d_54")
def drn_d_54(*, output_stride: int) -> DRN:
    """DRN-D-54 (fyu/drn ``drn_d_54``) without its classifier, at output stride 8 (native) or 16."""
    return DRN(depth=54, output_stride=output_stride)


@register_backbone("drn_d_105")
def drn_d_105(*, output_stride: int) -> DRN:
    """DRN-D-105 (fyu/drn ``drn_d_105``) without its classifier, at output stride 8 (native) or 16."""
    return DRN(depth=105, output_stride=output_stride)


def _deeplabv3plus_drn(depth: int, *, num_classes: int, output_stride: int) -> DeepLabV3:
    rates = atrous_rates_for(output_stride)
    trunk = DRN(depth=depth, output_stride=output_stride)
    return DeepLabV3(trunk, num_classes=num_classes, atrous_rates=rates, aspp_separable=False, decoder=True,
                     decoder_separable=False)


# Seed 004 (jfzhang95) runs DRN at output stride 8 only (its DeepLab overrides the argument) with ASPP
# rates 12/24/36 and the decoder on layer3 (256 channels, stride 4); these are the DeepLab-TF heads
# (plain 3x3 ASPP and decoder convs) on that trunk. ``jfzhang95_*`` flavours compute jfzhang95's own head.


@register_model("deeplabv3plus_drn_d_54")
def deeplabv3plus_drn_d_54(*, num_classes: int, output_stride: int = 8) -> DeepLabV3:
    """DeepLab v3+ on DRN-D-54 (decoder on ``layer3``); OS 8 (default, as seed 004) or 16; logits at stride 4."""
    return _deeplabv3plus_drn(54, num_classes=num_classes, output_stride=output_stride)


@register_model("deeplabv3plus_drn_d_105")
def deeplabv3plus_drn_d_105(*, num_classes: int, output_stride: int = 8) -> DeepLabV3:
    """DeepLab v3+ on DRN-D-105 (decoder on ``layer3``); OS 8 (default) or 16; logits at stride 4."""
    return _deeplabv3plus_drn(105, num_classes=num_classes, output_stride=output_stride)
