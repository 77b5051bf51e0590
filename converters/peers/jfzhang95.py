"""jfzhang95/pytorch-deeplab-xception checkpoints (seed 004's upstream): DeepLab v3+ on four backbones.

Files (read in the peer's ``train.py`` / ``utils/saver.py``): ``checkpoint.pth.tar`` and
``model_best.pth.tar`` are ``{"epoch", "state_dict", "optimizer", "best_pred"}`` with the state dict
of ``DeepLab(backbone, output_stride, num_classes, sync_bn)`` (saved as ``model.module.state_dict()``:
no ``module.`` prefix; SyncBN and ``nn.BatchNorm2d`` write the same keys). Only ``state_dict`` is used.

Key layout (from ``modeling/{deeplab,aspp,decoder}.py`` and ``modeling/backbone/*.py``):

* head: ``aspp.aspp{1..4}.{atrous_conv,bn}`` (1x1, then 3x3 at the three rates),
  ``aspp.global_avg_pool.{1,2}`` (1x1 conv, BN), ``aspp.conv1`` / ``aspp.bn1`` (1280 -> 256),
  ``decoder.conv1`` / ``decoder.bn1`` (low-level -> 48), ``decoder.last_conv.{0,1,4,5,8}`` (3x3 304 -> 256,
  BN, 3x3 256 -> 256, BN, 1x1 256 -> classes with bias);
* ``backbone.*``: ``resnet`` = torchvision ResNet-101 keys (``conv1``, ``bn1``, ``layer1..4``; layer4
  has 3 multi-grid blocks), ``xception`` = its ``AlignedXception`` (``conv1..2``, ``bn1..2``,
  ``block1..20.{skip,skipbn,rep.N.{conv1,bn,pointwise}}``, ``conv3..5``, ``bn3..5``),
  ``drn`` = fyu's DRN-D-54 without ``fc``, ``mobilenet`` = its MobileNetV2 (``features.N...``).

Our models: ``jfzhang95_deeplabv3plus_{resnet101,xception,drn,mobilenetv2}``
(``reference_models/jfzhang95_style.py``), which compute what its DeepLab computes in eval mode,
output upsampled to the input size. The backbone keeps its keys; the head maps by :data:`HEAD_RULES`.
The output stride is not in the file: ``--output-stride`` (default 16, its ``train.py`` default;
DRN is always 8).
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from converters.errors import ConversionError
from converters.peers.common import (
    RESNET_DEPTHS,
    Rule,
    Shape,
    Target,
    bn,
    bottleneck_stages,
    conv,
    strip_data_parallel,
    torchvision_resnet,
    unwrap_entry,
)

NAME = "jfzhang95"
DESCRIPTION = ("jfzhang95/pytorch-deeplab-xception: DeepLab v3+ on ResNet-101, Xception, DRN-D-54 or MobileNet-v2 "
               "(model_best.pth.tar)")
EXAMPLE = "model_best.pth.tar"
DEFAULT_OUTPUT_STRIDE = 16  # train.py --out-stride default

BACKBONES = ("resnet", "xception", "drn", "mobilenet")
OURS = {
    "resnet": "jfzhang95_deeplabv3plus_resnet101",
    "xception": "jfzhang95_deeplabv3plus_xception",
    "drn": "jfzhang95_deeplabv3plus_drn",
    "mobilenet": "jfzhang95_deeplabv3plus_mobilenetv2",
}
_IN_CHANNELS = {"resnet": 2048, "xception": 2048, "drn": 512, "mobilenet": 320}  # aspp.py inplanes
_LOW_LEVEL = {"resnet": 256, "xception": 128, "drn": 256, "mobilenet": 24}  # decoder.py low_level_inplanes

TRANSFORMS = {"rate": lambda v: str(int(v) - 1)}  # their aspp2..4 are our aspp1..3
HEAD_RULES: list[Rule] = [
    (r"aspp\.aspp1\.atrous_conv", "aspp.aspp0"),
    (r"aspp\.aspp1\.bn", "aspp.aspp0.bn"),
    (r"aspp\.aspp(?P<rate>[2-4])\.atrous_conv", "aspp.aspp{rate}"),
    (r"aspp\.aspp(?P<rate>[2-4])\.bn", "aspp.aspp{rate}.bn"),
    (r"aspp\.global_avg_pool\.1", "aspp.image_pooling"),
    (r"aspp\.global_avg_pool\.2", "aspp.image_pooling.bn"),
    (r"aspp\.conv1", "aspp.concat_projection"),
    (r"aspp\.bn1", "aspp.concat_projection.bn"),
    (r"decoder\.conv1", "decoder.feature_projection0"),
    (r"decoder\.bn1", "decoder.feature_projection0.bn"),
    (r"decoder\.last_conv\.0", "decoder.decoder_conv0.decoder_conv0_1"),
    (r"decoder\.last_conv\.1", "decoder.decoder_conv0.decoder_conv0_1.bn"),
    (r"decoder\.last_conv\.4", "decoder.decoder_conv0.decoder_conv0_2"),
    (r"decoder\.last_conv\.5", "decoder.decoder_conv0.decoder_conv0_2.bn"),
    (r"decoder\.last_conv\.8", "logits.semantic"),
]
# The jfzhang95 backbones are reproduced module for module (same names), so their keys carry over.
RULES: list[Rule] = HEAD_RULES + [(r"backbone\.(?P<rest>.+)", "backbone.{rest}")]


# ----------------------------------------------------------------------------- manifests (from their code)


def _resnet101(p: str) -> dict[str, Shape]:
    """``modeling/backbone/resnet.py`` ResNet101: torchvision bottlenecks, layers 3/4/23 + a 3-block ``layer4``."""
    return torchvision_resnet(p, RESNET_DEPTHS[101])


def _separable(p: str, in_ch: int, out_ch: int) -> dict[str, Shape]:
    return {**conv(f"{p}.conv1", in_ch, in_ch, 3, groups=in_ch), **bn(f"{p}.bn", in_ch),
            **conv(f"{p}.pointwise", out_ch, in_ch)}


def _xception_block(p: str, in_ch: int, out_ch: int, reps: int, *, stride: int, start_with_relu: bool,
                    grow_first: bool, is_last: bool) -> dict[str, Shape]:
    """``Block``: ``rep`` is [ReLU, SeparableConv2d, BN] triples (the first ReLU dropped without start_with_relu)."""
    m: dict[str, Shape] = {}
    if out_ch != in_ch or stride != 1:
        m.update({**conv(f"{p}.skip", out_ch, in_ch), **bn(f"{p}.skipbn", out_ch)})
    convs: list[tuple[int, int]] = []
    filters = in_ch
    if grow_first:
        convs.append((in_ch, out_ch))
        filters = out_ch
    convs += [(filters, filters)] * (reps - 1)
    if not grow_first:
        convs.append((in_ch, out_ch))
    if stride != 1 or is_last:
        convs.append((out_ch, out_ch))
    offset = 0 if start_with_relu else -1
    for t, (i, o) in enumerate(convs):
        m.update(_separable(f"{p}.rep.{3 * t + 1 + offset}", i, o))
        m.update(bn(f"{p}.rep.{3 * t + 2 + offset}", o))
    return m


def _aligned_xception(p: str) -> dict[str, Shape]:
    """``modeling/backbone/xception.py`` AlignedXception (the same keys at OS 8 and 16)."""
    m = {**conv(f"{p}conv1", 32, 3, 3), **bn(f"{p}bn1", 32), **conv(f"{p}conv2", 64, 32, 3), **bn(f"{p}bn2", 64)}
    m.update(_xception_block(f"{p}block1", 64, 128, 2, stride=2, start_with_relu=False, grow_first=True,
                             is_last=False))
    m.update(_xception_block(f"{p}block2", 128, 256, 2, stride=2, start_with_relu=False, grow_first=True,
                             is_last=False))
    m.update(_xception_block(f"{p}block3", 256, 728, 2, stride=2, start_with_relu=True, grow_first=True,
                             is_last=True))
    for i in range(4, 20):
        m.update(_xception_block(f"{p}block{i}", 728, 728, 3, stride=1, start_with_relu=True, grow_first=True,
                                 is_last=False))
    m.update(_xception_block(f"{p}block20", 728, 1024, 2, stride=1, start_with_relu=True, grow_first=False,
                             is_last=True))
    for i, (c_in, c_out) in zip((3, 4, 5), ((1024, 1536), (1536, 1536), (1536, 2048))):
        m.update({**_separable(f"{p}conv{i}", c_in, c_out), **bn(f"{p}bn{i}", c_out)})
    return m


def _drn_d_54(p: str) -> dict[str, Shape]:
    """fyu's ``drn_d_54`` (jfzhang95's copy), without ``fc``."""
    m = {**conv(f"{p}layer0.0", 16, 3, 7), **bn(f"{p}layer0.1", 16),
         **conv(f"{p}layer1.0", 16, 16, 3), **bn(f"{p}layer1.1", 16),
         **conv(f"{p}layer2.0", 32, 16, 3), **bn(f"{p}layer2.1", 32)}
    in_ch = bottleneck_stages(m, ((f"{p}layer{layer}", n, width) for layer, (n, width)
                                  in zip((3, 4, 5, 6), ((3, 64), (4, 128), (6, 256), (3, 512)))), 32)
    m.update({**conv(f"{p}layer7.0", 512, in_ch, 3), **bn(f"{p}layer7.1", 512),
              **conv(f"{p}layer8.0", 512, 512, 3), **bn(f"{p}layer8.1", 512)})
    return m


def _mobilenet_v2(p: str) -> dict[str, Shape]:
    """``modeling/backbone/mobilenet.py`` MobileNetV2 (width 1.0): ``features.0`` conv_bn, 17 inverted residuals."""
    m = {**conv(f"{p}features.0.0", 32, 3, 3), **bn(f"{p}features.0.1", 32)}
    in_ch, index = 32, 1
    for t, c, n in ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)):
        for _ in range(n):
            q, hidden = f"{p}features.{index}.conv", round(in_ch * t)
            if t == 1:
                m.update({**conv(f"{q}.0", hidden, hidden, 3, groups=hidden), **bn(f"{q}.1", hidden),
                          **conv(f"{q}.3", c, hidden), **bn(f"{q}.4", c)})
            else:
                m.update({**conv(f"{q}.0", hidden, in_ch), **bn(f"{q}.1", hidden),
                          **conv(f"{q}.3", hidden, hidden, 3, groups=hidden), **bn(f"{q}.4", hidden),
                          **conv(f"{q}.6", c, hidden), **bn(f"{q}.7", c)})
            in_ch, index = c, index + 1
    return m


_BACKBONE_MANIFESTS = {"resnet": _resnet101, "xception": _aligned_xception, "drn": _drn_d_54,
                       "mobilenet": _mobilenet_v2}


def head_manifest(backbone: str, num_classes: int) -> dict[str, Shape]:
    """``aspp.py`` + ``decoder.py`` keys for ``backbone``."""
    c_in, low = _IN_CHANNELS[backbone], _LOW_LEVEL[backbone]
    m = {**conv("aspp.aspp1.atrous_conv", 256, c_in), **bn("aspp.aspp1.bn", 256)}
    for i in (2, 3, 4):
        m.update({**conv(f"aspp.aspp{i}.atrous_conv", 256, c_in, 3), **bn(f"aspp.aspp{i}.bn", 256)})
    m.update({**conv("aspp.global_avg_pool.1", 256, c_in), **bn("aspp.global_avg_pool.2", 256),
              **conv("aspp.conv1", 256, 1280), **bn("aspp.bn1", 256),
              **conv("decoder.conv1", 48, low), **bn("decoder.bn1", 48),
              **conv("decoder.last_conv.0", 256, 304, 3), **bn("decoder.last_conv.1", 256),
              **conv("decoder.last_conv.4", 256, 256, 3), **bn("decoder.last_conv.5", 256),
              **conv("decoder.last_conv.8", num_classes, 256, 1, bias=True)})
    return m


def manifest(backbone: str, num_classes: int, *, aliases: bool = False) -> dict[str, Shape]:
    """Every key and shape jfzhang95's ``DeepLab(backbone=backbone, num_classes=num_classes)`` creates
    (``aliases``: with MobileNetV2's duplicate ``low_level_features`` / ``high_level_features`` keys)."""
    m = {**_BACKBONE_MANIFESTS[backbone]("backbone."), **head_manifest(backbone, num_classes)}
    if aliases and backbone == "mobilenet":
        for key, shape in list(m.items()):
            if key.startswith("backbone.features."):
                index = int(key.split(".")[2])
                m[key.replace("features.", "low_level_features." if index < 4 else "high_level_features.", 1)] = shape
    return m


# ----------------------------------------------------------------------------- reading and detection


_ALIAS = re.compile(r"backbone\.(low_level_features|high_level_features)\.(?P<rest>\d+\..+)")


def drop_aliases(state: dict[str, torch.Tensor], path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], int]:
    """Their MobileNetV2 keeps ``features[0:4]`` / ``features[4:]`` as two more attributes, so its state dict
    holds every backbone tensor three times (``features.N``, ``low_level_features.N``, ``high_level_features.N``,
    one storage). The copies must equal ``backbone.features.N...`` exactly; they are then dropped."""
    kept: dict[str, torch.Tensor] = {}
    dropped = 0
    for key, value in state.items():
        m = _ALIAS.fullmatch(key)
        if m is None:
            kept[key] = value
            continue
        original = f"backbone.features.{m.group('rest')}"
        if original not in state:
            raise ConversionError(path, f"unexpected key '{key}': an alias of '{original}', which the file lacks")
        if state[original].shape != value.shape or not torch.equal(state[original], value):
            raise ConversionError(path, f"key '{key}' differs from '{original}' (their MobileNetV2 stores one tensor "
                                  "under both names)")
        dropped += 1
    return kept, dropped


