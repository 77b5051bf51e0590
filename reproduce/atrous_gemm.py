"""DeepLab v2's ASPP head as one matrix product: an inference-only rewrite used by the engine on a CPU.

DeepLab v2 sums four 3x3 atrous convolutions (rates 6, 12, 18, 24) of the 2048-channel features to the
class scores (:class:`~reference_models.deeplab_v2.ASPPv2`). With 21 output channels, oneDNN runs these
convolutions far below the machine's rate (about 110 GFLOP/s against 250-300 for the trunk's, 1x3x65x65
features, 2 threads), so the head costs ~110 ms of a ~1.4 s forward at 513x513. A 3x3 convolution with
``padding == dilation`` is nine 1x1 convolutions whose outputs are shifted by the dilation and added, so
all branches together are one product ``features (pixels x C) @ weights (C x taps*classes)`` followed
by shifted adds of small slices: the same multiplications in a GEMM that runs at the trunk's rate
(46 ms instead of 109 ms there; :mod:`benchmarks.engine` measures the whole model). Taps that reach only
padding for the input's size (rate 24 on a 17x17 map) are left out of the product.

The result equals the summed convolutions up to float rounding (the sums are grouped differently:
about 4e-7 relative to float64, where the convolutions themselves are at 6e-7). The model and its state
dict are not changed: :func:`fuse_atrous_sums` swaps modules in the engine's own copy.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AtrousSumGemm", "fuse_atrous_sums", "is_atrous_sum"]


def _branch_convs(module: nn.Module) -> list[nn.Conv2d] | None:
    """The branches of ``module`` if it sums plain 3x3 'same' atrous convolutions of one input, else None."""
    from reference_models.deeplab_v2 import SummedBranches

    if type(module).forward is not SummedBranches.forward:  # a subclass with its own forward sums otherwise
        return None
    branches = list(getattr(module, "branches", ()))
    if not branches or not all(type(b) is nn.Conv2d for b in branches):
        return None
    first = branches[0]
    for conv in branches:
        if (conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.groups != 1
                or conv.padding_mode != "zeros" or isinstance(conv.padding, str)
                or tuple(conv.padding) != tuple(conv.dilation)
                or (conv.in_channels, conv.out_channels) != (first.in_channels, first.out_channels)
                or (conv.bias is None) != (first.bias is None)):
            return None
    return branches


def is_atrous_sum(module: nn.Module) -> bool:
    """Whether :func:`fuse_atrous_sums` rewrites ``module`` (a sum of 3x3 atrous convolutions)."""
    return _branch_convs(module) is not None


class AtrousSumGemm(nn.Module):
    """``sum(conv(x) for conv in convs)`` for 3x3 convolutions with ``padding == dilation``, as one GEMM.

    ``weight`` is ``(C, branches * 9 * out)``, columns ordered (branch, ky, kx, class); ``bias`` is the sum of
    the branches' biases. Inference only (no gradients are meant to flow; the module is built frozen).
    """

    def __init__(self, convs: list[nn.Conv2d]) -> None:
        super().__init__()
        with torch.no_grad():
            w = torch.stack([c.weight for c in convs])  # (B, out, C, 3, 3)
            self.register_buffer("weight", w.permute(2, 0, 3, 4, 1).reshape(w.shape[2], -1).contiguous())
            bias = sum(c.bias for c in convs) if convs[0].bias is not None else None
            self.register_buffer("bias", bias)  # a new tensor (the sum), not a branch's
        self.rates = tuple((int(c.dilation[0]), int(c.dilation[1])) for c in convs)
        self.in_channels, self.out_channels = convs[0].in_channels, convs[0].out_channels

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, rates={list(self.rates)}"

    def _taps(self, h: int, w: int) -> list[tuple[int, int, int]]:
        """(column block, dy, dx) of every tap that sees at least one input pixel of an h x w map."""
        taps = []
        for b, (ry, rx) in enumerate(self.rates):
            for ky in range(3):
                for kx in range(3):
                    dy, dx = (ky - 1) * ry, (kx - 1) * rx
                    if abs(dy) < h and abs(dx) < w:
                        taps.append((b * 9 + ky * 3 + kx, dy, dx))
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        k = self.out_channels
        taps = self._taps(h, w)
        weight = self.weight
        if len(taps) < 9 * len(self.rates):
            cols = torch.tensor([t[0] * k + j for t in taps for j in range(k)], device=weight.device)
            weight = weight.index_select(1, cols)
        rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view when x is channels_last
        scores = torch.mm(rows, weight.to(rows.dtype)).view(n, h, w, len(taps), k)
        if torch.compiler.is_compiling():
            out = self._shifted_sum_padded(scores, taps)
        else:
            out = self._shifted_sum_in_place(scores, taps)
        return out.permute(0, 3, 1, 2)  # NCHW shape, channels_last memory

    def _start(self, scores: torch.Tensor) -> torch.Tensor:
        n, h, w, _, k = scores.shape
        if self.bias is None:
            return scores.new_zeros((n, h, w, k))
        return self.bias.to(scores.dtype).expand(n, h, w, k).clone()

    def _shifted_sum_in_place(self, scores: torch.Tensor, taps: list[tuple[int, int, int]]) -> torch.Tensor:
        """Eager: each tap's valid window added in place (no padded copy of the scores)."""
        out = self._start(scores)
        h, w = out.shape[1:3]
        for i, (_, dy, dx) in enumerate(taps):
            y0, y1 = max(0, -dy), min(h, h - dy)
            x0, x1 = max(0, -dx), min(w, w - dx)
            out[:, y0:y1, x0:x1] += scores[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx, i]
        return out

    def _shifted_sum_padded(self, scores: torch.Tensor, taps: list[tuple[int, int, int]]) -> torch.Tensor:
        """Traced (torch.compile): one sum of equally sized shifted windows of the zero-padded scores, which
        inductor makes a single pointwise kernel. (Traced, the in-place window adds become one nested select per
        tap, and the C++ compiler needed minutes and gigabytes for the ResNet-101 head.)"""
        n, h, w, _, k = scores.shape
        py = max(abs(dy) for _, dy, _ in taps)
        px = max(abs(dx) for _, _, dx in taps)
        padded = torch.nn.functional.pad(scores, (0, 0, 0, 0, px, px, py, py))
        out = self._start(scores)
        for i, (_, dy, dx) in enumerate(taps):
            out = out + padded[:, py + dy:py + dy + h, px + dx:px + dx + w, i]
        return out


def fuse_atrous_sums(model: nn.Module) -> int:
    """Replace, in place, every sum of 3x3 atrous convolutions in ``model`` by :class:`AtrousSumGemm`.

    Returns how many were replaced. Meant for an inference copy (the engine's), not for a model to train.
    """
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            convs = _branch_convs(child)
            if convs is not None:
                setattr(parent, name, AtrousSumGemm(convs))  # its buffers are made on the convs' device
                replaced += 1
    return replaced
