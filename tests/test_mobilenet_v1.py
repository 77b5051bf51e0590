"""MobileNet-v1 1.0 (``reference_models/mobilenet_v1.py``) against two independent engines.

* TF-slim: ``mobilenet_v1_base`` as the official ``research/slim/nets/mobilenet_v1.py`` builds it,
  written here with ``tf_slim`` layers (``conv2d``, ``separable_conv2d(num_outputs=None, rate=...)``,
  ``batch_norm`` center/scale, epsilon 0.001, ReLU6, ``SAME``) and slim's output-stride rule, at
  output strides 8, 16 and 32 on odd and even sizes. Random weights and BatchNorm statistics are
  saved as a real TF checkpoint, read back with our TF-free reader, converted by name with
  ``converters/tf/rules.py`` and loaded strictly.
* ``tf_keras.applications.MobileNet(alpha=1.0, include_top=False)``: the same network, another
  implementation, at output stride 32 on sizes divisible by 32. It pads its stride-2 convs with a
  fixed ``ZeroPadding2D(((0, 1), (0, 1)))`` + ``VALID``, which equals TF ``SAME`` only when the
  input of each strided conv is even; on odd sizes it drops a row/column that slim keeps (checked
  below: its maps are smaller), so odd sizes are checked against slim only.

Tolerance: max|ours - ref| / max|ref| <= 1e-4.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")
legacy_tf_layers = pytest.importorskip("tf_keras.src.legacy_tf_layers")
sys.modules.setdefault("tf_keras.legacy_tf_layers", legacy_tf_layers)  # tf_slim under TF 2.x
slim = pytest.importorskip("tf_slim")

from converters import tf2keras, tf2torch  # noqa: E402
from converters.io import load_state_dict  # noqa: E402
from converters.releases import TF_RELEASES  # noqa: E402
from converters.tf.rules import load_tf_arrays, map_tf_names  # noqa: E402
from reference_models import build_backbone, build_model  # noqa: E402
from tests.test_tf_parity import randomize_variables, read_checkpoint, rel_err  # noqa: E402

tf1 = tf.compat.v1
RTOL = 1e-4
SIZES = ((97, 100), (100, 97))
OUTPUT_STRIDES = (8, 16, 32)
# slim _CONV_DEFS: Conv2d_0 (stride 2, 32), then (stride, depth) of the 13 depthwise-separable layers.
CONV_DEFS = ((2, 64 // 2), (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512), (1, 512), (1, 512),
             (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))  # fmt: skip


def slim_mobilenet_v1_base(inputs, *, output_stride: int | None, scope: str = "MobilenetV1") -> dict:
    """``mobilenet_v1_base`` + ``mobilenet_v1_arg_scope(is_training=False)`` in tf_slim layers; end points."""
    bn_params = {"center": True, "scale": True, "decay": 0.9997, "epsilon": 0.001, "is_training": False}
    end_points = {}
    with tf1.variable_scope(scope, reuse=tf1.AUTO_REUSE), slim.arg_scope(
        [slim.conv2d, slim.separable_conv2d], padding="SAME", activation_fn=tf.nn.relu6,
        normalizer_fn=slim.batch_norm, normalizer_params=bn_params,
    ):  # fmt: skip
        current_stride, rate, net = 1, 1, inputs
        for i, (stride, depth) in enumerate(CONV_DEFS):
            if output_stride is not None and current_stride == output_stride:
                layer_stride, layer_rate = 1, rate
                rate *= stride
            else:
                layer_stride, layer_rate = stride, 1
                current_stride *= stride
            if i == 0:
                net = end_points["Conv2d_0"] = slim.conv2d(net, 32, [3, 3], stride=stride, scope="Conv2d_0")
                continue
            net = slim.separable_conv2d(net, None, [3, 3], depth_multiplier=1, stride=layer_stride, rate=layer_rate,
                                        scope=f"Conv2d_{i}_depthwise")  # fmt: skip
            end_points[f"Conv2d_{i}_depthwise"] = net
            net = slim.conv2d(net, depth, [1, 1], stride=1, scope=f"Conv2d_{i}_pointwise")
            end_points[f"Conv2d_{i}_pointwise"] = net
    return end_points


def slim_mobilenet_v1_classifier(inputs, num_classes: int = 1001, scope: str = "MobilenetV1") -> None:
    """The release's variables: the base plus ``Logits/Conv2d_1c_1x1`` (1x1 conv with biases, 1001 classes)."""
    net = slim_mobilenet_v1_base(inputs, output_stride=None, scope=scope)["Conv2d_13_pointwise"]
    with tf1.variable_scope(scope, reuse=tf1.AUTO_REUSE), tf1.variable_scope("Logits"):
        net = tf.reduce_mean(net, [1, 2], keepdims=True)
        slim.conv2d(net, num_classes, [1, 1], activation_fn=None, normalizer_fn=None, scope="Conv2d_1c_1x1")