def unwrap(obj: Any, path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The ``state_dict`` entry of a training checkpoint (a bare state dict is accepted too), without the
    MobileNetV2 aliases (:func:`drop_aliases`)."""
    state, ignored = unwrap_entry(obj, path, "state_dict")
    state, aliases = drop_aliases(strip_data_parallel(state), path)
    if aliases:
        ignored.append(f"{aliases} MobileNetV2 aliases of backbone.features.* (low_level_features.*, "
                       "high_level_features.*), equal to the originals")
    return state, ignored


def detect_backbone(state: dict[str, torch.Tensor]) -> str | None:
    """Which of the four backbones wrote ``state`` (from key names), or None."""
    if "backbone.layer0.0.weight" in state:
        return "drn"
    if "backbone.features.0.0.weight" in state:
        return "mobilenet"
    if "backbone.block1.skip.weight" in state:
        return "xception"
    if "backbone.layer1.0.conv1.weight" in state and "backbone.conv1.weight" in state:
        return "resnet"
    return None


def detect(state: dict[str, torch.Tensor], path: str | os.PathLike, *, output_stride: int | None = None,
           model: str | None = None) -> Target:
    if "decoder.last_conv.8.weight" not in state:
        raise ConversionError(path, "no jfzhang95 DeepLab classifier 'decoder.last_conv.8.weight'; is this a "
                              "pytorch-deeplab-xception checkpoint?")
    backbone = detect_backbone(state)
    if backbone is None:
        raise ConversionError(path, "backbone not recognised (none of 'backbone.layer0.0.weight' (drn), "
                              "'backbone.features.0.0.weight' (mobilenet), 'backbone.block1.skip.weight' "
                              "(xception), 'backbone.layer1.0.conv1.weight' (resnet))")
    arch = OURS[backbone]
    if model is not None and model != arch:
        raise ConversionError(path, f"this jfzhang95 file holds DeepLab(backbone='{backbone}'), which imports as "
                              f"{arch}, not --model {model}")
    notes = []
    if backbone == "drn":
        if output_stride not in (None, 8):
            raise ConversionError(path, f"jfzhang95's DeepLab runs DRN at output stride 8 only, got "
                                  f"--output-stride {output_stride}")
        output_stride = 8
    elif output_stride is None:
        output_stride = DEFAULT_OUTPUT_STRIDE
        notes.append(f"output stride not recorded in the file: {DEFAULT_OUTPUT_STRIDE} assumed (train.py's "
                     "default); import again with --output-stride 8 if it was trained with --out-stride 8")
    num_classes = int(state["decoder.last_conv.8.weight"].shape[0])
    return Target(peer_model=f"DeepLab(backbone='{backbone}', output_stride={output_stride})", arch=arch,
                  num_classes=num_classes, manifest=manifest(backbone, num_classes), rules=RULES,
                  kwargs={"output_stride": output_stride}, transforms=TRANSFORMS, notes=notes)
