"""kazuto1011/deeplab-pytorch checkpoints: DeepLab v2 ResNet-101 (MSC) and the COCO "v1" init model.

Files (read in the peer's ``main.py``, ``convert.py``, ``libs/models``): a plain state dict.

* ``DeepLabV2_ResNet101_MSC`` (its trained VOC / COCO-Stuff 10k / 164k models, and
  ``convert.py --dataset voc12``): ``MSC(base=DeepLabV2(...))`` saved with
  ``model.module.state_dict()``, so every key starts with ``base.``;
  -> our ``kazuto_deeplabv2_resnet101_msc`` (its max fusion over scales 1, 0.5, 0.75).
* the same network's ``base`` saved alone (keys without ``base.``) -> ``deeplabv2_resnet101``.
* ``DeepLabV1_ResNet101`` (``convert.py --dataset coco``: the 91-class init model, classifier
  ``fc``) -> ``deeplabv1_resnet101``.

Key layout (``nn.Sequential`` children): ``layer1.conv1.{conv,bn}`` (stem), ``layer{2..5}.block{j}.
{reduce,conv3x3,increase,shortcut}.{conv,bn}`` (``shortcut`` on ``block1`` only), ``aspp.c{0..3}``
(3x3, bias) or ``fc`` (1x1, bias). Stage ``layerN`` is our ``backbone.layer{N-1}``, ``blockJ`` our
unit ``J-1``; ``reduce``/``conv3x3``/``increase`` our ``conv1``/``conv2``/``conv3``.
The ASPP rates (6, 12, 18, 24) are not in the file; kazuto's ``DeepLabV2S`` (3, 6, 9, 12), which its
scripts never train, is not imported.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from converters.errors import ConversionError
from converters.peers.common import (
    RESNET_DEPTHS,
    Rule,
    Shape,
    Target,
    bn,
    conv,
    count_blocks,
    resnet_depth,
    unwrap_entry,
)
from reference_models.preprocessing import Preprocessing

# configs/*.yaml and libs/datasets/base.py: cv2 BGR, MEAN.BGR subtracted, no std; bottom/right padding
PREPROCESSING = Preprocessing(
    channel_order="BGR",
    mean=(104.008, 116.669, 122.675),
    train_crop=321,
    test_crop=513,
    pad="bottom/right to the crop size in training; image with the mean, label with 255",
    crop="random 321 crop in training; the whole image at test time (COCO-Stuff 10k warped to 513x513)",
    resize="bilinear (cv2) for images, nearest (PIL) for labels; logits resized with align_corners=False",
)

NAME = "kazuto"
DESCRIPTION = "kazuto1011/deeplab-pytorch: DeepLab v2 ResNet-101 MSC (.pth state dict), or its COCO init model"
EXAMPLE = "deeplabv2_resnet101_msc-cocostuff164k-100000.pth"

_BRANCH = {"reduce": "1", "conv3x3": "2", "increase": "3"}
TRANSFORMS = {
    "stage": lambda v: str(int(v) - 1),  # layer2..layer5 -> layer1..layer4 (layer1 is the stem)
    "block": lambda v: str(int(v) - 1),  # block1.. -> 0..
    "branch": lambda v: _BRANCH[v],
}
_TRUNK: list[Rule] = [
    (r"layer1\.conv1\.conv", "backbone.conv1"),
    (r"layer1\.conv1\.bn", "backbone.bn1"),
    (r"layer(?P<stage>[2-5])\.block(?P<block>\d+)\.(?P<branch>reduce|conv3x3|increase)\.conv",
     "backbone.layer{stage}.{block}.conv{branch}"),
    (r"layer(?P<stage>[2-5])\.block(?P<block>\d+)\.(?P<branch>reduce|conv3x3|increase)\.bn",
     "backbone.layer{stage}.{block}.bn{branch}"),
    (r"layer(?P<stage>[2-5])\.block(?P<block>\d+)\.shortcut\.conv", "backbone.layer{stage}.{block}.downsample.0"),
    (r"layer(?P<stage>[2-5])\.block(?P<block>\d+)\.shortcut\.bn", "backbone.layer{stage}.{block}.downsample.1"),
]
_ASPP: list[Rule] = [(r"aspp\.c(?P<k>[0-3])", "aspp.branches.{k}")]
RULES: dict[str, list[Rule]] = {
    "DeepLabV2_ResNet101_MSC": [(r"base\." + rx, tmpl) for rx, tmpl in _TRUNK + _ASPP],
    "DeepLabV2 (base of DeepLabV2_ResNet101_MSC)": _TRUNK + _ASPP,
    "DeepLabV1_ResNet101": _TRUNK + [(r"fc", "classifier")],
}


def trunk_manifest(prefix: str, blocks: tuple[int, ...] = RESNET_DEPTHS[101]) -> dict[str, Shape]:
    """Keys and shapes of kazuto's ``_Stem`` + four ``_ResLayer`` (``libs/models/resnet.py``)."""

    def cbr(p: str, out_ch: int, in_ch: int, k: int) -> dict[str, Shape]:
        return {**conv(f"{p}.conv", out_ch, in_ch, k), **bn(f"{p}.bn", out_ch)}

    m = cbr(f"{prefix}layer1.conv1", 64, 3, 7)
    in_ch = 64
    for i, (n, out) in enumerate(zip(blocks, (256, 512, 1024, 2048)), start=2):
        mid = out // 4
        for j in range(1, n + 1):
            p = f"{prefix}layer{i}.block{j}"
            m.update({**cbr(f"{p}.reduce", mid, in_ch, 1), **cbr(f"{p}.conv3x3", mid, mid, 3),
                      **cbr(f"{p}.increase", out, mid, 1)})
            if j == 1:
                m.update(cbr(f"{p}.shortcut", out, in_ch, 1))
            in_ch = out
    return m


