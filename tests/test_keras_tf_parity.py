"""The Keras twins of the TF-ported models against TensorFlow itself, through ``converters/tf2keras.py``.

* slim ResNets (``tf_slim.nets.resnet_v1`` / ``resnet_v2``) with random weights and BatchNorm statistics:
  the TF checkpoint goes through ``tf2keras.py`` once (one ``.weights.h5``), which then loads into the
  Keras backbone at output strides 8, 16 and 32; ``out`` and ``low_level`` must agree with tf_slim's
  end points on odd and even sizes (max rel <= 1e-4). The slim graphs come from tests/test_tf_parity.py.
* A DeepLab-zoo release (MobileNet-v2, its manifest's variables, TF-written): ``tf2keras.py --dataset``
  and ``tf2torch.py --dataset`` on the same checkpoint give the same logits (max rel <= 1e-4), with
  provenance; bad input fails with one line and exit code 1.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

from converters import tf2keras, tf2torch  # noqa: E402
from converters.io import load_state_dict  # noqa: E402
from reference_models import build_model  # noqa: E402
from reference_models.keras import build_keras_backbone, build_keras_model  # noqa: E402
from tests.test_tf2torch_cli import SMALL, manifest, write_checkpoint  # noqa: E402
from tests.test_tf_parity import OUTPUT_STRIDES, RESNETS, SIZES, slim_resnet  # noqa: E402,F401  (fixture)

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
RTOL = 1e-4


def rel(ours: np.ndarray, ref: np.ndarray) -> float:
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


# The -101 nets differ only in unit counts: their Keras twins are checked against PyTorch (which is
# checked against tf_slim at 101 in test_tf_parity.py) in test_keras_models.py.
@pytest.mark.parametrize("slim_resnet", [n for n in RESNETS if n.endswith("_50")], indirect=True)
def test_keras_resnet_matches_tf_slim(slim_resnet: dict, tmp_path) -> None:  # noqa: F811  (the imported fixture)
    name = slim_resnet["name"]
    prefix = write_checkpoint(tmp_path / "ckpt" / "model.ckpt", slim_resnet["arrays"], "V2")
    out = tmp_path / f"{name}.weights.h5"
    assert tf2keras.main(["--checkpoint", str(prefix), "--arch", name, "--out", str(out), "--quiet"]) == 0
    for output_stride in OUTPUT_STRIDES:  # one converted file, every output stride
        model = build_keras_backbone(name, output_stride=output_stride)
        model.load_weights(out)
        for size in SIZES:
            ours = model(slim_resnet["inputs"][size], training=False)
            ref_out, ref_low = slim_resnet["refs"][(output_stride, size)]
            assert rel(ours["out"], ref_out) <= RTOL, (output_stride, size)
            assert rel(ours["low_level"], ref_low) <= RTOL, (output_stride, size)
            assert tuple(ours["out"].shape[1:3]) == tuple(math.ceil(s / output_stride) for s in size)


def _he_values(variables: dict[str, list[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """Random He-scaled weights, mild BatchNorm statistics (17 linear bottlenecks amplify round-off)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in variables.items():
        if name.endswith("depthwise_weights"):
            value = rng.standard_normal(shape) * math.sqrt(2.0 / math.prod(shape[:2]))
        elif name.endswith("weights"):
            value = rng.standard_normal(shape) * math.sqrt(2.0 / math.prod(shape[:-1]))
        elif name.endswith("gamma"):
            value = rng.uniform(0.3, 1.0, shape)
        elif name.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.2, shape)
        out[name] = value.astype(np.float32)
    return out


def test_tf2keras_release_matches_tf2torch(tmp_path, capsys) -> None:
    values = _he_values(manifest(SMALL)["variables"])
    prefix = write_checkpoint(tmp_path / "release" / "model.ckpt-30000", values, "V2")
    keras_out, torch_out = tmp_path / "out" / "mnv2.weights.h5", tmp_path / "out" / "mnv2.pth"
    assert tf2keras.main(["--dataset", SMALL, "--checkpoint", str(prefix), "--out", str(keras_out), "--quiet"]) == 0
    assert tf2torch.main(["--dataset", SMALL, "--checkpoint", str(prefix), "--out", str(torch_out), "--quiet"]) == 0
    # each writer has its own provenance: neither overwrites the other's
    assert sorted(p.name for p in keras_out.parent.iterdir()) == ["mnv2.json", "mnv2.pth", "mnv2.weights.h5",
                                                                   "mnv2.weights.json"]
    assert json.loads((tmp_path / "out" / "mnv2.json").read_text())["converter"]["tool"] == "converters/tf2torch.py"
    record = json.loads((tmp_path / "out" / "mnv2.weights.json").read_text())
    assert record["release"] == SMALL and record["architecture"] == "deeplabv3_mobilenetv2"
    assert record["source"]["manifest"] == f"converters/manifests/{SMALL}.json"
    assert record["converter"]["tool"] == "converters/tf2keras.py"
    assert record["converter"]["steps"][0] == "check_manifest" and record["converter"]["steps"][-1] == "keras_layout"
    assert record["weights"]["format"] == ".weights.h5" and len(record["weights"]["sha256"]) == 64

    keras_model = build_keras_model("deeplabv3_mobilenetv2", num_classes=21)
    keras_model.load_weights(keras_out)
    torch_model = build_model("deeplabv3_mobilenetv2", num_classes=21).eval()
    torch_model.load_state_dict(load_state_dict(torch_out), strict=True)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 97, 100, 3)).astype(np.float32)
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy().transpose(0, 2, 3, 1)
    assert rel(keras_model(x, training=False), ref) <= RTOL

    capsys.readouterr()
    assert tf2keras.main(["--dataset", SMALL, "--checkpoint", str(prefix), "--out", str(tmp_path / "x.h5")]) == 1
    assert tf2keras.main(["--dataset", SMALL, "--checkpoint", str(tmp_path / "nothing"),
                          "--out", str(tmp_path / "y.weights.h5")]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") for e in errors), errors
    assert not (tmp_path / "y.weights.h5").exists()
