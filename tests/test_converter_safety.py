"""Converters never lose anything: no output over an input, own provenance names, umask permissions,
files of the wrong kind named with the right command, and the CRC-32C check on by default."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from converters import caffe2torch, io
from converters.caffe import synth
from converters.caffe.reader import caffe_pb
from converters.keras_writer import keras_provenance_path


def _small_caffemodel(path: Path) -> Path:
    net = caffe_pb().NetParameter(name="n")
    conv = net.layer.add(name="conv1_1", type="Convolution", bottom=["data"], top=["conv1_1"])
    conv.convolution_param.num_output = 2
    conv.convolution_param.kernel_size.append(1)
    net.input.append("data")
    synth.write_caffemodel(net, path)
    return path


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_outputs_get_the_umask_permissions(tmp_path: Path, mask: int, mode: int) -> None:
    old = os.umask(mask)
    try:
        io.write_json_atomic(tmp_path / "a.json", {"x": 1})
        io.save_state_dict({"w": torch.zeros(2)}, tmp_path / "w.pth")
    finally:
        os.umask(old)
    for name in ("a.json", "w.pth"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


def test_keras_and_pytorch_provenance_names_differ() -> None:
    assert io.provenance_path("d/m.pth") == Path("d/m.json")
    assert keras_provenance_path("d/m.weights.h5") == Path("d/m.weights.json")
    assert keras_provenance_path("d/m.keras") == Path("d/m.keras.json")


def test_output_resolving_to_the_input_is_an_error(tmp_path: Path, capsys) -> None:
    src = _small_caffemodel(tmp_path / "model.pth")  # a caffemodel under a weights name
    before = src.read_bytes()
    args = ["--caffemodel", str(src), "--arch", "deeplabv2_vgg16_largefov", "--quiet"]
    assert caffe2torch.main([*args, "--out", str(src)]) == 1
    assert "output would overwrite the input" in capsys.readouterr().err
    link = tmp_path / "link.pth"
    link.symlink_to(src)
    assert caffe2torch.main([*args, "--out", str(link)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {link}: output would overwrite the input {src}") and err.count("\n") == 1
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["link.pth", "model.pth"]


def test_check_outputs_spare_inputs_sees_links_and_relative_paths(tmp_path: Path, monkeypatch) -> None:
    a = tmp_path / "a.index"
    a.write_bytes(b"x")
    (tmp_path / "b.json").symlink_to(a)
    monkeypatch.chdir(tmp_path)
    from converters.errors import ConversionError

    for out in ("a.index", "b.json", str(tmp_path / "sub" / ".." / "a.index")):
        with pytest.raises(ConversionError, match="output would overwrite the input"):
            io.check_outputs_spare_inputs([tmp_path / "x.pth", out], [a])
    io.check_outputs_spare_inputs([tmp_path / "x.pth", tmp_path / "x.json"], [a])  # fine


def test_wrong_kind_of_file_is_named_with_the_right_command(tmp_path: Path, capsys) -> None:
    weights = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(2)}, weights)
    safet = tmp_path / "w.safetensors"
    io.save_state_dict({"w": torch.zeros(2)}, safet)
    assert io.sniff_kind(weights) == "pytorch" and io.sniff_kind(safet) == "safetensors"
    assert caffe2torch.main(["--caffemodel", str(weights), "--arch", "deeplabv2_vgg16", "--out",
                             str(tmp_path / "o.pth")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {weights}: not a caffemodel: this is PyTorch weights, already converted: load them with " \
                  "converters.io.load_state_dict\n"
    from converters import tf2torch

    for path in (weights, safet, _small_caffemodel(tmp_path / "m.caffemodel")):
        assert tf2torch.main(["--checkpoint", str(path), "--arch", "resnet_v1_101", "--out",
                              str(tmp_path / "o.pth")]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {path}: not a TensorFlow checkpoint: this is ") and err.count("\n") == 1
    assert "caffe2torch.py --caffemodel" in err
    assert not (tmp_path / "o.pth").exists()


# ------------------------------------------------------------------------------ TensorFlow checkpoints
@pytest.fixture(scope="module")
def mnv2_ckpt(tmp_path_factory):
    pytest.importorskip("tensorflow")
    from tests.test_tf2torch_cli import manifest, random_values, write_checkpoint

    release = "deeplabv3_mnv2_pascal_train_aug_2018_01_29"
    root = tmp_path_factory.mktemp("mnv2")
    return release, write_checkpoint(root / "model.ckpt", random_values(manifest(release)["variables"]), "V2")


@pytest.mark.slow  # TensorFlow writes the checkpoint (~20 s with its import)
def test_tf_checkpoint_given_to_caffe2torch(mnv2_ckpt, tmp_path: Path, capsys) -> None:
    _, prefix = mnv2_ckpt
    index = Path(f"{prefix}.index")
    assert caffe2torch.main(["--caffemodel", str(index), "--arch", "deeplabv2_vgg16", "--out",
                             str(tmp_path / "o.pth")]) == 1
    assert capsys.readouterr().err == (f"error: {index}: not a caffemodel: this is a TensorFlow checkpoint: convert "
                                       "it with tf2torch.py --checkpoint PREFIX (or tf2keras.py)\n")


@pytest.mark.slow  # TensorFlow writes the checkpoint (~20 s with its import)
def test_flipped_tensor_byte_is_reported_naming_the_variable(mnv2_ckpt, tmp_path: Path, capsys) -> None:
    from converters import tf2torch
    from tests.fuzzing import flip_tensor_byte

    release, prefix = mnv2_ckpt
    bad = tmp_path / "model.ckpt"
    for f in Path(prefix).parent.glob("model.ckpt.*"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    name = "MobilenetV2/Conv/weights"
    shard = flip_tensor_byte(bad, name)
    out = tmp_path / "out.pth"
    args = ["--dataset", release, "--checkpoint", str(bad), "--out", str(out), "--quiet"]
    assert tf2torch.main(args) == 1
    assert capsys.readouterr().err == (f"error: {shard}: CRC-32C mismatch in tensor '{name}' (corrupt data shard)\n")
    assert not out.exists()
    assert tf2torch.main([*args, "--no-verify"]) == 0
    import json

    record = json.loads(out.with_suffix(".json").read_text())
    assert record["source"]["crc32c_verified"] is False
    assert record["weights"]["tensors"] == len(io.load_state_dict(out)) > 100
