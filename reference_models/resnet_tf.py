"""TF-slim ResNet v1 / v2 and DeepLab's ResNet v1 "beta" as PyTorch backbones with TF's exact semantics.

Ported from the behaviour of ``tf_slim.nets.resnet_v1`` / ``resnet_v2`` / ``resnet_utils`` and
DeepLab's ``core/resnet_v1_beta.py`` (read, not copied):

* stride 2 sits on the 3x3 ``conv2`` of the LAST unit of blocks 1-3 (``resnet_v1_block``), not
  on the first unit's 1x1 as in Caffe/torchvision;
* strided 3x3/7x7 convs use ``conv2d_same`` (fixed padding, then VALID); ``pool1`` is max 3x3 s2
  ``SAME``; the identity shortcut of a strided unit is ``subsample`` (every s-th pixel);
* output stride 8/16 via ``stack_blocks_dense`` (strides turn into atrous rates), and optional
  multi-grid ``unit_rate`` on block4 (DeepLab's resnet_v1_beta);
* resnet_v2 is pre-activation: ``preact`` BN+ReLU in every unit, ``conv1`` (root) and ``conv3`` /
  ``shortcut`` convs carry biases and no BN, a final ``postnorm`` BN+ReLU;
* BatchNorm epsilon 1e-5 (``resnet_arg_scope`` default; DeepLab passes the same value).

Module names mirror the TF variable scopes (``block1.unit_1.conv1.weight`` <->
``resnet_v1_50/block1/unit_1/bottleneck_v1/conv1/weights``) so ``converters/tf/rules.py`` is a
short list of regex rules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .registry import register_backbone, validate_output_stride
from .tf_ops import BatchNormAct, Conv2dTF, dense_schedule, max_pool_same

__all__ = ["BottleneckV1", "BottleneckV2", "ResNetTF"]

RESNET_BN_EPS = 1e-5  # tf_slim resnet_utils.resnet_arg_scope(batch_norm_epsilon=1e-5)
_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_BASE_DEPTHS = (64, 128, 256, 512)
_BLOCK_STRIDES = (2, 2, 2, 1)  # block4 has stride 1 in slim (the nominal network is OS 32)


def _subsample(x: torch.Tensor, stride: int) -> torch.Tensor:
    """slim ``resnet_utils.subsample``: 1x1 max-pool with stride == take every ``stride``-th pixel."""
    return x if stride == 1 else x[:, :, ::stride, ::stride]


def _bottleneck_convs(in_channels: int, depth_bottleneck: int, *, stride: int, rate: int) -> tuple[nn.Module, nn.Module]:
    """slim's ``conv1`` (1x1) and ``conv2`` (3x3, ``stride``, atrous ``rate``; ``conv2d_same`` padding), each
    conv + BN + ReLU: the same in ``resnet_v1`` and ``resnet_v2`` bottlenecks."""
    conv1 = Conv2dTF(in_channels, depth_bottleneck, 1, bn_eps=RESNET_BN_EPS, activation="relu")
    conv2 = Conv2dTF(depth_bottleneck, depth_bottleneck, 3, stride=stride, dilation=rate, padding="explicit",
                     bn_eps=RESNET_BN_EPS, activation="relu")
    return conv1, conv2


class BottleneckV1(nn.Module):
    """slim ``resnet_v1.bottleneck``: post-activation; ``relu(shortcut + BN(conv3))``."""

    def __init__(self, in_channels: int, depth: int, depth_bottleneck: int, *, stride: int, rate: int) -> None:
        super().__init__()
        eps = RESNET_BN_EPS
        self.stride = stride
        # The shortcut conv exists only where the depth changes (slim checks depth == depth_in).
        self.shortcut = (
            Conv2dTF(in_channels, depth, 1, stride=stride, bn_eps=eps, activation=None)
            if depth != in_channels
            else None
        )
        self.conv1, self.conv2 = _bottleneck_convs(in_channels, depth_bottleneck, stride=stride, rate=rate)
        self.conv3 = Conv2dTF(depth_bottleneck, depth, 1, bn_eps=eps, activation=None)

    def forward_with_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit output, ``conv3`` output). DeepLab's decoder reads ``.../bottleneck_v1/conv3``: pre-sum, pre-ReLU."""
        shortcut = self.shortcut(x) if self.shortcut is not None else _subsample(x, self.stride)
        residual = self.conv3(self.conv2(self.conv1(x)))
        return torch.relu(shortcut + residual), residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x) if self.shortcut is not None else _subsample(x, self.stride)
        # conv3's output is fresh and untapped here: sum and ReLU in place (x itself is never written)
        return torch.relu_(self.conv3(self.conv2(self.conv1(x))).add_(shortcut))


