"""Every registered DeepLab v2 model: builds by keyword, documented output size, finite, gradients flow."""

from __future__ import annotations

import pytest
import torch

from reference_models import build_model, list_models

V2 = ["deeplabv1_resnet101", "deeplabv2_resnet101", "deeplabv2_resnet101_msc", "deeplabv2_vgg16",
      "deeplabv2_vgg16_largefov"]


def test_v2_models_are_registered():
    assert set(V2) <= set(list_models())


def test_builders_are_keyword_only():
    with pytest.raises(TypeError):
        build_model("deeplabv2_resnet101", 21)  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown model"):
        build_model("deeplabv2_resnet152", num_classes=21)


@pytest.mark.parametrize("name", V2)
def test_output_size_finite_and_gradients(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5)
    x = torch.randn(1, 3, 65, 65, requires_grad=True)
    model.eval()
    out = model(x)
    assert out.shape == (1, 5, 9, 9)  # output stride 8 by Caffe's rules: 65 -> 33 -> 17 -> 9
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_msc_train_outputs_and_frozen_bn():
    model = build_model("deeplabv2_resnet101_msc", num_classes=3).train()
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert all(not p.requires_grad for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
               for p in m.parameters())
    out = model(torch.randn(1, 3, 321, 321))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "fused": (41, 41), "scale_1": (41, 41), "scale_0.75": (41, 41), "scale_0.5": (21, 21)}
    fused = torch.maximum(torch.maximum(out["scale_1"], out["scale_0.75"]),
                          torch.nn.functional.interpolate(out["scale_0.5"], size=(41, 41), mode="bilinear",
                                                          align_corners=True))
    torch.testing.assert_close(out["fused"], fused)