@pytest.fixture(scope="module")
def slim_mobilenet(tmp_path_factory: pytest.TempPathFactory) -> dict:
    rng = np.random.default_rng(0)
    inputs = {size: rng.standard_normal((1, *size, 3)).astype(np.float32) for size in SIZES}
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [1, None, None, 3])
        fetches = {}
        for os_ in OUTPUT_STRIDES:
            ends = slim_mobilenet_v1_base(x, output_stride=os_)
            fetches[os_] = (ends["Conv2d_13_pointwise"], ends["Conv2d_3_pointwise"])
        slim_mobilenet_v1_classifier(x)
        variables = tf1.global_variables()
        with tf1.Session(graph=graph) as sess:
            randomize_variables(sess, variables, seed=1, mild=True)
            refs = {(os_, s): sess.run(fetches[os_], {x: inputs[s]}) for os_ in OUTPUT_STRIDES for s in SIZES}
            prefix = tmp_path_factory.mktemp("mobilenet_v1") / "mobilenet_v1_1.0_224.ckpt"
            tf1.train.Saver(variables).save(sess, str(prefix), write_meta_graph=False)
    return {"arrays": read_checkpoint(prefix), "inputs": inputs, "refs": refs, "prefix": prefix}


def test_variable_names_and_gamma(slim_mobilenet: dict) -> None:
    """The checkpoint's names: 27 convs x (weights + BatchNorm gamma/beta/mean/variance) + the classifier."""
    names = set(slim_mobilenet["arrays"])
    assert len(names) == (1 + 13 * 2) * 5 + 2
    assert "MobilenetV1/Conv2d_0/BatchNorm/gamma" in names  # scale=True in mobilenet_v1_arg_scope
    assert "MobilenetV1/Conv2d_1_depthwise/depthwise_weights" in names
    forward, _ = map_tf_names(sorted(names), build_backbone("mobilenet_v1", output_stride=16))
    assert forward["MobilenetV1/Conv2d_13_pointwise/BatchNorm/moving_variance"] == "Conv2d_13_pointwise.bn.running_var"
    assert not any("Logits" in name for name in forward)  # the ImageNet classifier is dropped


@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
def test_matches_slim(slim_mobilenet: dict, output_stride: int) -> None:
    model = load_tf_arrays(build_backbone("mobilenet_v1", output_stride=output_stride), slim_mobilenet["arrays"])
    model.eval()
    for size in SIZES:
        ref_out, ref_low = slim_mobilenet["refs"][(output_stride, size)]
        with torch.no_grad():
            ours = model(torch.from_numpy(slim_mobilenet["inputs"][size]).permute(0, 3, 1, 2))
        assert ours["out"].shape[-2:] == (math.ceil(size[0] / output_stride), math.ceil(size[1] / output_stride))
        assert rel_err(ours["out"], ref_out) <= RTOL, (output_stride, size)
        assert rel_err(ours["low_level"], ref_low) <= RTOL, (output_stride, size)


def test_atrous_schedule() -> None:
    """slim's rule: the layer where the stride would pass the target keeps its rate; later rates grow."""

    def plan(output_stride: int) -> list[tuple[int, int]]:
        model = build_backbone("mobilenet_v1", output_stride=output_stride)
        return [(getattr(model, f"Conv2d_{i}_depthwise").stride[0], getattr(model, f"Conv2d_{i}_depthwise").dilation[0])
                for i in range(1, 14)]  # fmt: skip

    assert plan(32) == [(1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1), (1, 1), (1, 1), (1, 1),
                        (2, 1), (1, 1)]  # fmt: skip
    assert plan(16)[11:] == [(1, 1), (1, 2)]
    assert plan(8) == [(1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1)] + [(1, 2)] * 6 + [(1, 4)]  # Conv2d_6: rate 1


def _keras_to_slim(layer: str) -> str | None:
    """tf_keras MobileNet layer -> slim scope (``conv1``, ``conv_dw_<i>``, ``conv_pw_<i>`` [+ ``_bn``])."""
    base = layer.removesuffix("_bn")
    if base == "conv1":
        return "MobilenetV1/Conv2d_0"
    for prefix, kind in (("conv_dw_", "depthwise"), ("conv_pw_", "pointwise")):
        if base.startswith(prefix) and base[len(prefix):].isdigit():
            return f"MobilenetV1/Conv2d_{base[len(prefix):]}_{kind}"
    return None


_KERAS_PARAM = {"kernel": "weights", "depthwise_kernel": "depthwise_weights", "gamma": "BatchNorm/gamma",
                "beta": "BatchNorm/beta", "moving_mean": "BatchNorm/moving_mean",
                "moving_variance": "BatchNorm/moving_variance"}  # fmt: skip


