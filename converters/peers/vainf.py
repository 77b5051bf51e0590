"""VainF/DeepLabV3Plus-Pytorch checkpoints: v3 / v3+ on ResNet-50/101 and its MobileNet-v2, OS 8 or 16.

Files (``main.py`` ``save_ckpt``): ``{"cur_itrs", "model_state", "optimizer_state", "scheduler_state",
"best_score"}`` with ``model_state = model.module.state_dict()`` (``best_score`` is a numpy float; read
as data). The output stride is not in the file: ``--output-stride`` (default 16, VainF's default;
the released files say ``os16`` / ``os8`` in their names). ``--separable_conv`` v3+ checkpoints (every
3x3 head conv a depthwise ``.body.0`` + pointwise ``.body.1`` pair) import with ``separable_convs=True``.
The HRNet / Xception backbones are not imported.

Key layout (read in ``network/modeling.py``, ``_deeplab.py``, ``utils.py``, ``backbone/``): ``backbone``
is an ``IntermediateLayerGetter``: torchvision ResNet keys ``backbone.conv1``, ``backbone.layer{1-4}...``
(``fc`` dropped), or MobileNet-v2 ``backbone.low_level_features.{0-3}`` / ``backbone.high_level_features.
{4-17}`` (slices of ``features``, which keep their indices). v3: ``classifier.classifier.0`` the ASPP
(``convs.{0-3}.{0,1}``, pooling ``convs.4.{1,2}``, ``project.{0,1}``), ``.1/.2`` 3x3 conv / BN, ``.4``
logits. v3+: ``classifier.project.{0,1}`` (low-level 1x1 48), ``classifier.aspp``, ``classifier.
classifier.{0,1}`` 3x3 conv / BN, ``.3`` logits.
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
from converters.peers.torchvision import aspp_manifest, aspp_rules
from reference_models.preprocessing import Preprocessing
from reference_models.torchvision_style import MNV2_SETTING

NAME = "vainf"
DESCRIPTION = "VainF/DeepLabV3Plus-Pytorch: deeplabv3[plus]_{resnet50,resnet101,mobilenet} (best_*.pth)"
DEFAULT_OUTPUT_STRIDE = 16  # main.py --output_stride default
# main.py get_dataset (VOC): ImageNet normalisation on [0, 1] RGB; ExtRandomScale(0.5, 2), 513 crop
PREPROCESSING = Preprocessing(
    channel_order="RGB",
    mean=(123.675, 116.28, 103.53),
    std=(58.395, 57.12, 57.375),
    train_crop=513,
    test_crop=513,
    pad="training: ExtRandomCrop(pad_if_needed) pads a smaller image on both sides with 0, the label too "
    "(fill 0: background, not ignore)",
    crop="training: random scale in [0.5, 2], random 513 crop, flip; test: the whole image (--crop_val off)",
    resize="bilinear for images, nearest for labels; logits resized with align_corners=False",
)


def mobilenet_v2_manifest() -> dict[str, Shape]:
    """VainF ``MobileNetV2.features[0:18]`` as ``low_level_features`` (0-3) and ``high_level_features`` (4-17)."""

    def part(i: int) -> str:
        return f"backbone.{'low' if i < 4 else 'high'}_level_features.{i}"

    m = {**conv(f"{part(0)}.0", 32, 3, 3), **bn(f"{part(0)}.1", 32)}
    i, in_ch = 1, 32
    for t, c, n, _s in MNV2_SETTING:
        for _ in range(n):
            hidden = in_ch * t
            p, j = f"{part(i)}.conv", 0
            if t != 1:
                m.update({**conv(f"{p}.0.0", hidden, in_ch), **bn(f"{p}.0.1", hidden)})
                j = 1
            m.update({**conv(f"{p}.{j}.0", hidden, hidden, 3, groups=hidden), **bn(f"{p}.{j}.1", hidden),
                      **conv(f"{p}.{j + 1}", c, hidden), **bn(f"{p}.{j + 2}", c)})
            i, in_ch = i + 1, c
    return m


def _separable(m: dict[str, Shape]) -> dict[str, Shape]:
    """``convert_to_separable_conv(model.classifier)``: each k>1 conv ``p`` -> ``p.body.0`` (depthwise) and
    ``p.body.1`` (pointwise), both without bias."""
    out: dict[str, Shape] = {}
    for key, shape in m.items():
        if key.startswith("classifier.") and len(shape) == 4 and shape[-1] > 1:
            p = key[: -len(".weight")]
            out[f"{p}.body.0.weight"] = (shape[1], 1, shape[2], shape[3])
            out[f"{p}.body.1.weight"] = (shape[0], shape[1], 1, 1)
        else:
            out[key] = shape
    return out


def manifest(backbone: str, plus: bool, num_classes: int, separable: bool = False) -> dict[str, Shape]:
    """Every key and shape VainF's ``deeplabv3[plus]_<backbone>(num_classes=...)`` creates (``separable``:
    after ``--separable_conv``, which VainF applies to v3+ only)."""
    if backbone == "mobilenet":
        m, out_ch, low_ch = mobilenet_v2_manifest(), 320, 24
    else:
        m = torchvision_resnet("backbone.", {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}[backbone])
        out_ch, low_ch = 2048, 256
    if plus:
        m.update({**conv("classifier.project.0", 48, low_ch), **bn("classifier.project.1", 48)})
        m.update(aspp_manifest("classifier.aspp", out_ch))
        m.update({**conv("classifier.classifier.0", 256, 304, 3), **bn("classifier.classifier.1", 256),
                  **conv("classifier.classifier.3", num_classes, 256, bias=True)})
    else:
        m.update(aspp_manifest("classifier.classifier.0", out_ch))
        m.update({**conv("classifier.classifier.1", 256, 256, 3), **bn("classifier.classifier.2", 256),
                  **conv("classifier.classifier.4", num_classes, 256, bias=True)})
    return _separable(m) if separable else m


_BACKBONE_RULES: dict[str, list[Rule]] = {
    "resnet": [(r"backbone\.(?P<rest>conv1|bn1|layer[1-4]\..+)", "backbone.{rest}")],
    "mobilenet": [(r"backbone\.(?:low|high)_level_features\.(?P<i>\d+)\.(?P<rest>.+)", "backbone.features.{i}.{rest}")],
}
_HEAD_RULES: dict[bool, list[Rule]] = {
    False: aspp_rules("classifier.classifier.0") + [
        (r"classifier\.classifier\.1", "head.conv"),
        (r"classifier\.classifier\.2", "head.bn"),
        (r"classifier\.classifier\.4", "head.logits"),
    ],
    True: [  # --separable_conv: AtrousSeparableConvolution.body -> our depthwise / pointwise pair
        (r"classifier\.aspp\.convs\.(?P<b>[1-3])\.0\.body\.0", "aspp.convs.{b}.0.depthwise"),
        (r"classifier\.aspp\.convs\.(?P<b>[1-3])\.0\.body\.1", "aspp.convs.{b}.0.pointwise"),
        (r"classifier\.classifier\.0\.body\.0", "head.conv.depthwise"),
        (r"classifier\.classifier\.0\.body\.1", "head.conv.pointwise"),
    ] + aspp_rules("classifier.aspp") + [
        (r"classifier\.project\.(?P<j>[01])", "project.{j}"),
        (r"classifier\.classifier\.0", "head.conv"),
        (r"classifier\.classifier\.1", "head.bn"),
        (r"classifier\.classifier\.3", "head.logits"),
    ],
}


def unwrap(obj: Any, path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``model_state`` of VainF's checkpoint dict (a bare state dict is accepted too)."""
    return unwrap_entry(obj, path, "model_state")


