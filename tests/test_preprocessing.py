"""Preprocessing.apply: the contract's arithmetic, in float32, padded as it is written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reference_models import preprocessing as pre
from reference_models.preprocessing import Preprocessing

CONTRACTS = [pre.CAFFE_DEEPLAB_V2, pre.TF_SLIM_VGG, pre.TF_SLIM_INCEPTION, pre.DEEPLAB_TF_RESNET_V1_MEAN,
             pre.DEEPLAB_TF_UNIT_RANGE,
             Preprocessing(channel_order="RGB", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)),
             Preprocessing(channel_order="BGR", mean=(0.1, 0.2, 0.3), std=(3.0, 1.0, 0.7), scale=1 / 255)]


def _numpy_reference(p: Preprocessing, image: np.ndarray, pad_to=None) -> torch.Tensor:
    """The contract written out with numpy, channel by channel in float32, then padded with 0."""
    img = np.asarray(image, dtype=np.float32)
    if p.channel_order == "BGR":
        img = img[..., ::-1]
    img = (img * np.float32(p.scale) - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    if pad_to is not None:
        x = torch.nn.functional.pad(x, (0, max(pad_to[1] - x.shape[-1], 0), 0, max(pad_to[0] - x.shape[-2], 0)))
    return x


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda p: f"{p.channel_order}-{p.mean[0]}-{p.std[0]}-{p.scale:.3g}")
def test_apply_is_the_contracts_float32_arithmetic_bit_for_bit(contract) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image[0, 0] = (0, 255, 128)
    for pad_to in (None, (64, 64), (20, 80), (37, 53)):
        got = contract.apply(image, pad_to=pad_to)
        want = _numpy_reference(contract, image, pad_to)
        assert got.dtype == torch.float32 and got.is_contiguous() and got.shape == want.shape
        assert torch.equal(got, want), pad_to
    floats = rng.uniform(-3, 260, (9, 11, 3))  # float64, as training transforms hand it over
    assert torch.equal(contract.apply(floats), _numpy_reference(contract, floats))
    strided = image[::2, ::-1]  # a non-contiguous view
    assert torch.equal(contract.apply(strided, pad_to=(25, 30)), _numpy_reference(contract, strided, (25, 30)))


def test_apply_rejects_what_is_not_an_rgb_image() -> None:
    with pytest.raises(ValueError, match="HxWx3"):
        pre.CAFFE_DEEPLAB_V2.apply(np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="HxWx3"):
        pre.CAFFE_DEEPLAB_V2.apply(np.zeros((4, 5, 4), np.uint8))
