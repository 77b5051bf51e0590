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

A single atrous convolution is the same sum with one branch. oneDNN's kernel choice for it depends on the CPU
and the dtype: on an AMX Xeon a bf16 2048->256 3x3 convolution at rate 6-36 (the ASPP branches of DeepLab
v3/v3+, 33x33 or 65x65 features) runs 3.5-12x slower than the GEMM form, while rate 2-4 in the trunk is
2-4x faster than it, and in fp32 the two are within ~20 % of each other. So :func:`gemm_where_faster` times
each distinct shape both ways on the machine, at the engine's precision (:func:`probe_atrous`), and swaps
in :class:`AtrousSumGemm` only where the GEMM is clearly faster.

The result equals the summed convolutions up to float rounding (the sums are grouped differently:
about 4e-7 relative to float64, where the convolutions themselves are at 6e-7). The model and its state
dict are not changed: :func:`fuse_atrous_sums` swaps modules in the engine's own copy.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from reproduce.kernel_probe import median_ms_interleaved, probed, replace_where_probed

__all__ = ["AtrousSumGemm", "fuse_atrous_sums", "gemm_where_faster", "is_atrous_conv", "is_atrous_sum",
           "probe_atrous"]

GEMM_MARGIN = 0.8  # the GEMM is chosen only when clearly faster (timing noise on a shared VM is 5-30 %)
PROBE_SIZES = (33, 65)  # the feature maps of a 513x513 input at output stride 16 and 8 (larger where a rate needs it)


def is_atrous_conv(module: nn.Module) -> bool:
    """A 3x3 'same' convolution with a dilation above 1, stride 1 and no groups: a plain ``nn.Conv2d`` with
    ``padding == dilation``, or a :class:`~reference_models.tf_ops.Conv2dTF` (TF ``SAME`` at stride 1 pads
    ``dilation`` on each side) whose BatchNorm is folded (its activation is kept, :func:`gemm_where_faster`)."""
    from reference_models.tf_ops import Conv2dTF

    if not (isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and module.stride == (1, 1)
            and module.groups == 1 and max(module.dilation) > 1):
        return False
    if type(module) is Conv2dTF:
        return module.bn is None and module.activation in (None, "relu", "relu6")
    return _plain_same_3x3(module)


def _plain_same_3x3(conv: nn.Module) -> bool:
    """A plain ``nn.Conv2d``, 3x3, stride 1, no groups, zero padding equal to its dilation (TF/Caffe 'same')."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and tuple(conv.padding) == tuple(conv.dilation))


def _as_gemm(conv: nn.Conv2d) -> nn.Module:
    """:class:`AtrousSumGemm` of one convolution, followed by a :class:`Conv2dTF`'s own activation."""
    gemm = AtrousSumGemm([conv])
    activation = getattr(conv, "activation", None)
    if activation is None:
        return gemm
    return nn.Sequential(gemm, nn.ReLU(inplace=True) if activation == "relu" else nn.ReLU6(inplace=True))


