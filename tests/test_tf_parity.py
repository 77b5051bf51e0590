"""Numeric parity of the TF-ported backbones against TensorFlow itself.

* The slim ResNets (``tf_slim.nets.resnet_v1`` / ``resnet_v2``) with random weights AND random
  BatchNorm statistics are saved as a real TF checkpoint, read back with our TF-free reader,
  converted with ``converters.tf.rules`` and loaded strictly; outputs must agree at output
  strides 8, 16 and 32 on odd and even input sizes.
* MobileNet-v2 against ``tf_keras.applications.MobileNetV2`` (an independent implementation).
* Each TF quirk in ``reference_models.tf_ops`` against the TF op it reproduces, plus a check
  that the naive PyTorch equivalent really differs (so the quirk is not vacuous).

Tolerance: max|ours - ref| / max|ref| <= 1e-4, tight enough to catch an epsilon or padding slip.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")
pytest.importorskip("tf_keras.src.legacy_tf_layers")

# tf_slim imports "tf_keras.legacy_tf_layers", which TF 2.21's tf_keras only ships under src/.
sys.modules.setdefault("tf_keras.legacy_tf_layers", tf_keras.src.legacy_tf_layers)
slim = pytest.importorskip("tf_slim")
from tf_slim.nets import resnet_utils, resnet_v1, resnet_v2  # noqa: E402

from converters.errors import ConversionError  # noqa: E402
from converters.tf.rules import load_tf_arrays, tf_arrays_to_state_dict  # noqa: E402
from reference_models import build_backbone  # noqa: E402
from reference_models.tf_ops import (  # noqa: E402
    Conv2dTF,
    max_pool_same,
    resize_bilinear_align_corners,
)

tf1 = tf.compat.v1
RTOL = 1e-4
SIZES = ((97, 100), (100, 97))  # (H, W): odd and even along both axes
OUTPUT_STRIDES = (8, 16, 32)


def rel_err(ours: torch.Tensor, ref_nhwc: np.ndarray) -> float:
    ref = torch.from_numpy(ref_nhwc).permute(0, 3, 1, 2)
    assert tuple(ours.shape) == tuple(ref.shape), f"shape {tuple(ours.shape)} != TF {tuple(ref.shape)}"
    return float((ours.detach() - ref).abs().max() / ref.abs().max())


def read_checkpoint(prefix: Path) -> dict[str, np.ndarray]:
    """Read every variable with the project's TF-free reader (TF's own reader as a fallback)."""
    try:
        from converters.tf.reader import open_checkpoint
    except ImportError:  # pragma: no cover - only before the reader landed
        reader = tf.train.load_checkpoint(str(prefix))
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    ckpt = open_checkpoint(prefix)
    return {name: ckpt.read(name) for name in ckpt.names()}


def randomize_variables(sess: tf1.Session, variables: list, seed: int, *, mild: bool = False) -> None:
    """Initialise with random weights and random, non-default BatchNorm statistics (so epsilon matters).

    One ``sess.run`` feeding every initializer's value: per-variable ``load`` calls take ~45 s for
    ResNet-101.
    """
    rng = np.random.default_rng(seed)
    feed = {}
    for var in variables:
        name, shape = var.op.name, var.shape.as_list()
        if name.endswith("weights"):  # He-scaled so 100 layers stay finite
            fan_in = math.prod(shape[:-1]) if not name.endswith("depthwise_weights") else math.prod(shape[:2])
            value = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
        elif name.endswith("gamma"):
            value = rng.uniform(0.3, 1.0, shape) if mild else rng.uniform(0.5, 1.5, shape)
        elif name.endswith("moving_variance"):
            # Small variances make a wrong epsilon visible; ``mild`` keeps very deep nets (Xception's 16
            # summed middle units) from overflowing float32.
            value = rng.uniform(0.5, 1.5, shape) if mild else rng.uniform(0.02, 1.5, shape)
        else:  # beta, moving_mean, biases
            value = rng.normal(0.0, 0.2, shape)
        feed[var.initializer.inputs[1]] = value.astype(np.float32)
    sess.run([var.initializer for var in variables], feed)


# ----------------------------------------------------------------------------- slim ResNets

RESNETS: dict[str, tuple[Callable, str]] = {
    # name -> (slim builder, end point our "low_level" corresponds to)
    "resnet_v1_50": (resnet_v1.resnet_v1_50, "block1/unit_2/bottleneck_v1/conv3"),
    "resnet_v1_101": (resnet_v1.resnet_v1_101, "block1/unit_2/bottleneck_v1/conv3"),
    "resnet_v2_50": (resnet_v2.resnet_v2_50, "block1/unit_2/bottleneck_v2"),
    "resnet_v2_101": (resnet_v2.resnet_v2_101, "block1/unit_2/bottleneck_v2"),
}


@pytest.fixture(scope="module")
def slim_resnet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Build ``request.param`` in TF at every output stride (shared variables), run it, save a checkpoint."""
    name = request.param
    builder, low_level_end_point = RESNETS[name]
    rng = np.random.default_rng(0)
    inputs = {size: rng.standard_normal((1, *size, 3)).astype(np.float32) for size in SIZES}
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [1, None, None, 3])
        fetches = {}
        with slim.arg_scope(resnet_utils.resnet_arg_scope()):
            for os_ in OUTPUT_STRIDES:
                net, end_points = builder(
                    x,
                    num_classes=None,
                    is_training=False,
                    global_pool=False,
                    output_stride=None if os_ == 32 else os_,
                    reuse=tf1.AUTO_REUSE,
                    scope=name,
                )
                fetches[os_] = (net, end_points[f"{name}/{low_level_end_point}"])
        variables = tf1.global_variables()
        with tf1.Session(graph=graph) as sess:
            randomize_variables(sess, variables, seed=1)
            refs = {(os_, size): sess.run(fetches[os_], {x: inputs[size]}) for os_ in OUTPUT_STRIDES for size in SIZES}
            prefix = tmp_path_factory.mktemp(name) / "model.ckpt"
            tf1.train.Saver(variables).save(sess, str(prefix), write_meta_graph=False)
    return {"name": name, "arrays": read_checkpoint(prefix), "inputs": inputs, "refs": refs}


