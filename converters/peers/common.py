"""The pipeline every peer format shares: read safely, unwrap, detect, check the manifest, rename, load.

Steps (recorded in the provenance as :data:`STEPS`):

1. ``read_weights_only``: ``torch.load(weights_only=True)``. Only tensors, plain containers and
   numpy scalars / dtypes (the ``best_score`` / ``best_pred`` the peers store) are accepted; a
   file that needs any other Python object unpickled is refused, naming the object.
2. ``unwrap_checkpoint``: the format's ``unwrap`` finds the state dict inside the file (VainF's
   ``model_state``, jfzhang95's ``state_dict``, ...); every other entry is reported as ignored.
3. ``strip_data_parallel_prefix``: a ``module.`` prefix on *every* key (``nn.DataParallel``) is
   removed.
4. ``detect_architecture``: the format's ``detect`` reads architecture, backbone and class count
   from key names and shapes, and returns the peer's manifest (every key and shape its model
   code creates) with the rename rules.
5. ``check_manifest``: a key the manifest lacks (extra), a manifest key the file lacks (missing;
   ``num_batches_tracked`` may be absent: PyTorch < 0.4.1 did not write it) and a shape that
   differs are errors naming the key.
6. ``rename_rules``: ordered ``(regex, template)`` rules on module paths, first full match wins;
   the reverse map keeps the peer's key for every one of ours.
7. ``check_complete_and_shapes`` and ``load_state_dict_strict`` into the registered model.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from converters.errors import ConversionError

STEPS = (
    "read_weights_only",
    "unwrap_checkpoint",
    "strip_data_parallel_prefix",
    "detect_architecture",
    "check_manifest",
    "rename_rules",
    "check_complete_and_shapes",
    "load_state_dict_strict",
)

Shape = tuple[int, ...]
Rule = tuple[str, str]
OPTIONAL_SUFFIXES = (".num_batches_tracked",)  # absent in files written by PyTorch < 0.4.1
RESAVE_HINT = ("re-save the weights where the model is built: torch.save(model.state_dict(), 'weights.pth'), "
               "then import that file")


@dataclass
class Target:
    """What a checkpoint holds and where it goes.

    ``peer_model`` names the peer's constructor (``deeplabv3plus_resnet101``); ``arch`` and
    ``kwargs`` are our registered model and its builder arguments; ``manifest`` is every key and
    shape the peer's model code creates; ``rules`` map its module paths to ours.
    """

    peer_model: str
    arch: str
    num_classes: int
    manifest: dict[str, Shape]
    rules: Sequence[Rule]
    kwargs: dict[str, Any] = field(default_factory=dict)
    transforms: Mapping[str, Callable[[str], str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    preprocessing: Any = None  # reference_models.preprocessing.Preprocessing the peer trained with

    def load_with(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"reference_models.build_model({self.arch!r}, num_classes={self.num_classes}{args})"


@dataclass
class Imported:
    """The result: a strict-loadable state dict, the model it loaded into, and where each key came from."""

    state_dict: dict[str, torch.Tensor]
    model: nn.Module
    target: Target
    source_key: dict[str, str]
    ignored_entries: list[str]
    source_tensors: int


# ----------------------------------------------------------------------------- manifest helpers


def conv(prefix: str, out_ch: int, in_ch: int, k: int = 1, *, bias: bool = False, groups: int = 1) -> dict[str, Shape]:
    """Keys and shapes of one ``nn.Conv2d``."""
    entries = {f"{prefix}.weight": (out_ch, in_ch // groups, k, k)}
    if bias:
        entries[f"{prefix}.bias"] = (out_ch,)
    return entries


def bn(prefix: str, channels: int) -> dict[str, Shape]:
    """Keys and shapes of one ``nn.BatchNorm2d``."""
    return {**{f"{prefix}.{t}": (channels,) for t in ("weight", "bias", "running_mean", "running_var")},
            f"{prefix}.num_batches_tracked": ()}


def bottleneck_stages(m: dict[str, Shape], stages: Iterable[tuple[str, int, int]], in_ch: int) -> int:
    """Add torchvision-layout Bottleneck stages to ``m``: for each ``(prefix, blocks, width)``, blocks
    ``{prefix}.{j}.conv1..3``/``bn1..3`` (4 x ``width`` out) with ``downsample.0/1`` on the first. Returns
    the channels out of the last stage."""
    for prefix, n, width in stages:
        out = width * 4
        for j in range(n):
            p = f"{prefix}.{j}"
            m.update({**conv(f"{p}.conv1", width, in_ch), **bn(f"{p}.bn1", width),
                      **conv(f"{p}.conv2", width, width, 3), **bn(f"{p}.bn2", width),
                      **conv(f"{p}.conv3", out, width), **bn(f"{p}.bn3", out)})
            if j == 0:
                m.update({**conv(f"{p}.downsample.0", out, in_ch), **bn(f"{p}.downsample.1", out)})
            in_ch = out
    return in_ch


def torchvision_resnet(prefix: str, blocks: Sequence[int], *, last_stage: int = 4) -> dict[str, Shape]:
    """A torchvision-layout Bottleneck ResNet (``conv1``/``bn1``, ``layer{i}.{j}.conv1..3``/``bn1..3``,
    ``downsample.0/1`` on each stage's first block) up to ``layer{last_stage}``; no ``fc``."""
    m = {**conv(f"{prefix}conv1", 64, 3, 7), **bn(f"{prefix}bn1", 64)}
    stages = zip(blocks, (64, 128, 256, 512))
    bottleneck_stages(m, ((f"{prefix}layer{i}", n, w) for i, (n, w) in enumerate(stages, start=1) if i <= last_stage),
                      64)
    return m


RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def count_blocks(keys: Sequence[str], pattern: str) -> int:
    """How many distinct block indices ``pattern`` (one group) finds among ``keys``."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.fullmatch(k))})


def resnet_depth(blocks: Sequence[int], path: str | os.PathLike) -> int:
    for depth, layout in RESNET_DEPTHS.items():
        if tuple(blocks) == layout:
            return depth
    raise ConversionError(path, f"ResNet with {list(blocks)} blocks per stage is not a ResNet-50/101/152")


# ----------------------------------------------------------------------------- reading


def _numpy_safe_globals() -> list[Any]:
    """Plain data containers the peers pickle beside their tensors: numpy scalars and dtypes (VainF's
    ``best_score``, jfzhang95's ``best_pred``) and ``argparse.Namespace`` (the ``args`` of torchvision's
    reference ``checkpoint.pth``; restored as attributes, no code runs)."""
    import argparse

    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return [argparse.Namespace]
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    allowed: list[Any] = [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
                          np.dtype, argparse.Namespace]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` (numpy scalars allowed), with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(path, "file not found" if not path.exists() else "not a file")
    if path.stat().st_size == 0:
        raise ConversionError(path, "empty file, not a PyTorch checkpoint")
    is_zip = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            # mmap: tensors stay on disk until used, so a huge file does not fill memory twice
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        if found is None:
            raise ConversionError(path, f"not a PyTorch checkpoint ({_first_line(exc)})") from None
        raise ConversionError(path, f"refused: it needs arbitrary Python objects unpickled ({found.group(1)}), "
                              f"which is never done for safety; {RESAVE_HINT}") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
        raise ConversionError(path, f"not a PyTorch checkpoint ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def tensor_dict(obj: Any, path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """``obj`` as ``{str: Tensor}``, or an error naming the first entry that is not a tensor."""
    if not isinstance(obj, Mapping):
        raise ConversionError(path, f"{what} is a {type(obj).__name__}, not a dict of tensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ConversionError(path, f"{what} entry '{key}' is a {type(value).__name__}, not a tensor")
        out[key] = value
    if not out:
        raise ConversionError(path, f"{what} holds no tensors")
    return out


def unwrap_entry(obj: Any, path: str | os.PathLike, entry: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``obj[entry]`` of a checkpoint dict as the state dict, with its other top-level keys (sorted, as text:
    reported as ignored); else ``obj`` itself as a bare state dict, nothing ignored."""
    if isinstance(obj, dict) and entry in obj:
        return tensor_dict(obj[entry], path, f"'{entry}'"), sorted(str(k) for k in obj if k != entry)
    return tensor_dict(obj, path, "the state dict"), []


def strip_data_parallel(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``module.`` when every key has it (a model saved inside ``nn.DataParallel``)."""
    if all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


# ----------------------------------------------------------------------------- checking and renaming


def check_manifest(state: Mapping[str, torch.Tensor], target: Target, path: str | os.PathLike) -> None:
    """Every manifest key present (``num_batches_tracked`` may be absent), nothing extra, shapes equal."""
    manifest = target.manifest
    for key, value in state.items():
        if key not in manifest:
            raise ConversionError(path, f"unexpected key '{key}': {target.peer_model} has no such tensor "
                                  "(another architecture, or a modified model?)")
        if tuple(value.shape) != manifest[key]:
            raise ConversionError(path, f"key '{key}' has shape {list(value.shape)}, {target.peer_model} "
                                  f"creates {list(manifest[key])}")
    missing = [k for k in manifest if k not in state and not k.endswith(OPTIONAL_SUFFIXES)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConversionError(path, f"missing key '{missing[0]}'{more}: {target.peer_model} creates it")


def rename_key(key: str, rules: Sequence[Rule], transforms: Mapping[str, Callable[[str], str]]) -> str | None:
    """Our key for a peer key: the first rule whose regex fully matches its module path wins."""
    module, tensor = key.rsplit(".", 1)
    for rx, template in rules:
        m = re.fullmatch(rx, module)
        if m:
            groups = {k: transforms.get(k, str)(v) for k, v in m.groupdict().items()}
            return f"{template.format(**groups)}.{tensor}"
    return None


def rename(state: Mapping[str, torch.Tensor], target: Target, path: str | os.PathLike
           ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(renamed, reverse)``; ``reverse[our_key]`` is the peer's key. Unmapped or colliding keys are errors."""
    renamed: dict[str, torch.Tensor] = {}
    reverse: dict[str, str] = {}
    for key, value in state.items():
        new = rename_key(key, target.rules, target.transforms)
        if new is None:
            raise ConversionError(path, f"no rule maps key '{key}' onto {target.arch}")
        if new in renamed:
            raise ConversionError(path, f"keys '{reverse[new]}' and '{key}' both map onto '{new}'")
        renamed[new] = value
        reverse[new] = key
    return renamed, reverse


def convert_state(state: dict[str, torch.Tensor], target: Target, path: str | os.PathLike
                  ) -> tuple[dict[str, torch.Tensor], nn.Module, dict[str, str]]:
    """Check, rename and strictly load ``state`` (already unwrapped) into ``target``'s model."""
    from reference_models import build_model

    check_manifest(state, target, path)
    renamed, reverse = rename(state, target, path)
    model = build_model(target.arch, num_classes=target.num_classes, **target.kwargs)
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in renamed.items():
        if key not in expected:
            raise ConversionError(path, f"key '{reverse[key]}' maps onto '{key}', which {target.arch} does not have")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ConversionError(path, f"key '{reverse[key]}' has shape {list(value.shape)}, {target.arch} "
                                  f"expects {list(expected[key].shape)} at '{key}'")
        out[key] = value.detach().to(dtype=expected[key].dtype).clone()
    for key, value in expected.items():
        if key not in out and key.endswith(OPTIONAL_SUFFIXES):
            out[key] = torch.zeros_like(value)
    missing = [k for k in expected if k not in out]
    if missing:
        raise ConversionError(path, f"nothing in the file fills '{missing[0]}' of {target.arch}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    model.load_state_dict(out, strict=True)
    return out, model.eval(), reverse


def import_checkpoint(fmt: Any, path: str | os.PathLike, *, output_stride: int | None = None,
                      model: str | None = None) -> Imported:
    """Read ``path`` as peer format ``fmt`` (a module of this package) and convert it into our model."""
    obj = read_checkpoint(path)
    state, ignored = fmt.unwrap(obj, path)
    state = strip_data_parallel(state)
    target = fmt.detect(state, path, output_stride=output_stride, model=model)
    converted, net, reverse = convert_state(state, target, path)
    return Imported(state_dict=converted, model=net, target=target, source_key=reverse,
                    ignored_entries=list(ignored), source_tensors=len(state))
