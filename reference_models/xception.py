"""DeepLab's modified Xception-65 (``research/deeplab/core/xception.py``) as a PyTorch backbone.

Behaviour reproduced (read from the official code, not copied):

* entry ``conv1_1`` (32, 3x3, s2, ``conv2d_same``) and ``conv1_2`` (64, 3x3), each BN + ReLU;
* every unit is three *split* separable convs ``separable_conv{i}_depthwise`` (3x3 depthwise + BN)
  and ``separable_conv{i}_pointwise`` (1x1 + BN); the stride sits on ``separable_conv3`` and uses
  explicit ``fixed_padding`` (pad ``k_eff - 1``, then VALID);
* except in ``exit_flow/block2`` the ReLU comes BEFORE each separable conv and none inside it;
  ``exit_flow/block2`` has ReLU after both the depthwise and the pointwise BN and no skip;
* skips: ``conv`` (1x1 ``shortcut`` + BN, no ReLU, applied to the un-ReLU'd unit input), ``sum``
  (the middle flow's 16 units), ``none``;
* output stride 8/16 via Xception's own ``stack_blocks_dense`` (same rule as slim's), multi-grid
  ``unit_rate_list`` on exit_flow/block2;
* BatchNorm epsilon 1e-3 (``feature_extractor.extract_features`` passes ``batch_norm_epsilon=1e-3``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from .registry import register_backbone, validate_output_stride
from .tf_ops import Conv2dTF, dense_schedule

__all__ = ["XceptionModule", "XceptionTF"]

XCEPTION_BN_EPS = 1e-3
SkipType = Literal["conv", "sum", "none"]

# (flow/block scope, depth_list, skip type, activation inside separable convs, units, stride)
_XCEPTION_65 = (
    ("entry_flow/block1", (128, 128, 128), "conv", False, 1, 2),
    ("entry_flow/block2", (256, 256, 256), "conv", False, 1, 2),
    ("entry_flow/block3", (728, 728, 728), "conv", False, 1, 2),
    ("middle_flow/block1", (728, 728, 728), "sum", False, 16, 1),
    ("exit_flow/block1", (728, 1024, 1024), "conv", False, 1, 2),
    ("exit_flow/block2", (1536, 1536, 2048), "none", True, 1, 1),
)


class XceptionModule(nn.Module):
    """One ``xception_module``: three split separable convs plus the skip connection."""

    def __init__(
        self,
        in_channels: int,
        depth_list: Sequence[int],
        skip: SkipType,
        *,
        stride: int,
        rates: Sequence[int],
        activation_inside: bool,
    ) -> None:
        super().__init__()
        eps, act = XCEPTION_BN_EPS, ("relu" if activation_inside else None)
        self.skip: SkipType = skip
        self.activation_inside = activation_inside
        channels = in_channels
        for i, (depth, rate) in enumerate(zip(depth_list, rates), start=1):
            s = stride if i == 3 else 1
            # Names are TF's flat siblings (<scope>_depthwise / <scope>_pointwise), kept for the rename table.
            self.add_module(
                f"separable_conv{i}_depthwise",
                Conv2dTF(
                    channels,
                    channels,
                    3,
                    stride=s,
                    dilation=rate,
                    groups=channels,
                    padding="explicit",
                    bn_eps=eps,
                    activation=act,
                ),
            )
            self.add_module(f"separable_conv{i}_pointwise", Conv2dTF(channels, depth, 1, bn_eps=eps, activation=act))
            channels = depth
        if skip == "conv":
            self.shortcut = Conv2dTF(in_channels, depth_list[-1], 1, stride=stride, bn_eps=eps, activation=None)
        elif skip == "sum" and (in_channels != depth_list[-1] or stride != 1):
            raise ValueError("a 'sum' skip needs equal depths and stride 1")

    def forward_with_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(module output, [separable_conv1/2/3_pointwise outputs]) -- the taps are DeepLab end points."""
        residual, taps = x, []
        for i in range(1, 4):
            if not self.activation_inside:
                residual = torch.relu(residual)  # "Original network design": ReLU before the separable conv.
            residual = getattr(self, f"separable_conv{i}_depthwise")(residual)
            residual = getattr(self, f"separable_conv{i}_pointwise")(residual)
            taps.append(residual)
        if self.skip == "conv":
            return self.shortcut(x).add_(residual), taps  # the shortcut conv's fresh output (not a tap), in place
        if self.skip == "sum":
            return residual + x, taps
        return residual, taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_taps(x)[0]