def _resnet_params() -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if "101" in n else n for n in RESNETS]


@pytest.mark.parametrize("slim_resnet", _resnet_params(), indirect=True)
@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
def test_slim_resnet_parity(slim_resnet: dict, output_stride: int) -> None:
    model = build_backbone(slim_resnet["name"], output_stride=output_stride).eval()
    load_tf_arrays(model, slim_resnet["arrays"], path="model.ckpt")
    for size in SIZES:
        with torch.no_grad():
            ours = model(torch.from_numpy(slim_resnet["inputs"][size]).permute(0, 3, 1, 2))
        ref_out, ref_low = slim_resnet["refs"][(output_stride, size)]
        assert rel_err(ours["out"], ref_out) <= RTOL, (output_stride, size)
        assert rel_err(ours["low_level"], ref_low) <= RTOL, (output_stride, size)
        assert ours["out"].shape[1:] == (model.feature_info["out"][0], *(math.ceil(s / output_stride) for s in size))


@pytest.mark.parametrize("slim_resnet", ["resnet_v1_50"], indirect=True)
def test_conversion_errors_name_the_tf_variable(slim_resnet: dict) -> None:
    model = build_backbone("resnet_v1_50", output_stride=16)
    arrays = dict(slim_resnet["arrays"])
    # Ignored on purpose: optimizer slots, step counter, the ImageNet classifier.
    extra = {
        "global_step": np.zeros((), np.int64),
        "resnet_v1_50/conv1/weights/Momentum": arrays["resnet_v1_50/conv1/weights"],
        "resnet_v1_50/logits/weights": np.zeros((1, 1, 2048, 1000), np.float32),
    }
    tf_arrays_to_state_dict({**arrays, **extra}, model)

    leftover = {**arrays, "resnet_v1_50/block9/unit_1/bottleneck_v1/conv1/weights": np.zeros((1, 1, 1, 1))}
    with pytest.raises(ConversionError) as err:
        tf_arrays_to_state_dict(leftover, model, path="x.ckpt")
    assert err.value.layer == "resnet_v1_50/block9/unit_1/bottleneck_v1/conv1/weights"

    wrong = dict(arrays)
    wrong["resnet_v1_50/block2/unit_1/bottleneck_v1/conv2/weights"] = np.zeros((3, 3, 128, 64), np.float32)
    with pytest.raises(ConversionError) as err:
        tf_arrays_to_state_dict(wrong, model, path="x.ckpt")
    assert err.value.layer == "resnet_v1_50/block2/unit_1/bottleneck_v1/conv2/weights"
    assert "shape" in str(err.value)

    missing = {k: v for k, v in arrays.items() if "block4/unit_3/bottleneck_v1/conv3/BatchNorm/gamma" not in k}
    with pytest.raises(ConversionError, match=r"block4\.unit_3\.conv3\.bn\.weight"):
        tf_arrays_to_state_dict(missing, model, path="x.ckpt")


