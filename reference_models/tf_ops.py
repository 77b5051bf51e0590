"""TensorFlow / TF-slim layer semantics in PyTorch, shared by the TF-ported backbones and heads.

Every quirk that makes a TF graph and a naive PyTorch port disagree lives here, once:

* ``SAME`` padding: TF pads ``pad_total = max((ceil(n / s) - 1) * s + k_eff - n, 0)`` and puts the
  odd pixel at the END (bottom/right). PyTorch's symmetric ``padding=`` cannot express that, so
  the amounts are computed per forward from the actual input size (any size, odd or even).
* slim's ``conv2d_same`` / DeepLab's ``fixed_padding``: strided convs pad ``k_eff - 1`` split
  beg/end regardless of input size, then convolve ``VALID``. For stride 1 it equals ``SAME``.
* ``max_pool2d(..., padding='SAME')`` pads with -inf (padding never wins the max).
* ``tf.image.resize_bilinear(..., align_corners=True)``.
* the atrous schedule of slim's ``stack_blocks_dense`` / mobilenet's ``mobilenet_base``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["relu", "relu6"] | None
Padding = Literal["same", "explicit"]

__all__ = [
    "BatchNormAct",
    "Conv2dTF",
    "dense_schedule",
    "fixed_pad_amounts",
    "max_pool_same",
    "resize_bilinear_align_corners",
    "same_pad_amounts",
]


def same_pad_amounts(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of TF ``padding='SAME'`` along one axis of length ``size``.

    TF keeps ``out = ceil(size / stride)`` and puts the extra pixel after (bottom/right).
    """
    k_eff = (kernel - 1) * dilation + 1
    # Integer arithmetic only, and no max() where the amount cannot be negative: with symbolic
    # sizes (torch.export, dynamic ONNX) the expressions stay small and need no guard.
    if stride == 1:
        total = k_eff - 1  # size independent
    else:
        out = (size + stride - 1) // stride  # ceil(size / stride)
        total = (out - 1) * stride + k_eff - size  # >= k_eff - stride, as out * stride >= size
        if k_eff < stride:
            total = torch.sym_max(total, 0)  # builtin max for ints
    return total // 2, total - total // 2


