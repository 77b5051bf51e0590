"""converters/import_checkpoint.py and converters/peers: safe reading, manifests, renaming, one-line errors;
the kazuto1011/deeplab-pytorch format and its model flavour (``kazuto_deeplabv2_resnet101_msc``).

Key counts and parameter totals below were read off the peers' own model code (built once, by hand,
outside this repository); they pin the manifests independently of our generator.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from converters import import_checkpoint
from converters.io import load_state_dict
from converters.peers import available_formats, common, get_format, kazuto
from reference_models import build_model, list_models
from tests.conftest import REPO
from tests.peer_checkpoints import cheap_state, random_state

SCRIPT = REPO / "converters" / "import_checkpoint.py"


def run(*args: str) -> int:
    return import_checkpoint.main(list(args))


def one_line_error(capsys, *args: str) -> str:
    assert run(*args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def load_imported(out) -> torch.nn.Module:
    record = json.loads(out.with_suffix(".json").read_text())
    import reference_models

    model = eval(record["load_with"], {"reference_models": reference_models})  # our own provenance string
    model.load_state_dict(load_state_dict(out), strict=True)
    return model.eval()


# ----------------------------------------------------------------------------- the framework


@pytest.mark.slow
def test_formats_and_console_script_contract() -> None:
    assert {"kazuto"} <= set(available_formats())
    for name in available_formats():
        fmt = get_format(name)
        assert fmt.NAME == name and fmt.DESCRIPTION and callable(fmt.unwrap) and callable(fmt.detect)
    res = subprocess.run([sys.executable, "-OO", str(SCRIPT), "--help"], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and "--output-stride" in res.stdout and "kazuto" in res.stdout
    res = subprocess.run([sys.executable, str(SCRIPT), "--from", "nobody", "--checkpoint", "x", "--out", "y.pth"],
                         capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 2


def test_rules_rename_with_reverse_map() -> None:
    state = cheap_state(kazuto.manifest("DeepLabV2_ResNet101_MSC", 3))
    target = kazuto.detect(state, "f.pth")
    renamed, reverse = common.rename(state, target, "f.pth")
    assert reverse["backbone.layer3.22.conv2.weight"] == "base.layer4.block23.conv3x3.conv.weight"
    assert reverse["backbone.layer1.0.downsample.1.running_var"] == "base.layer2.block1.shortcut.bn.running_var"
    assert reverse["aspp.branches.3.bias"] == "base.aspp.c3.bias"
    assert len(renamed) == len(state)


def test_numpy_scalars_are_read_but_objects_are_refused(tmp_path, capsys) -> None:
    path = tmp_path / "np.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "best_pred": np.float64(0.7), "epoch": np.int64(3)}, path)
    obj = common.read_checkpoint(path)
    assert float(obj["best_pred"]) == 0.7
    legacy = tmp_path / "legacy.pth"  # torch < 1.6 files (kazuto's releases): not a zip archive
    torch.save({"state_dict": {"w": torch.ones(2)}, "best_pred": np.float64(0.5)}, legacy,
               _use_new_zipfile_serialization=False)
    assert float(common.read_checkpoint(legacy)["best_pred"]) == 0.5
    import argparse
    import zipfile

    numpy1 = tmp_path / "numpy1.pth"  # written with numpy 1.x: its scalar lives in numpy.core.multiarray
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(numpy1, "w", compression=zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(item, data)
    assert float(common.read_checkpoint(numpy1)["best_pred"]) == 0.7
    ref = tmp_path / "reference.pth"  # torchvision's references/segmentation checkpoint keeps its argparse args
    torch.save({"model": {"w": torch.ones(1)}, "args": argparse.Namespace(lr=0.02, aux_loss=True), "epoch": 3}, ref)
    assert common.read_checkpoint(ref)["args"].lr == 0.02

    pickled = tmp_path / "model.pth"
    torch.save(torch.nn.Conv2d(1, 1, 1), pickled)  # a whole pickled model: needs its class unpickled
    err = one_line_error(capsys, "--from", "kazuto", "--checkpoint", str(pickled), "--out", str(tmp_path / "o.pth"))
    assert str(pickled) in err and "refused" in err and "Conv2d" in err and "torch.save(model.state_dict()" in err
    assert "weights_only=False" not in err
    assert not (tmp_path / "o.pth").exists() and not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n" * 10, b"PK\x03\x04broken zip"])
def test_not_a_checkpoint(tmp_path, capsys, content: bytes) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    err = one_line_error(capsys, "--from", "kazuto", "--checkpoint", str(path), "--out", str(tmp_path / "o.pth"))
    assert str(path) in err and "checkpoint" in err
    err = one_line_error(capsys, "--from", "kazuto", "--checkpoint", str(tmp_path / "none.pth"),
                         "--out", str(tmp_path / "o.pth"))
    assert "file not found" in err


def test_not_a_state_dict(tmp_path, capsys) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.ones(1)], path)
    assert "not a dict of tensors" in one_line_error(capsys, "--from", "kazuto", "--checkpoint", str(path),
                                                     "--out", str(tmp_path / "o.pth"))
    torch.save({"layer1.conv1.conv.weight": 3}, path)
    assert "'layer1.conv1.conv.weight' is a int" in one_line_error(
        capsys, "--from", "kazuto", "--checkpoint", str(path), "--out", str(tmp_path / "o.pth"))


def _bad(tmp_path, state) -> str:
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    return str(path)


def test_missing_extra_and_misshaped_keys_are_named(tmp_path, capsys) -> None:
    good = cheap_state(kazuto.manifest("DeepLabV2_ResNet101_MSC", 21))
    out = str(tmp_path / "o.pth")

    state = dict(good)
    del state["base.layer4.block7.conv3x3.bn.running_mean"]
    err = one_line_error(capsys, "--from", "kazuto", "--checkpoint", _bad(tmp_path, state), "--out", out)
    assert "missing key 'base.layer4.block7.conv3x3.bn.running_mean'" in err

    state = {**good, "base.aspp.c4.weight": torch.zeros(()).expand(21, 2048, 3, 3)}
    err = one_line_error(capsys, "--from", "kazuto", "--checkpoint", _bad(tmp_path, state), "--out", out)
    assert "unexpected key 'base.aspp.c4.weight'" in err

    state = {**good, "base.layer3.block2.reduce.conv.weight": torch.zeros(()).expand(128, 512, 3, 3)}
    err = one_line_error(capsys, "--from", "kazuto", "--checkpoint", _bad(tmp_path, state), "--out", out)
    assert "'base.layer3.block2.reduce.conv.weight' has shape [128, 512, 3, 3]" in err and "[128, 512, 1, 1]" in err

    state = {k: v for k, v in good.items() if not k.startswith("base.layer4.block23.")}  # a ResNet-50-like depth
    err = one_line_error(capsys, "--from", "kazuto", "--checkpoint", _bad(tmp_path, state), "--out", out)
    assert "ResNet" in err
    assert not list(tmp_path.glob("o.*"))


def test_num_batches_tracked_may_be_absent_and_data_parallel_prefix(tmp_path) -> None:
    manifest = kazuto.manifest("DeepLabV1_ResNet101", 5)
    state = {f"module.{k}": v for k, v in cheap_state(manifest).items() if not k.endswith("num_batches_tracked")}
    target = kazuto.detect(common.strip_data_parallel(state), "f")
    assert target.arch == "deeplabv1_resnet101" and target.num_classes == 5
    path = _bad(tmp_path, state)
    imported = common.import_checkpoint(kazuto, path)
    assert imported.state_dict["backbone.bn1.num_batches_tracked"].item() == 0


# ----------------------------------------------------------------------------- kazuto


def test_kazuto_manifest_matches_the_peer_code() -> None:
    msc = kazuto.manifest("DeepLabV2_ResNet101_MSC", 182)
    assert len(msc) == 632 and sum(int(np.prod(s)) for s in msc.values()) == 56024832
    v1 = kazuto.manifest("DeepLabV1_ResNet101", 182)
    assert len(v1) == 626 and sum(int(np.prod(s)) for s in v1.values()) == 42978526
    assert msc["base.layer1.conv1.conv.weight"] == (64, 3, 7, 7)
    assert msc["base.layer3.block1.reduce.conv.weight"] == (128, 256, 1, 1)
    assert msc["base.layer5.block3.increase.bn.running_var"] == (2048,)
    assert msc["base.aspp.c3.weight"] == (182, 2048, 3, 3) and v1["fc.weight"] == (182, 2048, 1, 1)


@pytest.mark.parametrize(("peer", "arch", "num_classes"), [
    ("DeepLabV2_ResNet101_MSC", "kazuto_deeplabv2_resnet101_msc", 182),
    ("DeepLabV2 (base of DeepLabV2_ResNet101_MSC)", "deeplabv2_resnet101", 21),
    ("DeepLabV1_ResNet101", "deeplabv1_resnet101", 91),
])
def test_kazuto_detection(peer: str, arch: str, num_classes: int) -> None:
    target = kazuto.detect(cheap_state(kazuto.manifest(peer, num_classes)), "f")
    assert (target.peer_model, target.arch, target.num_classes) == (peer, arch, num_classes)


@pytest.mark.slow
def test_kazuto_import_end_to_end(tmp_path, capsys) -> None:
    state = random_state(kazuto.manifest("DeepLabV2_ResNet101_MSC", 21), seed=3)
    src = tmp_path / "deeplabv2_resnet101_msc-vocaug-20000.pth"
    torch.save(state, src)
    out = tmp_path / "w" / "kazuto_voc.pth"
    assert run("--from", "kazuto", "--checkpoint", str(src), "--out", str(out)) == 0
    assert "kazuto_deeplabv2_resnet101_msc" in capsys.readouterr().out
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["architecture"] == "kazuto_deeplabv2_resnet101_msc" and record["num_classes"] == 21
    assert record["source"]["tensors"] == 632 and record["source"]["peer_model"] == "DeepLabV2_ResNet101_MSC"
    assert record["converter"]["steps"] == list(common.STEPS)
    assert record["preprocessing"]["channel_order"] == "BGR" and record["preprocessing"]["mean"] == [104.008, 116.669,
                                                                                                     122.675]
    model = load_imported(out)
    weights = load_state_dict(out)
    # every peer tensor is used, value for value
    assert torch.equal(weights["backbone.layer3.22.conv2.weight"], state["base.layer4.block23.conv3x3.conv.weight"])
    assert torch.equal(weights["aspp.branches.2.bias"], state["base.aspp.c2.bias"])
    assert sum(v.numel() for v in weights.values()) == sum(v.numel() for v in state.values())
    assert isinstance(model, build_model("kazuto_deeplabv2_resnet101_msc", num_classes=2).__class__)
    assert run("--from", "kazuto", "--checkpoint", str(src), "--out", str(src)) == 1  # never overwrite the input


def test_kazuto_model_flag_and_output_stride_checks(tmp_path, capsys) -> None:
    path = _bad(tmp_path, cheap_state(kazuto.manifest("DeepLabV1_ResNet101", 91)))
    err = one_line_error(capsys, "--from", "kazuto", "--checkpoint", path, "--out", str(tmp_path / "o.pth"),
                         "--model", "deeplabv2_resnet101")
    assert "DeepLabV1_ResNet101" in err
    err = one_line_error(capsys, "--from", "kazuto", "--checkpoint", path, "--out", str(tmp_path / "o.pth"),
                         "--output-stride", "16")
    assert "output stride 8" in err


# ----------------------------------------------------------------------------- the kazuto flavour


@pytest.mark.slow
def test_kazuto_flavour_is_registered_and_fuses_as_kazuto() -> None:
    """Independent computation: the single-scale Caffe network at kazuto's three input sizes, fused by hand."""
    assert "kazuto_deeplabv2_resnet101_msc" in list_models()
    torch.manual_seed(0)
    ours = build_model("kazuto_deeplabv2_resnet101_msc", num_classes=4).eval()
    single = build_model("deeplabv2_resnet101", num_classes=4).eval()
    single.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 75, 66)
    with torch.no_grad():
        fused = ours(x)
        full = single(x)
        half = single(F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False))
        three_q = single(F.interpolate(x, scale_factor=0.75, mode="bilinear", align_corners=False))
        assert three_q.shape[-2:] == (8, 7)  # floor(75 * .75) = 56 -> 8; floor(66 * .75) = 49 -> 7
    expected = full
    for other in (half, three_q):
        expected = torch.maximum(expected, F.interpolate(other, size=full.shape[-2:], mode="bilinear",
                                                         align_corners=False))
    assert fused.shape == (1, 4, 10, 9)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    # Caffe's fusion (align_corners=True, Interp sizes) is a different function
    caffe = build_model("deeplabv2_resnet101_msc", num_classes=4).eval()
    caffe.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert (caffe(x) - fused).abs().max() > 1e-3


