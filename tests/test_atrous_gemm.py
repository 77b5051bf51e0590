"""DeepLab v2's summed atrous convolutions as one GEMM (reproduce.atrous_gemm): same numbers as the convolutions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reference_models import build_model
from reference_models.deeplab_v2 import VGGASPP, ASPPv2, SummedBranches
from reproduce.atrous_gemm import AtrousSumGemm, fuse_atrous_sums, is_atrous_sum
from reproduce.inference import Segmenter


def _randomized(module: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return module.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("shape", [(1, 24, 33, 33), (2, 24, 17, 23), (1, 24, 5, 7), (1, 24, 1, 1), (1, 24, 30, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_the_summed_convolutions(shape: tuple[int, ...], channels_last: bool) -> None:
    """Every size, including maps smaller than the rates (taps that see only padding are left out)."""
    head = _randomized(ASPPv2(24, 7), seed=shape[2])  # rates 6, 12, 18, 24
    fused = AtrousSumGemm(list(head.branches))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = head.double()(x.double())
        out = fused(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert _rel(out, ref) < 2e-6


def test_asymmetric_rates_and_no_bias() -> None:
    convs = [nn.Conv2d(8, 5, 3, padding=(2, 3), dilation=(2, 3), bias=False),
             nn.Conv2d(8, 5, 3, padding=(1, 7), dilation=(1, 7), bias=False)]
    head = SummedBranches()
    head.branches = nn.ModuleList(convs)
    _randomized(head, seed=3)
    assert is_atrous_sum(head)
    x = torch.randn(2, 8, 11, 13, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        assert _rel(AtrousSumGemm(convs)(x), head.double()(x.double())) < 2e-6


def test_only_plain_atrous_sums_are_rewritten() -> None:
    def summed(*convs: nn.Module) -> SummedBranches:
        head = SummedBranches()
        head.branches = nn.ModuleList(convs)
        return head

    assert is_atrous_sum(ASPPv2(16, 3))
    assert not is_atrous_sum(VGGASPP(16, 3, (6, 12)))  # fc6 -> fc7 -> fc8 branches
    assert not is_atrous_sum(summed(nn.Conv2d(8, 4, 3, padding=2, dilation=2, stride=2)))
    assert not is_atrous_sum(summed(nn.Conv2d(8, 4, 3, padding=1, dilation=2)))  # not 'same'
    assert not is_atrous_sum(summed(nn.Conv2d(8, 4, 3, padding=2, dilation=2, groups=2)))
    assert not is_atrous_sum(summed(nn.Conv2d(8, 4, 3, padding=2, dilation=2, padding_mode="reflect")))
    assert not is_atrous_sum(summed(nn.Conv2d(8, 4, 3, padding=2, dilation=2), nn.Conv2d(8, 4, 3, padding=2, dilation=2,
                                                                                              bias=False)))
    assert not is_atrous_sum(nn.Conv2d(8, 4, 3, padding=2, dilation=2))


@pytest.mark.parametrize("name", ["deeplabv2_tiny_msc", "kazuto_deeplabv2_resnet101_msc"])
def test_whole_model_and_engine(name: str) -> None:
    """The v2 models (Caffe's and kazuto's multi-scale fusion) with the rewrite equal the plain model, and
    the CPU engine uses it and says so."""
    torch.manual_seed(0)
    model = _randomized(build_model(name, num_classes=5), seed=5)
    size = 49 if "tiny" in name else 97
    x = torch.randn(1, 3, size, size + 8, generator=torch.Generator().manual_seed(6))
    engine = Segmenter.from_module(model, device="cpu", precision="fp32")
    assert engine.describe()["aspp_as_gemm"] == 1
    assert sum(isinstance(m, AtrousSumGemm) for m in engine.net.modules()) == 1
    assert not any(isinstance(m, AtrousSumGemm) for m in model.modules())  # the caller's model is untouched
    with torch.inference_mode():
        ref = model(x)
        out = engine.forward(x)
    assert _rel(out, ref) < 1e-5
    assert Segmenter.from_module(model, device="cpu", precision="fp32", fuse=False).describe()["aspp_as_gemm"] == 0


def test_traced_by_dynamo_without_graph_breaks() -> None:
    """torch.compile sees one graph (the engine compiles the rewritten head with the rest)."""
    head = _randomized(ASPPv2(16, 3), seed=7)
    fused = AtrousSumGemm(list(head.branches))
    x = torch.randn(1, 16, 19, 21, generator=torch.Generator().manual_seed(8))
    compiled = torch.compile(fused, backend="eager", fullgraph=True, dynamic=False)
    with torch.inference_mode():
        assert _rel(compiled(x), head(x)) < 2e-6


def test_fuse_counts_every_head() -> None:
    model = nn.Sequential(ASPPv2(8, 2), nn.Sequential(ASPPv2(8, 2)))
    assert fuse_atrous_sums(model) == 2
    assert all(isinstance(m, AtrousSumGemm) for m in (model[0], model[1][0]))
