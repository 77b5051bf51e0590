"""TF(-slim) variable names -> our state-dict keys, as data, plus the named layout steps.

Knows nothing about files: the input is ``{tf_variable_name: ndarray}`` from any reader
(``converters.tf.reader.open_checkpoint`` or ``tf.train.load_checkpoint``). The target is a
``reference_models`` backbone (it carries ``tf_scope``, e.g. ``resnet_v1_101``) or a DeepLab
v3/v3+ model (its ``.backbone`` carries it; head variables live at the top level as in the
official checkpoints: ``aspp0/...``, ``decoder/...``, ``logits/semantic/...``), given as the model
itself or as its :class:`converters.tf.signatures.Signature` (scope, key prefix, ordered state-dict
keys, shapes and dtypes; a model is turned into one, so there is one planning implementation). Planning
and the numpy layout need no torch; only :func:`planned_tensor` and the loaders import it.

Pipeline, each a named step (detectron2's ``c2_model_loading`` pattern):

1. ``IGNORE_RULES``: optimizer slots, ``global_step``, EMA shadows, ImageNet classifier heads.
2. ``rename_rules(tf_scope, prefix)``: ordered ``(regex, replacement)`` substitutions.
3. Layout: ``hwio_to_oihw`` (conv ``weights``), ``depthwise_to_oihw`` (``depthwise_weights``).
4. Checks: unique targets, no leftovers, nothing missing, equal shapes -- each failure raises
   ``ConversionError(path, problem, layer=<TF variable name>)`` via the reverse map.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING

import numpy as np

from converters.errors import ConversionError
from converters.tf.signatures import Signature, scope_and_prefix, signature_of

if TYPE_CHECKING:
    import torch
    from torch import nn

    Target = nn.Module | Signature

__all__ = [
    "IGNORE_RULES",
    "PlannedTensor",
    "as_signature",
    "depthwise_to_oihw",
    "hwio_to_oihw",
    "ignore_reason",
    "layout_shape",
    "load_tf_arrays",
    "map_tf_names",
    "plan_state_dict",
    "planned_array",
    "planned_tensor",
    "rename_rules",
    "tf_arrays_to_state_dict",
    "tf_name_to_key",
]

Rule = tuple["re.Pattern[str]", str]

# (regex, why it is dropped). Checked before renaming; the first match wins.
IGNORE_RULES: tuple[tuple[str, str], ...] = (
    (r"(^|/)global_step$", "training step counter"),
    (r"/(Momentum|RMSProp(_1)?|Adam(_\d+)?|Adagrad|Ftrl(_1)?)$", "optimizer slot"),
    (r"^beta[12]_power(_\d+)?$", "Adam power accumulator"),
    (r"/ExponentialMovingAverage$", "EMA shadow copy (load the raw variable)"),
    # zero_debias_moving_mean writes these helper variables next to moving_mean / moving_variance.
    (r"/BatchNorm/moving_(mean|variance)/(biased|local_step)$", "BatchNorm zero-debias helper"),
    # ImageNet classifier heads: slim's are 1000 (ResNet v1) or 1001 classes (v2, MobileNet, with a
    # background row 0); the reference backbones have no classifier, so the head is dropped as a whole.
    (r"^[^/]+/(logits|Logits)/", "ImageNet classifier head (backbones stop before it)"),
    (r"^[^/]+/AuxLogits/", "auxiliary classifier head"),
    # MobileNet-v2 layer_19: DeepLab stops at layer_18 (feature_extractor final_endpoint).
    (r"^MobilenetV2/Conv_1/", "MobileNet-v2 layer_19 (1280-channel conv) is past DeepLab's layer_18 end point"),
)
_IGNORE = tuple((re.compile(p), why) for p, why in IGNORE_RULES)

# Backbone-internal rules, independent of the scope (applied after the scope was replaced).
_BACKBONE_RULES: tuple[tuple[str, str], ...] = (
    (r"/bottleneck_v[12]/", "/"),  # slim unit scope inside block{i}/unit_{k}: no module of ours
    (r"/xception_module/", "/"),  # same for Xception's unit scope
)
# DeepLab head scopes -> our module tree (ASPP children live under ``aspp``).
_HEAD_RULES: tuple[tuple[str, str], ...] = (
    (r"^(image_pooling|aspp\d+(_depthwise|_pointwise)?|concat_projection)/", r"aspp/\1/"),
)
# Parameter names, shared by every network. BatchNorm/ is a child ``bn`` of the conv module.
_PARAM_RULES: tuple[tuple[str, str], ...] = (
    (r"/BatchNorm/", "/bn/"),
    (r"/gamma$", "/weight"),
    (r"/beta$", "/bias"),
    (r"/moving_mean$", "/running_mean"),
    (r"/moving_variance$", "/running_var"),
    (r"/depthwise_weights$", "/weight"),
    (r"/weights$", "/weight"),
    (r"/biases$", "/bias"),
    (r"/", "."),
)


def rename_rules(tf_scope: str, prefix: str = "") -> list[Rule]:
    """Ordered substitutions for a network whose backbone variables sit under ``tf_scope/``.

    Backbone variables become ``prefix + ...`` (``prefix="backbone."`` for a full model); every
    other name is treated as a DeepLab head variable.
    """
    pairs = [(rf"^{re.escape(tf_scope)}/", prefix.replace(".", "/"))]
    pairs += list(_BACKBONE_RULES) + list(_HEAD_RULES) + list(_PARAM_RULES)
    return [(re.compile(p), r) for p, r in pairs]


def ignore_reason(tf_name: str) -> str | None:
    """Why ``tf_name`` is deliberately not converted, or None if it must map to a parameter."""
    for pattern, why in _IGNORE:
        if pattern.search(tf_name):
            return why
    return None


def tf_name_to_key(tf_name: str, rules: list[Rule]) -> str:
    """Apply every rule in order (each ``re.sub``) and return the state-dict key."""
    key = tf_name
    for pattern, replacement in rules:
        key = pattern.sub(replacement, key)
    return key


def hwio_to_oihw(array: np.ndarray) -> np.ndarray:
    """Conv kernel: TF (H, W, in, out) -> PyTorch (out, in, H, W)."""
    return np.transpose(array, (3, 2, 0, 1))


def depthwise_to_oihw(array: np.ndarray) -> np.ndarray:
    """Depthwise kernel: TF (H, W, C, M) -> PyTorch grouped (C*M, 1, H, W).

    TF's output channel ``c*M + m`` is filter ``[:, :, c, m]``; with ``groups=C`` PyTorch's output
    channel ``c*M + m`` reads input channel ``c`` -- the same order, so a reshape suffices.
    """
    h, w, c, m = array.shape
    return np.transpose(array.reshape(h, w, c * m), (2, 0, 1))[:, None, :, :]


def _layout(tf_name: str, array: np.ndarray) -> np.ndarray:
    if tf_name.endswith("/depthwise_weights"):
        return depthwise_to_oihw(array)
    if tf_name.endswith("/weights") and array.ndim == 4:
        return hwio_to_oihw(array)
    if tf_name.endswith("/weights") and array.ndim == 2:  # fully connected (in, out) -> (out, in)
        return array.T
    return array


def as_signature(target: Target) -> Signature:
    """``target`` as a :class:`Signature`: itself, or that of a built model (``signature_of``)."""
    return target if isinstance(target, Signature) else signature_of(target)


def map_tf_names(
    names: list[str] | tuple[str, ...] | Mapping[str, object],
    target: Target,
    *,
    path: str | PathLike | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """(forward ``tf_name -> key``, reverse ``key -> tf_name``) for every non-ignored name; ``target``: a
    model or its signature (only its scope and prefix are used).

    Raises ``ConversionError`` naming the TF variable if two variables map to one key.
    """
    tf_scope, prefix = (target.tf_scope, target.prefix) if isinstance(target, Signature) else \
        scope_and_prefix(target)
    rules = rename_rules(tf_scope, prefix)
    forward: dict[str, str] = {}
    reverse: dict[str, str] = {}
    for tf_name in sorted(names):
        if ignore_reason(tf_name) is not None:
            continue
        key = tf_name_to_key(tf_name, rules)
        if key in reverse:
            raise ConversionError(path, f"maps to '{key}' like '{reverse[key]}' does", layer=tf_name)
        forward[tf_name], reverse[key] = key, tf_name
    return forward, reverse


def layout_shape(tf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape :func:`_layout` gives a TF variable of ``shape`` (known from the index, before reading)."""
    shape = tuple(shape)
    if tf_name.endswith("/depthwise_weights") and len(shape) == 4:
        h, w, c, m = shape
        return (c * m, 1, h, w)
    if tf_name.endswith("/weights") and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if tf_name.endswith("/weights") and len(shape) == 2:
        return (shape[1], shape[0])
    return shape


