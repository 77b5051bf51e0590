"""torchvision segmentation checkpoints: ``deeplabv3_resnet50/101`` and ``deeplabv3_mobilenet_v3_large``.

Files: plain state dicts (the published ``deeplabv3_resnet101_coco-586e9e4e.pth`` etc., or
``model.state_dict()`` of one's own training with torchvision's reference scripts, whose
``checkpoint.pth`` holds it under ``model``). With ``aux_loss`` the ``aux_classifier.*`` keys
(FCN head on ResNet ``layer3`` / MobileNet C2) are present; they are kept (``aux=True``).

Key layout (read in ``models/segmentation/deeplabv3.py``, ``fcn.py``, ``models/resnet.py``,
``models/mobilenetv3.py``): ``backbone`` is an ``IntermediateLayerGetter`` over the ResNet (keys
``backbone.conv1``, ``backbone.layer{1-4}.{j}...``; ``fc`` dropped) or over MobileNet-v3's
``features`` (``backbone.{i}...``); ``classifier`` is ``DeepLabHead``: ``classifier.0`` the ASPP
(``convs.{0-3}.{0,1}``, pooling ``convs.4.{1,2}``, ``project.{0,1}``), ``classifier.1/2`` the 3x3 conv
and BN, ``classifier.4`` the 1x1 logits; ``aux_classifier.{0,1,4}`` conv, BN, logits.
Output stride is fixed by torchvision (8 for ResNet, 16 for MobileNet-v3). Our models return
torchvision's ``out`` (a tensor); ``forward_dict`` gives ``{"out", "aux"}``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from converters.errors import ConversionError
from converters.peers.common import (
    Rule,
    Shape,
    Target,
    bn,
    conv,
    count_blocks,
    resnet_depth,
    torchvision_resnet,
    unwrap_entry,
)
from reference_models.preprocessing import Preprocessing
from reference_models.torchvision_style import MNV3_LARGE, make_divisible

# ImageNet normalisation on [0, 1] RGB (transforms._presets.SemanticSegmentation, references/segmentation)
PREPROCESSING = Preprocessing(
    channel_order="RGB",
    mean=(123.675, 116.28, 103.53),  # (0.485, 0.456, 0.406) * 255
    std=(58.395, 57.12, 57.375),  # (0.229, 0.224, 0.225) * 255
    train_crop=480,
    test_crop=520,
    pad="training: RandomCrop pads a smaller image with 0 (image) / 255 (label)",
    crop="training: smaller side resized to a random value in [260, 1040], flip, random 480 crop; "
    "test: smaller side resized to 520, no crop",
    resize="bilinear for images, nearest for labels; logits resized with align_corners=False",
)

NAME = "torchvision"
DESCRIPTION = "torchvision: deeplabv3_resnet50/101, deeplabv3_mobilenet_v3_large (state dict, with or without aux)"


def aspp_rules(peer: str, ours: str = "aspp") -> list[Rule]:
    """torchvision / VainF ``ASPP`` at module path ``peer`` -> our ``TorchASPP``."""
    p = peer.replace(".", r"\.")
    return [
        (rf"{p}\.convs\.(?P<b>[0-3])\.(?P<j>[01])", ours + ".convs.{b}.{j}"),
        (rf"{p}\.convs\.4\.1", f"{ours}.convs.4.conv"),
        (rf"{p}\.convs\.4\.2", f"{ours}.convs.4.bn"),
        (rf"{p}\.project\.0", f"{ours}.project.conv"),
        (rf"{p}\.project\.1", f"{ours}.project.bn"),
    ]


def aspp_manifest(prefix: str, in_ch: int, channels: int = 256) -> dict[str, Shape]:
    m = {**conv(f"{prefix}.convs.0.0", channels, in_ch), **bn(f"{prefix}.convs.0.1", channels)}
    for b in (1, 2, 3):
        m.update({**conv(f"{prefix}.convs.{b}.0", channels, in_ch, 3), **bn(f"{prefix}.convs.{b}.1", channels)})
    m.update({**conv(f"{prefix}.convs.4.1", channels, in_ch), **bn(f"{prefix}.convs.4.2", channels)})
    m.update({**conv(f"{prefix}.project.0", channels, 5 * channels), **bn(f"{prefix}.project.1", channels)})
    return m


def mobilenet_v3_large_manifest(prefix: str) -> dict[str, Shape]:
    """torchvision ``mobilenet_v3_large().features`` keys (``{i}.block.{j}...``)."""
    m = {**conv(f"{prefix}0.0", 16, 3, 3), **bn(f"{prefix}0.1", 16)}
    for i, (in_ch, k, exp, out, se, _hs, _s, _d) in enumerate(MNV3_LARGE, start=1):
        j = 0
        p = f"{prefix}{i}.block"
        if exp != in_ch:
            m.update({**conv(f"{p}.0.0", exp, in_ch), **bn(f"{p}.0.1", exp)})
            j = 1
        m.update({**conv(f"{p}.{j}.0", exp, exp, k, groups=exp), **bn(f"{p}.{j}.1", exp)})
        j += 1
        if se:
            sq = make_divisible(exp // 4)
            m.update({**conv(f"{p}.{j}.fc1", sq, exp, bias=True), **conv(f"{p}.{j}.fc2", exp, sq, bias=True)})
            j += 1
        m.update({**conv(f"{p}.{j}.0", out, exp), **bn(f"{p}.{j}.1", out)})
    m.update({**conv(f"{prefix}16.0", 960, 160), **bn(f"{prefix}16.1", 960)})
    return m


def manifest(backbone: str, num_classes: int, aux: bool) -> dict[str, Shape]:
    """Every key and shape torchvision's ``deeplabv3_<backbone>(num_classes=..., aux_loss=aux)`` creates."""
    if backbone == "mobilenet_v3_large":
        m, out_ch, aux_ch = mobilenet_v3_large_manifest("backbone."), 960, 40
    else:
        m, out_ch, aux_ch = torchvision_resnet("backbone.", {"resnet50": (3, 4, 6, 3),
                                                             "resnet101": (3, 4, 23, 3)}[backbone]), 2048, 1024
    m.update(aspp_manifest("classifier.0", out_ch))
    m.update({**conv("classifier.1", 256, 256, 3), **bn("classifier.2", 256),
              **conv("classifier.4", num_classes, 256, bias=True)})
    if aux:
        m.update({**conv("aux_classifier.0", aux_ch // 4, aux_ch, 3), **bn("aux_classifier.1", aux_ch // 4),
                  **conv("aux_classifier.4", num_classes, aux_ch // 4, bias=True)})
    return m


_HEAD_RULES: list[Rule] = aspp_rules("classifier.0") + [
    (r"classifier\.1", "head.conv"),
    (r"classifier\.2", "head.bn"),
    (r"classifier\.4", "head.logits"),
    (r"aux_classifier\.0", "aux_classifier.conv"),
    (r"aux_classifier\.1", "aux_classifier.bn"),
    (r"aux_classifier\.4", "aux_classifier.logits"),
]
RULES: dict[str, list[Rule]] = {
    "resnet": [(r"backbone\.(?P<rest>conv1|bn1|layer[1-4]\..+)", "backbone.{rest}")] + _HEAD_RULES,
    "mobilenet_v3_large": [(r"backbone\.(?P<i>\d+)\.(?P<rest>.+)", "backbone.features.{i}.{rest}")] + _HEAD_RULES,
}


def unwrap(obj: Any, path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A bare state dict, or the reference scripts' ``checkpoint.pth`` (``{"model": ..., "optimizer": ...}``)."""
    return unwrap_entry(obj, path, "model")


def detect(state: dict[str, torch.Tensor], path: str | os.PathLike, *, output_stride: int | None = None,
           model: str | None = None) -> Target:
    if "classifier.4.weight" not in state:
        raise ConversionError(path, "no torchvision DeepLabHead ('classifier.4.weight') found; is this a torchvision "
                              "deeplabv3_* state dict?")
    if "backbone.layer4.0.conv1.weight" in state:
        blocks = tuple(count_blocks(list(state), rf"backbone\.layer{i}\.(\d+)\.conv1\.weight") for i in (1, 2, 3, 4))
        depth = resnet_depth(blocks, path)
        if depth not in (50, 101):
            raise ConversionError(path, f"torchvision has no deeplabv3_resnet{depth}")
        backbone, family, fixed_os = f"resnet{depth}", "resnet", 8
    elif "backbone.16.0.weight" in state:
        backbone, family, fixed_os = "mobilenet_v3_large", "mobilenet_v3_large", 16
    else:
        raise ConversionError(path, "backbone is neither a torchvision ResNet ('backbone.layer4.0.conv1.weight') nor "
                              "MobileNet-v3-Large ('backbone.16.0.weight')")
    if output_stride not in (None, fixed_os):
        raise ConversionError(path, f"torchvision's deeplabv3_{backbone} has output stride {fixed_os}, "
                              f"not --output-stride {output_stride}")
    aux = "aux_classifier.0.weight" in state
    arch = f"torchvision_deeplabv3_{backbone}"
    if model is not None and model != arch:
        raise ConversionError(path, f"this file holds torchvision's deeplabv3_{backbone}, which imports as {arch}, "
                              f"not --model {model}")
    num_classes = int(state["classifier.4.weight"].shape[0])
    return Target(peer_model=f"deeplabv3_{backbone}" + (" (aux_loss=True)" if aux else ""), arch=arch,
                  num_classes=num_classes, manifest=manifest(backbone, num_classes, aux), rules=RULES[family],
                  kwargs={"aux": True} if aux else {},
                  notes=["forward returns torchvision's 'out' (a tensor); forward_dict returns {'out', 'aux'}"],
                  preprocessing=PREPROCESSING)
