"""The jfzhang95/pytorch-deeplab-xception format (``converters/peers/jfzhang95.py``) and its flavours.

* The manifests (every key and shape, per backbone) equal what jfzhang95's own code creates:
  ``tests/data/jfzhang95_keys_digest.json`` was generated once from their ``DeepLab(...).state_dict()``.
* A generated ``model_best.pth.tar`` (``epoch``, ``state_dict``, ``optimizer``, ``best_pred`` as a numpy
  float) per backbone imports through the CLI with every key consumed.
* Independent engine: their DeepLab written here with ``torch.nn.functional`` straight from their key
  names (DRN-D-54, ResNet-101 with multi-grid, MobileNetV2 with its pad-before-block quirk, and the
  ASPP / decoder with pooling concatenated last and the upsampling to the input size) on the same
  state dict equals the imported model's output.
* Every flavour: registry shape / finite / gradient checks (output at the input size).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from converters.import_checkpoint import main as run
from converters.peers import available_formats, common, jfzhang95
from reference_models import build_model, list_models
from tests.peer_checkpoints import cheap_state, random_state

DIGEST = json.loads((Path(__file__).parent / "data" / "jfzhang95_keys_digest.json").read_text())["backbones"]
FLAVOURS = {"resnet": "jfzhang95_deeplabv3plus_resnet101", "xception": "jfzhang95_deeplabv3plus_xception",
            "drn": "jfzhang95_deeplabv3plus_drn", "mobilenet": "jfzhang95_deeplabv3plus_mobilenetv2"}  # fmt: skip


def _their_state(backbone: str, num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values under their exact keys; MobileNetV2's alias keys share the tensors, as in their files."""
    state = random_state(jfzhang95.manifest(backbone, num_classes), seed=seed)
    if backbone == "mobilenet":
        for key in list(state):
            if key.startswith("backbone.features."):
                index = int(key.split(".")[2])
                alias = "low_level_features." if index < 4 else "high_level_features."
                state[key.replace("features.", alias, 1)] = state[key]
    return state


def _save(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"epoch": 49, "state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.007}]},
                "best_pred": np.float64(0.7812)}, path)  # fmt: skip
    return path


def test_registered() -> None:
    assert "jfzhang95" in available_formats()
    assert set(FLAVOURS.values()) <= set(list_models())


@pytest.mark.parametrize("backbone", sorted(DIGEST))
def test_manifest_equals_their_code(backbone: str) -> None:
    lines = sorted(f"{k}:{list(v)}" for k, v in jfzhang95.manifest(backbone, 21, aliases=True).items())
    assert len(lines) == DIGEST[backbone]["keys"]
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == DIGEST[backbone]["sha256"]


def test_detection_and_rules() -> None:
    for backbone, arch in FLAVOURS.items():
        state, _ = jfzhang95.unwrap({"state_dict": cheap_state(jfzhang95.manifest(backbone, 7))}, "f")
        target = jfzhang95.detect(state, "f", output_stride=8)
        assert target.arch == arch and target.num_classes == 7 and target.kwargs == {"output_stride": 8}
    target = jfzhang95.detect(cheap_state(jfzhang95.manifest("resnet", 7)), "f")
    assert target.kwargs == {"output_stride": 16} and "assumed" in target.notes[0]
    with pytest.raises(common.ConversionError, match="stride 8 only"):
        jfzhang95.detect(cheap_state(jfzhang95.manifest("drn", 7)), "f", output_stride=16)
    rules, tf = jfzhang95.RULES, jfzhang95.TRANSFORMS
    assert common.rename_key("aspp.aspp4.bn.running_var", rules, tf) == "aspp.aspp3.bn.running_var"
    assert common.rename_key("aspp.global_avg_pool.2.bias", rules, tf) == "aspp.image_pooling.bn.bias"
    assert common.rename_key("decoder.last_conv.8.weight", rules, tf) == "logits.semantic.weight"


def test_alias_copies_must_equal_the_originals() -> None:
    state = _their_state("mobilenet", 3)
    kept, ignored = jfzhang95.unwrap({"state_dict": state}, "f")
    assert not any("level_features" in k for k in kept) and "306 MobileNetV2 aliases" in ignored[0]
    state["backbone.high_level_features.9.conv.1.bias"] = state["backbone.features.9.conv.1.bias"] + 1
    with pytest.raises(common.ConversionError, match="high_level_features.9.conv.1.bias"):
        jfzhang95.unwrap({"state_dict": state}, "f")


# ----------------------------------------------------------------------------- their DeepLab, functional


def _bn(s, p, x):
    return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"],
                        False, 0.0, 1e-5)  # fmt: skip


def _bottleneck(s, p, x, stride, dilation):
    r = F.relu(_bn(s, f"{p}.bn1", F.conv2d(x, s[f"{p}.conv1.weight"])))
    r = F.relu(_bn(s, f"{p}.bn2", F.conv2d(r, s[f"{p}.conv2.weight"], None, stride, dilation, dilation)))
    r = _bn(s, f"{p}.bn3", F.conv2d(r, s[f"{p}.conv3.weight"]))
    if f"{p}.downsample.0.weight" in s:
        x = _bn(s, f"{p}.downsample.1", F.conv2d(x, s[f"{p}.downsample.0.weight"], None, stride))
    return F.relu(r + x)


