"""Every registered DeepLab v3 / v3+ model: builds, documented output shape at OS 8 and 16, finite, gradients.

Also checks the rename table against variable names of the official DeepLab-TF checkpoints
(model.py / xception.py / mobilenet naming), without needing TensorFlow.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from converters.errors import ConversionError
from converters.tf.rules import map_tf_names, tf_arrays_to_state_dict
from reference_models import build_backbone, build_model, list_models

V3_MODELS = [name for name in list_models() if name.startswith(("deeplabv3_", "deeplabv3plus_"))]
SIZE = 65  # small and odd: ceil(65 / 4) = 17, ceil(65 / 8) = 9, ceil(65 / 16) = 5
NUM_CLASSES = 5


def test_the_issue_models_are_registered() -> None:
    for name in (
        "deeplabv3_resnet50",
        "deeplabv3_resnet101",
        "deeplabv3plus_resnet101",
        "deeplabv3plus_xception65",
        "deeplabv3_mobilenetv2",
    ):
        assert name in V3_MODELS


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n.endswith("_105") else n for n in V3_MODELS]
)
def test_model_shape_finite_and_gradients(name: str, output_stride: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=NUM_CLASSES, output_stride=output_stride)
    expected_stride = 4 if "plus" in name else output_stride
    assert model.logits_stride == expected_stride and model.output_stride == output_stride
    side = math.ceil(SIZE / expected_stride)

    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, SIZE, SIZE))
    assert logits.shape == (1, NUM_CLASSES, side, side)  # logits/semantic at network resolution, not upsampled
    assert torch.isfinite(logits).all()

    model.train()  # batch 2: BatchNorm on the 1x1 image-pooling map needs more than one value per channel
    x = torch.randn(2, 3, SIZE, SIZE, requires_grad=True)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES, side, side) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_predict_is_input_sized() -> None:
    model = build_model("deeplabv3_mobilenetv2", num_classes=NUM_CLASSES).eval()
    labels = model.predict(torch.randn(1, 3, 33, 47))
    assert labels.shape == (1, 33, 47) and labels.dtype == torch.int64


@pytest.mark.parametrize("name", ["deeplabv3_resnet101", "deeplabv3plus_xception65", "deeplabv3_mobilenetv2"])
def test_builders_validate_output_stride_and_are_keyword_only(name: str) -> None:
    with pytest.raises(ValueError, match="output_stride"):
        build_model(name, num_classes=NUM_CLASSES, output_stride=32)
    from reference_models.registry import _MODELS

    with pytest.raises(TypeError):
        _MODELS[name](NUM_CLASSES, 16)  # positional arguments are refused


def test_aspp_rates_and_backbone_dilations() -> None:
    model = build_model("deeplabv3plus_xception65", num_classes=NUM_CLASSES, output_stride=8)
    assert [model.aspp.get_submodule(f"aspp{i}_depthwise").dilation[0] for i in (1, 2, 3)] == [12, 24, 36]
    model = build_model("deeplabv3_resnet101", num_classes=NUM_CLASSES, output_stride=16)
    assert [model.aspp.get_submodule(f"aspp{i}").dilation[0] for i in (1, 2, 3)] == [6, 12, 18]
    # OS 16: block4 rate 2 x multi-grid (1, 2, 4) of the DeepLab beta checkpoints.
    assert [model.backbone.block4[f"unit_{k}"].conv2.dilation[0] for k in (1, 2, 3)] == [2, 4, 8]
    # The stride sits on conv2 of the LAST unit of block1 (slim), not on the first unit.
    assert model.backbone.block1["unit_3"].conv2.stride[0] == 2 and model.backbone.block1["unit_1"].conv2.stride[0] == 1


def test_backbone_feature_info_matches_outputs() -> None:
    for name in ("resnet_v1_50", "resnet_v2_50", "resnet_v1_50_beta", "xception_65", "mobilenet_v2"):
        for output_stride in (8, 16, 32):
            model = build_backbone(name, output_stride=output_stride).eval()
            with torch.no_grad():
                feats = model(torch.randn(1, 3, SIZE, SIZE))
            for key, (channels, stride) in model.feature_info.items():
                assert feats[key].shape[1:] == (channels, math.ceil(SIZE / stride), math.ceil(SIZE / stride)), key


# ----------------------------------------------------------------------------- rename tables

_BN = ("gamma", "beta", "moving_mean", "moving_variance")


def _with_bn(scope: str, weights: str = "weights") -> list[str]:
    return [f"{scope}/{weights}"] + [f"{scope}/BatchNorm/{p}" for p in _BN]


def _official_head_names(separable_aspp: bool, rates: bool, decoder: str | None) -> list[str]:
    """Head variable names as DeepLab-TF's model.py creates them."""
    names = _with_bn("image_pooling") + _with_bn("aspp0") + _with_bn("concat_projection")
    for i in (1, 2, 3) if rates else ():
        if separable_aspp:
            names += _with_bn(f"aspp{i}_depthwise", "depthwise_weights") + _with_bn(f"aspp{i}_pointwise")
        else:
            names += _with_bn(f"aspp{i}")
    if decoder is not None:
        names += _with_bn("decoder/feature_projection0")
    if decoder == "separable":
        for j in (0, 1):
            names += _with_bn(f"decoder/decoder_conv{j}_depthwise", "depthwise_weights")
            names += _with_bn(f"decoder/decoder_conv{j}_pointwise")
    elif decoder == "plain":  # slim.repeat(..., scope='decoder_conv0')
        names += _with_bn("decoder/decoder_conv0/decoder_conv0_1") + _with_bn("decoder/decoder_conv0/decoder_conv0_2")
    return names + ["logits/semantic/weights", "logits/semantic/biases"]