@dataclass(frozen=True)
class PlannedTensor:
    """One entry of the state dict to produce: its key, the TF variable it comes from (None for the
    ``num_batches_tracked`` counters TF lacks, which are 0), and its shape and dtype (numpy's name,
    e.g. ``float32``, ``int64``) after layout."""

    key: str
    tf_name: str | None
    shape: tuple[int, ...]
    dtype: str


def plan_state_dict(
    shapes: Mapping[str, tuple[int, ...]],
    target: Target,
    *,
    path: str | PathLike | None = None,
) -> list[PlannedTensor]:
    """Check the TF variables ``{name: shape}`` against ``target`` (a model, or its concrete signature) and
    plan its complete state dict, in ``state_dict()`` order, without reading any value.

    Contract: every non-ignored TF variable maps to exactly one parameter/buffer of ``target`` with an
    equal shape after the layout step, and every parameter/buffer is produced. Otherwise raises
    ``ConversionError(path, problem, layer=<TF variable name>)``.
    """
    signature = as_signature(target)
    forward, reverse = map_tf_names(list(shapes), signature, path=path)
    expected = {key: (tuple(shape), dtype) for key, shape, dtype in signature.entries}
    for tf_name, key in forward.items():
        if key not in expected:
            raise ConversionError(path, f"no parameter '{key}' in {signature.name} (unconverted)", layer=tf_name)
        shape = layout_shape(tf_name, shapes[tf_name])
        if shape != expected[key][0]:
            raise ConversionError(
                path, f"shape {shape} (after layout) != {expected[key][0]} of '{key}'", layer=tf_name
            )
    plan = []
    for key, (shape, dtype) in expected.items():
        if key in reverse:
            plan.append(PlannedTensor(key, reverse[key], shape, dtype))
        elif key.endswith("num_batches_tracked"):
            plan.append(PlannedTensor(key, None, shape, dtype))
        else:
            raise ConversionError(path, f"missing: nothing maps to '{key}'", layer=None)
    return plan


