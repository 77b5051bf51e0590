"""leimao/DeepLab-V3 (the v3 seed project) flavours: registry checks, Keras twin (via test_keras_models),
and parity against TensorFlow wired as their ``model.py`` / ``modules.py`` wire it.

Independent engine: ``tf_slim.nets.resnet_v2`` for the trunk (their ``feature_extractor.Resnet``), slim
ops for MobileNet-v2's ``mobilenet_base`` at output stride 16, ``tf.layers.conv2d`` (the legacy layer
their head uses) for the ASPP / logits, ``tf.compat.v1.image.resize_bilinear`` with TF1's defaults for
the final resize. Random weights and BatchNorm statistics are drawn in TF, read back by name and
converted with ``converters.tf.leimao`` (their checkpoint names, ``backbone/`` prefix and all).
Tolerance: max|ours - TF| / max|TF| <= 1e-4.
"""

from __future__ import annotations

import importlib
import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from converters.errors import ConversionError
from converters.tf.leimao import leimao_arrays_to_state_dict, leimao_name_to_key
from reference_models import build_model, list_models
from reference_models.leimao_style import resize_bilinear_legacy

LEIMAO = ("leimao_deeplabv3_resnet_v2_50", "leimao_deeplabv3_resnet_v2_101", "leimao_deeplabv3_mobilenet_v2")
NUM_CLASSES = 5
RTOL = 1e-4


def test_registered_and_keyword_only() -> None:
    assert set(LEIMAO) <= set(list_models())
    from reference_models.registry import _MODELS

    for name in LEIMAO:
        with pytest.raises(TypeError):
            _MODELS[name](NUM_CLASSES, 16)
        with pytest.raises(ValueError, match="output_stride"):
            build_model(name, num_classes=NUM_CLASSES, output_stride=32)


def _shape_cases() -> list:
    # the -101 and the ResNet at OS 8 are the same code as resnet_v2_50 at OS 16 with more / dilated units
    return [pytest.param(n, os_, id=f"{n}-os{os_}",
                         marks=[pytest.mark.slow] if "101" in n or ("resnet" in n and os_ == 8) else [])
            for n in LEIMAO for os_ in (8, 16)]


@pytest.mark.parametrize(("name", "output_stride"), _shape_cases())
def test_shape_finite_and_gradients(name: str, output_stride: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=NUM_CLASSES, output_stride=output_stride)
    assert model.output_stride == output_stride and model.logits_stride == 1
    assert model.backbone.feature_info["out"][0] == (1280 if "mobilenet" in name else 2048)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 65, 66))
    assert logits.shape == (1, NUM_CLASSES, 65, 66) and torch.isfinite(logits).all()  # resized to the input
    model.train()
    x = torch.randn(2, 3, 65, 66, requires_grad=True)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES, 65, 66) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_head_is_theirs() -> None:
    model = build_model("leimao_deeplabv3_resnet_v2_50", num_classes=NUM_CLASSES)
    assert model.backbone.version == 2  # resnet_v2 (pre-activation), as their feature_extractor imports
    assert [getattr(model.aspp, f"aspp3x3_{i}").dilation[0] for i in (1, 2, 3)] == [6, 12, 18]
    head = [m for m in model.aspp.modules() if m is not model.aspp]
    assert all(isinstance(m, torch.nn.Conv2d) and m.bias is not None and m.bn is None and m.activation is None
               for m in head)  # biased linear convs: no BatchNorm, no ReLU
    # rates stay 6/12/18 at output stride 8 (hard-coded in their ASPP)
    model8 = build_model("leimao_deeplabv3_resnet_v2_50", num_classes=NUM_CLASSES, output_stride=8)
    assert model8.aspp.aspp3x3_3.dilation[0] == 18


def test_checkpoint_names() -> None:
    assert leimao_name_to_key("backbone/resnet_v2_101/block4/unit_3/bottleneck_v2/conv2/weights", "resnet_v2_101") == \
        "backbone.block4.unit_3.conv2.weight"
    assert leimao_name_to_key("backbone/MobilenetV2/Conv_1/BatchNorm/moving_variance", "MobilenetV2") == \
        "backbone.Conv_1.bn.running_var"
    assert leimao_name_to_key("conv2d/kernel", "MobilenetV2") == "aspp.conv2d.weight"
    assert leimao_name_to_key("logits/bias", "MobilenetV2") == "logits.bias"
    assert leimao_name_to_key("aspp3x3_2/kernel/Adam_1", "MobilenetV2") is None
    assert leimao_name_to_key("beta1_power", "MobilenetV2") is None


