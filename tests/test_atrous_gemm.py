"""Atrous convolutions as one GEMM (reproduce.atrous_gemm): DeepLab v2's summed ASPP head, and single atrous convs
where a probe on the machine measures the GEMM faster; same numbers as the convolutions."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from reference_models import build_model
from reference_models.deeplab_v2 import VGGASPP, ASPPv2, SummedBranches
from reference_models.tf_ops import Conv2dTF
from reproduce import atrous_gemm, kernel_probe
from reproduce.atrous_gemm import AtrousSumGemm, fuse_atrous_sums, gemm_where_faster, is_atrous_conv, is_atrous_sum
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


# ------------------------------------------------------------------ single atrous convolutions (probed)
def _tf_conv(dilation: int, activation: str | None = "relu") -> Conv2dTF:
    conv = Conv2dTF(8, 6, 3, dilation=dilation, bias=True, activation=activation)
    return _randomized(conv, seed=dilation)


def test_which_single_convolutions_are_atrous() -> None:
    assert is_atrous_conv(nn.Conv2d(8, 4, 3, padding=6, dilation=6))
    assert is_atrous_conv(nn.Conv2d(8, 4, 3, padding=(2, 3), dilation=(2, 3)))
    assert is_atrous_conv(_tf_conv(12))  # TF SAME at stride 1 pads the dilation on each side
    assert is_atrous_conv(_tf_conv(4, "relu6"))
    assert not is_atrous_conv(nn.Conv2d(8, 4, 3, padding=1))  # not dilated
    assert not is_atrous_conv(nn.Conv2d(8, 4, 3, padding=1, dilation=2))  # not 'same'
    assert not is_atrous_conv(nn.Conv2d(8, 4, 3, padding=2, dilation=2, stride=2))
    assert not is_atrous_conv(nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8))  # depthwise: depthwise_layout's
    assert not is_atrous_conv(nn.Conv2d(8, 4, 3, padding=2, dilation=2, padding_mode="reflect"))
    assert not is_atrous_conv(nn.Conv2d(8, 4, 5, padding=4, dilation=2))
    assert not is_atrous_conv(Conv2dTF(8, 4, 3, stride=2, dilation=2))
    assert not is_atrous_conv(Conv2dTF(8, 4, 3, dilation=2, bn_eps=1e-3))  # its BatchNorm not folded


@pytest.mark.parametrize("choice", ["gemm", "conv"])
def test_probed_rewrite_follows_the_probe_and_keeps_the_numbers(choice: str, monkeypatch) -> None:
    """Where the probe says GEMM, every atrous conv of that shape is replaced (a Conv2dTF's ReLU kept), others
    are left; the network computes the same numbers either way, at sizes where some taps see only padding."""
    net = nn.Sequential(_tf_conv(2), nn.Conv2d(6, 6, 3, padding=12, dilation=12), _tf_conv(2, None),
                        nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=4, dilation=4, stride=2))
    net[2] = Conv2dTF(6, 6, 3, dilation=2, bias=True, activation=None)
    _randomized(net, seed=9)
    ref_net = copy.deepcopy(net)
    seen = []

    def probe(conv, dtype=None, **_):
        seen.append((conv.in_channels, conv.out_channels, tuple(conv.dilation), dtype))
        return {"choice": choice}

    monkeypatch.setattr(atrous_gemm, "probe_atrous", probe)
    probes = gemm_where_faster(net.to(memory_format=torch.channels_last))
    assert sorted(seen) == [(6, 6, (2, 2), None), (6, 6, (12, 12), None), (8, 6, (2, 2), None)]  # one per shape
    replaced = 3 if choice == "gemm" else 0
    assert sum(p["modules"] for p in probes) == replaced
    assert sum(isinstance(m, AtrousSumGemm) for m in net.modules()) == replaced
    assert isinstance(net[3], nn.Conv2d) and isinstance(net[4], nn.Conv2d)  # not atrous: never probed
    if choice == "gemm":
        assert isinstance(net[0], nn.Sequential) and isinstance(net[0][1], nn.ReLU)  # the Conv2dTF's activation
        assert isinstance(net[2], AtrousSumGemm)
    for size in (9, 31):  # at 9 the rate-12 taps off the centre see only padding and are left out
        x = torch.randn(2, 8, size, size + 3, generator=torch.Generator().manual_seed(size))
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            assert _rel(net(x), ref_net.double()(x.double())) < 2e-6


def test_probe_times_both_forms_at_the_engines_dtype_once_per_shape() -> None:
    conv = nn.Conv2d(16, 8, 3, padding=18, dilation=18)
    first = atrous_gemm.probe_atrous(conv, torch.bfloat16, rounds=1)
    assert first["choice"] in ("gemm", "conv") and all(t > 0 for t in first["conv_ms"] + first["gemm_ms"])
    assert first["dtype"] == "bfloat16" and first["sizes"][0] == 2 * 18 + 3  # every tap sees the input
    assert first["sizes"] == [39, 65][:len(first["sizes"])] and len(first["conv_ms"]) == len(first["sizes"])
    assert (first["choice"] == "gemm") == (len(first["sizes"]) == 2 and all(
        g <= atrous_gemm.GEMM_MARGIN * c for g, c in zip(first["gemm_ms"], first["conv_ms"])))
    assert atrous_gemm.probe_atrous(nn.Conv2d(16, 8, 3, padding=18, dilation=18), torch.bfloat16) is first
    assert atrous_gemm.probe_atrous(conv, None, rounds=1)["dtype"] == "float32"
    assert atrous_gemm.probe_atrous(nn.Conv2d(16, 8, 3, padding=36, dilation=36), None, rounds=1)["sizes"] == [75]


def test_bf16_gemm_keeps_one_cast_weight_and_matches_the_convolution() -> None:
    conv = _randomized(nn.Conv2d(32, 16, 3, padding=6, dilation=6), seed=11)
    gemm = AtrousSumGemm([conv])
    x = torch.randn(1, 32, 21, 21, generator=torch.Generator().manual_seed(12))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref, first, second = conv(x).float(), gemm(x).float(), gemm(x).float()
        cast = gemm._cast[1]
        gemm(x)
        assert gemm._cast[1] is cast and cast.dtype == torch.bfloat16  # converted once, not per forward
    assert torch.equal(first, second)
    assert _rel(first, ref) < 2e-2  # bf16 rounding of the same products (the convolution's own error)
    with torch.inference_mode():  # a later fp32 forward uses the fp32 weight
        assert _rel(gemm(x), conv.double()(x.double())) < 2e-6


@pytest.mark.parametrize("at_33, at_65, choice", [((10.0, 5.0), (10.0, 5.0), "gemm"), ((10.0, 5.0), (10.0, 9.0), "conv"),
                                                  ((10.0, 9.0), None, "conv")])
def test_the_gemm_must_win_at_both_map_sizes(at_33, at_65, choice, monkeypatch) -> None:
    """A GEMM faster on 33x33 maps only is not taken (the trunk's rate-4 conv of an OS8 network runs on 65x65);
    the 65x65 probe runs only where the GEMM won at 33x33."""
    timed = []

    def fake(cin, cout, dilation, bias, dtype, size, rounds):
        timed.append(size)
        return at_33 if size == 33 else at_65

    monkeypatch.setattr(atrous_gemm, "_time_both", fake)
    monkeypatch.setattr(kernel_probe, "_MEMORY", {})
    result = atrous_gemm.probe_atrous(nn.Conv2d(8, 8, 3, padding=4, dilation=4))
    assert result["choice"] == choice and timed == ([33, 65] if at_65 else [33]) == result["sizes"]


def test_engine_probes_atrous_convs_and_says_so(monkeypatch) -> None:
    torch.manual_seed(0)
    model = _randomized(build_model("deeplabv3_tiny", num_classes=5), seed=13)
    x = torch.randn(1, 3, 65, 65, generator=torch.Generator().manual_seed(14))
    monkeypatch.setattr(atrous_gemm, "probe_atrous",
                        lambda conv, dtype=None, **_: {"dilation": list(conv.dilation), "choice": "gemm"})
    engine = Segmenter.from_module(model, device="cpu", precision="fp32")
    info = engine.describe()
    assert info["atrous_convs_as_gemm"] > 0 and info["atrous_convs_as_gemm"] == sum(
        p["modules"] for p in info["atrous_probes"])
    assert "atrous convs as GEMM" in engine.summary()
    assert not any(isinstance(m, AtrousSumGemm) for m in model.modules())  # the caller's model is untouched
    with torch.inference_mode():
        assert _rel(engine.forward(x), model(x)) < 1e-5
    plain = Segmenter.from_module(model, device="cpu", precision="fp32", memory_format="contiguous")
    assert plain.describe()["atrous_convs_as_gemm"] == 0 and plain.describe()["atrous_probes"] == []