def _keras_mobilenet(size: tuple[int, int], arrays: dict[str, np.ndarray]):
    tf_keras.backend.clear_session()
    keras_model = tf_keras.applications.MobileNet(alpha=1.0, include_top=False, weights=None, input_shape=(*size, 3))
    used = set()
    for layer in keras_model.layers:
        scope = _keras_to_slim(layer.name)
        for weight in layer.weights:
            param = weight.name.split("/")[-1].split(":")[0]
            assert scope is not None and param in _KERAS_PARAM, (layer.name, weight.name)
            name = f"{scope}/{_KERAS_PARAM[param]}"
            weight.assign(arrays[name])
            used.add(name)
    assert used == {n for n in arrays if "Logits" not in n}  # every trunk variable, each once
    return tf_keras.Model(keras_model.input,
                          [keras_model.output, keras_model.get_layer("conv_pw_3_relu").output])  # fmt: skip


@pytest.mark.parametrize("size", [(96, 128), (128, 96)])
def test_matches_tf_keras_mobilenet(slim_mobilenet: dict, size: tuple[int, int]) -> None:
    arrays = slim_mobilenet["arrays"]
    probe = _keras_mobilenet(size, arrays)
    x = np.random.default_rng(5).standard_normal((1, *size, 3)).astype(np.float32)
    ref_out, ref_low = (t.numpy() for t in probe(x, training=False))
    model = load_tf_arrays(build_backbone("mobilenet_v1", output_stride=32), arrays).eval()
    with torch.no_grad():
        ours = model(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert rel_err(ours["out"], ref_out) <= RTOL
    assert rel_err(ours["low_level"], ref_low) <= RTOL


def test_tf_keras_mobilenet_pads_odd_sizes_differently(slim_mobilenet: dict) -> None:
    """On an odd size Keras' fixed (0, 1) padding loses a row that TF SAME (slim, ours) keeps."""
    size = (97, 100)
    probe = _keras_mobilenet(size, slim_mobilenet["arrays"])
    keras_out, _ = probe(slim_mobilenet["inputs"][size], training=False)
    slim_out, _ = slim_mobilenet["refs"][(32, size)]
    assert keras_out.shape[1] == 3 and slim_out.shape[1] == math.ceil(97 / 32) == 4


RELEASE = "mobilenet_v1_1.0_224_2017_06_14"


def test_release_manifest_is_the_slim_graph(slim_mobilenet: dict) -> None:
    """The stored manifest lists exactly the variables (names and shapes) the slim graph writes."""
    stored = json.loads(TF_RELEASES[RELEASE].manifest_path.read_text())["variables"]
    assert stored == {name: list(a.shape) for name, a in slim_mobilenet["arrays"].items()}
    assert TF_RELEASES[RELEASE].arch == "mobilenet_v1" and TF_RELEASES[RELEASE].num_classes == 1001


def test_release_converts_with_tf2torch_and_tf2keras(slim_mobilenet: dict, tmp_path) -> None:
    """The slim-written checkpoint through both CLIs: PyTorch equals slim, Keras equals PyTorch."""
    from reference_models.keras import build_keras_backbone

    prefix = slim_mobilenet["prefix"]
    torch_out, keras_out = tmp_path / "mnv1.pth", tmp_path / "mnv1.weights.h5"
    assert tf2torch.main(["--dataset", RELEASE, "--checkpoint", str(prefix), "--out", str(torch_out), "--quiet"]) == 0
    assert tf2keras.main(["--dataset", RELEASE, "--checkpoint", str(prefix), "--out", str(keras_out), "--quiet"]) == 0
    model = build_backbone("mobilenet_v1", output_stride=16).eval()
    model.load_state_dict(load_state_dict(torch_out), strict=True)
    size = SIZES[0]
    x = slim_mobilenet["inputs"][size]
    with torch.no_grad():
        ours = model(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert rel_err(ours["out"], slim_mobilenet["refs"][(16, size)][0]) <= RTOL
    keras_model = build_keras_backbone("mobilenet_v1", output_stride=16)
    keras_model.load_weights(keras_out)
    keras_out_map = np.asarray(keras_model(x, training=False)["out"])
    assert rel_err(ours["out"], keras_out_map) <= RTOL


def test_deeplabv3_mobilenetv1() -> None:
    model = build_model("deeplabv3_mobilenetv1", num_classes=21)
    assert model.output_stride == 16 and model.decoder is None
    assert [model.aspp.get_submodule(f"aspp{i}").dilation[0] for i in (1, 2, 3)] == [6, 12, 18]
    assert model.aspp.aspp0.in_channels == 1024