def _drn(s, x):
    def cbr(p, y, stride, d, pad):
        return F.relu(_bn(s, f"{p}.1", F.conv2d(y, s[f"{p}.0.weight"], None, stride, pad, d)))

    x = cbr("backbone.layer2", cbr("backbone.layer1", cbr("backbone.layer0", x, 1, 1, 3), 1, 1, 1), 2, 1, 1)
    low = None
    for layer, n, stride, d in ((3, 3, 2, 1), (4, 4, 2, 1), (5, 6, 1, 2), (6, 3, 1, 4)):
        for j in range(n):
            x = _bottleneck(s, f"backbone.layer{layer}.{j}", x, stride if j == 0 else 1, d)
        low = x if layer == 3 else low
    return cbr("backbone.layer8", cbr("backbone.layer7", x, 1, 2, 2), 1, 1, 1), low


def _resnet(s, x, output_stride):
    strides, dilations = ((1, 2, 2, 1), (1, 1, 1, 2)) if output_stride == 16 else ((1, 2, 1, 1), (1, 1, 2, 4))
    x = F.relu(_bn(s, "backbone.bn1", F.conv2d(x, s["backbone.conv1.weight"], None, 2, 3)))
    x = F.max_pool2d(x, 3, 2, 1)
    low = None
    for layer, n in zip((1, 2, 3, 4), (3, 4, 23, 3)):
        for j in range(n):
            d = dilations[3] * (1, 2, 4)[j] if layer == 4 else dilations[layer - 1]
            x = _bottleneck(s, f"backbone.layer{layer}.{j}", x, strides[layer - 1] if j == 0 else 1, d)
        low = x if layer == 1 else low
    return x, low


def _mobilenet(s, x, output_stride):
    x = F.relu6(_bn(s, "backbone.features.0.1", F.conv2d(x, s["backbone.features.0.0.weight"], None, 2, 1)))
    current, rate, index, low = 2, 1, 1, None
    for t, n, stride in ((1, 1, 1), (6, 2, 2), (6, 3, 2), (6, 4, 2), (6, 3, 1), (6, 3, 2), (6, 1, 1)):
        if current == output_stride:
            s_, d = 1, rate
            rate *= stride
        else:
            s_, d = stride, 1
            current *= stride
        for i in range(n):
            p = f"backbone.features.{index}.conv"
            y = F.pad(x, (d, d, d, d))  # fixed_padding of the block input, BEFORE the expansion
            j = 0
            if t != 1:
                y = F.relu6(_bn(s, f"{p}.1", F.conv2d(y, s[f"{p}.0.weight"])))
                j = 3
            w = s[f"{p}.{j}.weight"]
            y = F.relu6(_bn(s, f"{p}.{j + 1}", F.conv2d(y, w, None, s_ if i == 0 else 1, 0, d, groups=w.shape[0])))
            y = _bn(s, f"{p}.{j + 4}", F.conv2d(y, s[f"{p}.{j + 3}.weight"]))
            x = x + y if (i > 0 or s_ == 1) and x.shape == y.shape else y
            index += 1
            low = x if index == 4 else low
    return x, low


def _their_deeplab(s, x, backbone, output_stride):
    if backbone == "drn":
        feats, low = _drn(s, x)
        output_stride = 8
    elif backbone == "resnet":
        feats, low = _resnet(s, x, output_stride)
    else:
        feats, low = _mobilenet(s, x, output_stride)
    rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
    branches = [F.relu(_bn(s, "aspp.aspp1.bn", F.conv2d(feats, s["aspp.aspp1.atrous_conv.weight"])))]
    for i, r in zip((2, 3, 4), rates):
        branches.append(F.relu(_bn(s, f"aspp.aspp{i}.bn", F.conv2d(feats, s[f"aspp.aspp{i}.atrous_conv.weight"], None,
                                                                      1, r, r))))  # fmt: skip
    pooled = F.relu(_bn(s, "aspp.global_avg_pool.2", F.conv2d(F.adaptive_avg_pool2d(feats, 1),
                                                              s["aspp.global_avg_pool.1.weight"])))  # fmt: skip
    branches.append(F.interpolate(pooled, size=feats.shape[-2:], mode="bilinear", align_corners=True))
    y = F.relu(_bn(s, "aspp.bn1", F.conv2d(torch.cat(branches, 1), s["aspp.conv1.weight"])))
    low = F.relu(_bn(s, "decoder.bn1", F.conv2d(low, s["decoder.conv1.weight"])))
    y = torch.cat([F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=True), low], 1)
    y = F.relu(_bn(s, "decoder.last_conv.1", F.conv2d(y, s["decoder.last_conv.0.weight"], None, 1, 1)))
    y = F.relu(_bn(s, "decoder.last_conv.5", F.conv2d(y, s["decoder.last_conv.4.weight"], None, 1, 1)))
    y = F.conv2d(y, s["decoder.last_conv.8.weight"], s["decoder.last_conv.8.bias"])
    return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)


