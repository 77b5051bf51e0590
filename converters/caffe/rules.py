"""Rename tables: Caffe layer names -> reference-model module paths, as data.

Each table is an ordered list of ``(caffe_regex, module_template)`` rules; the
first rule whose regex matches the *whole* Caffe layer name wins. Named groups
are rewritten by :data:`GROUP_TRANSFORMS` (keyed by group name) before being
formatted into the template. The tensor suffix (``.weight``, ``.running_mean``
...) is carried over unchanged. :func:`rename` returns the reverse map as well,
so every later error can name the Caffe layer a tensor came from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from converters.errors import ConversionError

Rule = tuple[str, str]

# MSRA unit letters: a -> 0, b -> 1, c -> 2 in short stages; b1..b22 -> 1..22 in long ones.
_UNIT = {"a": 0, "b": 1, "c": 2}
GROUP_TRANSFORMS: Mapping[str, Callable[[str], str]] = {
    "stage": lambda v: str(int(v) - 1),  # res2..res5 -> layer1..layer4
    "unit": lambda v: str(_UNIT[v] if v in _UNIT else int(v[1:])),
    "conv": lambda v: str("abc".index(v) + 1),  # branch2a/b/c -> conv1/2/3 (bn1/2/3)
    "branch": lambda v: str(int(v) - 1),  # VGG ASPP branches fc6_1..fc6_4 -> 0..3
}

_RESNET_BACKBONE: list[Rule] = [
    (r"conv1", "backbone.conv1"),
    (r"bn_conv1", "backbone.bn1"),
    (r"res(?P<stage>[2-5])(?P<unit>a|b\d*|c)_branch1", "backbone.layer{stage}.{unit}.downsample.0"),
    (r"bn(?P<stage>[2-5])(?P<unit>a|b\d*|c)_branch1", "backbone.layer{stage}.{unit}.downsample.1"),
    (r"res(?P<stage>[2-5])(?P<unit>a|b\d*|c)_branch2(?P<conv>[abc])", "backbone.layer{stage}.{unit}.conv{conv}"),
    (r"bn(?P<stage>[2-5])(?P<unit>a|b\d*|c)_branch2(?P<conv>[abc])", "backbone.layer{stage}.{unit}.bn{conv}"),
]
_VGG_BACKBONE: list[Rule] = [(r"conv(?P<block>[1-5])_(?P<i>[1-3])", "backbone.conv{block}_{i}")]

RULES: Mapping[str, Sequence[Rule]] = {
    "deeplabv2_resnet101": _RESNET_BACKBONE + [(r"fc1_(?P<exp>[A-Za-z0-9]+)_c(?P<k>[0-3])", "aspp.branches.{k}")],
    "deeplabv1_resnet101": _RESNET_BACKBONE + [(r"fc\d*_(?P<exp>[A-Za-z0-9]+)", "classifier")],
    "deeplabv2_vgg16": _VGG_BACKBONE + [
        (r"fc(?P<fc>[67])_(?P<branch>[1-4])", "aspp.branches.{branch}.fc{fc}"),
        (r"fc8_(?P<exp>[A-Za-z0-9]+)_(?P<branch>[1-4])", "aspp.branches.{branch}.fc8"),
    ],
    "deeplabv2_vgg16_largefov": _VGG_BACKBONE + [
        (r"fc(?P<fc>[67])", "aspp.branches.0.fc{fc}"),
        (r"fc8_(?P<exp>[A-Za-z0-9]+)", "aspp.branches.0.fc8"),
    ],
}
RULES = {**RULES, "deeplabv2_resnet101_msc": RULES["deeplabv2_resnet101"]}  # the copies are dropped before renaming

_COMPILED: dict[str, list[tuple[re.Pattern[str], str]]] = {
    arch: [(re.compile(rx), tmpl) for rx, tmpl in rules] for arch, rules in RULES.items()
}


def rename_layer(arch: str, layer: str) -> str | None:
    """Module path for a Caffe layer name under ``arch``'s table, or ``None`` if no rule matches."""
    for rx, tmpl in _COMPILED[arch]:
        m = rx.fullmatch(layer)
        if m:
            groups = {k: GROUP_TRANSFORMS.get(k, str)(v) for k, v in m.groupdict().items()}
            return tmpl.format(**groups)
    return None


def rename(arrays: Mapping[str, np.ndarray], arch: str, *, path: str | os.PathLike) -> tuple[dict[str, np.ndarray],
                                                                                              dict[str, str]]:
    """Rename ``<caffe layer>.<tensor>`` keys to state-dict keys.

    Returns ``(renamed, reverse)`` where ``reverse[state_key]`` is the Caffe layer.
    Raises :class:`ConversionError` for a layer no rule maps (a leftover) or for
    two Caffe layers mapping onto the same key.
    """
    if arch not in _COMPILED:
        raise ValueError(f"no Caffe rename table for '{arch}'; known: {', '.join(sorted(_COMPILED))}")
    renamed: dict[str, np.ndarray] = {}
    reverse: dict[str, str] = {}
    for key, value in arrays.items():
        layer, tensor = key.rsplit(".", 1)
        module = rename_layer(arch, layer)
        if module is None:
            raise ConversionError(path, f"no rule maps this layer onto {arch} (not part of this architecture; "
                                  "check --arch)", layer=layer)
        new = f"{module}.{tensor}"
        if new in renamed:
            raise ConversionError(path, f"maps onto '{new}' like layer '{reverse[new]}'", layer=layer)
        renamed[new] = value
        reverse[new] = layer
    return renamed, reverse