class XceptionTF(nn.Module):
    """Xception-65 trunk. ``forward(x)`` -> ``{"out", "low_level"}``.

    ``x``: preprocessed NCHW (DeepLab maps [0, 255] to [-1, 1]). ``out``: 2048 channels at
    ``output_stride``; ``low_level``: 256 channels at stride 4, the end point
    ``entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise`` (BN output, no ReLU)
    that DeepLab's decoder projects. ``tf_scope = "xception_65"``.
    """

    def __init__(self, *, output_stride: int = 16, multi_grid: Sequence[int] | None = None) -> None:
        super().__init__()
        validate_output_stride(output_stride, (8, 16, 32))
        multi_grid = tuple(multi_grid) if multi_grid is not None else (1, 1, 1)
        if len(multi_grid) != 3:
            raise ValueError(f"multi_grid needs 3 rates, got {multi_grid}")
        self.output_stride, self.multi_grid, self.tf_scope = output_stride, multi_grid, "xception_65"
        eps = XCEPTION_BN_EPS
        self.entry_flow = nn.Module()
        self.middle_flow = nn.Module()
        self.exit_flow = nn.Module()
        self.entry_flow.conv1_1 = Conv2dTF(3, 32, 3, stride=2, padding="explicit", bn_eps=eps, activation="relu")
        self.entry_flow.conv1_2 = Conv2dTF(32, 64, 3, bn_eps=eps, activation="relu")

        units = [spec for spec in _XCEPTION_65 for _ in range(spec[4])]
        schedule = dense_schedule([spec[5] for spec in units], output_stride // 2)  # relative to conv1_1's s2
        self._units: list[tuple[str, str, str]] = []  # (flow, block, unit) in forward order
        channels = 64
        for (scope, depths, skip, act_inside, _, _), (layer_stride, layer_rate) in zip(units, schedule):
            flow, block = scope.split("/")
            container: nn.Module = getattr(self, flow)
            if not hasattr(container, block):
                container.add_module(block, nn.ModuleDict())
            unit_dict: nn.ModuleDict = getattr(container, block)
            unit_rates = multi_grid if scope == "exit_flow/block2" else (1, 1, 1)
            unit_name = f"unit_{len(unit_dict) + 1}"
            unit_dict[unit_name] = XceptionModule(
                channels,
                depths,
                skip,
                stride=layer_stride,
                rates=[layer_rate * r for r in unit_rates],
                activation_inside=act_inside,
            )
            self._units.append((flow, block, unit_name))
            channels = depths[-1]
        self.feature_info = {"out": (channels, output_stride), "low_level": (256, 4)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.entry_flow.conv1_2(self.entry_flow.conv1_1(x))
        low_level = x
        for flow, block, unit_name in self._units:
            unit = getattr(getattr(self, flow), block)[unit_name]
            if (flow, block, unit_name) == ("entry_flow", "block2", "unit_1"):
                x, taps = unit.forward_with_taps(x)
                low_level = taps[1]
            else:
                x = unit(x)
        return {"out": x, "low_level": low_level}


@register_backbone("xception_65")
def xception_65(*, output_stride: int, multi_grid: Sequence[int] | None = None) -> XceptionTF:
    """DeepLab Xception-65 at output_stride 8, 16 or 32; ``multi_grid`` = exit_flow/block2 unit rates."""
    return XceptionTF(output_stride=output_stride, multi_grid=multi_grid)
