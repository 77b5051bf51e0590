"""Each Caffe conversion rule is a named step; each test here fails without its step.

The ablation tests switch one step off (or make one semantic wrong) and show that
parity against OpenCV breaks by far more than the 2e-3 bound.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from converters.caffe import parity, passes, topology
from converters.caffe.convert import convert_caffemodel
from converters.caffe.reader import CaffeLayer, iter_layers
from converters.errors import ConversionError

SIZE = (97, 100)


def _parity(model, net, path, topo, size=SIZE) -> float:
    x = parity.random_input(*size, seed=11)
    ref = parity.opencv_forward(net, path, x, topology.output_blob(topo))
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(x)).numpy()
    return parity.compare(ours, ref)["max_rel"]


def test_batchnorm_statistics_divides_by_factor():
    blobs = [np.array([2.0, 4.0], np.float32), np.array([6.0, 8.0], np.float32), np.array([2.0], np.float32)]
    out = passes.batchnorm_statistics(blobs, path="f", layer="bn")
    np.testing.assert_allclose(out["running_mean"], [1.0, 2.0])
    np.testing.assert_allclose(out["running_var"], [3.0, 4.0])


def test_batchnorm_zero_factor_is_an_error():
    blobs = [np.ones(2, np.float32), np.ones(2, np.float32), np.zeros(1, np.float32)]
    with pytest.raises(ConversionError, match="factor .* is zero"):
        passes.batchnorm_statistics(blobs, path="f.caffemodel", layer="bn_conv1")


def test_fold_scale_into_batchnorm_affine():
    out = passes.fold_scale([np.array([1.5, 2.0], np.float32), np.array([0.1, 0.2], np.float32)], 2,
                            path="f", layer="scale")
    np.testing.assert_allclose(out["weight"], [1.5, 2.0])
    np.testing.assert_allclose(out["bias"], [0.1, 0.2])
    layers = [CaffeLayer("bn", "BatchNorm", ("x",), ("x",), [np.ones(2, np.float32)] * 2 + [np.ones(1, np.float32)],
                         param=_bn_param()),
              CaffeLayer("sc", "Scale", ("x",), ("x",), [np.full(2, 3.0, np.float32), np.full(2, 0.5, np.float32)])]
    named = passes.layer_arrays(layers, "f")
    np.testing.assert_allclose(named.arrays["bn.weight"], [3.0, 3.0])
    np.testing.assert_allclose(named.arrays["bn.bias"], [0.5, 0.5])
    assert "sc.weight" not in named.arrays


def _bn_param():
    from converters.caffe.reader import caffe_pb

    return caffe_pb().LayerParameter(name="bn", type="BatchNorm")


def test_convolution_keeps_bias():
    w = np.ones((21, 8, 3, 3), np.float32)
    out = passes.convolution_params([w, np.arange(21, dtype=np.float32)], path="f", layer="fc1_voc12_c0")
    assert set(out) == {"weight", "bias"} and out["bias"][5] == 5


def test_msc_copies_dropped_when_identical_and_rejected_when_not():
    a = CaffeLayer("conv1", "Convolution", (), (), [np.ones((2, 3, 1, 1), np.float32)])
    b = CaffeLayer("conv1_res075", "Convolution", (), (), [np.ones((2, 3, 1, 1), np.float32)])
    c = CaffeLayer("fc1_voc12_res05_c0", "Convolution", (), (), [np.ones(1, np.float32)])
    kept = list(passes.drop_msc_copies([a, b], "f"))
    assert [k.name for k in kept] == ["conv1"]
    bad = CaffeLayer("conv1_res05", "Convolution", (), (), [np.zeros((2, 3, 1, 1), np.float32)])
    with pytest.raises(ConversionError, match="conv1_res05.*differs from 'conv1'"):
        list(passes.drop_msc_copies([a, bad], "f"))
    with pytest.raises(ConversionError, match="no 1x layer 'fc1_voc12_c0'"):
        list(passes.drop_msc_copies([c], "f"))
    assert passes.canonical_name("fc1_voc12_res075_c3") == "fc1_voc12_c3"
    assert passes.canonical_name("bn_conv1_res05") == "bn_conv1"


def test_real_msc_file_has_three_copies_and_converts_to_one(caffemodels):
    net, path = caffemodels("resnet101_msc")
    names = [layer.name for layer in iter_layers(path) if layer.blobs]
    assert "res4b22_branch2b_res075" in names and "fc1_voc12_res05_c3" in names
    assert len(names) == 3 * len([n for n in names if n == passes.canonical_name(n)])
    conv = convert_caffemodel(path, arch="deeplabv2_resnet101_msc")
    single = convert_caffemodel(caffemodels("resnet101_msc")[1], arch="deeplabv2_resnet101")
    assert conv.state_dict.keys() == single.state_dict.keys()


# --- ablations: each step switched off breaks parity -------------------------------------------


@pytest.fixture(scope="module")
def resnet(caffemodels):
    net, path = caffemodels("resnet101")
    return net, path


def test_parity_holds_with_every_step(resnet):
    net, path = resnet
    assert _parity(convert_caffemodel(path, arch="deeplabv2_resnet101").model, net, path, "resnet101") < 2e-3


def test_without_bn_factor_division_parity_fails(resnet, monkeypatch):
    net, path = resnet
    original = passes.batchnorm_statistics

    def undivided(blobs, *, path, layer):
        return original([blobs[0], blobs[1], np.ones(1, np.float32)], path=path, layer=layer)

    monkeypatch.setattr(passes, "batchnorm_statistics", undivided)
    assert _parity(convert_caffemodel(path, arch="deeplabv2_resnet101").model, net, path, "resnet101") > 0.1


def test_without_scale_folding_parity_fails(resnet, monkeypatch):
    net, path = resnet
    monkeypatch.setattr(passes, "fold_scale", lambda blobs, channels, *, path, layer: {})
    assert _parity(convert_caffemodel(path, arch="deeplabv2_resnet101").model, net, path, "resnet101") > 0.1


def test_wrong_bn_eps_makes_parity_fail(resnet):
    net, path = resnet
    model = convert_caffemodel(path, arch="deeplabv2_resnet101").model
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-3  # TF-slim's / Keras' default instead of Caffe's 1e-5
    assert _parity(model, net, path, "resnet101") > 0.1


def test_without_aspp_bias_parity_fails(resnet):
    net, path = resnet
    model = convert_caffemodel(path, arch="deeplabv2_resnet101").model
    for branch in model.aspp.branches:
        torch.nn.init.zeros_(branch.bias)
    assert _parity(model, net, path, "resnet101") > 1e-2


def test_pool1_without_ceil_mode_breaks_shapes(resnet):
    net, path = resnet
    model = convert_caffemodel(path, arch="deeplabv2_resnet101").model
    size = (104, 104)  # conv1 gives 52: Caffe's pool1 rounds up to 27, floor rounding gives 26
    x = torch.from_numpy(parity.random_input(*size))
    with torch.no_grad():
        assert tuple(model.eval()(x).shape[-2:]) == topology.infer_sizes(net, size)["fc1_voc12"] == (14, 14)
        model.backbone.maxpool.ceil_mode = False  # torchvision's pool1
        assert tuple(model(x).shape[-2:]) == (13, 13)


def test_msc_without_align_corners_parity_fails(caffemodels, monkeypatch):
    from reference_models import caffe_ops

    net, path = caffemodels("resnet101_msc")
    model = convert_caffemodel(path, arch="deeplabv2_resnet101_msc").model
    assert _parity(model, net, path, "resnet101_msc") < 2e-3

    def resize_false(x, size):
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)

    monkeypatch.setattr("reference_models.deeplab_v2.caffe_resize", resize_false)
    assert caffe_ops.caffe_resize is not resize_false
    assert _parity(model, net, path, "resnet101_msc") > 1e-2
