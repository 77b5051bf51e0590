"""The torchvision and VainF/DeepLabV3Plus-Pytorch formats and their model flavours (reference_models/torchvision_style.py).

Key counts and element totals (num_batches_tracked included) were read off the peers' own model
code, built once by hand outside this repository, so the manifests are pinned independently.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from converters import import_checkpoint
from converters.io import load_state_dict
from converters.peers import common, torchvision, vainf
from reference_models import build_model, list_models
from tests.peer_checkpoints import cheap_state, random_state

FLAVOURS = [n for n in list_models() if n.startswith(("torchvision_", "vainf_"))]


def _total(manifest) -> tuple[int, int]:
    return len(manifest), sum(int(np.prod(s)) for s in manifest.values())


@pytest.mark.parametrize(("backbone", "aux", "expected"), [
    ("resnet50", False, (362, 39695633)), ("resnet50", True, (370, 42061351)),
    ("resnet101", False, (668, 58740036)), ("resnet101", True, (676, 61105754)),
    ("mobilenet_v3_large", False, (352, 11053514)), ("mobilenet_v3_large", True, (360, 11057386)),
])
def test_torchvision_manifest_matches_the_peer_code(backbone: str, aux: bool, expected) -> None:
    assert _total(torchvision.manifest(backbone, 21, aux)) == expected


@pytest.mark.parametrize(("backbone", "plus", "expected"), [
    ("resnet50", False, (362, 39695119)), ("resnet101", True, (674, 58862595)),
    ("mobilenet", False, (350, 5148557)), ("mobilenet", True, (356, 5260494)),
])
def test_vainf_manifest_matches_the_peer_code(backbone: str, plus: bool, expected) -> None:
    m = vainf.manifest(backbone, plus, 19)
    assert _total(m) == expected
    if plus and backbone == "mobilenet":  # after --separable_conv: every 3x3 head conv a depthwise + pointwise pair
        sep = vainf.manifest(backbone, plus, 19, separable=True)
        assert _total(sep) == (360, 2683198)
        assert sep["classifier.aspp.convs.2.0.body.0.weight"] == (320, 1, 3, 3)
        assert sep["classifier.classifier.0.body.1.weight"] == (256, 304, 1, 1)
    if backbone == "mobilenet":  # slices of features keep their indices
        assert "backbone.high_level_features.4.conv.0.0.weight" in m and "backbone.low_level_features.3.conv.3.running_var" in m


def test_detection_from_keys() -> None:
    for backbone in ("resnet50", "resnet101", "mobilenet_v3_large"):
        for aux in (False, True):
            t = torchvision.detect(cheap_state(torchvision.manifest(backbone, 21, aux)), "f")
            assert t.arch == f"torchvision_deeplabv3_{backbone}" and t.num_classes == 21
            assert t.kwargs == ({"aux": True} if aux else {})
    for backbone in ("resnet50", "resnet101", "mobilenet"):
        for plus in (False, True):
            t = vainf.detect(cheap_state(vainf.manifest(backbone, plus, 19)), "f", output_stride=8)
            assert t.arch == f"vainf_deeplabv3{'plus' if plus else ''}_{backbone}" and t.num_classes == 19
            assert t.kwargs == {"output_stride": 8}
    t = vainf.detect(cheap_state(vainf.manifest("mobilenet", True, 21)), "f")
    assert t.kwargs == {"output_stride": 16} and "assumed" in t.notes[0]


def _save(tmp_path, obj, name="ck.pth") -> str:
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


def _err(capsys, *args) -> str:
    assert import_checkpoint.main(list(args)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_inputs_name_the_key(tmp_path, capsys) -> None:
    out = str(tmp_path / "o.pth")
    good = cheap_state(vainf.manifest("mobilenet", True, 21))
    ck = {"model_state": good, "optimizer_state": {}, "best_score": np.float64(0.7), "cur_itrs": 30000}

    state = dict(good)
    del state["classifier.aspp.convs.4.2.running_var"]
    err = _err(capsys, "--from", "vainf", "--checkpoint", _save(tmp_path, {**ck, "model_state": state}), "--out", out)
    assert "missing key 'classifier.aspp.convs.4.2.running_var'" in err

    state = {**good, "backbone.high_level_features.18.0.weight": torch.zeros(()).expand(1280, 320, 1, 1)}
    err = _err(capsys, "--from", "vainf", "--checkpoint", _save(tmp_path, {**ck, "model_state": state}), "--out", out)
    assert "unexpected key 'backbone.high_level_features.18.0.weight'" in err

    state = {**good, "classifier.project.0.weight": torch.zeros(()).expand(48, 32, 1, 1)}
    err = _err(capsys, "--from", "vainf", "--checkpoint", _save(tmp_path, {**ck, "model_state": state}), "--out", out)
    assert "'classifier.project.0.weight' has shape [48, 32, 1, 1]" in err

    state = {k.replace("classifier.aspp.convs.1.0.weight", "classifier.aspp.convs.1.0.body.0.weight"): v
             for k, v in good.items()}  # half a --separable_conv pair
    err = _err(capsys, "--from", "vainf", "--checkpoint", _save(tmp_path, {**ck, "model_state": state}), "--out", out)
    assert "'classifier.aspp.convs.1.0.body.0.weight' has shape" in err

    v3 = {**cheap_state(vainf.manifest("mobilenet", False, 21)),
          "classifier.classifier.1.body.0.weight": torch.zeros(()).expand(256, 1, 3, 3)}
    err = _err(capsys, "--from", "vainf", "--checkpoint", _save(tmp_path, {**ck, "model_state": v3}), "--out", out)
    assert "separable_conv" in err and "v3+" in err

    tv = cheap_state(torchvision.manifest("mobilenet_v3_large", 21, False))
    err = _err(capsys, "--from", "torchvision", "--checkpoint", _save(tmp_path, tv), "--out", out, "--output-stride", "8")
    assert "output stride 16" in err
    err = _err(capsys, "--from", "torchvision", "--checkpoint", _save(tmp_path, good), "--out", out)
    assert "classifier.4.weight" in err  # a VainF file is not a torchvision one
    assert not list(tmp_path.glob("o.*"))


@pytest.mark.parametrize(("fmt", "peer", "arch", "kwargs", "wrap"), [
    ("torchvision", ("mobilenet_v3_large", 21, True), "torchvision_deeplabv3_mobilenet_v3_large", {"aux": True}, None),
    ("vainf", ("mobilenet", True, 19), "vainf_deeplabv3plus_mobilenet", {"output_stride": 8}, "model_state"),
    ("vainf", ("mobilenet", False, 19), "vainf_deeplabv3_mobilenet", {"output_stride": 16}, "model_state"),
    ("vainf", ("mobilenet", True, 19, True), "vainf_deeplabv3plus_mobilenet",
     {"output_stride": 16, "separable_convs": True}, "model_state"),
    pytest.param("torchvision", ("resnet50", 21, False), "torchvision_deeplabv3_resnet50", {}, "model",
                 marks=pytest.mark.slow),
    pytest.param("vainf", ("resnet50", True, 19), "vainf_deeplabv3plus_resnet50", {"output_stride": 16},
                 "model_state", marks=pytest.mark.slow),
])
def test_import_end_to_end(tmp_path, fmt, peer, arch, kwargs, wrap) -> None:
    module = {"torchvision": torchvision, "vainf": vainf}[fmt]
    state = random_state(module.manifest(*peer), seed=5)
    obj = state if wrap is None else {wrap: state, "optimizer": {"lr": 0.01}, "best_score": np.float64(0.5)}
    src = _save(tmp_path, obj, "peer.pth")
    out = tmp_path / "ours.pth"
    extra = ["--output-stride", str(kwargs["output_stride"])] if "output_stride" in kwargs else []
    num_classes = peer[2] if fmt == "vainf" else peer[1]
    assert import_checkpoint.main(["--from", fmt, "--checkpoint", src, "--out", str(out), "--quiet", *extra]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["architecture"] == arch and record["source"]["tensors"] == len(state)
    assert record["load_with"] == f"reference_models.build_model({arch!r}, num_classes={num_classes}" \
        + "".join(f", {k}={v!r}" for k, v in kwargs.items()) + ")"
    weights = load_state_dict(out)
    assert sum(v.numel() for v in weights.values()) == sum(v.numel() for v in state.values())
    model = build_model(arch, num_classes=record["num_classes"], **kwargs)
    model.load_state_dict(weights, strict=True)
    assert record["preprocessing"]["channel_order"] == "RGB" and record["preprocessing"]["std"] == [58.395, 57.12, 57.375]
    if wrap is not None:
        assert wrap not in record["source"]["ignored_entries"] and "best_score" in record["source"]["ignored_entries"]


# ----------------------------------------------------------------------------- the flavours


# The -101 flavours are the -50 ones with more blocks (each is built and run by the Keras twin test).
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if "resnet" in n else n
                                  for n in FLAVOURS if "resnet101" not in n])
def test_flavour_shape_finite_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 71))
    assert out.shape == (1, 5, 65, 71) and torch.isfinite(out).all()  # resized to the input, as the peers do
    model.train()
    x = torch.randn(2, 3, 65, 71, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 5, 65, 71) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_vainf_output_strides_and_rates() -> None:
    for os_, rates in ((8, (12, 24, 36)), (16, (6, 12, 18))):
        model = build_model("vainf_deeplabv3plus_mobilenet", num_classes=3, output_stride=os_).eval()
        assert model.aspp.rates == rates
        feats = model.backbone(torch.randn(1, 3, 64, 64))
        # unpadded stem: 64 -> 31; every later stride-2 block pads its input by 1 + 1: ceil(n / 2)
        assert feats["low_level"].shape[-2:] == (16, 16) and feats["out"].shape[-2:] == ((8, 8) if os_ == 8 else (4, 4))
        assert feats["low_level"].shape[1] == 24 and feats["out"].shape[1] == 320
    assert build_model("torchvision_deeplabv3_mobilenet_v3_large", num_classes=3).aspp.rates == (12, 24, 36)
    with pytest.raises(ValueError):
        build_model("vainf_deeplabv3_resnet50", num_classes=3, output_stride=32)


def test_pooling_branch_and_final_resize_are_align_corners_false() -> None:
    """Independent computation of the parts that differ from DeepLab-TF: the image-pooling branch is a
    constant map and the logits are resized to the input with half-pixel (align_corners=False) sampling."""
    model = build_model("torchvision_deeplabv3_mobilenet_v3_large", num_classes=4).eval()
    model.load_state_dict(random_state({k: tuple(v.shape) for k, v in model.state_dict().items()}, seed=1))
    x = torch.randn(1, 3, 70, 45)
    with torch.no_grad():
        feats = model.backbone(x)
        pooled = model.aspp.convs[4](feats["out"])
        expected = torch.relu(model.aspp.convs[4].bn(model.aspp.convs[4].conv(feats["out"].mean((2, 3), keepdim=True))))
        torch.testing.assert_close(pooled, expected.expand_as(pooled))
        logits = model.head(model.aspp(feats["out"]))
        out = model(x)
    ys = (torch.arange(70) + 0.5) * logits.shape[-2] / 70 - 0.5
    xs = (torch.arange(45) + 0.5) * logits.shape[-1] / 45 - 0.5
    ref = _bilinear_half_pixel(logits, ys, xs)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert (F.interpolate(logits, size=(70, 45), mode="bilinear", align_corners=True) - out).abs().max() > 1e-3


def _bilinear_half_pixel(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    def axis(src: torch.Tensor, n: int):
        src = src.clamp(min=0)
        lo = src.floor().long().clamp(max=n - 1)
        return lo, (lo + 1).clamp(max=n - 1), src - lo
    y0, y1, wy = axis(ys, x.shape[-2])
    x0, x1, wx = axis(xs, x.shape[-1])
    rows = x[:, :, y0] * (1 - wy)[:, None] + x[:, :, y1] * wy[:, None]
    return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


def test_forward_dict_is_torchvisions_return_value() -> None:
    model = build_model("torchvision_deeplabv3_mobilenet_v3_large", num_classes=3, aux=True).eval()
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        d = model.forward_dict(x)
        assert set(d) == {"out", "aux"} and d["aux"].shape == (1, 3, 48, 40)
        torch.testing.assert_close(d["out"], model(x))
    assert common.STEPS[0] == "read_weights_only"


# ----------------------------------------------------------------------------- independent forwards from the peers' keys
# Written from the peers' code as plain functional ops over THEIR key names (no module of ours), then
# compared with our flavour holding the imported weights: this checks the rename rules and the
# architecture at once.


def _ops(sd: dict[str, torch.Tensor]):
    def conv(x, p, stride=1, padding=0, dilation=1, groups=1):
        return F.conv2d(x, sd[f"{p}.weight"], sd.get(f"{p}.bias"), stride, padding, dilation, groups)

    def bn(x, p, eps=1e-5):
        return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                            False, 0.0, eps)

    def aspp(x, p, rates):
        branches = [F.relu(bn(conv(x, f"{p}.convs.0.0"), f"{p}.convs.0.1"))]
        for i, r in enumerate(rates, start=1):
            branches.append(F.relu(bn(conv(x, f"{p}.convs.{i}.0", padding=r, dilation=r), f"{p}.convs.{i}.1")))
        pooled = F.relu(bn(conv(x.mean((2, 3), keepdim=True), f"{p}.convs.4.1"), f"{p}.convs.4.2"))
        branches.append(pooled.expand(-1, -1, *x.shape[-2:]))
        return F.relu(bn(conv(torch.cat(branches, 1), f"{p}.project.0"), f"{p}.project.1"))

    return conv, bn, aspp


def _torchvision_resnet50_deeplabv3(sd, x):
    conv, bn, aspp = _ops(sd)
    y = F.max_pool2d(F.relu(bn(conv(x, "backbone.conv1", 2, 3), "backbone.bn1")), 3, 2, 1)
    # replace_stride_with_dilation=[False, True, True]: (stride, first-block dilation, dilation) per stage
    for i, (n, (stride, first, dil)) in enumerate(zip((3, 4, 6, 3), ((1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4))), 1):
        for j in range(n):
            p = f"backbone.layer{i}.{j}"
            s, d = (stride, first) if j == 0 else (1, dil)
            h = F.relu(bn(conv(y, f"{p}.conv1"), f"{p}.bn1"))
            h = F.relu(bn(conv(h, f"{p}.conv2", s, d, d), f"{p}.bn2"))
            h = bn(conv(h, f"{p}.conv3"), f"{p}.bn3")
            identity = bn(conv(y, f"{p}.downsample.0", s), f"{p}.downsample.1") if j == 0 else y
            y = F.relu(h + identity)
    y = aspp(y, "classifier.0", (12, 24, 36))
    y = conv(F.relu(bn(conv(y, "classifier.1", padding=1), "classifier.2")), "classifier.4")
    return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _vainf_deeplabv3plus_mobilenet_os16(sd, x):
    conv, bn, aspp = _ops(sd)

    def part(i):
        return f"backbone.{'low' if i < 4 else 'high'}_level_features.{i}"

    y = F.relu6(bn(conv(x, f"{part(0)}.0", 2), f"{part(0)}.1"))
    # output stride 16: the 96/160/320 stages run at stride 1; 160's later blocks and 320 use dilation 2
    plan = [(1, 16, 1, 1, 1), (6, 24, 2, 2, 1), (6, 32, 3, 2, 1), (6, 64, 4, 2, 1), (6, 96, 3, 1, 1),
            (6, 160, 3, 1, 2), (6, 320, 1, 1, 2)]
    i, in_ch, low = 1, 32, None
    for t, c, n, stride, dil in plan:
        for k in range(n):
            s, d = (stride, 1 if c == 160 else dil) if k == 0 else (1, dil)
            p, j = f"{part(i)}.conv", 0
            h = F.pad(y, (d, d, d, d))
            if t != 1:
                h, j = F.relu6(bn(conv(h, f"{p}.0.0"), f"{p}.0.1")), 1
            h = F.relu6(bn(conv(h, f"{p}.{j}.0", s, 0, d, groups=h.shape[1]), f"{p}.{j}.1"))
            h = bn(conv(h, f"{p}.{j + 1}"), f"{p}.{j + 2}")
            y = y + h if s == 1 and in_ch == c else h
            in_ch = c
            if i == 3:
                low = y
            i += 1
    low = F.relu(bn(conv(low, "classifier.project.0"), "classifier.project.1"))
    y = aspp(y, "classifier.aspp", (6, 12, 18))
    y = torch.cat([low, F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)], 1)
    y = conv(F.relu(bn(conv(y, "classifier.classifier.0", padding=1), "classifier.classifier.1")),
             "classifier.classifier.3")
    return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize(("fmt", "peer", "kwargs", "forward"), [
    pytest.param("torchvision", ("resnet50", 6, False), {}, _torchvision_resnet50_deeplabv3, marks=pytest.mark.slow),
    ("vainf", ("mobilenet", True, 6), {"output_stride": 16}, _vainf_deeplabv3plus_mobilenet_os16),
])
def test_imported_flavour_equals_an_independent_forward(tmp_path, fmt, peer, kwargs, forward) -> None:
    module = {"torchvision": torchvision, "vainf": vainf}[fmt]
    state = random_state(module.manifest(*peer), seed=7)
    imported = common.import_checkpoint(module, _save(tmp_path, state), **kwargs)
    x = torch.randn(1, 3, 67, 58)
    with torch.no_grad():
        ours = imported.model(x)
        ref = forward(state, x)
    assert ours.shape == ref.shape == (1, 6, 67, 58)
    assert float((ours - ref).abs().max() / ref.abs().max()) <= 1e-5


@pytest.mark.slow
def test_separable_flavour_keras_twin() -> None:
    """The --separable_conv head (depthwise nn.Conv2d in the ASPP and decoder) in Keras."""
    pytest.importorskip("tensorflow")
    from converters.keras_writer import load_state_dict_into_keras
    from reference_models.keras import build_keras_model

    kwargs = {"num_classes": 3, "output_stride": 8, "separable_convs": True}
    model = build_model("vainf_deeplabv3plus_mobilenet", **kwargs).eval()
    state = random_state({k: tuple(v.shape) for k, v in model.state_dict().items()}, seed=2)
    model.load_state_dict(state)
    keras_model = load_state_dict_into_keras(build_keras_model("vainf_deeplabv3plus_mobilenet", **kwargs), state)
    x = np.random.default_rng(0).standard_normal((1, 61, 70, 3)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    ours = np.asarray(keras_model(x, training=False)).transpose(0, 3, 1, 2)
    assert float(np.abs(ours - ref).max() / np.abs(ref).max()) <= 1e-4


@pytest.mark.slow
def test_aux_flavour_keras_twin_returns_forward_dict() -> None:
    """torchvision's published files carry aux_classifier: the aux=True twin holds and computes it."""
    pytest.importorskip("tensorflow")
    from converters.keras_writer import load_state_dict_into_keras
    from reference_models.keras import build_keras_model

    model = build_model("torchvision_deeplabv3_mobilenet_v3_large", num_classes=3, aux=True).eval()
    state = random_state({k: tuple(v.shape) for k, v in model.state_dict().items()}, seed=4)
    model.load_state_dict(state)
    keras_model = load_state_dict_into_keras(
        build_keras_model("torchvision_deeplabv3_mobilenet_v3_large", num_classes=3, aux=True), state)
    x = np.random.default_rng(1).standard_normal((1, 57, 64, 3)).astype(np.float32)
    with torch.no_grad():
        ref = model.forward_dict(torch.from_numpy(x).permute(0, 3, 1, 2))
    ours = keras_model(x, training=False)
    assert set(ours) == {"out", "aux"}
    for key in ("out", "aux"):
        got = np.asarray(ours[key]).transpose(0, 3, 1, 2)
        assert float(np.abs(got - ref[key].numpy()).max() / np.abs(ref[key].numpy()).max()) <= 1e-4, key