# ----------------------------------------------------------------------------- against TensorFlow

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf_keras")
# tf_slim imports "tf_keras.legacy_tf_layers", which TF 2.21's tf_keras only ships under src/.
sys.modules.setdefault("tf_keras.legacy_tf_layers", importlib.import_module("tf_keras.src.legacy_tf_layers"))
slim = pytest.importorskip("tf_slim")
from tf_keras.src.legacy_tf_layers.convolutional import conv2d as tf_layers_conv2d  # noqa: E402
from tf_slim.nets import resnet_utils, resnet_v2  # noqa: E402

tf1 = tf.compat.v1


def _their_head(features, num_classes: int, target_hw):
    """``modules.atrous_spatial_pyramid_pooling`` + ``model.model_initializer``, with the same TF ops."""
    size = [tf.shape(features)[1], tf.shape(features)[2]]
    branches = [tf_layers_conv2d(features, 256, (1, 1), padding="same", name="aspp1x1")]
    for i, rate in enumerate((6, 12, 18), start=1):
        branches.append(tf_layers_conv2d(features, 256, (3, 3), padding="same", dilation_rate=(rate, rate),
                                         name=f"aspp3x3_{i}"))
    image = tf.reduce_mean(features, [1, 2], keepdims=True)
    image = tf_layers_conv2d(image, 256, (1, 1), padding="same")  # unnamed: "conv2d"
    branches.append(tf1.image.resize_bilinear(image, size, align_corners=True))
    pools = tf_layers_conv2d(tf.concat(branches, axis=3), 256, (1, 1), padding="same", name="aspp_outputs")
    logits = tf_layers_conv2d(pools, num_classes, (1, 1), name="logits")
    return tf1.image.resize_bilinear(logits, target_hw)  # TF1 defaults: align_corners=False, no half pixel


def _their_mobilenet_v2_base(x, output_stride: int):
    """slim ``mobilenet_v2.mobilenet_base`` (V2_DEF, depth 1.0, SAME padding), its atrous rule, scope names."""
    spec = [("Conv", 32, 2, None)] + [
        (f"expanded_conv{'' if i == 0 else f'_{i}'}", c, s, e)
        for i, (e, c, s) in enumerate([(1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 32, 1),
                                       (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1), (6, 96, 1), (6, 96, 1),
                                       (6, 96, 1), (6, 160, 2), (6, 160, 1), (6, 160, 1), (6, 320, 1)])
    ] + [("Conv_1", 1280, 1, None)]
    current, rate = 1, 1
    with tf1.variable_scope("MobilenetV2"), \
            slim.arg_scope([slim.conv2d, slim.separable_conv2d], normalizer_fn=slim.batch_norm,
                           activation_fn=tf.nn.relu6, padding="SAME"), \
            slim.arg_scope([slim.batch_norm], center=True, scale=True, is_training=False):
        net = x
        for scope, channels, stride, expansion in spec:
            if current == output_stride:
                layer_stride, layer_rate, rate = 1, rate, rate * stride
            else:
                layer_stride, layer_rate, current = stride, 1, current * stride
            if expansion is None:
                k = 3 if scope == "Conv" else 1
                net = slim.conv2d(net, channels, [k, k], stride=layer_stride, rate=layer_rate, scope=scope)
                continue
            with tf1.variable_scope(scope):
                inp, h = net, net
                inner = net.shape[-1] * expansion
                if expansion > 1:
                    h = slim.conv2d(h, inner, [1, 1], scope="expand")
                h = slim.separable_conv2d(h, None, [3, 3], depth_multiplier=1, stride=layer_stride,
                                          rate=layer_rate, scope="depthwise")
                h = slim.conv2d(h, channels, [1, 1], activation_fn=None, scope="project")
                net = h + inp if layer_stride == 1 and inp.shape[-1] == channels else h
    return net