# ----------------------------------------------------------------------------- MobileNet-v2 vs tf_keras


# tf_keras layer name -> slim scope (weights layout is identical: HWIO / (H, W, C, 1)).
def _keras_to_slim(layer: str) -> str | None:
    if layer in ("Conv1", "bn_Conv1"):
        return "MobilenetV2/Conv"
    if layer in ("Conv_1", "Conv_1_bn"):
        return "MobilenetV2/Conv_1"
    for prefix, scope in (("expanded_conv_", "expanded_conv"), ("block_", None)):
        if layer.startswith(prefix):
            rest = layer[len(prefix) :]
            if scope is None:
                index, rest = rest.split("_", 1)
                scope = f"expanded_conv_{index}"
            part = rest.removesuffix("_BN")
            return f"MobilenetV2/{scope}/{part}"
    return None


_KERAS_PARAM = {
    "kernel": "weights",
    "depthwise_kernel": "depthwise_weights",
    "gamma": "BatchNorm/gamma",
    "beta": "BatchNorm/beta",
    "moving_mean": "BatchNorm/moving_mean",
    "moving_variance": "BatchNorm/moving_variance",
}


@pytest.mark.parametrize("size", SIZES)
def test_mobilenet_v2_matches_tf_keras(size: tuple[int, int]) -> None:
    tf_keras.backend.clear_session()
    keras_model = tf_keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(*size, 3))
    rng = np.random.default_rng(2)
    arrays: dict[str, np.ndarray] = {}
    for layer in keras_model.layers:
        scope = _keras_to_slim(layer.name)
        for weight in layer.weights:
            param = weight.name.split("/")[-1].split(":")[0]
            assert scope is not None and param in _KERAS_PARAM, (layer.name, weight.name)
            shape = tuple(weight.shape)
            if param.endswith("kernel"):
                fan_in = math.prod(shape[:2]) * (1 if param == "depthwise_kernel" else shape[2])
                value = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
            # Milder BN statistics than for the ResNets: 17 linear bottlenecks with small variances amplify
            # float32 round-off chaotically (1e-7 -> 1e-2 measured); epsilon is checked by the ResNet tests.
            elif param == "gamma":
                value = rng.uniform(0.3, 1.0, shape)
            elif param == "moving_variance":
                value = rng.uniform(0.5, 1.5, shape)
            else:
                value = rng.normal(0.0, 0.2, shape)
            weight.assign(value.astype(np.float32))
            arrays[f"{scope}/{_KERAS_PARAM[param]}"] = value.astype(np.float32)
    probe = tf_keras.Model(
        keras_model.input,
        [keras_model.get_layer("block_16_project_BN").output, keras_model.get_layer("block_2_depthwise_relu").output],
    )
    x = rng.standard_normal((1, *size, 3)).astype(np.float32)
    ref_out, ref_low = (t.numpy() for t in probe(x, training=False))

    model = build_backbone("mobilenet_v2", output_stride=32).eval()
    load_tf_arrays(model, arrays)  # also proves MobilenetV2/Conv_1 (layer_19) is ignored, not leftover
    with torch.no_grad():
        ours = model(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert rel_err(ours["out"], ref_out) <= RTOL
    assert rel_err(ours["low_level"], ref_low) <= RTOL


# ----------------------------------------------------------------------------- single TF quirks


def _nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2)