def fixed_pad_amounts(kernel: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of slim ``conv2d_same`` / DeepLab ``fixed_padding`` (size independent)."""
    total = (kernel - 1) * dilation
    return total // 2, total - total // 2


def _activate(x: torch.Tensor, activation: Activation) -> torch.Tensor:
    """In place: ``x`` is always a fresh conv / BatchNorm output nobody else holds (neither op's
    backward needs its own output), so no second activation-sized buffer is written."""
    if activation == "relu":
        return F.relu(x, inplace=True)
    if activation == "relu6":
        return F.relu6(x, inplace=True)
    return x


class Conv2dTF(nn.Conv2d):
    """slim ``conv2d`` / ``separable_conv2d`` (depthwise part): conv [+ BatchNorm ``bn``] [+ activation].

    ``padding="same"`` is TF ``SAME`` computed per forward; ``"explicit"`` is slim's ``conv2d_same``
    (fixed pad, then VALID) which the ResNets and Xception use for strided convs. The BatchNorm
    is a child named ``bn`` so the state-dict keys mirror TF's ``<conv>/BatchNorm/*`` variables.
    A depthwise conv is ``groups == in_channels == out_channels``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        padding: Padding = "same",
        bn_eps: float | None = None,
        activation: Activation = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, groups=groups, bias=bias
        )
        if padding not in ("same", "explicit"):
            raise ValueError(f"padding must be 'same' or 'explicit', got {padding!r}")
        self.tf_padding: Padding = padding
        self.activation: Activation = activation
        # slim puts no bias on a conv followed by BatchNorm (beta plays its role).
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps) if bn_eps is not None else None

    def _pad_amounts(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) for this input size."""
        k, s, d = self.kernel_size[0], self.stride[0], self.dilation[0]
        if self.tf_padding == "explicit" and s > 1:
            top, bottom = left, right = fixed_pad_amounts(k, d)
        else:
            top, bottom = same_pad_amounts(x.shape[-2], k, s, d)
            left, right = same_pad_amounts(x.shape[-1], k, s, d)
        return top, bottom, left, right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom, left, right = self._pad_amounts(x)
        # Under torch.export with dynamic sizes the amounts of a strided SAME conv are symbolic
        # (they depend on the size's parity); only F.pad takes symbolic amounts, a conv's padding does not.
        static = all(type(p) is int for p in (top, bottom, left, right))
        if static and top == bottom and left == right:
            # symmetric (every stride-1 conv): the conv's own zero padding, no padded copy of x
            x = F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        else:
            x = F.pad(x, (left, right, top, bottom))
            x = F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        if self.bn is not None:
            x = self.bn(x)
        return _activate(x, self.activation)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tf_padding={self.tf_padding}, activation={self.activation}"


class BatchNormAct(nn.BatchNorm2d):
    """A free-standing slim ``batch_norm`` with an activation (resnet_v2's ``preact`` / ``postnorm``)."""

    def __init__(self, channels: int, *, eps: float, activation: Activation = "relu") -> None:
        super().__init__(channels, eps=eps)
        self.activation: Activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _activate(super().forward(x), self.activation)


def max_pool_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """``max_pool2d(padding='SAME')``: -inf padding placed as TF places it (extra pixel after).

    The pool pads itself (implicit -inf, no padded copy of ``x``) when it can: symmetric amounts
    are its ``padding``; one extra pixel at the end is ``ceil_mode`` (the last window may run
    past the end, where nothing wins the max), which gives TF's ``ceil(n / stride)`` outputs.
    Other amounts (none at kernel 3) fall back to an explicit -inf pad.
    """
    top, bottom = same_pad_amounts(x.shape[-2], kernel, stride)
    left, right = same_pad_amounts(x.shape[-1], kernel, stride)
    # symbolic amounts (torch.export with dynamic sizes): the explicit pad, whose amounts may be symbolic
    static = all(type(p) is int for p in (top, bottom, left, right))
    if static and 2 * max(top, left) <= kernel and bottom - top in (0, 1) and right - left in (0, 1):
        out = F.max_pool2d(x, kernel, stride, padding=(top, left), ceil_mode=bottom > top or right > left)
        if out.shape[-2:] == (math.ceil(x.shape[-2] / stride), math.ceil(x.shape[-1] / stride)):
            return out
    x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, kernel, stride)


def resize_bilinear_align_corners(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``tf.image.resize_bilinear(x, size, align_corners=True)`` (identity when the size already matches)."""
    # int() would freeze a symbolic size (torch.export with dynamic shapes) to the traced value
    size = tuple(n if isinstance(n, torch.SymInt) else int(n) for n in size[:2])
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def dense_schedule(strides: Sequence[int], output_stride: int | None) -> list[tuple[int, int]]:
    """(layer_stride, layer_rate) per unit, exactly as slim's ``stack_blocks_dense`` computes them.

    ``strides`` are the nominal strides of the units in order; ``output_stride`` is relative to the
    input of the first unit (None: nominal network). Once the running stride reaches the target,
    every later stride becomes 1 and multiplies the atrous rate of the units after it (the unit
    whose stride is removed still runs at the old rate). Raises ``ValueError`` if the target
    cannot be reached, as slim does.
    """
    current, rate = 1, 1
    schedule: list[tuple[int, int]] = []
    for stride in strides:
        if output_stride is not None and current == output_stride:
            schedule.append((1, rate))
            rate *= stride
        else:
            schedule.append((stride, 1))
            current *= stride
            if output_stride is not None and current > output_stride:
                raise ValueError(f"the target output_stride {output_stride} cannot be reached")
    if output_stride is not None and current != output_stride:
        raise ValueError(f"the target output_stride {output_stride} cannot be reached")
    return schedule
