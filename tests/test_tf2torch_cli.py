"""converters/tf2torch.py: every official TF release converts and loads strictly; bad input fails cleanly.

Checkpoints are written by TensorFlow itself (its ``Save`` / ``SaveV2`` kernels, the ones ``tf.train.Saver``
uses: V1 for the 2016 slim releases, V2 for the others) holding exactly the variables of
``converters/manifests/<release>.json`` with random values, once per session. The big ones
(ResNet-101, Xception-65: 160-180 MB each) are ``slow``. A numeric spot check compares the converted
slim ``resnet_v1_50`` with tf_slim's own output.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import converters.cli
from converters import tf2torch
from converters.releases import TF_RELEASES
from converters.tf.rules import ignore_reason, map_tf_names
from reference_models import build_backbone, build_model
from tests.conftest import REPO
from tests.inprocess import run_main

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SCRIPT = REPO / "converters" / "tf2torch.py"
BIG = {"resnet_v1_101_2016_08_28", "resnet_v2_101_2017_04_14", "deeplabv3_pascal_train_aug_2018_01_04",
       "deeplabv3_xception_2018_01_04", "resnet_v1_101_2018_05_04"}
SMALL = "deeplabv3_mnv2_pascal_train_aug_2018_01_29"  # 8.6 MB: the fixture for the error tests


def run_process(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The converter as users run it: ``python converters/tf2torch.py ...`` (a real interpreter)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd or REPO,
                          env=env)


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """``tf2torch.main(args)`` in this process (stdout/stderr captured as a terminal would show them)."""
    return run_main(tf2torch.main, args, cwd=cwd or REPO)


def manifest(name: str) -> dict:
    return json.loads(TF_RELEASES[name].manifest_path.read_text())


def random_values(variables: dict[str, list[int]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in variables.items():
        value = rng.standard_normal(shape, dtype=np.float32)
        out[name] = np.abs(value) + 0.1 if name.endswith("moving_variance") else value
    return out


def write_checkpoint(prefix: Path, values: dict[str, np.ndarray], fmt: str) -> Path:
    """Write ``values`` with TensorFlow's own checkpoint kernels; return the prefix (V1: the file)."""
    import tensorflow as tf

    prefix.parent.mkdir(parents=True, exist_ok=True)
    names, tensors = list(values), [tf.constant(v) for v in values.values()]
    if fmt == "V1":
        tf.raw_ops.Save(filename=str(prefix), tensor_names=names, data=tensors)
    else:
        tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                          tensors=tensors)
    return prefix


@pytest.fixture(scope="module")
def release_ckpt(tmp_path_factory):
    """``get(release)`` -> (prefix, values) of a TF-written checkpoint holding exactly the manifest's variables."""
    root = tmp_path_factory.mktemp("tf_releases")
    cache: dict[str, tuple[Path, dict]] = {}

    def get(name: str) -> tuple[Path, dict[str, np.ndarray]]:
        if name not in cache:
            release = TF_RELEASES[name]
            values = random_values(manifest(name)["variables"])
            prefix = write_checkpoint(root / name / release.file_name, values, release.checkpoint_format)
            cache[name] = (prefix, values)
        return cache[name]

    return get


def build_for(name: str, output_stride: int = 16) -> torch.nn.Module:
    release = TF_RELEASES[name]
    if release.kind == "backbone":
        return build_backbone(release.arch, output_stride=output_stride)
    return build_model(release.arch, num_classes=release.num_classes, output_stride=output_stride)


def only_outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- manifests


@pytest.mark.parametrize("name", list(TF_RELEASES))
def test_manifest_names_every_parameter_of_the_reference_model(name: str) -> None:
    """Cheap for all releases (no checkpoint): manifest names map one-to-one onto the model's state dict."""
    record, release = manifest(name), TF_RELEASES[name]
    assert record["release"] == name and record["architecture"] == release.arch
    assert record["checkpoint"]["format"] == release.checkpoint_format
    assert record["official"] and record["inferred"]
    model = build_for(name)
    forward, _ = map_tf_names(list(record["variables"]), model)
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(forward.values()) == expected
    assert set(record["ignored_by_converter"]) == {n for n in record["variables"] if ignore_reason(n)}
    assert sum(math.prod(s) for s in record["variables"].values()) == record["num_values"]
    assert any(n.endswith("BatchNorm/moving_variance") for n in record["variables"])


