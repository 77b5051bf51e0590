"""The Keras twins (``reference_models.keras``) against the PyTorch reference models, and as Keras artefacts.

* Every registered model and backbone: the same random weights (one PyTorch state dict, written into
  Keras by ``converters.keras_writer``), the same input -> max|keras - torch| / max|torch| <= 1e-4,
  odd and even sizes, output strides 8 and 16 for the TF-ported families.
* The Keras-only quirk layers against PyTorch's (Caffe ceil-mode pooling, Interp sizes), each with a
  check that the naive Keras layer really differs.
* ``.keras`` save / reload and SavedModel export (``model.export``) serve the same outputs, at two
  input sizes from one exported artefact (dynamic H, W).
* The writer's checks (missing, leftover, shape) and that ``import reference_models`` needs no TF.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from converters.errors import ConversionError  # noqa: E402
from converters.keras_writer import keras_arrays, load_state_dict_into_keras  # noqa: E402
from reference_models import build_backbone, build_model  # noqa: E402
from reference_models.keras import (  # noqa: E402
    build_keras_backbone,
    build_keras_model,
    list_keras_backbones,
    list_keras_models,
)

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

RTOL = 1e-4
NUM_CLASSES = 5
SIZES = ((97, 100), (100, 97))
ISSUE_MODELS = (
    "deeplabv2_resnet101", "deeplabv2_resnet101_msc", "deeplabv2_vgg16", "deeplabv2_vgg16_largefov",
    "deeplabv1_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3plus_resnet50",
    "deeplabv3plus_resnet101", "deeplabv3_xception65", "deeplabv3plus_xception65", "deeplabv3_mobilenetv2",
)  # fmt: skip


def randomize(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random He-scaled weights and random, non-default BatchNorm statistics (so epsilon matters); loads them."""
    gen = torch.Generator().manual_seed(seed)
    if any(t.is_meta for t in model.state_dict().values()):
        model.to_empty(device="cpu")
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(value)
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        elif key.endswith(("running_mean", "bias")):
            state[key] = torch.randn(value.shape, generator=gen) * 0.2
        elif value.ndim == 1:  # BatchNorm gamma
            state[key] = torch.rand(value.shape, generator=gen) * 0.7 + 0.3
        else:
            state[key] = torch.randn(value.shape, generator=gen) * (2.0 / value[0].numel()) ** 0.5
    model.load_state_dict(state, strict=True)
    return state


def rel(ours_nhwc: np.ndarray, ref_nchw: torch.Tensor) -> float:
    ref = ref_nchw.detach().numpy()
    ours = np.asarray(ours_nhwc).transpose(0, 3, 1, 2)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert np.isfinite(ours).all()
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def meta(builder, *args, **kwargs) -> torch.nn.Module:
    """A PyTorch model without initialisation (``randomize`` fills it): saves seconds per ResNet-101."""
    with torch.device("meta"):
        return builder(*args, **kwargs).eval()


def _inputs(seed: int = 0) -> dict[tuple[int, int], np.ndarray]:
    rng = np.random.default_rng(seed)
    return {size: rng.standard_normal((1, *size, 3)).astype(np.float32) for size in SIZES}


def _torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2)


def test_every_issue_model_has_a_keras_twin() -> None:
    assert set(ISSUE_MODELS) <= set(list_keras_models())


def _model_cases() -> list:
    # A -101 (-105) model whose -50 (-54) sibling is listed is that model with more units: the sibling runs
    # in the fast suite, the deeper twin in the full one.
    names = list_keras_models()
    deeper = {n for n in names if n.endswith("_105") or (n.endswith("101") and n[:-3] + "50" in names)}
    cases = [pytest.param(name, {}, id=name, marks=[pytest.mark.slow] if name in deeper else [])
             for name in names]
    # a v3 model at the other output stride (ASPP rates double); every TF trunk's OS 8 schedule is
    # checked by test_keras_backbone_matches_torch
    cases.append(pytest.param("deeplabv3_mobilenetv2", {"output_stride": 8}, id="deeplabv3_mobilenetv2-os8"))
    return cases


