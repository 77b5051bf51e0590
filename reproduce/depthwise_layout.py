"""Dilated depthwise convolutions in NCHW inside a channels_last engine, where a probe measures that faster.

oneDNN's direct depthwise kernel does not take every dilation in NHWC: on an AVX2 CPU (AMD EPYC, Zen 3)
a 2048-channel 3x3 depthwise convolution at rate 6, 12 or 18 on a 33x33 map (DeepLab-TF Xception-65's
separable ASPP at output stride 16) falls back to im2col + GEMM in channels_last and runs 3-9x slower
than the same convolution in NCHW (``ONEDNN_VERBOSE``: ``x64:gemm:jit`` against ``jit_dw:avx2`` at rate
2; ``benchmarks/reports/memory-format-2026-12-02-epyc``). Rates 1-4 are fast in channels_last there.

Which kernels a CPU has is not assumed: :func:`probe_depthwise` times each distinct dilated depthwise
shape both ways on this machine (a fresh convolution with random weights, 1x C x 33 x 33) and
:func:`nchw_where_faster` wraps a module in :class:`NCHWIsland` only where NCHW, its two reorders
included, takes at most ``NCHW_MARGIN`` of the channels_last time. The model and its state dict are not
changed: the engine rewrites its own copy. Outputs are the same convolution in another memory layout
(equal to float rounding; the tests bound it).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from reproduce.kernel_probe import median_ms_interleaved, probed, replace_where_probed

__all__ = ["NCHWIsland", "is_dilated_depthwise", "nchw_where_faster", "probe_depthwise"]

NCHW_MARGIN = 0.8  # NCHW is chosen only when clearly faster (timing noise on a shared VM is 5-30 %)
PROBE_SIZE = 33  # the feature map of a 513x513 input at output stride 16


class NCHWIsland(nn.Module):
    """Runs ``inner`` on an NCHW (contiguous) copy of its input and returns channels_last.

    ``inner``'s weights are made contiguous here: a channels_last weight would make PyTorch run the
    convolution in channels_last again. Wrap after the network's own ``.to(memory_format=...)``.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.to(memory_format=torch.contiguous_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.contiguous()).contiguous(memory_format=torch.channels_last)


def is_dilated_depthwise(module: nn.Module) -> bool:
    """A 2-D depthwise convolution (``groups == in == out > 1``) with a dilation above 1."""
    return (isinstance(module, nn.Conv2d) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels and max(module.dilation) > 1)


def _key(conv: nn.Conv2d) -> tuple[int, ...]:
    return (conv.in_channels, *conv.kernel_size, *conv.stride, *conv.dilation, torch.get_num_threads())


def probe_depthwise(conv: nn.Conv2d, *, rounds: int = 3) -> dict[str, Any]:
    """Time ``conv``'s shape (a fresh copy with random weights, 1 x C x 33 x 33) in channels_last and as an
    :class:`NCHWIsland`, interleaved, on the CPU; kept per shape for the process and on disk for the machine
    (:func:`reproduce.kernel_probe.probed`). Torch's global random state is not used (the engine is built in the
    user's process)."""
    kind = f"depthwise-nchw margin={NCHW_MARGIN} size={PROBE_SIZE}"
    return probed(kind, _key(conv), lambda: _measure_depthwise(conv, rounds), ("nchw", "channels_last"))


def _measure_depthwise(conv: nn.Conv2d, rounds: int) -> dict[str, Any]:
    c, (kh, kw), (dh, dw) = conv.in_channels, conv.kernel_size, conv.dilation
    gen = torch.Generator().manual_seed(0)
    probe = nn.utils.skip_init(nn.Conv2d, c, c, (kh, kw), stride=conv.stride, dilation=(dh, dw), groups=c,
                               padding=(dh * (kh - 1) // 2, dw * (kw - 1) // 2)).eval().requires_grad_(False)
    with torch.no_grad():
        for param in probe.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    island = NCHWIsland(copy.deepcopy(probe))
    probe = probe.to(memory_format=torch.channels_last)
    x = torch.randn(1, c, PROBE_SIZE, PROBE_SIZE, generator=gen).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ms = median_ms_interleaved({"channels_last": lambda: probe(x), "nchw": lambda: island(x)}, rounds)
    cl, nchw = ms["channels_last"], ms["nchw"]
    return {"channels": c, "kernel": [kh, kw], "stride": list(conv.stride), "dilation": [dh, dw],
            "size": PROBE_SIZE, "channels_last_ms": round(cl, 3), "nchw_ms": round(nchw, 3),
            "choice": "nchw" if nchw <= NCHW_MARGIN * cl else "channels_last"}


def nchw_where_faster(net: nn.Module) -> list[dict[str, Any]]:
    """Wrap, in place, every dilated depthwise convolution of ``net`` (a CPU model already in channels_last) whose
    shape :func:`probe_depthwise` measures faster in NCHW; return the probes, one per distinct shape, each
    with ``modules``: how many convolutions of that shape were wrapped (0 where channels_last was kept)."""
    return replace_where_probed(net, is_dilated_depthwise, _key, probe_depthwise, "nchw", NCHWIsland)
