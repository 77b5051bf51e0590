"""``tf2keras.py`` streams a ``.weights.h5`` from the checkpoint into the stored Keras layout
(``converters/tf/keras_layouts.py``), without TensorFlow, Keras or torch.

* In a fresh interpreter, a release and a 5-class non-release checkpoint (written without TensorFlow) convert
  with none of tensorflow / keras / torch / reference_models imported; the datasets hold the checkpoint's own
  arrays (TF's HWIO and depthwise layouts are Keras's: compared with no layout code of ours).
* With TensorFlow: the streamed file has the groups, ``name`` attributes and values of Keras's own
  ``save_weights`` of the in-memory conversion, and loads with ``load_weights`` at another output stride.
* The stored layouts equal the Keras twins (two architectures here, all of them in the slow suite).
* A stored layout that disagrees with the plan, and a corrupt tensor mid-stream, fail with one line and leave
  no output.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_tf_signatures import RELEASE, REPO, _checkpoint

h5py = pytest.importorskip("h5py")

_WRAPPER = """
import json, sys
from converters import tf2keras
codes = [tf2keras.main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({"codes": codes, "imported": sorted(m for m in ("torch", "tensorflow", "keras", "reference_models")
                                                          if m in sys.modules)}))
"""


def _tree(path: Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """``({group path: name attribute}, {dataset path: array})`` of an HDF5 file."""
    groups: dict[str, str] = {}
    datasets: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        assert dict(f.attrs) == {}

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset):
                datasets[name] = obj[()]
            else:
                assert set(obj.attrs) <= {"name"}, (name, dict(obj.attrs))
                groups[name] = str(obj.attrs["name"]) if "name" in obj.attrs else None

        f.visititems(visit)
    return groups, datasets


def _by_layer(groups: dict[str, str], datasets: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """``{layer name: its datasets in order}`` for the groups holding datasets."""
    out: dict[str, list[np.ndarray]] = {}
    for path, name in groups.items():
        held = sorted((k for k in datasets if k.rsplit("/", 1)[0] == path), key=lambda k: int(k.rsplit("/", 1)[1]))
        if held:
            out[name] = [datasets[k] for k in held]
    return out


def test_tf2keras_streams_without_tensorflow_keras_or_torch(tmp_path: Path) -> None:
    release_prefix, values = _checkpoint(tmp_path / "release")
    five_prefix, five_values = _checkpoint(tmp_path / "five", classes=5)
    runs = {tmp_path / "release.weights.h5": (["--dataset", RELEASE, "--checkpoint", str(release_prefix)], values, 21),
            tmp_path / "five.weights.h5": (["--checkpoint", str(five_prefix), "--arch", "deeplabv3_mobilenetv2",
                                            "--output-stride", "8"], five_values, 5)}
    argvs = [[*argv, "--out", str(out), "--quiet"] for out, (argv, *_) in runs.items()]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    res = subprocess.run([sys.executable, "-c", _WRAPPER, json.dumps(argvs)], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"codes": [0, 0], "imported": []}, res.stderr
    for out, (_, written, classes) in runs.items():
        groups, datasets = _tree(out)
        layers = _by_layer(groups, datasets)
        assert groups["vars"] == "deeplabv3_mobilenetv2" and not any(k.startswith("vars/") for k in datasets)
        # Keras keeps TF's layouts: a conv kernel is HWIO, a depthwise kernel (H, W, C, M), as in the checkpoint
        assert np.array_equal(layers["logits.semantic"][0], written["logits/semantic/weights"])
        assert np.array_equal(layers["logits.semantic"][1], written["logits/semantic/biases"])
        assert layers["logits.semantic"][0].shape == (1, 1, 256, classes)
        assert np.array_equal(layers["backbone.expanded_conv.depthwise"][0],
                              written["MobilenetV2/expanded_conv/depthwise/depthwise_weights"])
        bn = layers["backbone.Conv.bn"]  # gamma, beta, moving mean, moving variance
        assert all(np.array_equal(a, written[f"MobilenetV2/Conv/BatchNorm/{v}"])
                   for a, v in zip(bn, ("gamma", "beta", "moving_mean", "moving_variance")))
        assert all(a.dtype == np.float32 for a in datasets.values())
        record = json.loads(out.with_name(out.name.replace(".weights.h5", ".weights.json")).read_text())
        assert record["converter"]["tool"] == "converters/tf2keras.py" and record["num_classes"] == classes
        assert record["converter"]["keras_writer"].startswith("streamed from the checkpoint")
        assert record["converter"]["steps"][-1] == "keras_layout" and "build_model" not in record["converter"]["steps"]
        assert record["weights"]["variables"] == len(datasets) and record["weights"]["format"] == ".weights.h5"
        assert record["weights"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_streamed_file_is_what_keras_writes_and_loads_at_another_stride(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from converters import tf2keras, tf2torch
    from converters.keras_writer import write_keras
    from reference_models.keras import build_keras_model

    prefix, _ = _checkpoint(tmp_path / "release")
    streamed, own = tmp_path / "streamed.weights.h5", tmp_path / "keras.weights.h5"
    assert tf2keras.main(["--dataset", RELEASE, "--checkpoint", str(prefix), "--out", str(streamed), "--quiet"]) == 0
    args = tf2keras.build_parser().parse_args(["--dataset", RELEASE, "--checkpoint", str(prefix)])
    write_keras(tf2torch.convert(args, tool="converters/tf2keras.py"), own, quiet=True)  # Keras's save_weights
    (s_groups, s_data), (k_groups, k_data) = _tree(streamed), _tree(own)
    assert set(s_groups) == set(k_groups) and set(s_data) == set(k_data)
    for path in k_data:
        assert s_data[path].dtype == k_data[path].dtype and np.array_equal(s_data[path], k_data[path]), path
    holding = {k.rsplit("/", 1)[0] for k in k_data}
    # the layers with weights are named alike; a weightless layer's name is Keras's session counter
    assert {p: s_groups[p] for p in holding} == {p: k_groups[p] for p in holding}
    assert all(s_groups[p] == p.rsplit("/", 2)[-2] for p in s_groups if p.endswith("/vars") and p not in holding
               and p != "vars")
    one, other = (build_keras_model("deeplabv3_mobilenetv2", num_classes=21, output_stride=s) for s in (8, 16))
    one.load_weights(own)
    other.load_weights(streamed)  # written at the release's stride, loaded at another
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(one.weights, other.weights))


@pytest.mark.parametrize("arch, kind", [("mobilenet_v2", "backbone"), ("deeplabv3_mobilenetv2", "model")])
def test_stored_layouts_equal_the_keras_twins(arch: str, kind: str) -> None:
    pytest.importorskip("tensorflow")
    from converters.tf.keras_layouts import build_layout, stored_layout

    built, stored = build_layout(arch, kind), stored_layout(arch)
    assert (built.model_name, built.groups, built.weightless) == (stored.model_name, stored.groups, stored.weightless)


@pytest.mark.slow  # builds every Keras twin at every stride and two class counts (~7 min)
def test_keras_layouts_file_is_current() -> None:
    pytest.importorskip("tensorflow")
    from converters.tf import keras_layouts

    assert keras_layouts.main(["--check"]) == 0


@pytest.mark.parametrize("damage, message", [("lost", "no dataset for '"), ("twice", "in two datasets")])
def test_a_layout_that_disagrees_with_the_plan_is_one_line_and_no_output(tmp_path, monkeypatch, capsys, damage,
                                                                         message) -> None:
    from converters import tf2keras
    from converters.tf import keras_layouts

    prefix, _ = _checkpoint(tmp_path / "release")
    data = json.loads(keras_layouts.LAYOUTS_PATH.read_text(encoding="utf-8"))
    groups = data["archs"]["deeplabv3_mobilenetv2"]["groups"]
    if damage == "lost":
        groups.pop()  # a layer the plan has and the layout lost
    else:
        groups.append(["layers/conv2d_copy", *groups[0][1:]])  # one state-dict entry in two datasets
    damaged = tmp_path / "keras_layouts.json"
    damaged.write_text(json.dumps(data), encoding="utf-8")
    monkeypatch.setattr(keras_layouts, "LAYOUTS_PATH", damaged)
    keras_layouts.stored_layout.cache_clear()
    out = tmp_path / "out" / "m.weights.h5"
    try:
        assert tf2keras.main(["--dataset", RELEASE, "--checkpoint", str(prefix), "--out", str(out)]) == 1
    finally:
        keras_layouts.stored_layout.cache_clear()
    err = capsys.readouterr().err
    assert err.startswith(f"error: {damaged}: deeplabv3_mobilenetv2: ") and message in err and err.count("\n") == 1
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_a_corrupt_tensor_mid_stream_leaves_no_output(tmp_path, capsys) -> None:
    from converters import tf2keras
    from tests.fuzzing import flip_tensor_byte

    prefix, _ = _checkpoint(tmp_path / "release")
    name = "MobilenetV2/expanded_conv_3/project/weights"  # read after several datasets were written
    shard = flip_tensor_byte(prefix, name)
    out = tmp_path / "out" / "m.weights.h5"
    out.parent.mkdir()
    assert tf2keras.main(["--dataset", RELEASE, "--checkpoint", str(prefix), "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"error: {shard}: CRC-32C mismatch in tensor '{name}' (corrupt data shard)\n"
    assert list(out.parent.iterdir()) == []  # neither the weights, their provenance nor a temporary file


def test_without_h5py_the_weights_are_one_line_and_no_output(tmp_path, monkeypatch, capsys) -> None:
    import importlib.util

    from converters import tf2keras

    prefix, _ = _checkpoint(tmp_path / "release")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "h5py" else real(name, *a))
    out = tmp_path / "out" / "m.weights.h5"
    assert tf2keras.main(["--dataset", RELEASE, "--checkpoint", str(prefix), "--out", str(out)]) == 1
    assert capsys.readouterr().err == ("error: writing .weights.h5 needs h5py, a dependency of deeplab-repro that "
                                       "is not installed: pip install h5py\n")
    assert not out.exists()


def test_the_streamed_weights_never_overwrite_the_checkpoint(tmp_path, capsys) -> None:
    """A V1 checkpoint is one file of any name: given as --out too, it is refused and left as it was."""
    from converters import tf2keras
    from tests.fuzzing import write_v1_checkpoint

    _, values = _checkpoint(tmp_path / "v2")
    ckpt = write_v1_checkpoint(tmp_path / "model.weights.h5", values)
    before = ckpt.read_bytes()
    assert tf2keras.main(["--dataset", RELEASE, "--checkpoint", str(ckpt), "--out", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert "output would overwrite the input" in err and err.count("\n") == 1
    assert ckpt.read_bytes() == before and not (tmp_path / "model.weights.json").exists()
    other = tmp_path / "out.weights.h5"  # the same checkpoint converts to another file
    assert tf2keras.main(["--dataset", RELEASE, "--checkpoint", str(ckpt), "--out", str(other), "--quiet"]) == 0