def _randomize(sess, variables, seed: int) -> None:
    rng = np.random.default_rng(seed)
    feed = {}
    for var in variables:
        name, shape = var.op.name, var.shape.as_list()
        if name.endswith(("weights", "kernel")):
            fan_in = math.prod(shape[:2]) if name.endswith("depthwise_weights") else math.prod(shape[:-1])
            value = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
        elif name.endswith("gamma"):
            value = rng.uniform(0.3, 1.0, shape)
        elif name.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        else:  # beta, moving_mean, biases / bias
            value = rng.normal(0.0, 0.2, shape)
        feed[var.initializer.inputs[1]] = value.astype(np.float32)
    sess.run([var.initializer for var in variables], feed)


def _run_theirs(trunk: str, size: tuple[int, int], x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    graph = tf.Graph()
    with graph.as_default():
        inputs = tf1.placeholder(tf.float32, [None, None, None, 3])
        with tf1.variable_scope("backbone"):
            if trunk == "resnet_v2_50":
                with slim.arg_scope(resnet_utils.resnet_arg_scope()):
                    features, _ = resnet_v2.resnet_v2_50(inputs, is_training=False, global_pool=False,
                                                         output_stride=16)
            else:
                features = _their_mobilenet_v2_base(inputs, 16)
        outputs = _their_head(features, NUM_CLASSES, size)
        variables = tf1.global_variables()
        with tf1.Session(graph=graph) as sess:
            _randomize(sess, variables, seed=3)
            ref = sess.run(outputs, {inputs: x})
            arrays = dict(zip([v.op.name for v in variables], sess.run(variables)))
    return ref, arrays


@pytest.mark.slow  # 20-40 s each (TF graph + session)
@pytest.mark.filterwarnings("ignore:`tf.layers.conv2d` is deprecated")
@pytest.mark.parametrize(("name", "trunk"), [("leimao_deeplabv3_resnet_v2_50", "resnet_v2_50"),
                                             ("leimao_deeplabv3_mobilenet_v2", "mobilenet_v2")])
@pytest.mark.parametrize("size", [(97, 100), (100, 97)])
def test_matches_their_tf_graph(name: str, trunk: str, size: tuple[int, int]) -> None:
    x = np.random.default_rng(4).standard_normal((1, *size, 3)).astype(np.float32)
    ref, arrays = _run_theirs(trunk, size, x)
    assert "conv2d/kernel" in arrays and any(n.startswith("backbone/") for n in arrays)  # their names
    model = build_model(name, num_classes=NUM_CLASSES).eval()
    model.load_state_dict(leimao_arrays_to_state_dict(arrays, model), strict=True)
    with torch.no_grad():
        ours = model(torch.from_numpy(x).permute(0, 3, 1, 2))
    ref_t = torch.from_numpy(ref).permute(0, 3, 1, 2)
    assert ours.shape == ref_t.shape == (1, NUM_CLASSES, *size)
    err = float((ours - ref_t).abs().max() / ref_t.abs().max())
    print(f"{name} {size}: max|ours - TF| / max|TF| = {err:.2e}")
    assert err <= RTOL
    # the final resize is TF1's legacy grid: PyTorch's own bilinear resizes differ
    with torch.no_grad():
        logits = model.forward_logits(torch.from_numpy(x).permute(0, 3, 1, 2))
    for align in (False, True):
        naive = F.interpolate(logits, size=size, mode="bilinear", align_corners=align)
        assert float((naive - ref_t).abs().max() / ref_t.abs().max()) > 1e-2


def test_conversion_errors_name_the_variable() -> None:
    model = build_model("leimao_deeplabv3_mobilenet_v2", num_classes=NUM_CLASSES)
    arrays = {"logits/kernel": np.zeros((1, 1, 256, NUM_CLASSES + 1), np.float32)}
    with pytest.raises(ConversionError, match="logits/kernel"):
        leimao_arrays_to_state_dict(arrays, model, path="x.ckpt")
    with pytest.raises(ConversionError, match="missing"):
        leimao_arrays_to_state_dict({}, model, path="x.ckpt")


@pytest.mark.parametrize(("src", "dst"), [((5, 7), (65, 97)), ((7, 7), (100, 97)), ((13, 12), (7, 5)), ((1, 1), (4, 3))])
def test_resize_bilinear_legacy_is_tf1s(src: tuple[int, int], dst: tuple[int, int]) -> None:
    x = np.random.default_rng(5).standard_normal((1, *src, 3)).astype(np.float32)
    ref = tf1.image.resize_bilinear(x, dst).numpy()  # TF1 defaults
    ours = resize_bilinear_legacy(torch.from_numpy(x).permute(0, 3, 1, 2), dst).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