@pytest.mark.parametrize(("name", "kwargs"), _model_cases())
def test_keras_matches_torch(name: str, kwargs: dict) -> None:
    torch_model = meta(build_model, name, num_classes=NUM_CLASSES, **kwargs)
    state = randomize(torch_model)
    keras_model = load_state_dict_into_keras(build_keras_model(name, num_classes=NUM_CLASSES, **kwargs), state)
    x = _inputs()[(97, 100)]  # odd height, even width
    with torch.no_grad():
        ref = torch_model(_torch(x))
    assert rel(keras_model(x, training=False), ref) <= RTOL


# The -101 (-105) trunks are the -50 (-54) ones with more units; they are checked inside the full models.
@pytest.mark.parametrize("name", [b for b in list_keras_backbones() if not b.endswith(("_101", "_101_beta", "_105"))])
def test_keras_backbone_matches_torch(name: str) -> None:
    output_stride = 8
    torch_model = meta(build_backbone, name, output_stride=output_stride)
    state = randomize(torch_model, seed=1)
    keras_model = load_state_dict_into_keras(build_keras_backbone(name, output_stride=output_stride), state)
    x = _inputs(1)[(100, 97)]
    with torch.no_grad():
        ref = torch_model(_torch(x))
    ours = keras_model(x, training=False)
    assert set(ours) == set(ref)
    for key in ref:
        assert rel(ours[key], ref[key]) <= RTOL, key


def test_weights_h5_round_trip_and_layer_names(tmp_path) -> None:
    """Keras layer names are the PyTorch module paths, and a .weights.h5 reloads into a fresh build."""
    name = "deeplabv3_mobilenetv2"
    state = randomize(meta(build_model, name, num_classes=NUM_CLASSES))
    model = load_state_dict_into_keras(build_keras_model(name, num_classes=NUM_CLASSES), state)
    modules = {k.rsplit(".", 1)[0] for k in state}
    weighted = {layer.name for layer in model.layers if layer.weights}
    assert weighted == modules
    model.save_weights(tmp_path / "m.weights.h5")
    again = build_keras_model(name, num_classes=NUM_CLASSES)
    again.load_weights(tmp_path / "m.weights.h5")
    x = _inputs()[(97, 100)]
    np.testing.assert_array_equal(again(x, training=False), model(x, training=False))


# ----------------------------------------------------------------------------- the quirk layers


@pytest.mark.parametrize("size", [(9, 10), (10, 9), (41, 41), (8, 8)])
@pytest.mark.parametrize(("kernel", "stride", "pad"), [(3, 2, 1), (3, 1, 1), (2, 2, 0)])
def test_caffe_max_pool_matches_ceil_mode(size: tuple[int, int], kernel: int, stride: int, pad: int) -> None:
    from reference_models.keras.layers import CaffeMaxPool

    x = np.random.default_rng(2).standard_normal((1, *size, 2)).astype(np.float32) - 3.0  # negative: -inf pad
    ref = torch.nn.MaxPool2d(kernel, stride, pad, ceil_mode=True)(_torch(x))
    ours = CaffeMaxPool(kernel, stride, pad)(x)
    assert rel(ours, ref) == 0.0
    if (kernel, stride, pad) == (3, 2, 1) and size[0] % 2 == 0:  # Keras' own pooling rounds differently
        naive = keras.layers.MaxPooling2D(3, 2, padding="same")(x)
        assert naive.shape != ours.shape or not np.array_equal(naive, ours)


def test_caffe_interp_sizes() -> None:
    from reference_models.keras.layers import CaffeInterp

    for n, expected in ((321, (241, 161)), (513, (385, 257)), (97, (73, 49))):
        x = np.zeros((1, n, n + 1, 1), np.float32)
        got = tuple(CaffeInterp(s)(x).shape[1] for s in (0.75, 0.5))
        assert got == expected, n


