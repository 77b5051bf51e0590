"""Parity: official-topology caffemodels through OpenCV's Caffe importer vs the Keras DeepLab v2 twins.

The weights go the user's way: ``converters/caffe2tf.py`` -> ``.weights.h5`` -> ``build_keras_model``
+ ``load_weights``; input NHWC. Same bound as the PyTorch parity (tests/test_caffe_parity.py):
max|keras - opencv| / max|opencv| <= 2e-3 and argmax agreement >= 99.9 %, odd and even sizes. The
random weights are realistic (BN factor 999.98, variances near eps, non-zero ASPP biases), so a wrong
eps, a missing BN factor, Keras' own pooling rounding or align_corners=False fail by orders of magnitude.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from converters import caffe2tf  # noqa: E402
from converters.caffe import parity, topology  # noqa: E402
from converters.caffe.convert import convert_caffemodel  # noqa: E402
from converters.keras_writer import load_state_dict_into_keras  # noqa: E402
from reference_models.keras import build_keras_model  # noqa: E402
from tests.conftest import REPO  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

MAX_REL = 2e-3
MIN_AGREE = 0.999


def convert(path, arch) -> keras.Model:
    """The CLI's pipeline without the files (the CLI itself is tested below): caffemodel -> canonical
    state dict -> Keras writer."""
    converted = convert_caffemodel(path, arch=arch)
    model = build_keras_model(arch, num_classes=converted.num_classes)
    return load_state_dict_into_keras(model, converted.state_dict, path=path, source_layer=converted.source_layer)


def run_keras(model: keras.Model, x_nchw: np.ndarray) -> np.ndarray:
    return model(np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)), training=False).numpy().transpose(0, 3, 1, 2)


def check(ours: np.ndarray, ref: np.ndarray) -> None:
    result = parity.compare(ours, ref)
    assert result["max_rel"] <= MAX_REL, result
    assert result["argmax_agreement"] >= MIN_AGREE, result


CASES = [
    # (topology, registry model, input sizes (H, W)): odd and even along both axes
    ("resnet101", "deeplabv2_resnet101", [(97, 100)]),
    ("resnet101_init", "deeplabv1_resnet101", [(100, 97)]),
    ("vgg16_aspp", "deeplabv2_vgg16", [(97, 100)]),
    ("vgg16_largefov", "deeplabv2_vgg16_largefov", [(100, 100), (97, 97)]),
]


@pytest.mark.parametrize("topo,arch,sizes", CASES, ids=[c[1] for c in CASES])
def test_keras_parity_with_opencv(caffemodels, tmp_path, topo, arch, sizes):
    net, path = caffemodels(topo)
    model = convert(path, arch)
    for h, w in sizes:
        x = parity.random_input(h, w, seed=h * 1000 + w)
        ref = parity.opencv_forward(net, path, x, topology.output_blob(topo))
        ours = run_keras(model, x)
        assert ours.shape == ref.shape
        check(ours, ref)


@pytest.mark.slow
def test_keras_parity_msc(caffemodels, tmp_path):
    """The released 3-scale net, small and at its training crop (321 -> 241 / 161 inside, 41x41 fused)."""
    net, path = caffemodels("resnet101_msc")
    out = tmp_path / "w.weights.h5"  # this one the user's way: CLI, then load_weights
    assert caffe2tf.main(["--caffemodel", str(path), "--arch", "deeplabv2_resnet101_msc", "--out", str(out),
                          "--quiet"]) == 0
    model = build_keras_model("deeplabv2_resnet101_msc", num_classes=21)
    model.load_weights(out)
    for size, shape in (((100, 97), (13, 13)), ((321, 321), (41, 41))):
        x = parity.random_input(*size, seed=7)
        ours = run_keras(model, x)
        assert ours.shape == (1, 21, *shape)
        check(ours, parity.opencv_forward(net, path, x, "fc_fusion"))


def test_caffe2tf_outputs_and_errors(caffemodels, tmp_path, capsys):
    """Provenance beside the weights, a whole-model .keras output, and one-line errors with exit code 1."""
    _, path = caffemodels("vgg16_largefov")
    out = tmp_path / "sub" / "lfov.keras"
    assert caffe2tf.main(["--caffemodel", str(path), "--arch", "deeplabv2_vgg16_largefov", "--out", str(out)]) == 0
    record = json.loads((tmp_path / "sub" / "lfov.keras.json").read_text())
    assert record["architecture"] == "deeplabv2_vgg16_largefov" and record["num_classes"] == 21
    assert record["converter"]["tool"] == "converters/caffe2tf.py"
    assert record["converter"]["steps"][-1] == "keras_layout"
    assert record["preprocessing"]["channel_order"] == "BGR"
    assert len(record["weights"]["sha256"]) == 64 and record["weights"]["format"] == ".keras"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["lfov.keras", "lfov.keras.json"]  # no temporaries
    code = ("import sys; from reference_models.keras import load_keras_model; "
            f"m = load_keras_model({str(out)!r}); assert m.name == 'deeplabv2_vgg16_largefov'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)  # a fresh process: no custom layers loaded
    model = keras.models.load_model(out)
    x = parity.random_input(65, 66, seed=1)
    assert run_keras(model, x).shape == (1, 21, 9, 10)  # Caffe's ceil pooling: 66 -> 34 -> 18 -> 10
    capsys.readouterr()

    bad = tmp_path / "w.pth"
    assert caffe2tf.main(["--caffemodel", str(path), "--arch", "deeplabv2_vgg16_largefov", "--out", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and ".weights.h5" in err and "\n" not in err
    wrong = tmp_path / "wrong.weights.h5"
    assert caffe2tf.main(["--caffemodel", str(path), "--arch", "deeplabv2_resnet101", "--out", str(wrong)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and not wrong.exists()
    assert caffe2tf.main(["--caffemodel", str(path)]) == 2