def test_manifests_keep_the_imagenet_classifiers_the_converter_ignores() -> None:
    assert manifest("resnet_v1_50_2016_08_28")["variables"]["resnet_v1_50/logits/weights"] == [1, 1, 2048, 1000]
    assert manifest("resnet_v2_101_2017_04_14")["variables"]["resnet_v2_101/logits/weights"] == [1, 1, 2048, 1001]
    assert manifest("resnet_v1_101_2018_05_04")["variables"]["resnet_v1_101/conv1_3/weights"] == [3, 3, 64, 128]
    v3plus = manifest("deeplabv3_pascal_train_aug_2018_01_04")["variables"]
    assert v3plus["logits/semantic/weights"] == [1, 1, 256, 21]
    assert v3plus["decoder/decoder_conv0_depthwise/depthwise_weights"] == [3, 3, 304, 1]
    mnv2 = manifest(SMALL)["variables"]
    assert not [n for n in mnv2 if n.startswith(("aspp1", "decoder", "MobilenetV2/Conv_1/"))]


# ----------------------------------------------------------------------------- every release converts


def _release_params() -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in TF_RELEASES]


@pytest.mark.parametrize("name", _release_params())
def test_release_converts_and_loads_strictly(name: str, release_ckpt, tmp_path: Path) -> None:
    prefix, values = release_ckpt(name)
    release = TF_RELEASES[name]
    out = tmp_path / "out" / ("w.safetensors" if release.kind == "model" else "w.pth")
    run = run_process if name == SMALL else run_cli  # one release through the real interpreter, as a file
    res = run("--dataset", name, "--checkpoint", str(prefix), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert only_outputs(out.parent) == sorted([out.name, out.with_suffix(".json").name])  # no temporaries

    if out.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(out))
    else:
        state = torch.load(out, weights_only=True)
    model = build_for(name, output_stride=8)  # the weights do not depend on the output stride
    model.load_state_dict(state, strict=True)
    forward, _ = map_tf_names(list(values), model)
    for tf_name, key in list(forward.items())[:: max(1, len(forward) // 25)]:  # spot-check values and layouts
        array = values[tf_name]
        if tf_name.endswith("depthwise_weights"):
            array = array.transpose(2, 3, 0, 1).reshape(-1, 1, *array.shape[:2])
        elif array.ndim == 4:
            array = array.transpose(3, 2, 0, 1)
        assert torch.equal(state[key], torch.from_numpy(np.ascontiguousarray(array))), tf_name

    record = json.loads(out.with_suffix(".json").read_text())
    assert record["release"] == name and record["architecture"] == release.arch and record["kind"] == release.kind
    assert record["source"]["format"] == release.checkpoint_format
    files = record["source"]["files"]
    expected_files = [prefix.name] if release.checkpoint_format == "V1" else [
        f"{prefix.name}.index", f"{prefix.name}.data-00000-of-00001"]
    assert [f["file"] for f in files] == expected_files
    for f in files:
        assert f["size_bytes"] == (prefix.parent / f["file"]).stat().st_size and len(f["sha256"]) == 64
    assert record["source"]["official_url"] == f"http://download.tensorflow.org/models/{name}.tar.gz"
    assert record["source"]["tf_variables"] == len(values)
    assert record["converter"]["steps"] == list(tf2torch.STREAMED_STEPS)  # streamed: checked against the signature
    assert record["preprocessing"] == json.loads(json.dumps(release.preprocessing.to_dict()))
    assert record["weights"]["tensors"] == len(state) and record["created_utc"]
    if release.kind == "backbone":
        assert sum(record["source"]["ignored"].values()) == 2  # the ImageNet classifier, weights + biases


def test_preprocessing_contracts() -> None:
    from reference_models import preprocessing as pp

    image = np.array([[[0, 255, 128]]], np.uint8)
    unit = pp.DEEPLAB_TF_UNIT_RANGE.apply(image).flatten()
    assert torch.allclose(unit, torch.tensor([-1.0, 1.0, 2 / 255 * 128 - 1]))
    assert torch.allclose(pp.TF_SLIM_INCEPTION.apply(image), pp.DEEPLAB_TF_UNIT_RANGE.apply(image))
    assert pp.TF_SLIM_VGG.apply(image).flatten().tolist() == pytest.approx([-123.68, 255 - 116.78, 128 - 103.94])
    assert pp.DEEPLAB_TF_RESNET_V1_MEAN.mean == (123.15, 115.90, 103.06)
    # the pad value (DeepLab mean_pixel) is 0 after preprocessing
    pad = np.full((1, 1, 3), 127.5, np.float32)
    assert pp.DEEPLAB_TF_UNIT_RANGE.apply(pad).abs().max() == 0
    assert TF_RELEASES["resnet_v1_50_2016_08_28"].preprocessing is pp.TF_SLIM_VGG
    assert TF_RELEASES["resnet_v1_50_2016_08_28"].deeplab_preprocessing is pp.DEEPLAB_TF_RESNET_V1_MEAN
    assert TF_RELEASES["resnet_v2_50_2017_04_14"].preprocessing is pp.TF_SLIM_INCEPTION
    for name in ("deeplabv3_pascal_train_aug_2018_01_04", SMALL, "deeplabv3_xception_2018_01_04",
                 "resnet_v1_101_2018_05_04"):
        assert TF_RELEASES[name].preprocessing is pp.DEEPLAB_TF_UNIT_RANGE


# ----------------------------------------------------------------------------- numeric spot check vs tf_slim


def test_converted_resnet_v1_50_matches_tf_slim(tmp_path: Path) -> None:
    """A slim resnet_v1_50 (with its 1000-class logits, random weights and BN statistics) saved as a V1
    checkpoint like the 2016 release; the converted backbone's block4 equals TF's at OS 16."""
    from tests.test_tf_parity import RTOL, randomize_variables, rel_err, resnet_utils, resnet_v1, slim, tf, tf1

    x = np.random.default_rng(11).standard_normal((1, 97, 100, 3)).astype(np.float32)
    prefix = tmp_path / "resnet_v1_50.ckpt"
    graph = tf.Graph()
    with graph.as_default():
        with slim.arg_scope(resnet_utils.resnet_arg_scope()):
            _, end_points = resnet_v1.resnet_v1_50(
                tf.constant(x), num_classes=1000, is_training=False, global_pool=True, output_stride=16
            )
        variables = tf1.global_variables()
        with tf1.Session(graph=graph) as sess:
            randomize_variables(sess, variables, seed=12)
            ref = sess.run(end_points["resnet_v1_50/block4"])
            tf1.train.Saver(variables, write_version=tf1.train.SaverDef.V1).save(
                sess, str(prefix), write_meta_graph=False)
    assert sorted(v.op.name for v in variables) == sorted(manifest("resnet_v1_50_2016_08_28")["variables"])

    out = tmp_path / "r50.pth"
    res = run_cli("--dataset", "resnet_v1_50_2016_08_28", "--checkpoint", str(prefix), "--out", str(out))
    assert res.returncode == 0, res.stderr
    model = build_backbone("resnet_v1_50", output_stride=16).eval()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    with torch.no_grad():
        ours = model(torch.from_numpy(x).permute(0, 3, 1, 2))["out"]
    assert rel_err(ours, ref) <= RTOL


# ----------------------------------------------------------------------------- release locations, usage


def test_missing_release_message_then_default_location(release_ckpt, tmp_path: Path) -> None:
    res = run_process("--dataset", "deeplabv3_pascal_train_aug_2018_01_04", cwd=tmp_path)  # a real process: one line
    err = res.stderr.strip()
    assert res.returncode == 1 and "\n" not in err and "Traceback" not in err, err
    assert "data/models/deeplabv3_pascal_train_aug/model.ckpt" in err
    assert "http://download.tensorflow.org/models/deeplabv3_pascal_train_aug_2018_01_04.tar.gz" in err
    assert "tar xzf deeplabv3_pascal_train_aug_2018_01_04.tar.gz -C data/models" in err

    # The release folder with a differently numbered checkpoint is found; the default output goes beside it.
    prefix, _ = release_ckpt(SMALL)
    folder = tmp_path / "data" / "models" / "deeplabv3_mnv2_pascal_train_aug"
    folder.mkdir(parents=True)
    for f in prefix.parent.glob(prefix.name + ".*"):
        (folder / f.name.replace("model.ckpt-30000", "model.ckpt-12345")).symlink_to(f)
    res = run_cli("--dataset", SMALL, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = folder / f"deeplabv3_mobilenetv2_{SMALL}.pth"
    build_model("deeplabv3_mobilenetv2", num_classes=21).load_state_dict(torch.load(out, weights_only=True))
    assert json.loads(out.with_suffix(".json").read_text())["source"]["checkpoint"] == "model.ckpt-12345"


def test_arch_without_release_reads_classes_from_the_checkpoint(release_ckpt, tmp_path: Path) -> None:
    prefix, _ = release_ckpt(SMALL)
    out = tmp_path / "own.pth"
    assert tf2torch.main(["--checkpoint", str(prefix) + ".index", "--arch", "deeplabv3_mobilenetv2",
                          "--out", str(out), "--quiet"]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["release"] is None and record["num_classes"] == 21 and record["source"]["manifest"] is None
    assert record["preprocessing"]["std"] == [127.5, 127.5, 127.5]
    assert "check_manifest" not in record["converter"]["steps"]


def test_usage_errors_exit_2() -> None:
    assert run_process().returncode == 2  # through the interpreter as well
    assert run_cli().returncode == 2
    assert run_cli("--checkpoint", "x.ckpt").returncode == 2
    assert run_cli("--dataset", "no_such_release").returncode == 2
    assert run_cli("--dataset", "resnet_v1_50_2016_08_28", "--num-classes", "21").returncode == 2
    assert run_cli("--checkpoint", "x", "--arch", "deeplabv3_mobilenetv2", "--output-stride", "32").returncode == 2
    assert run_cli("--checkpoint", "x", "--arch", "deeplabv2_resnet101").returncode == 2  # a Caffe model


# ----------------------------------------------------------------------------- bad input


def _expect_error(tmp_path: Path, *args: str, file: str, match: str) -> None:
    out = tmp_path / "never" / "never.pth"
    out.parent.mkdir(exist_ok=True)
    res = run_cli(*args, "--out", str(out))
    err = res.stderr.strip()
    assert res.returncode == 1, (res.stdout, err)
    assert "\n" not in err and "Traceback" not in err, err
    assert file in err, err
    assert match in err, err
    assert only_outputs(out.parent) == []  # no weights, no provenance, no temporaries


def _copy(prefix: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in prefix.parent.glob(prefix.name + "*"):
        shutil.copy(f, dest / f.name)
    return dest / prefix.name


@pytest.mark.parametrize("bias", [np.float32(0.5), np.zeros((0,), np.float32)], ids=["scalar", "empty"])
def test_logits_without_a_class_count_are_named(release_ckpt, tmp_path: Path, bias) -> None:
    """``--arch`` without ``--num-classes`` reads the class count from ``logits/semantic/biases``: a scalar
    or an empty one is bad input naming the file and the variable, not a traceback."""
    _, values = release_ckpt(SMALL)
    prefix = write_checkpoint(tmp_path / "own" / "model.ckpt", {**values, "logits/semantic/biases": bias}, "V2")
    _expect_error(tmp_path, "--checkpoint", str(prefix), "--arch", "deeplabv3_mobilenetv2", file=str(prefix),
                  match="'logits/semantic/biases': shape")


def test_missing_variable_is_named(release_ckpt, tmp_path: Path) -> None:
    _, values = release_ckpt(SMALL)
    gone = "MobilenetV2/expanded_conv_7/depthwise/BatchNorm/moving_variance"
    prefix = write_checkpoint(tmp_path / "missing" / "model.ckpt", {k: v for k, v in values.items() if k != gone},
                              "V2")
    _expect_error(tmp_path, "--dataset", SMALL, "--checkpoint", str(prefix), file=str(prefix),
                  match=f"layer '{gone}': missing variable")
    # without a release the reference model's needs name it too
    _expect_error(tmp_path, "--arch", "deeplabv3_mobilenetv2", "--checkpoint", str(prefix), file=str(prefix),
                  match=f"layer '{gone}': missing variable")


def test_extra_variable_is_named(release_ckpt, tmp_path: Path) -> None:
    _, values = release_ckpt(SMALL)
    extra = "MobilenetV2/expanded_conv_17/project/weights"
    values = {**values, extra: np.zeros((1, 1, 320, 320), np.float32), "global_step": np.array(5, np.int64),
              "aspp0/weights/Momentum": values["aspp0/weights"]}  # the last two are ignored, not errors
    prefix = write_checkpoint(tmp_path / "extra" / "model.ckpt", values, "V2")
    _expect_error(tmp_path, "--dataset", SMALL, "--checkpoint", str(prefix), file=str(prefix),
                  match=f"layer '{extra}': unexpected variable")
    _expect_error(tmp_path, "--arch", "deeplabv3_mobilenetv2", "--checkpoint", str(prefix), file=str(prefix),
                  match=f"layer '{extra}'")


def test_shape_differing_from_the_manifest_is_named(release_ckpt, tmp_path: Path) -> None:
    _, values = release_ckpt(SMALL)
    values = {**values, "logits/semantic/weights": np.zeros((1, 1, 256, 19), np.float32),
              "logits/semantic/biases": np.zeros(19, np.float32)}
    prefix = write_checkpoint(tmp_path / "shape" / "model.ckpt", values, "V2")
    _expect_error(tmp_path, "--dataset", SMALL, "--checkpoint", str(prefix), file=str(prefix),
                  match="layer 'logits/semantic/biases': shape [19]")


def test_truncated_index(release_ckpt, tmp_path: Path) -> None:
    prefix = _copy(release_ckpt(SMALL)[0], tmp_path / "cut_index")
    index = Path(str(prefix) + ".index")
    index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])
    _expect_error(tmp_path, "--dataset", SMALL, "--checkpoint", str(prefix), file=str(index), match="")


def test_truncated_data_shard(release_ckpt, tmp_path: Path) -> None:
    prefix = _copy(release_ckpt(SMALL)[0], tmp_path / "cut_data")
    shard = Path(str(prefix) + ".data-00000-of-00001")
    shard.write_bytes(shard.read_bytes()[:1_000_000])
    _expect_error(tmp_path, "--dataset", SMALL, "--checkpoint", str(prefix), file=str(shard), match="")


def test_truncated_v1_file(release_ckpt, tmp_path: Path) -> None:
    src, _ = release_ckpt("resnet_v1_50_2016_08_28")
    cut = tmp_path / "resnet_v1_50.ckpt"
    cut.write_bytes(src.read_bytes()[:50_000_000])
    _expect_error(tmp_path, "--dataset", "resnet_v1_50_2016_08_28", "--checkpoint", str(cut), file=str(cut),
                  match="")


def test_wrong_architecture(release_ckpt, tmp_path: Path) -> None:
    prefix, _ = release_ckpt("resnet_v1_50_2016_08_28")
    _expect_error(tmp_path, "--arch", "xception_65", "--checkpoint", str(prefix), file=str(prefix),
                  match="no variable under 'xception_65/'")
    _expect_error(tmp_path, "--dataset", "resnet_v2_50_2017_04_14", "--checkpoint", str(prefix), file=str(prefix),
                  match="resnet_v1_50/")
    # same scope, other layout: resnet_v1_50 weights are not resnet_v1_50_beta's
    _expect_error(tmp_path, "--arch", "resnet_v1_50_beta", "--checkpoint", str(prefix), file=str(prefix),
                  match="conv1_1")
    # an ImageNet backbone is not a segmentation model
    _expect_error(tmp_path, "--arch", "deeplabv3_resnet50", "--num-classes", "21", "--checkpoint", str(prefix),
                  file=str(prefix), match="missing")


def test_checkpoint_not_found(tmp_path: Path) -> None:
    _expect_error(tmp_path, "--arch", "xception_65", "--checkpoint", str(tmp_path / "nope.ckpt"),
                  file=str(tmp_path / "nope.ckpt"), match="checkpoint not found")


def test_interrupted_write_leaves_no_output(release_ckpt, tmp_path: Path, monkeypatch, capsys) -> None:
    prefix, _ = release_ckpt(SMALL)
    out = tmp_path / "w" / "w.pth"
    out.parent.mkdir()

    from converters.tf.convert import TFConversion

    read = TFConversion.array
    calls = []

    def interrupted(self, key):  # Ctrl-C mid-stream: some tensors are already in the temporary file
        calls.append(key)
        if len(calls) == 20:
            raise KeyboardInterrupt
        return read(self, key)

    monkeypatch.setattr(TFConversion, "array", interrupted)
    assert tf2torch.main(["--dataset", SMALL, "--checkpoint", str(prefix), "--out", str(out), "--quiet"]) == 130
    assert len(calls) == 20 and only_outputs(out.parent) == []
    monkeypatch.undo()
    monkeypatch.setattr(converters.cli, "write_json_atomic", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    capsys.readouterr()
    assert tf2torch.main(["--dataset", SMALL, "--checkpoint", str(prefix), "--out", str(out), "--quiet"]) == 1
    assert capsys.readouterr().err == "error: disk full\n"
    assert only_outputs(out.parent) == []
