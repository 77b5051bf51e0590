"""Caffe -> PyTorch conversion as a library call (the CLI is ``converters/caffe2torch.py``).

Pipeline: stream layers (reader) -> drop multi-scale copies -> BatchNorm /
Scale / Convolution passes -> rename table -> checks (nothing left over,
nothing missing, shapes and BN eps equal) -> strict ``load_state_dict``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from converters.caffe import passes, rules, topology
from converters.caffe.reader import iter_layers
from converters.errors import ConversionError
from reference_models import build_model

if TYPE_CHECKING:  # pragma: no cover
    from converters.releases import Release

TOOL = "converters/caffe2torch.py"

# reference model name -> official Caffe topology, for naming the layer a missing tensor should come from
ARCH_TOPOLOGY = {
    "deeplabv2_resnet101": "resnet101",
    "deeplabv2_resnet101_msc": "resnet101",
    "deeplabv1_resnet101": "resnet101_init",
    "deeplabv2_vgg16": "vgg16_aspp",
    "deeplabv2_vgg16_largefov": "vgg16_largefov",
}
SUPPORTED_ARCHS = tuple(ARCH_TOPOLOGY)
# the tensor whose first dimension is the number of classes
CLASSIFIER_KEY = {
    "deeplabv2_resnet101": "aspp.branches.0.weight",
    "deeplabv2_resnet101_msc": "aspp.branches.0.weight",
    "deeplabv1_resnet101": "classifier.weight",
    "deeplabv2_vgg16": "aspp.branches.0.fc8.weight",
    "deeplabv2_vgg16_largefov": "aspp.branches.0.fc8.weight",
}


@dataclass
class Converted:
    """The result: a strict-loadable state dict, the model it loaded into, and where each key came from."""

    state_dict: dict[str, torch.Tensor]
    model: nn.Module
    num_classes: int
    source_layer: dict[str, str] = field(default_factory=dict)
    caffe_layers: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)  # the record, without the output file's entry
    scale_pairing: dict[str, int] = field(default_factory=dict)  # how Scale layers found their BatchNorm -> count


def scale_to_batchnorm(arch: str) -> dict[str, str]:
    """Scale layer -> the BatchNorm whose output it reads, in the official topology of ``arch``.

    Used for weights-only caffemodels, whose records carry no bottom/top to follow.
    """
    net = topology.build_net(ARCH_TOPOLOGY[arch], num_classes=2)
    bn_of_blob: dict[str, str] = {}
    out: dict[str, str] = {}
    for lp in net.layer:
        if lp.type == "BatchNorm":
            for top in lp.top:
                bn_of_blob[top] = lp.name
        elif lp.type == "Scale" and lp.bottom and lp.bottom[0] in bn_of_blob:
            out[lp.name] = bn_of_blob[lp.bottom[0]]
        else:
            for top in lp.top:  # a blob rewritten by another layer no longer holds the BN's output
                bn_of_blob.pop(top, None)
    return out


def _expected_layer(arch: str, num_classes: int) -> dict[str, str]:
    """Module path -> the official Caffe layer that fills it."""
    net = topology.build_net(ARCH_TOPOLOGY[arch], num_classes=num_classes)
    out = {}
    for lp in net.layer:
        if lp.type in ("Convolution", "BatchNorm"):
            module = rules.rename_layer(arch, lp.name)
            if module is not None:
                out[module] = lp.name
    return out


def convert_caffemodel(path: str | os.PathLike, *, arch: str, num_classes: int | None = None,
                       progress: bool = False, release: Release | None = None, tool: str = TOOL) -> Converted:
    """Convert ``path`` into the weights of the registered model ``arch``, in memory, with its provenance.

    ``num_classes=None`` takes the class count from the file's classifier. ``release``: the official
    release the file is (recorded; its sha256, when published, must match).
    Every problem raises :class:`ConversionError` naming the file and, where one
    exists, the Caffe layer. ``progress`` shows a tqdm bar over the file's bytes.
    """
    if arch not in ARCH_TOPOLOGY:
        raise ValueError(f"no Caffe conversion for '{arch}'; supported: {', '.join(SUPPORTED_ARCHS)}")
    path = Path(path)
    counter = {"layers": 0}

    def counted(layers):
        for layer in layers:
            counter["layers"] += 1
            yield layer

    bar = None
    if progress and path.is_file():
        from tqdm import tqdm

        bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"reading {path.name}", leave=False,
                   disable=None)  # None: only on a terminal, so errors stay one line in logs
    try:
        layers = iter_layers(path, progress=bar.update if bar is not None else None)
        named = passes.layer_arrays(passes.drop_msc_copies(counted(layers), path), path,
                                    scale_to_bn=scale_to_batchnorm(arch))
    finally:
        if bar is not None:
            bar.close()
    renamed, reverse = rules.rename(named.arrays, arch, path=path)

    if num_classes is None:
        head = renamed.get(CLASSIFIER_KEY[arch])
        if head is None:
            raise ConversionError(path, f"no classifier layer found for {arch}; pass --num-classes")
        num_classes = int(head.shape[0])
    if num_classes < 1:
        raise ConversionError(path, f"the classifier has {num_classes} classes")
    model = build_model(arch, num_classes=num_classes)
    expected = model.state_dict()
    modules = dict(model.named_modules())

    state: dict[str, torch.Tensor] = {}
    for key, value in renamed.items():
        layer = reverse[key]
        if key not in expected:
            raise ConversionError(path, f"maps onto '{key}', which {arch} does not have", layer=layer)
        want = tuple(expected[key].shape)
        if tuple(value.shape) != want:
            # a classifier tensor with another class count: say so
            hint = " (wrong --num-classes?)" if want[0] == num_classes and value.shape[:1] != want[:1] else ""
            raise ConversionError(path, f"{key.rsplit('.', 1)[1]} has shape {list(value.shape)} in the file, "
                                  f"{arch} expects {list(want)}{hint}", layer=layer)
        state[key] = torch.from_numpy(np.ascontiguousarray(value))

    # BatchNorm eps is not a tensor: it must agree with the model's module.
    for bn_layer, eps in named.bn_eps.items():
        module_path = rules.rename_layer(arch, bn_layer)
        module = modules.get(module_path)
        if isinstance(module, nn.BatchNorm2d) and not np.isclose(module.eps, eps, rtol=1e-6, atol=0.0):
            raise ConversionError(path, f"BatchNorm eps is {eps:g}, {arch} uses {module.eps:g}", layer=bn_layer)

    for name, module in modules.items():
        if isinstance(module, nn.BatchNorm2d):
            state.setdefault(f"{name}.num_batches_tracked", torch.zeros((), dtype=torch.long))

    missing = [k for k in expected if k not in state]
    if missing:
        where = _expected_layer(arch, num_classes)
        first = missing[0]
        layer = where.get(first.rsplit(".", 1)[0])
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        problem = (f"missing layer '{layer}' (for {first}){more}" if layer
                   else f"nothing in the file fills {first}{more}")
        raise ConversionError(path, f"{problem}; is this a {arch} caffemodel?")

    model.load_state_dict(state, strict=True)
    converted = Converted(state_dict=state, model=model, num_classes=num_classes, source_layer=reverse,
                          caffe_layers=counter["layers"], scale_pairing=named.pairing_methods())
    converted.provenance = caffe_provenance(path, converted, arch=arch, release=release, tool=tool)
    return converted


def caffe_provenance(path: Path, converted: Converted, *, arch: str, release: Release | None, tool: str) -> dict:
    """The provenance record of ``converted`` (source sha256 checked against the release's when published)."""
    from converters.io import sha256_file
    from converters.provenance import provenance_record
    from reference_models.preprocessing import preprocessing_for

    source_sha = sha256_file(path)
    if release is not None and release.sha256 and release.sha256 != source_sha:
        raise ConversionError(path, f"sha256 {source_sha} does not match the release's {release.sha256}")
    return provenance_record(
        tool=tool,
        steps=passes.STEPS,
        architecture=arch,
        num_classes=converted.num_classes,
        load_with=f"reference_models.build_model({arch!r}, num_classes={converted.num_classes})",
        source={"file": path.name, "sha256": source_sha, "size_bytes": path.stat().st_size,
                "official_url": release.url if release else None,
                "published_sha256": release.sha256 if release else None,
                "caffe_layers": converted.caffe_layers,
                # how each Scale layer found its BatchNorm: "bottom/top" (the file's own wiring), or, for
                # weights-only files whose records carry no bottom/top, "official topology" / "layer names"
                "scale_layers_paired_by": converted.scale_pairing},
        release=release.name if release else None,
        preprocessing=release.preprocessing if release else preprocessing_for(arch),
        libraries=("google.protobuf",),
    )