@pytest.mark.parametrize(("backbone", "output_stride"), [
    ("drn", 8), ("mobilenet", 16), ("mobilenet", 8),
    pytest.param("resnet", 16, marks=pytest.mark.slow), pytest.param("resnet", 8, marks=pytest.mark.slow),
])  # fmt: skip
def test_import_equals_their_deeplab(tmp_path: Path, capsys, backbone: str, output_stride: int) -> None:
    state = _their_state(backbone, 6, seed=2)
    src = _save(tmp_path / "model_best.pth.tar", state)
    out = tmp_path / "w" / f"jf_{backbone}.pth"
    assert run(["--from", "jfzhang95", "--checkpoint", str(src), "--out", str(out),
                "--output-stride", str(output_stride)]) == 0  # fmt: skip
    assert FLAVOURS[backbone] in capsys.readouterr().out
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["architecture"] == FLAVOURS[backbone] and record["num_classes"] == 6
    assert set(record["source"]["ignored_entries"][:3]) >= {"best_pred", "epoch", "optimizer"}
    assert record["load_with"] == (f"reference_models.build_model({FLAVOURS[backbone]!r}, num_classes=6, "
                                   f"output_stride={output_stride})")
    model = build_model(FLAVOURS[backbone], num_classes=6, output_stride=output_stride)
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    model.eval()
    x = torch.randn(1, 3, 45, 52)
    with torch.no_grad():
        ours = model(x)
        ref = _their_deeplab(state, x, backbone, output_stride)
    assert ours.shape == ref.shape == (1, 6, 45, 52)
    assert float((ours - ref).abs().max() / ref.abs().max()) <= 1e-5


@pytest.mark.slow
def test_import_xception(tmp_path: Path) -> None:
    src = _save(tmp_path / "model_best.pth.tar", _their_state("xception", 4))
    imported = common.import_checkpoint(jfzhang95, src, output_stride=16)
    assert imported.source_tensors == DIGEST["xception"]["keys"] and len(imported.state_dict) == imported.source_tensors
    with torch.no_grad():
        y = imported.model(torch.randn(1, 3, 37, 41))
    assert y.shape == (1, 4, 37, 41) and torch.isfinite(y).all()


def test_missing_extra_and_misshaped_keys_are_named(tmp_path: Path) -> None:
    good = cheap_state(jfzhang95.manifest("drn", 5))
    bad = {k: v for k, v in good.items() if k != "backbone.layer5.2.bn2.running_mean"}
    with pytest.raises(common.ConversionError, match="backbone.layer5.2.bn2.running_mean"):
        common.import_checkpoint(jfzhang95, _save(tmp_path / "a.pth.tar", bad))
    with pytest.raises(common.ConversionError, match="backbone.layer9.0.weight"):
        common.import_checkpoint(jfzhang95, _save(tmp_path / "b.pth.tar", {**good, "backbone.layer9.0.weight":
                                                                          good["backbone.layer8.0.weight"]}))
    with pytest.raises(common.ConversionError, match="aspp.conv1.weight"):
        common.import_checkpoint(jfzhang95, _save(tmp_path / "c.pth.tar", {**good, "aspp.conv1.weight":
                                                                          torch.zeros(256, 1024, 1, 1)}))


# ----------------------------------------------------------------------------- flavours: shape, finite, gradients


@pytest.mark.parametrize(("name", "output_stride"), [
    pytest.param("jfzhang95_deeplabv3plus_drn", 8, marks=pytest.mark.slow), ("jfzhang95_deeplabv3plus_mobilenetv2", 16),
    ("jfzhang95_deeplabv3plus_mobilenetv2", 8),
    pytest.param("jfzhang95_deeplabv3plus_resnet101", 16, marks=pytest.mark.slow),
    pytest.param("jfzhang95_deeplabv3plus_resnet101", 8, marks=pytest.mark.slow),
    pytest.param("jfzhang95_deeplabv3plus_xception", 16, marks=pytest.mark.slow),
    pytest.param("jfzhang95_deeplabv3plus_xception", 8, marks=pytest.mark.slow),
])  # fmt: skip
def test_flavour_shape_finite_and_gradients(name: str, output_stride: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, output_stride=output_stride).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 33, 38))
    assert y.shape == (1, 5, 33, 38) and torch.isfinite(y).all()  # upsampled to the input, as theirs
    model.train()
    x = torch.randn(2, 3, 33, 38, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 5, 33, 38) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="output_stride"):
        build_model(name, num_classes=5, output_stride=32)


def test_a_checkpoint_needing_unpickling_is_refused(tmp_path: Path, capsys) -> None:
    """A pickled module (``torch.save(model)`` style, here beside the state dict) is never unpickled."""
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": cheap_state(jfzhang95.manifest("drn", 3)), "model": torch.nn.Identity()}, path)
    out = tmp_path / "o.pth"
    assert run(["--from", "jfzhang95", "--checkpoint", str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "torch.nn.modules.linear.Identity" in err and "torch.save(model.state_dict()" in err
    assert not out.exists()