def manifest(peer_model: str, num_classes: int) -> dict[str, Shape]:
    """Every key and shape kazuto's ``peer_model`` creates."""
    if peer_model == "DeepLabV1_ResNet101":
        return {**trunk_manifest(""), **conv("fc", num_classes, 2048, 1, bias=True)}
    prefix = "base." if peer_model == "DeepLabV2_ResNet101_MSC" else ""
    head = {}
    for k in range(4):
        head.update(conv(f"{prefix}aspp.c{k}", num_classes, 2048, 3, bias=True))
    return {**trunk_manifest(prefix), **head}


def unwrap(obj: Any, path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """kazuto saves the bare ``state_dict()`` (a dict holding a ``state_dict`` is accepted too)."""
    return unwrap_entry(obj, path, "state_dict")


_OURS = {
    "DeepLabV2_ResNet101_MSC": "kazuto_deeplabv2_resnet101_msc",
    "DeepLabV2 (base of DeepLabV2_ResNet101_MSC)": "deeplabv2_resnet101",
    "DeepLabV1_ResNet101": "deeplabv1_resnet101",
}


def detect(state: dict[str, torch.Tensor], path: str | os.PathLike, *, output_stride: int | None = None,
           model: str | None = None) -> Target:
    """Which of kazuto's models wrote ``state`` (from its head keys), its class count and depth."""
    if output_stride not in (None, 8):
        raise ConversionError(path, f"kazuto's DeepLab v2 has output stride 8, got --output-stride {output_stride}")
    if "base.aspp.c0.weight" in state:
        peer, head = "DeepLabV2_ResNet101_MSC", "base.aspp.c0.weight"
    elif "aspp.c0.weight" in state:
        peer, head = "DeepLabV2 (base of DeepLabV2_ResNet101_MSC)", "aspp.c0.weight"
    elif "fc.weight" in state and state["fc.weight"].ndim == 4:
        peer, head = "DeepLabV1_ResNet101", "fc.weight"
    else:
        raise ConversionError(path, "no kazuto1011/deeplab-pytorch head ('base.aspp.c0.weight', 'aspp.c0.weight' "
                              "or 'fc.weight') found; is this a deeplab-pytorch checkpoint?")
    prefix = "base." if peer.endswith("MSC") else ""
    blocks = tuple(count_blocks(list(state), rf"{prefix}layer{i}\.block(\d+)\.reduce\.conv\.weight") for i in (2, 3, 4, 5))
    depth = resnet_depth(blocks, path)
    if depth != 101:
        raise ConversionError(path, f"kazuto's models are ResNet-101; this file has a ResNet-{depth} ({list(blocks)})")
    arch = _OURS[peer]
    if model is not None and model != arch:
        raise ConversionError(path, f"this kazuto file holds {peer}, which imports as {arch}, not --model {model}")
    num_classes = int(state[head].shape[0])
    return Target(peer_model=peer, arch=arch, num_classes=num_classes, manifest=manifest(peer, num_classes),
                  rules=RULES[peer], transforms=TRANSFORMS, preprocessing=PREPROCESSING)
