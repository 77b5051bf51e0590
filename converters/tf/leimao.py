"""Variable names of leimao/DeepLab-V3 checkpoints (``tf.train.Saver`` of its ``model.py`` graph) -> our keys.

Their graph (read, not copied) puts the slim trunk under ``backbone/`` (``backbone/resnet_v2_101/...``,
``backbone/MobilenetV2/...``) and the head at the top level as ``tf.layers.conv2d`` variables
(``<name>/kernel``, ``<name>/bias``): ``aspp1x1``, ``aspp3x3_1..3``, ``conv2d`` (the unnamed
image-pooling conv), ``aspp_outputs``, ``logits``. Their Adam slots and ``beta1/2_power`` are ignored.
Targets: ``reference_models.leimao_style`` models (``aspp.<name>``, ``logits``, ``backbone.*``).
The trunk part reuses the slim rules of :mod:`converters.tf.rules`; ``MobilenetV2/Conv_1`` is part of
their trunk (DeepLab-TF drops it), so it is converted, not ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from os import PathLike

import numpy as np
import torch
from torch import nn

from converters.errors import ConversionError
from converters.tf.rules import depthwise_to_oihw, hwio_to_oihw, ignore_reason, rename_rules, tf_name_to_key

__all__ = ["LEIMAO_HEAD_SCOPES", "leimao_arrays_to_state_dict", "leimao_name_to_key"]

LEIMAO_HEAD_SCOPES = ("aspp1x1", "aspp3x3_1", "aspp3x3_2", "aspp3x3_3", "conv2d", "aspp_outputs")
_HEAD = re.compile(r"^(aspp1x1|aspp3x3_[123]|conv2d|aspp_outputs|logits)/(kernel|bias)$")
_TRUNK = "backbone/"


def leimao_name_to_key(tf_name: str, tf_scope: str) -> str | None:
    """Our state-dict key for one of their variables, or None if it is deliberately ignored."""
    if ignore_reason(tf_name) is not None:  # Adam slots, beta1/2_power, global_step
        return None
    if tf_name.startswith(_TRUNK):
        return tf_name_to_key(tf_name[len(_TRUNK):], rename_rules(tf_scope, "backbone."))
    m = _HEAD.match(tf_name)
    if m is None:
        return tf_name.replace("/", ".")  # reported as unconverted by the caller
    scope, param = m.groups()
    prefix = "logits" if scope == "logits" else f"aspp.{scope}"
    return f"{prefix}.{'weight' if param == 'kernel' else 'bias'}"


def _layout(tf_name: str, array: np.ndarray) -> np.ndarray:
    if tf_name.endswith("/depthwise_weights"):
        return depthwise_to_oihw(array)
    if tf_name.endswith(("/weights", "/kernel")) and array.ndim == 4:
        return hwio_to_oihw(array)
    return array


def leimao_arrays_to_state_dict(
    named_arrays: Mapping[str, np.ndarray], model: nn.Module, *, path: str | PathLike | None = None
) -> dict[str, torch.Tensor]:
    """A complete state dict for a ``leimao_deeplabv3_*`` model from their checkpoint's variables.

    Same contract as :func:`converters.tf.rules.tf_arrays_to_state_dict`: unique targets, no
    leftovers, nothing missing, equal shapes; errors name the TF variable.
    """
    tf_scope = model.backbone.tf_scope
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    reverse: dict[str, str] = {}
    for tf_name in sorted(named_arrays):
        key = leimao_name_to_key(tf_name, tf_scope)
        if key is None:
            continue
        if key in reverse:
            raise ConversionError(path, f"maps to '{key}' like '{reverse[key]}' does", layer=tf_name)
        if key not in expected:
            raise ConversionError(path, f"no parameter '{key}' in {type(model).__name__} (unconverted)", layer=tf_name)
        array = _layout(tf_name, np.asarray(named_arrays[tf_name]))
        if tuple(array.shape) != tuple(expected[key].shape):
            raise ConversionError(path, f"shape {tuple(array.shape)} (after layout) != "
                                  f"{tuple(expected[key].shape)} of '{key}'", layer=tf_name)
        reverse[key] = tf_name
        out[key] = torch.from_numpy(np.ascontiguousarray(array)).to(expected[key].dtype)
    for key, value in expected.items():
        if key in out:
            continue
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(value)
            continue
        raise ConversionError(path, f"missing: nothing maps to '{key}'", layer=None)
    return out