@pytest.mark.parametrize(("src", "dst"), [((5, 7), (17, 25)), ((1, 1), (9, 9)), ((13, 12), (7, 5))])
def test_resize_like_is_align_corners(src: tuple[int, int], dst: tuple[int, int]) -> None:
    from reference_models.keras.layers import ResizeLike

    x = np.random.default_rng(4).standard_normal((1, *src, 3)).astype(np.float32)
    ours = ResizeLike()([x, np.zeros((1, *dst, 1), np.float32)])
    ref = torch.nn.functional.interpolate(_torch(x), size=dst, mode="bilinear", align_corners=True)
    assert rel(ours, ref) <= 1e-6
    if src != (1, 1):  # Keras' / TF2's own bilinear resize (half-pixel centres) is a different op
        assert rel(keras.layers.Resizing(*dst, interpolation="bilinear")(x), ref) > 1e-2


def test_msc_caffe_output_size() -> None:
    model = build_keras_model("deeplabv2_resnet101_msc", num_classes=3, input_shape=(321, 321, 3))
    assert tuple(model.output.shape) == (None, 41, 41, 3)


# ----------------------------------------------------------------------------- saving, export, writer


def test_keras_file_and_saved_model_serve_the_same(tmp_path) -> None:
    """A one-unit-per-stage 3-scale DeepLab v2 (every custom layer: Caffe pooling, Interp, align_corners
    resize, max fusion over shared layers, frozen BN) saved, reloaded and exported."""
    from reference_models.deeplab_v2 import MSC_SCALES, ASPPv2, CaffeResNet, DeepLabV2
    from reference_models.keras.mirror import mirror_model

    torch_model = meta(DeepLabV2, CaffeResNet(blocks=(1, 1, 1, 1)), ASPPv2(2048, NUM_CLASSES), scales=MSC_SCALES)
    state = randomize(torch_model)
    model = load_state_dict_into_keras(mirror_model(torch_model, name="msc_small"), state)
    inputs = _inputs(3)
    expected = {size: model(x, training=False).numpy() for size, x in inputs.items()}

    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    model.export(tmp_path / "saved_model", verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved_model"))
    for size, x in inputs.items():  # one artefact, two input sizes: H, W stay dynamic
        with torch.no_grad():
            assert rel(expected[size], torch_model(_torch(x))) <= RTOL
        np.testing.assert_allclose(reloaded(x, training=False).numpy(), expected[size], rtol=0, atol=1e-5)
        out = served.serve(tf.constant(x)).numpy()
        assert np.abs(out - expected[size]).max() <= 1e-5 * np.abs(expected[size]).max(), size


def test_writer_checks_name_the_tensor() -> None:
    name = "deeplabv2_vgg16_largefov"
    state = build_model(name, num_classes=NUM_CLASSES).state_dict()
    model = build_keras_model(name, num_classes=NUM_CLASSES)
    keras_arrays(model, state)

    with pytest.raises(ConversionError, match=r"aspp\.branches\.0\.fc8\.bias"):
        keras_arrays(model, {k: v for k, v in state.items() if k != "aspp.branches.0.fc8.bias"}, path="x")
    with pytest.raises(ConversionError, match="unconverted") as err:
        keras_arrays(model, {**state, "aspp.branches.1.fc8.weight": state["aspp.branches.0.fc8.weight"]},
                     path="x", source_layer={"aspp.branches.1.fc8.weight": "fc8_voc12_2"})
    assert err.value.layer == "fc8_voc12_2"
    wrong = {**state, "backbone.conv1_1.weight": torch.zeros(64, 3, 5, 5)}
    with pytest.raises(ConversionError, match=r"backbone\.conv1_1\.weight.*shape"):
        keras_arrays(model, wrong, path="x")


def test_reference_models_import_without_tensorflow() -> None:
    code = ("import sys, reference_models, reference_models.keras as k; assert k.list_keras_models(); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