class BottleneckV2(nn.Module):
    """slim ``resnet_v2.bottleneck``: pre-activation; ``shortcut + conv3(...)`` with no final activation."""

    def __init__(self, in_channels: int, depth: int, depth_bottleneck: int, *, stride: int, rate: int) -> None:
        super().__init__()
        eps = RESNET_BN_EPS
        self.stride = stride
        self.preact = BatchNormAct(in_channels, eps=eps, activation="relu")
        # normalizer_fn=None on shortcut/conv3 in slim, so these convs get biases.
        self.shortcut = Conv2dTF(in_channels, depth, 1, stride=stride, bias=True) if depth != in_channels else None
        self.conv1, self.conv2 = _bottleneck_convs(in_channels, depth_bottleneck, stride=stride, rate=rate)
        self.conv3 = Conv2dTF(depth_bottleneck, depth, 1, bias=True)

    def forward_with_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit output, unit output): v2 has no DeepLab decoder end point, the unit output is used."""
        preact = self.preact(x)
        # The identity shortcut subsamples the raw input, the projection reads the pre-activation.
        shortcut = self.shortcut(preact) if self.shortcut is not None else _subsample(x, self.stride)
        out = self.conv3(self.conv2(self.conv1(preact))).add_(shortcut)  # conv3's fresh output, summed in place
        return out, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_tap(x)[0]


class ResNetTF(nn.Module):
    """A slim ResNet trunk (no global pool, no logits). ``forward(x)`` -> ``{"out", "low_level"}``.

    ``x`` is the preprocessed NCHW float tensor (any H, W). ``out`` has stride ``output_stride``
    (size ``ceil(H / output_stride)``), ``low_level`` stride 4 (``ceil(H / 4)``): for v1 the
    ``block1/unit_2/bottleneck_v1/conv3`` end point DeepLab's decoder uses, for v2 the output of
    ``block1/unit_2``. ``feature_info[name] = (channels, stride)``; ``tf_scope`` is the TF
    variable scope of the checkpoint this trunk loads (e.g. ``resnet_v1_101``).
    """

    def __init__(
        self,
        *,
        depth: int,
        version: int,
        beta: bool = False,
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if depth not in _UNITS:
            raise ValueError(f"depth must be one of {sorted(_UNITS)}, got {depth}")
        if version not in (1, 2) or (beta and version != 1):
            raise ValueError("version must be 1 or 2; beta exists only for version 1")
        validate_output_stride(output_stride, (8, 16, 32))
        multi_grid = tuple(multi_grid) if multi_grid is not None else (1, 1, 1)
        if len(multi_grid) != _UNITS[depth][3]:
            raise ValueError(f"multi_grid needs {_UNITS[depth][3]} rates (one per block4 unit), got {multi_grid}")
        self.version, self.beta, self.output_stride, self.multi_grid = version, beta, output_stride, multi_grid
        self.tf_scope = f"resnet_v{version}_{depth}"
        eps = RESNET_BN_EPS

        if beta:  # DeepLab root_block_fn_for_beta_variant: three 3x3 convs replace the 7x7.
            self.conv1_1 = Conv2dTF(3, 64, 3, stride=2, padding="explicit", bn_eps=eps, activation="relu")
            self.conv1_2 = Conv2dTF(64, 64, 3, bn_eps=eps, activation="relu")
            self.conv1_3 = Conv2dTF(64, 128, 3, bn_eps=eps, activation="relu")
            channels = 128
        elif version == 1:
            self.conv1 = Conv2dTF(3, 64, 7, stride=2, padding="explicit", bn_eps=eps, activation="relu")
            channels = 64
        else:  # v2 root conv: no BN / activation (the first unit's preact does that), hence a bias.
            self.conv1 = Conv2dTF(3, 64, 7, stride=2, padding="explicit", bias=True)
            channels = 64

        # Flatten all units, run slim's stack_blocks_dense schedule relative to the stride-4 root.
        units: list[tuple[int, int, int, int]] = []  # (block index, depth_bottleneck, stride, unit_rate)
        for b, (n, base, stride) in enumerate(zip(_UNITS[depth], _BASE_DEPTHS, _BLOCK_STRIDES)):
            for i in range(n):
                unit_rate = multi_grid[i] if b == 3 else 1
                units.append((b, base, stride if i == n - 1 else 1, unit_rate))
        schedule = dense_schedule([u[2] for u in units], output_stride // 4)

        unit_cls = BottleneckV1 if version == 1 else BottleneckV2
        self._block_names = [f"block{b + 1}" for b in range(4)]
        for name in self._block_names:
            self.add_module(name, nn.ModuleDict())
        for (b, base, _, unit_rate), (layer_stride, layer_rate) in zip(units, schedule):
            block: nn.ModuleDict = getattr(self, self._block_names[b])
            block[f"unit_{len(block) + 1}"] = unit_cls(
                channels, base * 4, base, stride=layer_stride, rate=layer_rate * unit_rate
            )
            channels = base * 4
        if version == 2:
            self.postnorm = BatchNormAct(channels, eps=eps, activation="relu")
        self.feature_info = {"out": (channels, output_stride), "low_level": (256, 4)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.beta:
            x = self.conv1_3(self.conv1_2(self.conv1_1(x)))
        else:
            x = self.conv1(x)
        x = max_pool_same(x, 3, 2)  # pool1
        low_level = x
        for name in self._block_names:
            for unit_name, unit in getattr(self, name).items():
                if name == "block1" and unit_name == "unit_2":
                    x, low_level = unit.forward_with_tap(x)
                else:
                    x = unit(x)
        if self.version == 2:
            x = self.postnorm(x)
        return {"out": x, "low_level": low_level}


def _builder(depth: int, version: int, beta: bool, default_multi_grid: tuple[int, ...] | None):
    def build(*, output_stride: int, multi_grid: Sequence[int] | None = default_multi_grid) -> ResNetTF:
        return ResNetTF(depth=depth, version=version, beta=beta, output_stride=output_stride, multi_grid=multi_grid)

    build.__doc__ = (
        f"{'DeepLab' if beta else 'TF-slim'} resnet_v{version}_{depth}{'_beta' if beta else ''} trunk at "
        f"output_stride 8, 16 or 32; multi_grid = block4 unit rates (default {default_multi_grid})."
    )
    return build


# The slim ImageNet nets have no multi-grid; DeepLab's common.py: "Set multi_grid = [1, 2, 4] when
# using provided 'resnet_v1_{50,101}_beta' checkpoints."
resnet_v1_50 = register_backbone("resnet_v1_50")(_builder(50, 1, False, None))
resnet_v1_101 = register_backbone("resnet_v1_101")(_builder(101, 1, False, None))
resnet_v2_50 = register_backbone("resnet_v2_50")(_builder(50, 2, False, None))
resnet_v2_101 = register_backbone("resnet_v2_101")(_builder(101, 2, False, None))
resnet_v1_50_beta = register_backbone("resnet_v1_50_beta")(_builder(50, 1, True, (1, 2, 4)))
resnet_v1_101_beta = register_backbone("resnet_v1_101_beta")(_builder(101, 1, True, (1, 2, 4)))
