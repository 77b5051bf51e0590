"""DRN-D backbones (``reference_models/drn.py``) and DeepLab v3+ on them.

* fyu/drn's ImageNet checkpoint layout: every key and shape of ``drn_d_54`` / ``drn_d_105`` as their
  code creates them (``tests/data/fyu_drn_d_keys.json``, generated once from fyu/drn's ``drn.py``)
  loads strictly, the ``fc`` classifier dropped, nothing else.
* The dilation/stride plan at output stride 8 (fyu's network) and 16, and the feature shapes.
* An independent engine: the same network written with ``torch.nn.functional`` straight from the
  paper's description (not through our modules) gives the same features.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reference_models import build_backbone, build_model, list_backbones, list_models
from reference_models.drn import load_imagenet_state_dict


def _empty(name: str, output_stride: int) -> torch.nn.Module:
    """The backbone without initialisation (every test loads a full state dict into it)."""
    with torch.device("meta"):
        model = build_backbone(name, output_stride=output_stride)
    return model.to_empty(device="cpu")


MANIFEST = json.loads((Path(__file__).parent / "data" / "fyu_drn_d_keys.json").read_text())["networks"]


def test_registered() -> None:
    assert {"drn_d_54", "drn_d_105"} <= set(list_backbones())
    assert {"deeplabv3plus_drn_d_54", "deeplabv3plus_drn_d_105"} <= set(list_models())
    model = build_model("deeplabv3plus_drn_d_54", num_classes=14)
    assert model.output_stride == 8 and model.logits_stride == 4  # seed 004 runs DRN at OS 8
    assert model.decoder.feature_projection0.in_channels == 256  # jfzhang95: low-level = layer3, 256 channels
    assert model.aspp.aspp0.in_channels == 512
    assert [model.aspp.get_submodule(f"aspp{i}").dilation[0] for i in (1, 2, 3)] == [12, 24, 36]


def _random_fyu_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in MANIFEST[name].items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith(("running_mean", "bias")):
            state[key] = torch.randn(shape, generator=gen) * 0.2
        elif len(shape) == 1:
            state[key] = torch.rand(shape, generator=gen) * 0.7 + 0.3
        else:
            state[key] = torch.randn(shape, generator=gen) * (2.0 / math.prod(shape[1:])) ** 0.5
    return state


@pytest.mark.parametrize("name", ["drn_d_54", pytest.param("drn_d_105", marks=pytest.mark.slow)])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_fyu_imagenet_layout_loads(name: str, output_stride: int) -> None:
    model = _empty(name, output_stride)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = dict(MANIFEST[name])
    assert theirs.pop("fc.weight") == [1000, 512, 1, 1] and theirs.pop("fc.bias") == [1000]
    assert ours == theirs  # same keys, same shapes, at both output strides
    state = _random_fyu_state(name)
    load_imagenet_state_dict(model, state)
    assert torch.equal(model.layer8[1].running_var, state["layer8.1.running_var"])
    # pre-0.4 checkpoints have no num_batches_tracked: still loads
    load_imagenet_state_dict(model, {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")})
    with pytest.raises(RuntimeError, match="layer9"):
        load_imagenet_state_dict(model, {**state, "layer9.0.weight": state["layer8.0.weight"]})


def test_dilation_plan() -> None:
    def plan(model):
        return {
            name: [(m.stride[0], m.dilation[0]) for m in getattr(model, name).modules()
                   if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] == 3]
            for name in ("layer2", "layer3", "layer4", "layer5", "layer6", "layer7", "layer8")
        }  # fmt: skip

    os8 = plan(build_backbone("drn_d_54", output_stride=8))
    assert os8["layer2"] == [(2, 1)] and os8["layer3"][0] == (2, 1) and os8["layer4"][0] == (2, 1)
    assert set(os8["layer5"]) == {(1, 2)} and set(os8["layer6"]) == {(1, 4)}  # every block, first included
    assert os8["layer7"] == [(1, 2)] and os8["layer8"] == [(1, 1)]
    os16 = plan(build_backbone("drn_d_54", output_stride=16))
    assert os16["layer5"][0] == (2, 1) and set(os16["layer5"][1:]) == {(1, 1)}
    assert set(os16["layer6"]) == {(1, 2)} and os16["layer7"] == [(1, 1)] and os16["layer8"] == [(1, 1)]
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("drn_d_54", output_stride=32)


def _reference_drn(state: dict[str, torch.Tensor], x: torch.Tensor, blocks: tuple[int, ...], output_stride: int):
    """DRN-D from the paper's description, functional: (layer3, layer8)."""

    def bn(y, prefix):
        return F.batch_norm(y, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, 1e-5)  # fmt: skip

    def conv_bn_relu(y, prefix, stride, dilation, pad):
        return F.relu(bn(F.conv2d(y, state[f"{prefix}.0.weight"], None, stride, pad, dilation), f"{prefix}.1"))

    y = conv_bn_relu(x, "layer0", 1, 1, 3)
    y = conv_bn_relu(y, "layer1", 1, 1, 1)
    y = conv_bn_relu(y, "layer2", 2, 1, 1)
    halve = output_stride == 16
    plans = {3: (2, 1), 4: (2, 1), 5: (2, 1) if halve else (1, 2), 6: (1, 2) if halve else (1, 4)}
    low = None
    for layer, n in zip((3, 4, 5, 6), blocks):
        stride, dilation = plans[layer]
        for j in range(n):
            p = f"layer{layer}.{j}"
            s = stride if j == 0 else 1
            r = F.relu(bn(F.conv2d(y, state[f"{p}.conv1.weight"]), f"{p}.bn1"))
            r = F.relu(bn(F.conv2d(r, state[f"{p}.conv2.weight"], None, s, dilation, dilation), f"{p}.bn2"))
            r = bn(F.conv2d(r, state[f"{p}.conv3.weight"]), f"{p}.bn3")
            shortcut = bn(F.conv2d(y, state[f"{p}.downsample.0.weight"], None, s), f"{p}.downsample.1") if j == 0 else y
            y = F.relu(r + shortcut)
        if layer == 3:
            low = y
    d7, d8 = (1, 1) if halve else (2, 1)
    y = conv_bn_relu(y, "layer7", 1, d7, d7)
    y = conv_bn_relu(y, "layer8", 1, d8, d8)
    return low, y


@pytest.mark.parametrize("output_stride", [8, 16])
def test_features_match_a_functional_reference(output_stride: int) -> None:
    model = _empty("drn_d_54", output_stride).eval()
    state = _random_fyu_state("drn_d_54", seed=3)
    load_imagenet_state_dict(model, state)
    x = torch.randn(1, 3, 41, 46)
    with torch.no_grad():
        feats = model(x)
        low, out = _reference_drn(state, x, (3, 4, 6, 3), output_stride)
    assert feats["low_level"].shape == (1, 256, 11, 12) and tuple(feats["out"].shape[-2:]) == (
        math.ceil(41 / output_stride), math.ceil(46 / output_stride))  # fmt: skip
    torch.testing.assert_close(feats["low_level"], low, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats["out"], out, rtol=1e-4, atol=1e-4)