@pytest.mark.slow
def test_kazuto_flavour_training_outputs_and_gradients() -> None:
    model = build_model("kazuto_deeplabv2_resnet101_msc", num_classes=3).train()
    x = torch.randn(1, 3, 65, 65, requires_grad=True)
    out = model(x)
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "fused": (9, 9), "scale_1": (9, 9), "scale_0.5": (5, 5), "scale_0.75": (7, 7)}
    assert all(torch.isfinite(v).all() for v in out.values())
    out["fused"].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))  # frozen, as kazuto


@pytest.mark.slow
def test_torch_bilinear_keras_layer_is_pytorch_interpolate() -> None:
    pytest.importorskip("tensorflow")
    from reference_models.keras.peer_layers import TorchBilinear

    x = np.random.default_rng(0).standard_normal((1, 13, 10, 3)).astype(np.float32)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    for scale in (0.5, 0.75):
        ref = F.interpolate(xt, scale_factor=scale, mode="bilinear", align_corners=False)
        ours = np.asarray(TorchBilinear(scale)(x)).transpose(0, 3, 1, 2)
        assert ours.shape == tuple(ref.shape)
        np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=1e-5)
    for size in ((26, 20), (5, 4), (31, 7)):
        ref = F.interpolate(xt, size=size, mode="bilinear", align_corners=False)
        ours = np.asarray(TorchBilinear()([x, np.zeros((1, *size, 1), np.float32)])).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=1e-5)
    # sampling by the factor differs from sampling by the size ratio (13 * 0.75 -> 9, ratio 13/9 != 4/3)
    by_size = F.interpolate(xt, size=(9, 7), mode="bilinear", align_corners=False)
    by_factor = F.interpolate(xt, scale_factor=0.75, mode="bilinear", align_corners=False)
    assert (by_size - by_factor).abs().max() > 1e-3
