"""Dilated depthwise convolutions kept in NCHW inside a channels_last CPU engine (reproduce.depthwise_layout)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from reference_models import build_model
from reference_models.tf_ops import Conv2dTF
from reproduce import depthwise_layout, kernel_probe
from reproduce.depthwise_layout import NCHWIsland, is_dilated_depthwise, nchw_where_faster, probe_depthwise
from reproduce.inference import Segmenter


@pytest.fixture
def always(monkeypatch):
    """Make the probe's verdict deterministic: ``always("nchw")`` or ``always("channels_last")``."""
    def set_choice(choice: str) -> None:
        monkeypatch.setattr(kernel_probe, "_MEMORY", {})  # no verdict of another test is reused
        monkeypatch.setattr(depthwise_layout, "NCHW_MARGIN", 1e9 if choice == "nchw" else 0.0)
    return set_choice


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3, padding=6, dilation=6, groups=16), nn.ReLU(),
                         Conv2dTF(16, 16, 3, dilation=3, groups=16, activation="relu"),
                         nn.Conv2d(16, 16, 3, padding=1, groups=16),  # rate 1: never a candidate
                         nn.Conv2d(16, 4, 3, padding=2, dilation=2)).eval()  # not depthwise


def test_which_convolutions_are_candidates() -> None:
    net = _net()
    assert [is_dilated_depthwise(m) for m in net] == [False, True, False, True, False, False]
    assert not is_dilated_depthwise(nn.Conv2d(16, 32, 3, padding=2, dilation=2, groups=16))  # channel multiplier 2
    assert is_dilated_depthwise(nn.Conv2d(4, 4, 3, padding=(1, 2), dilation=(1, 2), groups=4))


@pytest.mark.parametrize("shape", [(1, 8, 13, 11), (2, 8, 5, 5)])
def test_islands_give_the_same_output_in_nchw(always, shape) -> None:
    always("nchw")
    net = _net()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = net.double()(x.double())
    engine_net = copy.deepcopy(net).float().to(memory_format=torch.channels_last)
    probes = nchw_where_faster(engine_net)
    assert [p["choice"] for p in probes] == ["nchw", "nchw"] and sum(p["modules"] for p in probes) == 2
    assert isinstance(engine_net[1], NCHWIsland) and isinstance(engine_net[3], NCHWIsland)
    assert engine_net[1].inner.weight.is_contiguous()  # else PyTorch would run it in channels_last again
    seen: list[bool] = []
    engine_net[1].inner.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    with torch.inference_mode():
        out = engine_net(x.contiguous(memory_format=torch.channels_last))
    assert seen == [True]  # the convolution itself ran on an NCHW tensor
    assert out.is_contiguous(memory_format=torch.channels_last) and _rel(out, ref) < 1e-5


def test_channels_last_is_kept_where_not_faster(always) -> None:
    always("channels_last")
    net = _net().to(memory_format=torch.channels_last)
    probes = nchw_where_faster(net)
    assert len(probes) == 2 and all(p["choice"] == "channels_last" and p["modules"] == 0 for p in probes)
    assert not any(isinstance(m, NCHWIsland) for m in net.modules())


def test_probe_measures_both_layouts_once_per_shape(monkeypatch) -> None:
    monkeypatch.setattr(kernel_probe, "_MEMORY", {})
    conv = nn.Conv2d(32, 32, 3, padding=4, dilation=4, groups=32)
    rng = torch.get_rng_state()
    first = probe_depthwise(conv)
    assert torch.equal(torch.get_rng_state(), rng)  # the user's random stream is not consumed by the engine
    assert first["channels_last_ms"] > 0 and first["nchw_ms"] > 0 and first["choice"] in ("nchw", "channels_last")
    assert first["dilation"] == [4, 4] and first["channels"] == 32 and first["size"] == depthwise_layout.PROBE_SIZE
    assert first["choice"] == ("nchw" if first["nchw_ms"] <= depthwise_layout.NCHW_MARGIN * first["channels_last_ms"]
                               else "channels_last")
    assert probe_depthwise(copy.deepcopy(conv)) is first  # memoised per shape: the engine probes once per process


def test_engine_runs_them_in_nchw_and_says_so(always) -> None:
    always("nchw")
    torch.manual_seed(0)
    model = build_model("deeplabv3_mobilenetv2", num_classes=5).eval()  # three rate-2 depthwise convs (960)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 65, 65, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref = model(x)
    engine = Segmenter.from_module(model, device="cpu", precision="fp32", memory_format="channels_last")
    info = engine.describe()
    assert info["depthwise_nchw"] == 3 and [p["modules"] for p in info["depthwise_probes"]] == [3]
    assert "3 dilated depthwise convs in NCHW" in engine.summary()
    assert _rel(engine.forward(x), ref) < 1e-4
    # the caller's model is untouched: no island, same weights and layout
    assert not any(isinstance(m, NCHWIsland) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    nchw = Segmenter.from_module(model, device="cpu", precision="fp32", memory_format="contiguous")
    assert nchw.describe()["depthwise_nchw"] == 0 and nchw.describe()["depthwise_probes"] == []