def detect(state: dict[str, torch.Tensor], path: str | os.PathLike, *, output_stride: int | None = None,
           model: str | None = None) -> Target:
    separable = any(".body." in k for k in state)
    if "classifier.project.0.weight" in state and "classifier.classifier.3.weight" in state:
        plus, head = True, "classifier.classifier.3.weight"
    elif "classifier.classifier.4.weight" in state:
        plus, head = False, "classifier.classifier.4.weight"
    else:
        raise ConversionError(path, "no VainF DeepLabHead ('classifier.classifier.4.weight') or DeepLabHeadV3Plus "
                              "('classifier.project.0.weight') found; is this a DeepLabV3Plus-Pytorch checkpoint?")
    if "backbone.layer4.0.conv1.weight" in state:
        blocks = tuple(count_blocks(list(state), rf"backbone\.layer{i}\.(\d+)\.conv1\.weight") for i in (1, 2, 3, 4))
        depth = resnet_depth(blocks, path)
        if depth not in (50, 101):
            raise ConversionError(path, f"VainF has no deeplabv3{'plus' if plus else ''}_resnet{depth}")
        backbone, family = f"resnet{depth}", "resnet"
    elif "backbone.low_level_features.0.0.weight" in state:
        backbone = family = "mobilenet"
    else:
        raise ConversionError(path, "backbone is neither ResNet ('backbone.layer4.0.conv1.weight') nor MobileNet-v2 "
                              "('backbone.low_level_features.0.0.weight'); HRNet and Xception are not imported")
    if separable and not plus:
        raise ConversionError(path, f"key '{next(k for k in state if '.body.' in k)}' is a --separable_conv "
                              "layer, which VainF applies to v3+ models only")
    notes = []
    if output_stride is None:
        output_stride = DEFAULT_OUTPUT_STRIDE
        notes.append(f"output stride {output_stride} assumed (VainF's default; not recorded in the file): "
                     "pass --output-stride 8 for a model trained with --output_stride 8")
    peer = f"deeplabv3{'plus' if plus else ''}_{backbone}"
    arch = f"vainf_{peer}"
    if model is not None and model != arch:
        raise ConversionError(path, f"this file holds VainF's {peer}, which imports as {arch}, not --model {model}")
    num_classes = int(state[head].shape[0])
    kwargs: dict[str, Any] = {"output_stride": output_stride}
    if separable:
        kwargs["separable_convs"] = True
    return Target(peer_model=f"{peer} (output_stride={output_stride}{', separable_conv' if separable else ''})",
                  arch=arch, num_classes=num_classes, manifest=manifest(backbone, plus, num_classes, separable),
                  rules=_BACKBONE_RULES[family] + _HEAD_RULES[plus], kwargs=kwargs, notes=notes,
                  preprocessing=PREPROCESSING)