@pytest.mark.parametrize("size", [(9, 10), (10, 9), (7, 7), (8, 8)])
@pytest.mark.parametrize(("kernel", "stride", "dilation"), [(3, 2, 1), (7, 2, 1), (3, 1, 2), (1, 2, 1), (3, 1, 1)])
def test_conv_same_and_conv2d_same_padding(size: tuple[int, int], kernel: int, stride: int, dilation: int) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, *size, 4)).astype(np.float32)
    w = rng.standard_normal((kernel, kernel, 4, 5)).astype(np.float32)
    conv = Conv2dTF(4, 5, kernel, stride=stride, dilation=dilation, padding="same")
    conv.weight.data = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
    ref = tf.nn.conv2d(x, w, strides=stride, padding="SAME", dilations=dilation).numpy()
    assert rel_err(conv(_nchw(x)), ref) <= 1e-5

    # slim's conv2d_same: explicit fixed padding, then VALID.
    total = (kernel - 1) * dilation
    padded = tf.pad(x, [[0, 0], [total // 2, total - total // 2], [total // 2, total - total // 2], [0, 0]])
    ref = tf.nn.conv2d(padded, w, strides=stride, padding="VALID", dilations=dilation).numpy()
    conv.tf_padding = "explicit"
    assert rel_err(conv(_nchw(x)), ref) <= 1e-5

    if stride == 2 and kernel == 3 and size[0] % 2 == 0:  # the quirk matters: PyTorch's symmetric padding differs
        naive = F.conv2d(_nchw(x), conv.weight, stride=stride, padding=kernel // 2)
        same = tf.nn.conv2d(x, w, strides=stride, padding="SAME").numpy()
        assert rel_err(naive, same) > 1e-2


def test_depthwise_layout_with_multiplier() -> None:
    from converters.tf.rules import depthwise_to_oihw

    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 9, 8, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)  # channel multiplier 2
    ref = tf.nn.depthwise_conv2d(x, w, strides=[1, 2, 2, 1], padding="SAME").numpy()
    conv = Conv2dTF(3, 6, 3, stride=2, groups=3)
    conv.weight.data = torch.from_numpy(depthwise_to_oihw(w).copy())
    assert rel_err(conv(_nchw(x)), ref) <= 1e-5


@pytest.mark.parametrize("size", [(9, 10), (8, 8), (10, 9), (257, 256), (7, 7)])
def test_max_pool_same(size: tuple[int, int]) -> None:
    x = np.random.default_rng(5).standard_normal((1, *size, 2)).astype(np.float32) - 3.0  # negative: -inf pad matters
    ref = tf.nn.max_pool2d(x, 3, 2, "SAME").numpy()
    assert rel_err(max_pool_same(_nchw(x), 3, 2), ref) == 0.0


@pytest.mark.parametrize(("src", "dst"), [((5, 7), (17, 25)), ((1, 1), (9, 9)), ((13, 13), (49, 49))])
def test_resize_bilinear_align_corners(src: tuple[int, int], dst: tuple[int, int]) -> None:
    x = np.random.default_rng(6).standard_normal((1, *src, 3)).astype(np.float32)
    ref = tf1.image.resize_bilinear(x, dst, align_corners=True).numpy()
    assert rel_err(resize_bilinear_align_corners(_nchw(x), dst), ref) <= 1e-5


# ----------------------------------------------------------------------------- DeepLab v3+ head vs a slim graph


class _GivenFeatures(torch.nn.Module):
    """Stand-in backbone returning fixed features, so the head is compared on its own."""

    tf_scope = "given_features"  # no variables

    def __init__(self, out: np.ndarray, low_level: np.ndarray, output_stride: int) -> None:
        super().__init__()
        self.out, self.low_level = _nchw(out), _nchw(low_level)
        self.feature_info = {"out": (out.shape[-1], output_stride), "low_level": (low_level.shape[-1], 4)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.out, "low_level": self.low_level}


def _slim_deeplab_head(features, low_level, *, rates, separable: bool, num_classes: int, decoder_size):
    """ASPP + image pooling + decoder + logits exactly as DeepLab-TF's model.py wires them (slim layers)."""

    def split_separable(x, filters: int, rate: int, scope: str):
        x = slim.separable_conv2d(x, None, 3, depth_multiplier=1, rate=rate, scope=scope + "_depthwise")
        return slim.conv2d(x, filters, 1, scope=scope + "_pointwise")

    height, width = features.shape[1], features.shape[2]
    with (
        slim.arg_scope(
            [slim.conv2d, slim.separable_conv2d],
            activation_fn=tf.nn.relu,
            normalizer_fn=slim.batch_norm,
            padding="SAME",
            stride=1,
        ),
        slim.arg_scope([slim.batch_norm], is_training=False, decay=0.9997, epsilon=1e-5, scale=True),
    ):
        pooled = tf.reduce_mean(features, [1, 2], keepdims=True)
        image_feature = slim.conv2d(pooled, 256, 1, scope="image_pooling")
        branches = [tf1.image.resize_bilinear(image_feature, [height, width], align_corners=True)]
        branches.append(slim.conv2d(features, 256, 1, scope="aspp0"))
        for i, rate in enumerate(rates, 1):
            if separable:
                branches.append(split_separable(features, 256, rate, f"aspp{i}"))
            else:
                branches.append(slim.conv2d(features, 256, 3, rate=rate, scope=f"aspp{i}"))
        net = slim.conv2d(tf.concat(branches, 3), 256, 1, scope="concat_projection")
        with tf1.variable_scope("decoder"):
            parts = [net, slim.conv2d(low_level, 48, 1, scope="feature_projection0")]
            parts = [tf1.image.resize_bilinear(p, decoder_size, align_corners=True) for p in parts]
            net = tf.concat(parts, 3)
            if separable:
                net = split_separable(net, 256, 1, "decoder_conv0")
                net = split_separable(net, 256, 1, "decoder_conv1")
            else:
                net = slim.repeat(net, 2, slim.conv2d, 256, 3, scope="decoder_conv0")
    return slim.conv2d(net, num_classes, 1, activation_fn=None, normalizer_fn=None, scope="logits/semantic")


@pytest.mark.parametrize("separable", [True, False])
@pytest.mark.parametrize(("input_size", "output_stride"), [((97, 100), 16), ((65, 66), 8)])
def test_deeplab_v3plus_head_matches_slim(input_size: tuple[int, int], output_stride: int, separable: bool) -> None:
    from reference_models.deeplab_v3 import DeepLabV3, atrous_rates_for

    rng = np.random.default_rng(7)
    feature_size = tuple(math.ceil(s / output_stride) for s in input_size)
    decoder_size = [math.ceil(s / 4) for s in input_size]  # = scale_dimension(crop, 1/4)
    features = rng.standard_normal((1, *feature_size, 24)).astype(np.float32)
    low_level = rng.standard_normal((1, *decoder_size, 16)).astype(np.float32)
    rates = atrous_rates_for(output_stride)
    graph = tf.Graph()
    with graph.as_default():
        logits = _slim_deeplab_head(
            tf.constant(features),
            tf.constant(low_level),
            rates=rates,
            separable=separable,
            num_classes=3,
            decoder_size=decoder_size,
        )
        variables = tf1.global_variables()
        with tf1.Session(graph=graph) as sess:
            randomize_variables(sess, variables, seed=8)
            ref = sess.run(logits)
            arrays = dict(zip((v.op.name for v in variables), sess.run(variables)))

    model = DeepLabV3(
        _GivenFeatures(features, low_level, output_stride),
        num_classes=3,
        atrous_rates=rates,
        aspp_separable=separable,
        decoder=True,
        decoder_separable=separable,
    ).eval()
    load_tf_arrays(model, arrays)
    with torch.no_grad():
        ours = model(torch.zeros(1, 3, *input_size))
    assert rel_err(ours, ref) <= RTOL


# ----------------------------------------------------------------------------- Xception-65 vs a slim graph


def _slim_xception_65(inputs, output_stride: int):
    """DeepLab's ``xception_65`` rebuilt from slim layers as ``core/xception.py`` wires it (no TF package ships it).

    Returns (features, low-level end point). Not independent of our reading of the official code, but it
    pins the PyTorch port to TF's padding, atrous and separable-conv semantics.
    """

    def fixed_padding(x, rate: int):
        total = 2 * rate  # kernel 3
        return tf.pad(x, [[0, 0], [total // 2, total - total // 2], [total // 2, total - total // 2], [0, 0]])

    def separable(x, depth: int, stride: int, rate: int, activation, scope: str):
        padding = "SAME"
        if stride > 1:
            x, padding = fixed_padding(x, rate), "VALID"
        x = slim.separable_conv2d(
            x, None, 3, depth_multiplier=1, stride=stride, rate=rate, padding=padding,
            activation_fn=activation, scope=scope + "_depthwise",
        )  # fmt: skip
        return slim.conv2d(x, depth, 1, activation_fn=activation, scope=scope + "_pointwise")

    def module(x, depths, skip: str, stride: int, rate: int, activation_inside: bool):
        residual, taps = x, []
        for i in range(3):
            if not activation_inside:
                residual = tf.nn.relu(residual)
            act = tf.nn.relu if activation_inside else None
            residual = separable(residual, depths[i], stride if i == 2 else 1, rate, act, f"separable_conv{i + 1}")
            taps.append(residual)
        if skip == "conv":
            return residual + slim.conv2d(x, depths[-1], 1, stride=stride, activation_fn=None, scope="shortcut"), taps
        return (residual + x if skip == "sum" else residual), taps

    blocks = [
        ("entry_flow/block1", (128,) * 3, "conv", False, 1, 2),
        ("entry_flow/block2", (256,) * 3, "conv", False, 1, 2),
        ("entry_flow/block3", (728,) * 3, "conv", False, 1, 2),
        ("middle_flow/block1", (728,) * 3, "sum", False, 16, 1),
        ("exit_flow/block1", (728, 1024, 1024), "conv", False, 1, 2),
        ("exit_flow/block2", (1536, 1536, 2048), "none", True, 1, 1),
    ]
    with (
        tf1.variable_scope("xception_65"),
        slim.arg_scope(
            [slim.conv2d, slim.separable_conv2d],
            activation_fn=tf.nn.relu,
            normalizer_fn=slim.batch_norm,
            padding="SAME",
        ),
        slim.arg_scope([slim.batch_norm], is_training=False, epsilon=1e-3, scale=True),
    ):
        net = resnet_utils.conv2d_same(inputs, 32, 3, stride=2, scope="entry_flow/conv1_1")
        net = resnet_utils.conv2d_same(net, 64, 3, stride=1, scope="entry_flow/conv1_2")
        current, rate, target, low_level = 1, 1, output_stride // 2, None
        for scope, depths, skip, act_inside, units, stride in blocks:
            with tf1.variable_scope(scope):
                for k in range(units):
                    with tf1.variable_scope(f"unit_{k + 1}/xception_module"):
                        if current == target:  # xception.stack_blocks_dense
                            net, taps = module(net, depths, skip, 1, rate, act_inside)
                            rate *= stride
                        else:
                            net, taps = module(net, depths, skip, stride, 1, act_inside)
                            current *= stride
                    if scope == "entry_flow/block2":
                        low_level = taps[1]
    return net, low_level


@pytest.mark.slow
@pytest.mark.parametrize("output_stride", [8, 16])
def test_xception_65_matches_slim_graph(output_stride: int) -> None:
    graph = tf.Graph()
    rng = np.random.default_rng(9)
    inputs = {size: rng.standard_normal((1, *size, 3)).astype(np.float32) for size in SIZES}
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [1, None, None, 3])
        fetches = _slim_xception_65(x, output_stride)
        variables = tf1.global_variables()
        with tf1.Session(graph=graph) as sess:
            randomize_variables(sess, variables, seed=10, mild=True)
            refs = {size: sess.run(fetches, {x: inputs[size]}) for size in SIZES}
            arrays = dict(zip((v.op.name for v in variables), sess.run(variables)))
    model = build_backbone("xception_65", output_stride=output_stride).eval()
    load_tf_arrays(model, arrays)
    for size in SIZES:
        with torch.no_grad():
            ours = model(_nchw(inputs[size]))
        assert rel_err(ours["out"], refs[size][0]) <= RTOL, size
        assert rel_err(ours["low_level"], refs[size][1]) <= RTOL, size