@pytest.mark.parametrize(
    ("name", "kwargs", "head"),
    [
        ("deeplabv3plus_xception65", {}, (True, True, "separable")),
        ("deeplabv3plus_resnet101", {}, (False, True, "plain")),
        ("deeplabv3_resnet50", {"separable": True}, (True, True, None)),
        ("deeplabv3_mobilenetv2", {}, (False, False, None)),
    ],
)
def test_official_head_names_cover_the_head(name: str, kwargs: dict, head: tuple) -> None:
    model = build_model(name, num_classes=NUM_CLASSES, **kwargs)
    forward, _ = map_tf_names(_official_head_names(*head), model)
    head_keys = {
        k for k in model.state_dict() if not k.startswith("backbone.") and not k.endswith("num_batches_tracked")
    }
    assert set(forward.values()) == head_keys


OFFICIAL_BACKBONE_NAMES = {
    "xception_65": {
        "xception_65/entry_flow/conv1_1/weights": "entry_flow.conv1_1.weight",
        "xception_65/entry_flow/block1/unit_1/xception_module/separable_conv1_depthwise/depthwise_weights": (
            "entry_flow.block1.unit_1.separable_conv1_depthwise.weight"
        ),
        "xception_65/entry_flow/block2/unit_1/xception_module/shortcut/BatchNorm/moving_variance": (
            "entry_flow.block2.unit_1.shortcut.bn.running_var"
        ),
        "xception_65/middle_flow/block1/unit_16/xception_module/separable_conv3_pointwise/weights": (
            "middle_flow.block1.unit_16.separable_conv3_pointwise.weight"
        ),
        "xception_65/exit_flow/block2/unit_1/xception_module/separable_conv3_pointwise/BatchNorm/gamma": (
            "exit_flow.block2.unit_1.separable_conv3_pointwise.bn.weight"
        ),
    },
    "mobilenet_v2": {
        "MobilenetV2/Conv/weights": "Conv.weight",
        "MobilenetV2/expanded_conv/depthwise/depthwise_weights": "expanded_conv.depthwise.weight",
        "MobilenetV2/expanded_conv_1/expand/BatchNorm/beta": "expanded_conv_1.expand.bn.bias",
        "MobilenetV2/expanded_conv_16/project/BatchNorm/moving_mean": "expanded_conv_16.project.bn.running_mean",
    },
    "resnet_v1_101_beta": {
        "resnet_v1_101/conv1_1/weights": "conv1_1.weight",
        "resnet_v1_101/conv1_3/BatchNorm/gamma": "conv1_3.bn.weight",
        "resnet_v1_101/block3/unit_23/bottleneck_v1/conv2/weights": "block3.unit_23.conv2.weight",
    },
    "resnet_v2_50": {
        "resnet_v2_50/conv1/biases": "conv1.bias",
        "resnet_v2_50/block1/unit_1/bottleneck_v2/preact/gamma": "block1.unit_1.preact.weight",
        "resnet_v2_50/block1/unit_1/bottleneck_v2/shortcut/biases": "block1.unit_1.shortcut.bias",
        "resnet_v2_50/postnorm/moving_variance": "postnorm.running_var",
    },
}


@pytest.mark.parametrize("backbone", sorted(OFFICIAL_BACKBONE_NAMES))
def test_official_backbone_names_map(backbone: str) -> None:
    model = build_backbone(backbone, output_stride=16)
    expected = OFFICIAL_BACKBONE_NAMES[backbone]
    forward, reverse = map_tf_names(list(expected), model)
    assert forward == expected and set(reverse) == set(expected.values())
    keys = model.state_dict()
    assert all(key in keys for key in expected.values())


def test_ignored_and_head_logits_are_distinguished() -> None:
    model = build_model("deeplabv3_mobilenetv2", num_classes=NUM_CLASSES)
    names = [
        "global_step",
        "MobilenetV2/Logits/Conv2d_1c_1x1/weights",  # ImageNet classifier: ignored
        "MobilenetV2/Conv_1/weights",  # layer_19: ignored
        "aspp0/weights/Momentum",
        "aspp0/weights/ExponentialMovingAverage",
        "logits/semantic/weights",  # the segmentation head: kept
    ]
    forward, _ = map_tf_names(names, model)
    assert forward == {"logits/semantic/weights": "logits.semantic.weight"}


def test_layouts_roundtrip_through_conversion() -> None:
    """Write a model's weights in TF layouts under official names, convert back, get them exactly."""
    model = build_model("deeplabv3_mobilenetv2", num_classes=NUM_CLASSES)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    inverse = {"weight": "weights", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
    arrays: dict[str, np.ndarray] = {}
    for key, value in state.items():
        *path, param = key.split(".")
        a = value.numpy()
        if path[-1] == "bn":
            name = "/".join(path[:-1]) + "/BatchNorm/" + {"weight": "gamma"}.get(param, inverse[param])
        elif param == "weight" and path[-1] == "depthwise":
            name, a = "/".join(path) + "/depthwise_weights", a[:, 0].transpose(1, 2, 0)[:, :, :, None]
        elif param == "weight":
            name, a = "/".join(path) + "/weights", a.transpose(2, 3, 1, 0)
        else:
            name = "/".join(path) + "/biases"
        arrays[name.replace("backbone/", "MobilenetV2/").replace("aspp/", "")] = np.ascontiguousarray(a)
    converted = tf_arrays_to_state_dict(arrays, model)
    for key, value in state.items():
        assert torch.equal(converted[key], value), key
    with pytest.raises(ConversionError) as err:
        tf_arrays_to_state_dict({**arrays, "aspp9/weights": arrays["aspp0/weights"]}, model, path="m.ckpt")
    assert err.value.layer == "aspp9/weights" and "m.ckpt" in str(err.value)