def _branch_convs(module: nn.Module) -> list[nn.Conv2d] | None:
    """The branches of ``module`` if it sums plain 3x3 'same' atrous convolutions of one input, else None."""
    from reference_models.deeplab_v2 import SummedBranches

    if type(module).forward is not SummedBranches.forward:  # a subclass with its own forward sums otherwise
        return None
    branches = list(getattr(module, "branches", ()))
    if not branches or not all(_plain_same_3x3(b) for b in branches):
        return None
    first = branches[0]
    for conv in branches:
        if ((conv.in_channels, conv.out_channels) != (first.in_channels, first.out_channels)
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
        self._cast: tuple[tuple[Any, ...], torch.Tensor] | None = None  # the weight in the last autocast dtype

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
        rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view when x is channels_last
        dtype = rows.dtype
        if torch.is_autocast_enabled(x.device.type):  # the product runs in autocast's dtype: cast once, here
            dtype = torch.get_autocast_dtype(x.device.type)
            rows = rows.to(dtype)
        weight = self._weight_as(dtype)
        if len(taps) < 9 * len(self.rates):
            cols = torch.tensor([t[0] * k + j for t in taps for j in range(k)], device=weight.device)
            weight = weight.index_select(1, cols)
        scores = torch.mm(rows, weight).view(n, h, w, len(taps), k)
        if torch.compiler.is_compiling():
            out = self._shifted_sum_padded(scores, taps)
        else:
            out = self._shifted_sum_in_place(scores, taps)
        return out.permute(0, 3, 1, 2)  # NCHW shape, channels_last memory

    def _weight_as(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight in ``dtype``; eager keeps the cast copy (under bf16 autocast the 2048 x 2304 ASPP weight
        would otherwise be converted on every forward), keyed on the buffer's storage: the module is built frozen
        for inference and nothing writes its buffers in place (an engine's inference tensors track no version)."""
        weight = self.weight
        if weight.dtype == dtype or torch.compiler.is_compiling():
            return weight.to(dtype)
        key = (dtype, weight.device, weight.data_ptr(), weight.shape)
        if self._cast is None or self._cast[0] != key:
            self._cast = (key, weight.to(dtype))
        return self._cast[1]

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


def _probe_key(conv: nn.Conv2d, dtype: torch.dtype | None) -> tuple[Any, ...]:
    return (conv.in_channels, conv.out_channels, *conv.dilation, conv.bias is not None, dtype,
            torch.get_num_threads())


def _time_both(cin: int, cout: int, dilation: tuple[int, int], bias: bool, dtype: torch.dtype | None, size: int,
               rounds: int) -> tuple[float, float]:
    """Median ms of a fresh random convolution of this shape and of its :class:`AtrousSumGemm`, channels_last,
    1 x cin x size x size, interleaved, under autocast to ``dtype`` (None: fp32); torch's global RNG untouched."""
    gen = torch.Generator().manual_seed(0)
    probe = nn.utils.skip_init(nn.Conv2d, cin, cout, 3, padding=dilation, dilation=dilation,
                               bias=bias).eval().requires_grad_(False)
    with torch.no_grad():
        for param in probe.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) / (9 * cin) ** 0.5)
    gemm = AtrousSumGemm([probe])
    probe = probe.to(memory_format=torch.channels_last)
    x = torch.randn(1, cin, size, size, generator=gen).contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        ms = median_ms_interleaved({"conv": lambda: probe(x), "gemm": lambda: gemm(x)}, rounds)
    return ms["conv"], ms["gemm"]


def probe_atrous(conv: nn.Conv2d, dtype: torch.dtype | None = None, *, rounds: int = 3) -> dict[str, Any]:
    """Time ``conv``'s shape as the convolution and as :class:`AtrousSumGemm` on the CPU at ``dtype`` (autocast;
    None: fp32), on 33x33 and then 65x65 maps (a 513x513 input at output stride 16 and 8; ``2 * rate + 3`` where
    a rate needs more for every tap to see the input). The GEMM is chosen only where it takes at most
    ``GEMM_MARGIN`` of the convolution's time at both sizes: which kernel wins can change with the map (a
    512-channel rate-4 conv in bf16 on an AMX CPU: GEMM 0.88x at 33x33, 2.2x at 65x65). The 65x65 probe runs
    only where the GEMM won at 33x33. Kept per shape, dtype and thread count for the process and on disk for the
    machine (:func:`reproduce.kernel_probe.probed`)."""
    kind = f"atrous-gemm margin={GEMM_MARGIN} sizes={','.join(map(str, PROBE_SIZES))}"
    return probed(kind, _probe_key(conv, dtype), lambda: _measure_atrous(conv, dtype, rounds), ("conv", "gemm"))


def _measure_atrous(conv: nn.Conv2d, dtype: torch.dtype | None, rounds: int) -> dict[str, Any]:
    cin, cout, dilation = conv.in_channels, conv.out_channels, tuple(conv.dilation)
    result: dict[str, Any] = {"in_channels": cin, "out_channels": cout, "dilation": list(dilation),
                              "dtype": str(dtype or torch.float32).replace("torch.", ""), "sizes": [],
                              "conv_ms": [], "gemm_ms": [], "choice": "conv"}
    for size in sorted({max(base, 2 * max(dilation) + 3) for base in PROBE_SIZES}):  # a large rate: one size
        conv_ms, gemm_ms = _time_both(cin, cout, dilation, conv.bias is not None, dtype, size, rounds)
        result["sizes"].append(size)
        result["conv_ms"].append(round(conv_ms, 3))
        result["gemm_ms"].append(round(gemm_ms, 3))
        if gemm_ms > GEMM_MARGIN * conv_ms:
            break
    else:
        result["choice"] = "gemm"
    return result


def gemm_where_faster(net: nn.Module, dtype: torch.dtype | None = None) -> list[dict[str, Any]]:
    """Replace, in place, every atrous convolution of ``net`` (a CPU inference copy in channels_last) whose shape
    :func:`probe_atrous` measures faster as a GEMM at ``dtype`` by :class:`AtrousSumGemm`; return the probes,
    one per distinct shape, each with ``modules``: how many convolutions of that shape were replaced."""
    return replace_where_probed(net, is_atrous_conv, lambda conv: _probe_key(conv, dtype),
                                lambda conv: probe_atrous(conv, dtype), "gemm", _as_gemm)
