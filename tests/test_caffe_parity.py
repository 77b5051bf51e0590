"""Parity: official-topology caffemodels through OpenCV's Caffe importer vs our converted models.

Bound (the Caffe path): max|ours - ref| / max|ref| <= 2e-3 and argmax agreement >= 99.9 %,
on odd and even input sizes. The weights are random but realistic (BN factor 999.98,
channels with variance near eps, non-zero ASPP biases), so a wrong eps, a missing
BN factor division, a dropped bias or align_corners=False fail by orders of magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from converters import caffe2torch
from converters.caffe import parity, topology
from converters.io import load_state_dict
from reference_models import build_model

MAX_REL = 2e-3
MIN_AGREE = 0.999


def convert_with_cli(path, arch, out) -> dict:
    rc = caffe2torch.main(["--caffemodel", str(path), "--arch", arch, "--out", str(out), "--quiet"])
    assert rc == 0
    return load_state_dict(out)


def run_ours(arch: str, state: dict, x: np.ndarray, num_classes: int = 21) -> np.ndarray:
    model = build_model(arch, num_classes=num_classes)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def check(ours: np.ndarray, ref: np.ndarray) -> dict:
    result = parity.compare(ours, ref)
    assert result["max_rel"] <= MAX_REL, result
    assert result["argmax_agreement"] >= MIN_AGREE, result
    return result


CASES = [
    # (topology, registry model, input sizes)
    ("resnet101", "deeplabv2_resnet101", [(321, 321), (97, 100), (100, 97)]),
    ("resnet101_init", "deeplabv1_resnet101", [(97, 97)]),
    ("vgg16_aspp", "deeplabv2_vgg16", [(321, 321), (97, 100)]),
    ("vgg16_largefov", "deeplabv2_vgg16_largefov", [(100, 100), (97, 97)]),
    ("resnet101_msc", "deeplabv2_resnet101_msc", [(100, 97)]),
]


@pytest.mark.parametrize("topo,arch,sizes", CASES, ids=[c[1] for c in CASES])
def test_parity_with_opencv(caffemodels, tmp_path, topo, arch, sizes):
    net, path = caffemodels(topo)
    state = convert_with_cli(path, arch, tmp_path / "w.pth")
    for h, w in sizes:
        x = parity.random_input(h, w, seed=h * 1000 + w)
        ref = parity.opencv_forward(net, path, x, topology.output_blob(topo))
        ours = run_ours(arch, state, x)
        assert ours.shape == ref.shape
        check(ours, ref)


@pytest.mark.slow
@pytest.mark.parametrize("size", [(513, 513), (321, 321)])
def test_parity_full_size_msc(caffemodels, tmp_path, size):
    """The released 3-scale ResNet-101 at its real sizes (321 train crop, 513 test crop)."""
    net, path = caffemodels("resnet101_msc")
    state = convert_with_cli(path, "deeplabv2_resnet101_msc", tmp_path / "w.safetensors")
    x = parity.random_input(*size, seed=7)
    ref = parity.opencv_forward(net, path, x, "fc_fusion")
    ours = run_ours("deeplabv2_resnet101_msc", state, x)
    assert ours.shape == (1, 21, 41, 41) if size == (321, 321) else (1, 21, 65, 65)
    check(ours, ref)


@pytest.mark.slow
def test_parity_full_size_single_scale_513(caffemodels, tmp_path):
    net, path = caffemodels("resnet101")
    state = convert_with_cli(path, "deeplabv2_resnet101", tmp_path / "w.pth")
    x = parity.random_input(513, 513, seed=3)
    check(run_ours("deeplabv2_resnet101", state, x), parity.opencv_forward(net, path, x, "fc1_voc12"))


def test_msc_branch_sizes_follow_caffe():
    """321 -> 241 (0.75) and 161 (0.5); scores 41 at every scale after Interp; 513 -> 385 / 257, scores 65."""
    from reference_models.caffe_ops import scaled_size

    assert [scaled_size(321, s) for s in (0.75, 0.5)] == [241, 161]
    assert [scaled_size(513, s) for s in (0.75, 0.5)] == [385, 257]
    net = topology.build_net("resnet101_msc", num_classes=21)
    sizes = topology.infer_sizes(net, (321, 321))
    assert sizes["fc1_voc12_res075"] == (31, 31) and sizes["fc1_voc12_res075_interp"] == (41, 41)
    assert sizes["fc1_voc12_res05"] == (21, 21) and sizes["fc_fusion"] == (41, 41)
