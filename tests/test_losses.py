"""The training losses: Caffe's label shrink (Interp + int cast), the 4-term v2 loss, normalisations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reproduce.losses import SegmentationLoss, caffe_interp_align_corners, caffe_shrink_labels


def _labels(n: int, h: int, w: int, classes: int = 21, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, classes, (n, h, w), generator=g)
    lab[:, :5, :7] = 255
    return lab


@pytest.mark.parametrize("shrink", [8, 16])
def test_shrink_on_321_is_strided_subsampling(shrink):
    lab = _labels(2, 321, 321)
    out = caffe_shrink_labels(lab, shrink, num_classes=21)
    assert out.shape == (2, 320 // shrink + 1, 320 // shrink + 1)  # 41, 21: the train net's sizes
    assert torch.equal(out, lab[:, ::shrink, ::shrink])


def test_shrink_general_rule_matches_caffe_formula():
    """A non-exact ratio: each output blends its neighbours as Caffe's interp.cpp (float32) and truncates."""
    lab = torch.tensor([[[0, 10, 20, 30, 40, 50, 60]]], dtype=torch.int64).expand(1, 3, 7).clone()
    # W 7 -> shrink 4 -> (7-1)//4 + 1 = 2 outputs; r = 6/1 = 6: samples 0 and 6 exactly.
    assert caffe_shrink_labels(lab, 4)[0, 0].tolist() == [0, 60]
    lab = torch.arange(10, dtype=torch.int64).mul(3)[None, None].expand(1, 2, 10).clone()
    # W 10, shrink 4 -> 3 outputs; r = 9/2 = 4.5: samples 0, 4.5, 9 -> 0, (12+15)/2 = 13.5 -> 13, 27.
    assert caffe_shrink_labels(lab, 4)[0, 0].tolist() == [0, 13, 27]


def test_shrink_blend_with_ignore_becomes_ignore():
    lab = torch.tensor([[[3, 255, 255, 255, 255, 255, 255, 255, 255, 255]]]).expand(1, 2, 10).clone()
    out = caffe_shrink_labels(lab, 4, num_classes=21)
    assert out[0, 0].tolist() == [3, 255, 255]  # 4.5 blends 255 and 255 -> 255; never a bogus class


def test_interp_matches_torch_align_corners():
    x = torch.randn(2, 13, 17)
    ours = caffe_interp_align_corners(x, (5, 6))
    ref = F.interpolate(x[:, None], size=(5, 6), mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_caffe_msc_loss_terms_and_sizes():
    torch.manual_seed(0)
    lab = _labels(2, 321, 321)
    outputs = {k: torch.randn(2, 21, s, s) for k, s in (("fused", 41), ("scale_1", 41), ("scale_0.75", 41),
                                                         ("scale_0.5", 21))}
    loss = SegmentationLoss("caffe_msc", num_classes=21, normalization="per_image")
    targets = loss.targets(lab)
    terms = loss(outputs, targets)
    assert set(terms) == {"fused", "scale_1", "scale_0.75", "scale_0.5"}
    # per_image: each term is the sum over images of the per-image mean CE over valid pixels.
    t = lab[:, ::16, ::16]
    expected = sum(F.cross_entropy(outputs["scale_0.5"][i : i + 1], t[i : i + 1], ignore_index=255) for i in range(2))
    torch.testing.assert_close(terms["scale_0.5"], expected)
    dens = loss.denominators(targets)
    assert float(dens["fused"]) == 2.0


def test_size_mismatch_is_explained():
    loss = SegmentationLoss("caffe_msc", num_classes=21)
    lab = _labels(1, 321, 321)
    outputs = {k: torch.randn(1, 21, 40, 40) for k in ("fused", "scale_1", "scale_0.75", "scale_0.5")}
    with pytest.raises(ValueError, match="differ in size"):
        loss(outputs, loss.targets(lab))


def test_pixels_normalisation_equals_batch_mean_and_split_invariance():
    """Summing per-micro-batch sums / global count == one big batch mean (what accumulation relies on)."""
    torch.manual_seed(1)
    lab = _labels(4, 33, 33, classes=5)
    logits = torch.randn(4, 5, 9, 9)
    loss = SegmentationLoss("upsample", num_classes=5, normalization="pixels")
    whole = loss(logits, loss.targets(lab))["out"] / loss.denominators(loss.targets(lab))["out"]
    up = F.interpolate(logits, size=(33, 33), mode="bilinear", align_corners=True)
    torch.testing.assert_close(whole.float(), F.cross_entropy(up, lab, ignore_index=255))
    den = sum(loss.denominators(loss.targets(lab[i : i + 2]))["out"] for i in (0, 2))
    split = sum(loss(logits[i : i + 2], loss.targets(lab[i : i + 2]))["out"] for i in (0, 2)) / den
    torch.testing.assert_close(split.float(), whole.float())


def test_image_without_valid_pixels_contributes_zero():
    lab = torch.full((1, 17, 17), 255)
    loss = SegmentationLoss("upsample", num_classes=3, normalization="per_image")
    out = loss(torch.randn(1, 3, 5, 5), loss.targets(lab))["out"]
    assert float(out) == 0.0 and np.isfinite(float(out))