def planned_array(entry: PlannedTensor, array: np.ndarray | None) -> np.ndarray:
    """The state-dict value of ``entry`` from its TF variable's value (None for a counter), laid out as a
    view of ``array`` where the layout is a transpose (no copy: a streaming writer copies it in chunks)."""
    wanted = np.dtype(entry.dtype)
    if entry.tf_name is None:
        return np.zeros(entry.shape, dtype=wanted)
    out = _layout(entry.tf_name, np.asarray(array))
    if tuple(out.shape) != entry.shape:  # the index promised this shape; the reader checks sizes against it
        raise ConversionError(None, f"shape {tuple(out.shape)} != {entry.shape} of '{entry.key}'", layer=entry.tf_name)
    return out if out.dtype == wanted else out.astype(wanted)


def planned_tensor(entry: PlannedTensor, array: np.ndarray | None) -> torch.Tensor:
    """:func:`planned_array` as a contiguous torch tensor (one copy of ``array`` at most: the layout)."""
    import torch

    out = planned_array(entry, array)
    return torch.from_numpy(out if out.flags.c_contiguous else np.ascontiguousarray(out))  # keeps 0-d as 0-d


def tf_arrays_to_state_dict(
    named_arrays: Mapping[str, np.ndarray],
    model: Target,
    *,
    path: str | PathLike | None = None,
) -> dict[str, torch.Tensor]:
    """Convert in-memory TF variables to a complete state dict for ``model`` (float32, our layouts), with
    the checks of :func:`plan_state_dict` (``num_batches_tracked`` counters, which TF lacks, are set to 0)."""
    shapes = {name: tuple(np.shape(value)) for name, value in named_arrays.items() if ignore_reason(name) is None}
    plan = plan_state_dict(shapes, model, path=path)
    return {e.key: planned_tensor(e, named_arrays[e.tf_name] if e.tf_name else None) for e in plan}


def load_tf_arrays(
    model: nn.Module, named_arrays: Mapping[str, np.ndarray], *, path: str | PathLike | None = None
) -> nn.Module:
    """Convert with :func:`tf_arrays_to_state_dict` and ``load_state_dict(strict=True)``; returns ``model``."""
    model.load_state_dict(tf_arrays_to_state_dict(named_arrays, model, path=path), strict=True)
    return model
