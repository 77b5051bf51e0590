"""converters/caffe2torch.py: outputs, provenance, atomicity and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch

import converters.cli
from converters import caffe2torch
from converters.caffe import synth, topology
from reference_models import build_model
from tests.conftest import REPO
from tests.inprocess import run_main

SCRIPT = REPO / "converters" / "caffe2torch.py"


def run_process(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The converter as users run it: ``python converters/caffe2torch.py ...`` (a real interpreter)."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd or REPO)


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """``caffe2torch.main(args)`` in this process (stdout/stderr captured as a terminal would show them)."""
    return run_main(caffe2torch.main, args, cwd=cwd or REPO)


def test_script_runs_from_repo_root_and_output_loads_strictly(caffemodels, tmp_path):
    _, path = caffemodels("vgg16_largefov")
    out = tmp_path / "out" / "w.pth"
    res = run_process("--caffemodel", str(path), "--arch", "deeplabv2_vgg16_largefov", "--out", str(out))
    assert res.returncode == 0, res.stderr
    model = build_model("deeplabv2_vgg16_largefov", num_classes=21)
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["architecture"] == "deeplabv2_vgg16_largefov" and record["num_classes"] == 21
    assert record["source"]["size_bytes"] == path.stat().st_size and len(record["source"]["sha256"]) == 64
    assert record["preprocessing"]["channel_order"] == "BGR"
    assert record["preprocessing"]["mean"] == [104.008, 116.669, 122.675]
    assert record["converter"]["steps"] == ["drop_msc_copies", "batchnorm_statistics", "fold_scale",
                                            "convolution_params"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["w.json", "w.pth"]  # no temporary leftovers


def test_safetensors_output_and_dataset_release(caffemodels, tmp_path):
    from safetensors.torch import load_file

    _, path = caffemodels("resnet101_msc")
    out = tmp_path / "voc12.safetensors"
    assert caffe2torch.main(["--dataset", "voc12", "--caffemodel", str(path), "--out", str(out), "--quiet"]) == 0
    model = build_model("deeplabv2_resnet101_msc", num_classes=21)
    model.load_state_dict(load_file(str(out)), strict=True)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["release"] == "voc12" and record["source"]["file"] == path.name
    assert record["source"]["official_url"].endswith("deeplab_aspp_resnet101/prototxt_and_model.zip")


def test_dataset_default_location_and_missing_release_message(caffemodels, tmp_path):
    res = run_cli("--dataset", "coco_init", cwd=tmp_path)
    assert res.returncode == 1
    err = res.stderr.strip()
    assert "\n" not in err and "data/models/deeplabv2_resnet101/init.caffemodel" in err
    assert "liangchiehchen.com" in err and "Traceback" not in err
    _, path = caffemodels("resnet101_init", num_classes=91)
    dest = tmp_path / "data" / "models" / "deeplabv2_resnet101" / "init.caffemodel"
    dest.parent.mkdir(parents=True)
    dest.symlink_to(path)
    res = run_process("--dataset", "coco_init", cwd=tmp_path)  # exactly as the README says, as a file
    assert res.returncode == 0, res.stderr
    out = tmp_path / "data" / "models" / "deeplabv2_resnet101" / "deeplabv1_resnet101_coco_init.pth"
    state = torch.load(out, weights_only=True)
    assert state["classifier.weight"].shape == (91, 2048, 1, 1)


def test_usage_errors_exit_2(tmp_path):
    assert run_process().returncode == 2  # through the interpreter as well
    assert run_cli().returncode == 2
    assert run_cli("--caffemodel", "x.caffemodel").returncode == 2
    assert run_cli("--dataset", "no_such_release").returncode == 2


def _bad(tmp_path, name, net, **kw):
    path = tmp_path / name
    synth.write_caffemodel(net, path, **kw)
    return path


def _expect_error(path, tmp_path, *args, match):
    out = tmp_path / "never.pth"
    res = run_cli("--caffemodel", str(path), "--out", str(out), *args)
    err = res.stderr.strip()
    assert res.returncode == 1, (res.stdout, err)
    assert "\n" not in err and "Traceback" not in err, err
    assert str(path) in err, err
    assert match in err, err
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_truncated_file(caffemodels, tmp_path):
    _, path = caffemodels("resnet101")
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(path.read_bytes()[:50_000_000])
    _expect_error(cut, tmp_path, "--arch", "deeplabv2_resnet101", match="truncated")


def test_not_a_caffemodel(tmp_path):
    path = tmp_path / "image.caffemodel"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes())
    _expect_error(path, tmp_path, "--arch", "deeplabv2_resnet101", match="not a caffemodel")


def test_missing_layer(tmp_path):
    net = topology.build_net("resnet101", num_classes=21)
    keep = [lp for lp in net.layer if not lp.name.startswith(("res4b7_", "bn4b7_", "scale4b7_"))]
    del net.layer[:]
    net.layer.extend(keep)
    path = _bad(tmp_path, "missing.caffemodel", net)
    _expect_error(path, tmp_path, "--arch", "deeplabv2_resnet101", match="missing layer 'res4b7_branch2a'")


def test_wrong_class_count(caffemodels, tmp_path):
    _, path = caffemodels("resnet101", num_classes=182)
    _expect_error(path, tmp_path, "--arch", "deeplabv2_resnet101", "--num-classes", "21",
                  match="layer 'fc1_voc12_c0': weight has shape [182, 2048, 3, 3] in the file, deeplabv2_resnet101 "
                        "expects [21, 2048, 3, 3] (wrong --num-classes?)")


def test_shape_mismatch(tmp_path):
    net = topology.build_net("resnet101", num_classes=21)
    for lp in net.layer:
        if lp.name == "res3b2_branch2b":
            lp.convolution_param.kernel_size[0] = 5
    path = _bad(tmp_path, "shape.caffemodel", net)
    _expect_error(path, tmp_path, "--arch", "deeplabv2_resnet101", match="layer 'res3b2_branch2b'")


def test_zero_bn_scale_factor(tmp_path):
    net = topology.build_net("vgg16_largefov", num_classes=21)
    net = topology.build_net("resnet101", num_classes=21)

    def zero_factor(lp, blobs):
        if lp.name == "bn3a_branch2b":
            blobs[2][:] = 0
        return blobs

    path = _bad(tmp_path, "zero.caffemodel", net, mutate=zero_factor)
    _expect_error(path, tmp_path, "--arch", "deeplabv2_resnet101", match="layer 'bn3a_branch2b'")


def test_wrong_architecture_names_the_layer(caffemodels, tmp_path):
    _, path = caffemodels("vgg16_largefov")
    _expect_error(path, tmp_path, "--arch", "deeplabv2_resnet101", match="layer 'conv1_1'")


def test_bn_eps_other_than_the_models_is_an_error(tmp_path):
    net = topology.build_net("resnet101", num_classes=21)
    for lp in net.layer:
        if lp.name == "bn2a_branch1":
            lp.batch_norm_param.eps = 1e-3
    path = _bad(tmp_path, "eps.caffemodel", net)
    _expect_error(path, tmp_path, "--arch", "deeplabv2_resnet101", match="layer 'bn2a_branch1': BatchNorm eps")


def test_interrupted_write_leaves_no_output(caffemodels, tmp_path, monkeypatch, capsys):
    import converters.io as cio

    _, path = caffemodels("vgg16_largefov")
    out = tmp_path / "w.pth"

    def interrupted(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    rc = caffe2torch.main(["--caffemodel", str(path), "--arch", "deeplabv2_vgg16_largefov", "--out", str(out)])
    assert rc == 130
    assert list(tmp_path.iterdir()) == []
    # a failure after the weights are written (the provenance record) removes them too
    monkeypatch.undo()
    monkeypatch.setattr(converters.cli, "write_json_atomic", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    capsys.readouterr()
    assert caffe2torch.main(["--caffemodel", str(path), "--arch", "deeplabv2_vgg16_largefov", "--out", str(out)]) == 1
    assert capsys.readouterr().err == "error: disk full\n"
    assert list(tmp_path.iterdir()) == []
    assert cio.WEIGHT_SUFFIXES == (".pth", ".safetensors")
